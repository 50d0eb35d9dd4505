"""Audio-only models (``with_vision=False``): the audio-language branch and the LLM, no vision branch.

Covers the model (no vision parts, ``encode_video`` refuses, audio-only forward equals the full model's),
the config (at least one branch; old folders load with the vision branch), chat (a video is answered from
its audio track exactly as the same track given as an audio file, with a notice; images are refused),
save/load, loading a full folder without its vision branch, ``convert(branches="al")`` from the tiny
official-layout files, and the server / web demo refusing what an audio-only model cannot read.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import av
import httpx
import numpy as np
import pytest
import torch
from convert_fixtures import release_args, write_tiny_release
from media_fixtures import make_numbered_video, make_tone_audio
from PIL import Image
from safetensors import safe_open
from serve_helpers import running_server

from videollama.config import VideoLlamaConfig
from videollama.engine import GenerationConfig
from videollama.errors import VideoLlamaError
from videollama.inference import NO_VISION_NOTICE, MediaOptions, Pipeline
from videollama.media import MediaError
from videollama.model import AUDIO_BRANCH_TRAINABLE, VISION_BRANCH_TRAINABLE, VideoLlama, count_parameters
from videollama.presets import tiny
from videollama.processor import attach_media_tokens

VISION_PARTS = {"vision_model", "image_qformer", "image_query_tokens", "frame_position_embedding", "video_qformer",
                "video_query_tokens", "video_projection"}
GREEDY = GenerationConfig(max_new_tokens=8, do_sample=False)
QUESTION = "What do you hear?"
NO_VISION = "this model has no vision branch (with_vision=False)"


def parts_of(state: dict) -> set[str]:
    return {key.split(".")[0] for key in state}


def audio_track(video: Path, out: Path) -> Path:
    """The video's AAC track remuxed (not re-encoded) into an audio-only .m4a: the same sound, bit for bit."""
    with av.open(str(video)) as src, av.open(str(out), "w") as dst:
        stream = src.streams.audio[0]
        target = dst.add_stream_from_template(stream)
        for packet in src.demux(stream):
            if packet.dts is None:  # the flush packet
                continue
            packet.stream = target
            dst.mux(packet)
    return out


@pytest.fixture(scope="module")
def audio_model(tiny_tokenizer):
    config = dataclasses.replace(tiny(vocab_size=tiny_tokenizer.vocab_size), with_vision=False)
    attach_media_tokens(tiny_tokenizer, config)
    torch.manual_seed(0)
    return VideoLlama(config).eval()


@pytest.fixture(scope="module")
def audio_pipeline(audio_model, tiny_tokenizer):
    return Pipeline(audio_model, tiny_tokenizer)


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("audio-only-media")
    video = make_numbered_video(root / "av.mp4", 24, fps=8, size=(96, 64), with_audio=True, audio_freq=660.0)
    image = root / "image.png"
    Image.fromarray(np.linspace(0, 255, 48 * 64 * 3).astype(np.uint8).reshape(48, 64, 3)).save(image)
    return {
        "wav": make_tone_audio(root / "tone.wav", 2.0, freq=440.0),
        "video": video,
        "track": audio_track(video, root / "track.m4a"),
        "silent": make_numbered_video(root / "silent.mp4", 8, fps=8, size=(64, 64)),
        "image": image,
    }


# ------------------------------------------------------------------------------------------ model and config
def test_no_vision_parts_and_counts_are_the_full_model_minus_the_vision_branch(audio_model, tiny_model):
    state = audio_model.state_dict()
    assert parts_of(state) == {"audio_encoder", "audio_position_embedding", "audio_qformer", "audio_query_tokens",
                               "audio_projection", "imagebind_vision", "language_model"}
    full = count_parameters(tiny_model)
    assert count_parameters(audio_model) == {k: v for k, v in full.items() if k not in VISION_PARTS}
    assert audio_model.device == torch.device("cpu") and audio_model.dtype == torch.float32


@pytest.mark.slow
def test_encode_video_raises_and_audio_only_forward_equals_the_full_model(audio_model, tiny_model):
    with pytest.raises(ValueError, match=NO_VISION.replace("(", r"\(").replace(")", r"\)")):
        audio_model.encode_video(torch.randn(1, 2, 3, 224, 224))
    with pytest.raises(ValueError, match="no vision branch"):
        audio_model.encode_video(torch.randn(1, 1, 3, 224, 224))  # an image is a one-frame video
    # Same weights as the full tiny model wherever both have the tensor: same audio-only outputs.
    full_state = tiny_model.state_dict()
    audio_model_copy = VideoLlama(audio_model.config).eval()
    audio_model_copy.load_state_dict({k: full_state[k] for k in audio_model_copy.state_dict()}, strict=True)
    cfg = audio_model.config
    torch.manual_seed(3)
    mel = torch.randn(2, 8, 1, 128, 204)
    frames = torch.randn(2, 4, 3, 224, 224)
    ids = torch.tensor([[1, 7] + [cfg.audio_token_id] * cfg.num_audio_tokens + [9, 3]] * 2)
    with torch.no_grad():
        torch.testing.assert_close(audio_model_copy.encode_audio(mel), tiny_model.encode_audio(mel), rtol=0, atol=0)
        torch.testing.assert_close(audio_model_copy.encode_visual_for_audio_branch(frames),
                                   tiny_model.encode_visual_for_audio_branch(frames), rtol=0, atol=0)
        logits = audio_model_copy(ids, audio_values=mel).logits
        torch.testing.assert_close(logits, tiny_model(ids, audio_values=mel).logits, rtol=0, atol=0)
        with pytest.raises(ValueError, match="no vision branch"):
            audio_model_copy(ids, audio_values=mel, pixel_values=frames)
    assert logits.shape == (2, ids.shape[1], cfg.llm["vocab_size"])


def test_trainable_parts(audio_model):
    model = VideoLlama(audio_model.config)
    model.set_trainable(AUDIO_BRANCH_TRAINABLE)
    model.train()
    assert model.audio_qformer.training and not model.audio_encoder.training
    assert {k.split(".")[0] for k in model.trainable_state_dict()} == set(AUDIO_BRANCH_TRAINABLE)
    with pytest.raises(ValueError, match="unknown trainable parts"):
        model.set_trainable(VISION_BRANCH_TRAINABLE)


def test_config_needs_a_branch_and_old_folders_keep_vision(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="at least one branch"):
        dataclasses.replace(tiny(), with_vision=False, with_audio=False)
    cfg = dataclasses.replace(tiny(), with_vision=False)
    cfg.save(tmp_path / "config.json")
    assert json.loads((tmp_path / "config.json").read_text())["videollama"]["with_vision"] is False
    assert VideoLlamaConfig.load(tmp_path / "config.json") == cfg
    # A folder written before with_vision existed has no such key: it has the vision branch.
    data = json.loads((tiny_model_dir / "config.json").read_text())
    assert data["videollama"].pop("with_vision") is True
    (tmp_path / "old.json").write_text(json.dumps(data))
    assert VideoLlamaConfig.load(tmp_path / "old.json").with_vision is True


def test_info_says_the_vision_branch_is_not_built(audio_model, tmp_path, capsys):
    from videollama import cli

    audio_model.config.save(tmp_path / "config.json")
    assert cli.main(["info", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    components = {line.split()[0] for line in lines}
    assert "audio_qformer" in components and not components & VISION_PARTS
    vision = next(line for line in lines if line.startswith("trainable, vision branch"))
    audio = next(line for line in lines if line.startswith("trainable, audio branch"))
    assert vision.split()[3:] == ["0", "(not", "built)"]
    assert int(audio.split()[3].replace(",", "")) == sum(count_parameters(audio_model)[p] for p in AUDIO_BRANCH_TRAINABLE)


# ------------------------------------------------------------------------------------------ chat
@pytest.mark.slow
def test_chat_about_a_wav(audio_pipeline, media):
    session = audio_pipeline.chat(media["wav"])
    assert session.notice is None and session.media.kind == "audio" and session.media.video is None
    ids = audio_pipeline.prompt_ids(session.media, [(QUESTION, None)])
    cfg = audio_pipeline.model.config
    assert ids.count(cfg.audio_token_id) == cfg.num_audio_tokens and ids.count(cfg.image_token_id) == 0
    answer = session.ask(QUESTION, GREEDY)
    assert answer == audio_pipeline.chat(media["wav"]).ask(QUESTION, GREEDY)  # greedy: reproducible


@pytest.mark.slow
def test_video_is_answered_from_its_audio_track(audio_pipeline, media):
    from_video = audio_pipeline.chat(media["video"])
    from_track = audio_pipeline.chat(media["track"])
    assert from_video.notice == NO_VISION_NOTICE == "this model has no vision branch: answering from the audio track only"
    assert from_track.notice is None
    assert from_video.media.kind == "audio" and from_video.media.video is None
    assert torch.equal(from_video.media.audio, from_track.media.audio)
    assert audio_pipeline.prompt_ids(from_video.media, [(QUESTION, None)]) == \
        audio_pipeline.prompt_ids(from_track.media, [(QUESTION, None)])
    answer = from_video.ask(QUESTION, GREEDY)
    assert answer and answer == from_track.ask(QUESTION, GREEDY)
    assert from_video.ask("And then?", GREEDY) == from_track.ask("And then?", GREEDY)  # follow-ups too


def test_what_an_audio_only_model_cannot_read(audio_pipeline, media):
    with pytest.raises(ValueError, match="no vision branch .* cannot read images") as err:
        audio_pipeline.chat(media["image"])
    assert "image.png" in str(err.value)
    assert isinstance(err.value, VideoLlamaError)  # the user's to fix: one line and exit 2 at the CLI
    with pytest.raises(MediaError, match="no audio track, and this model has no vision branch"):
        audio_pipeline.chat(media["silent"])
    with pytest.raises(MediaError, match="audio is switched off"):
        audio_pipeline.chat(media["video"], options=MediaOptions(use_audio=False))


# ------------------------------------------------------------------------------------------ save and load
@pytest.mark.slow
def test_save_load_round_trip(audio_model, audio_pipeline, tiny_tokenizer, media, tmp_path):
    audio_model.save_pretrained(tmp_path / "al", tokenizer=tiny_tokenizer)
    assert json.loads((tmp_path / "al" / "config.json").read_text())["videollama"]["with_vision"] is False
    with safe_open(str(tmp_path / "al" / "model.safetensors"), "pt") as f:
        assert not parts_of(f.keys()) & VISION_PARTS
    loaded = VideoLlama.from_pretrained(tmp_path / "al")
    assert loaded.config == audio_model.config and not hasattr(loaded, "vision_model")
    a, b = audio_model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    pipe = Pipeline.from_pretrained(tmp_path / "al")
    assert pipe.chat(media["video"]).ask(QUESTION, GREEDY) == audio_pipeline.chat(media["video"]).ask(QUESTION, GREEDY)
    with pytest.raises(ValueError, match="at least one branch"):
        VideoLlama.from_pretrained(tmp_path / "al", with_audio=False)


@pytest.mark.slow
def test_full_folder_loads_without_its_vision_branch(tiny_model, tiny_model_dir, media):
    from videollama.model.loading import load_with_separate_llm

    model = VideoLlama.from_pretrained(tiny_model_dir, with_vision=False)
    assert not model.config.with_vision and model.config.with_audio
    assert not parts_of(model.state_dict()) & VISION_PARTS
    full = tiny_model.state_dict()
    assert all(torch.equal(v, full[k]) for k, v in model.state_dict().items())
    mel = torch.randn(1, 8, 1, 128, 204)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_audio(mel), tiny_model.encode_audio(mel), rtol=0, atol=0)
    separate = load_with_separate_llm(tiny_model_dir, device=torch.device("cpu"), dtype=None, device_map={"": "cpu"},
                                      with_vision=False)
    assert separate.state_dict().keys() == model.state_dict().keys()
    pipe = Pipeline.from_pretrained(tiny_model_dir, with_vision=False)
    assert not pipe.model.config.with_vision
    # The full folder read without its frames answers a video exactly as from the audio track alone.
    session = pipe.chat(media["video"])
    assert session.notice == NO_VISION_NOTICE
    assert session.ask(QUESTION, GREEDY) == pipe.chat(media["track"]).ask(QUESTION, GREEDY)


# ------------------------------------------------------------------------------------------ conversion
@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return write_tiny_release(tmp_path_factory)


@pytest.mark.slow
def test_convert_audio_language_branch_only(release, tmp_path, media):
    from videollama.convert.build import convert

    full_report = convert(tmp_path / "full", **release_args(release), dtype="fp32", config=release.config,
                          imagebind_vision=True, hash_sources=False)
    args = release_args(release)
    vl_ckpt = args.pop("vl_ckpt")
    for option in ("eva_vit", "blip2"):
        del args[option]
    report = convert(tmp_path / "al", **args, vl_ckpt=vl_ckpt, dtype="fp32", branches="al", config=release.config,
                     imagebind_vision=True)
    assert report.ok() and full_report.ok(), report.format()
    assert any(note.startswith("--vl-ckpt") and "not used" in note for note in report.notes)
    config = json.loads((tmp_path / "al" / "config.json").read_text())["videollama"]
    assert config["with_vision"] is False and config["with_audio"] is True
    card = (tmp_path / "al" / "README.md").read_text()
    assert "Branches: **al**: audio-language branch only" in card
    assert release.al.name in card and release.imagebind.name in card
    assert release.vl.name not in card.split("## Sources")[1].split("## Conversion report")[0]
    assert "vision-language and audio-language branches included" in (tmp_path / "full" / "README.md").read_text()
    with safe_open(str(tmp_path / "al" / "model.safetensors"), "pt") as f:
        assert not parts_of(f.keys()) & VISION_PARTS

    al, full = VideoLlama.from_pretrained(tmp_path / "al"), VideoLlama.from_pretrained(tmp_path / "full")
    assert not al.config.with_vision and full.config.with_vision
    assert al.state_dict().keys() == {k for k in full.state_dict() if k.split(".")[0] not in VISION_PARTS}
    torch.manual_seed(2)
    mel, frames = torch.randn(2, 8, 1, 128, 204), torch.randn(2, 3, 3, 224, 224)
    ids = torch.tensor([[1, 7] + [al.config.audio_token_id] * al.config.num_audio_tokens + [9, 3, 4]] * 2)
    with torch.no_grad():
        audio = al.encode_audio(mel)
        torch.testing.assert_close(audio, full.encode_audio(mel), rtol=0, atol=0)
        torch.testing.assert_close(al.encode_visual_for_audio_branch(frames),
                                   full.encode_visual_for_audio_branch(frames), rtol=0, atol=0)
        torch.testing.assert_close(al(ids, audio_values=mel).logits, full(ids, audio_values=mel).logits, rtol=0, atol=0)
    assert audio.abs().sum() > 0 and not torch.equal(audio[0], audio[1])  # a real signal
    al_pipe, full_pipe = Pipeline.from_pretrained(tmp_path / "al"), Pipeline.from_pretrained(tmp_path / "full")
    assert al_pipe.chat(media["wav"]).ask(QUESTION, GREEDY) == full_pipe.chat(media["wav"]).ask(QUESTION, GREEDY)


def test_convert_audio_only_names_what_it_needs(release, tmp_path):
    from videollama.convert.build import convert

    args = release_args(release)
    del args["al_ckpt"]
    with pytest.raises(ValueError, match=r"branches='al' needs --al-ckpt") as err:
        convert(tmp_path / "out", **args, branches="al", config=release.config)
    assert "--eva-vit" not in str(err.value) and "--vl-ckpt" not in str(err.value)
    del args["imagebind"]
    with pytest.raises(ValueError, match=r"--imagebind"):
        convert(tmp_path / "out", **args, al_ckpt=release.al, branches="al", config=release.config)


# ------------------------------------------------------------------------------------------ serving
def test_serve_refuses_images_and_silent_videos(audio_pipeline, media):
    from videollama.serve.api import create_app
    from videollama.serve.settings import ServeSettings

    settings = ServeSettings(model_name="al-test", media_root=media["video"].parent, max_batch=2, batch_wait_ms=5,
                             timeout_s=60, default_max_tokens=8)
    app = create_app(audio_pipeline, settings)

    def ask(part: dict, **extra) -> httpx.Response:
        body = {"messages": [{"role": "user", "content": [part, {"type": "text", "text": QUESTION}]}],
                "temperature": 0, "max_tokens": 8, **extra}
        return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)

    with running_server(app) as url:
        image = ask({"type": "image_url", "image_url": {"url": "image.png"}})
        silent = ask({"type": "video_url", "video_url": {"url": "silent.mp4"}})
        muted = ask({"type": "video_url", "video_url": {"url": "av.mp4"}}, audio=False)
        video = ask({"type": "video_url", "video_url": {"url": "av.mp4"}})
        track = ask({"type": "video_url", "video_url": {"url": "track.m4a"}})
    for response, says in ((image, "no vision branch: it cannot take images"),
                           (silent, "silent.mp4: this model has no vision branch, so it answers a video from its audio track, "
                                    "and the file has no audio stream"),
                           (muted, "and audio is switched off")):
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert says in error["message"] and error["type"] == "invalid_request_error" and error["code"] == "invalid_media"
    assert video.status_code == 200 and video.headers["x-videollama-notice"] == NO_VISION_NOTICE
    assert "x-videollama-notice" not in track.headers
    assert video.json()["choices"][0]["message"]["content"] == track.json()["choices"][0]["message"]["content"]
    assert video.json()["usage"] == track.json()["usage"]


@pytest.mark.slow
def test_web_demo_refuses_images(audio_pipeline, media):
    import gradio as gr

    from videollama.serve.web import build_demo

    demo = build_demo(audio_pipeline, examples=[])
    respond = next(f.fn for f in demo.fns.values() if f.api_name == "respond")
    switch = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "vl-use-audio")
    assert switch.value is True and switch.interactive is False  # nothing but the audio track to read

    def first(video=None, image=None, audio=None):
        return next(respond(QUESTION, [], [], video, image, audio, True, True, 1.0, 0.9, 8, 4, 0, 0, 0, None))

    with pytest.raises(gr.Error, match="no vision branch: it cannot take images"):
        first(image=str(media["image"]))
    with pytest.raises(gr.Error, match="the file has no audio stream"):
        first(video=str(media["silent"]))
    history, _, _, _, timeline = first(audio=str(media["wav"]))
    assert timeline == []  # an audio clip has no video timeline
    assert history[0] == {"role": "user", "content": QUESTION}
