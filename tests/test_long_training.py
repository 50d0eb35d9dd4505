"""Training on long inputs: multi-window samples, SynthAV long clips and questions, the long evaluation,
and the quick long-variant path, on real clips rendered by the SynthAV renderer and decoded with PyAV.

The tiny model here reads windows of WINDOW = 8 frames (``max_frames``: the SynthAV clips' 8 uniform
frames still fit one window) of 112x112 pixels, so a clip of 20-32 s at 1 frame per second is 3
windows (``max_windows`` = 3 caps it at 24 frames, spread uniformly).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from videollama.errors import UsageError
from videollama.inference import MediaOptions, Pipeline
from videollama.long_video import encode_video_file, window_audio_clips
from videollama.media.windows import VideoSampling
from videollama.model import VideoLlama
from videollama.synthav.long import (
    LONG_TYPES,
    LongClip,
    LongSettings,
    generate_long,
    when_chance,
    when_tolerance,
)
from videollama.synthav.long_eval import (
    LongTestItem,
    is_right,
    load_long_items,
    score_long,
)
from videollama.synthav.render import render_clip
from videollama.synthav.world import WorldConfig, sample_scene
from videollama.tokenizer import AUDIO_PLACEHOLDER, IMAGE_PLACEHOLDER
from videollama.train.data import TextOptions, VideoChatInstructDataset
from videollama.train.text import Turn, collate, encode_conversation

WINDOW = 8  # frames per window of the tiny model
SIZE = 112
MAX_WINDOWS = 3
SETTINGS = LongSettings(min_seconds=20, max_seconds=24, fps=1.0, window_frames=WINDOW, max_windows=MAX_WINDOWS)


@pytest.fixture(scope="module")
def model(tiny_tokenizer):
    from videollama.model import VideoLlama
    from videollama.presets import tiny
    from videollama.processor import attach_media_tokens

    config = tiny(vocab_size=tiny_tokenizer.vocab_size)
    config.max_frames, config.vision.image_size = WINDOW, SIZE
    attach_media_tokens(tiny_tokenizer, config)
    torch.manual_seed(0)
    return VideoLlama(config).eval()


@pytest.fixture(scope="module")
def long_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("long")
    generate_long(out, clips=2, seed=0, test_clips=2, settings=SETTINGS)
    return out


@pytest.fixture(scope="module")
def short_clips(tmp_path_factory) -> Path:
    """Two ordinary 4-s SynthAV clips and their VideoChat records."""
    root = tmp_path_factory.mktemp("short")
    records = []
    for i in range(2):
        render_clip(sample_scene(np.random.default_rng([5, i]), WorldConfig()), WorldConfig(), root / f"{i}.mp4")
        records.append({"video": f"{i}.mp4", "QA": [{"q": "What moves?", "a": "a circle."},
                                                    {"q": "What colour is it?", "a": "red"}]})
    (root / "records.json").write_text(json.dumps(records))
    return root


def dataset(tok, annotations: Path, media_root: Path, **windows) -> VideoChatInstructDataset:
    text = TextOptions(tokenizer=tok, media_token=IMAGE_PLACEHOLDER, num_media_tokens=32, template="llama_2",
                       conversation_max_len=4096)
    return VideoChatInstructDataset("long", text, annotations=str(annotations), media_root=str(media_root),
                                    image_size=SIZE, window_frames=WINDOW, **windows)


def long_dataset(tok, long_data: Path, **extra) -> VideoChatInstructDataset:
    return dataset(tok, long_data / "long/long_instruct.json", long_data / "long/videos", window_fps=1.0,
                   max_windows=MAX_WINDOWS, **extra)


# ------------------------------------------------------------------------------------------------ samples
def test_window_sample_is_inference_prompt(tiny_tokenizer, model, long_data):
    """Windows, time labels, sentence and sound of a training sample are those inference builds."""
    ds = long_dataset(tiny_tokenizer, long_data, with_audio=True)
    sample = ds[0]
    record = ds.records[sample["index"]]
    path = long_data / "long/videos" / record["video"]
    pipe = Pipeline(model, tiny_tokenizer)
    features = pipe.encode_media(path, MediaOptions(fps=1.0, max_frames=MAX_WINDOWS * WINDOW, max_windows=MAX_WINDOWS))
    spans = features.timeline.windows
    assert features.windowed and len(spans) == MAX_WINDOWS == len(sample["frames"])
    assert [w.shape for w in sample["frames"]] == [(len(s.frame_times), 3, SIZE, SIZE) for s in spans]
    timeline = encode_video_file(model, path, VideoSampling(frames=None, fps=1.0, max_frames=MAX_WINDOWS * WINDOW),
                                 image_size=SIZE)
    assert [s.label for s in timeline.timeline.windows] == [s.label for s in spans]
    # the first user message is inference's preamble (markers expanded) joined to the question
    preamble = features.preamble.replace(IMAGE_PLACEHOLDER, IMAGE_PLACEHOLDER * 32).replace(
        AUDIO_PLACEHOLDER, AUDIO_PLACEHOLDER * 8)
    assert spans[1].label in preamble and "Close your eyes" in preamble
    turns = []
    for i, qa in enumerate(record["QA"]):
        question = f"{preamble} {qa['q']}" if i == 0 else qa["q"]
        turns += [Turn("human", question), Turn("gpt", qa["a"])]
    expected = encode_conversation(tiny_tokenizer, turns, "llama_2", 4096)
    assert torch.equal(sample["input_ids"], expected.input_ids)
    assert torch.equal(sample["labels"], expected.labels)
    image_id, audio_id = model.config.image_token_id, model.config.audio_token_id
    assert int((sample["input_ids"] == image_id).sum()) == 32 * MAX_WINDOWS
    assert int((sample["input_ids"] == audio_id).sum()) == 8 * MAX_WINDOWS
    assert torch.equal(sample["av_audio"], window_audio_clips(path, spans))  # (W, 8, 1, 128, 204)


def test_shorter_windows_sample_as_inference_reads_them(tiny_tokenizer, model, long_data):
    """A dataset's window_frames cuts the same windows, labels and token runs as inference's window_frames."""
    ds = dataset(tiny_tokenizer, long_data / "long/long_instruct.json", long_data / "long/videos", window_fps=1.0,
                 max_windows=6, with_audio=True)
    ds.window_frames = 4  # what build_datasets passes for a dataset's `window_frames: 4`
    sample = ds[0]
    path = long_data / "long/videos" / ds.records[sample["index"]]["video"]
    features = Pipeline(model, tiny_tokenizer).encode_media(
        path, MediaOptions(fps=1.0, max_frames=6 * 4, max_windows=6, window_frames=4))
    spans = features.timeline.windows
    assert len(spans) == 6 == len(sample["frames"]) and all(len(s.frame_times) == 4 for s in spans)
    assert [w.shape[0] for w in sample["frames"]] == [4] * 6
    preamble = features.preamble.replace(IMAGE_PLACEHOLDER, IMAGE_PLACEHOLDER * 32).replace(
        AUDIO_PLACEHOLDER, AUDIO_PLACEHOLDER * 8)
    first = ds.records[sample["index"]]["QA"][0]["q"]
    head = encode_conversation(tiny_tokenizer, [Turn("human", f"{preamble} {first}"), Turn("gpt", "x")], "llama_2", 4096)
    prompt_end = int((head.labels == -100).sum()) - 1  # the prompt up to the answer, as inference builds it
    assert torch.equal(sample["input_ids"][:prompt_end], head.input_ids[:prompt_end])
    assert torch.equal(sample["av_audio"], window_audio_clips(path, spans))


def test_a_dataset_window_longer_than_the_models_is_a_config_error(tiny_tokenizer, long_data):
    from videollama.train.config import ConfigError, config_from_dict
    from videollama.train.data import build_datasets

    cfg = config_from_dict({"model": {"preset": "tiny"}, "data": {"datasets": {"long": {
        "type": "videochat_instruct", "annotations": str(long_data / "long/long_instruct.json"),
        "media_root": str(long_data / "long/videos"), "window_fps": 1.0, "window_frames": WINDOW + 1}}}})
    with pytest.raises(ConfigError, match=rf"data.datasets.long: window_frames must be between 1 and the model's "
                                          rf"max_frames \({WINDOW}\), got {WINDOW + 1}"):
        build_datasets(cfg, tiny_tokenizer, window_frames=WINDOW)
    cfg.data.datasets["long"].window_frames = 4
    assert build_datasets(cfg, tiny_tokenizer, window_frames=WINDOW)[0].window_frames == 4


def test_the_export_records_the_window_length_it_was_trained_on():
    from videollama.config import ModelConfigError, VideoLlamaConfig
    from videollama.presets import tiny
    from videollama.train.config import config_from_dict
    from videollama.train.recipe import trained_window_frames

    config = tiny(vocab_size=100)  # max_frames 32

    def cfg(*windows):
        datasets = {f"d{i}": {"type": "videochat_instruct", "window_fps": 1.0, **({"window_frames": w} if w else {})}
                    for i, w in enumerate(windows)}
        return config_from_dict({"model": {"preset": "tiny"}, "data": {"datasets": datasets or {"v": {"type": "webvid"}}}})

    assert trained_window_frames(cfg(8), config) == 8
    assert trained_window_frames(cfg(8, 8), config) == 8
    assert trained_window_frames(cfg(8, 4), config) is None  # two lengths: the model's as it was
    assert trained_window_frames(cfg(), config) is None  # no long videos
    assert trained_window_frames(cfg(32), config) is None  # max_frames: the default, nothing to record
    config.window_frames = 8
    assert trained_window_frames(cfg(None), config) == 8  # a dataset without its own reads the model's
    assert trained_window_frames(cfg(), config) == 8
    with pytest.raises(ModelConfigError, match=r"window_frames must be between 1 and max_frames \(32\), got 33"):
        VideoLlamaConfig.from_dict({**config.to_dict(), "window_frames": 33})


def test_llm_context_raises_the_limit_the_engine_and_the_export_see(tiny_tokenizer, tmp_path):
    from videollama.train.base_model import build_model
    from videollama.train.config import ConfigError, ModelSection

    tok_dir = tmp_path / "tok"
    tiny_tokenizer.save_pretrained(tok_dir)
    model, _ = build_model(ModelSection(preset="tiny", tokenizer_path=str(tok_dir), llm_context=4096),
                           with_audio_vision=False, cache_dir=tmp_path)
    assert model.language_model.config.max_position_embeddings == 4096 == model.config.llm["max_position_embeddings"]
    model.save_pretrained(tmp_path / "out")
    assert json.loads((tmp_path / "out/config.json").read_text())["videollama"]["llm"]["max_position_embeddings"] == 4096
    with pytest.raises(ConfigError, match="llm_context must be >= 1"):
        build_model(ModelSection(preset="tiny", tokenizer_path=str(tok_dir), llm_context=0),
                    with_audio_vision=False, cache_dir=tmp_path)


def test_llm_rope_factor_interpolates_positions_in_the_live_llm_and_the_export(tiny_tokenizer, tmp_path):
    from videollama.model import VideoLlama
    from videollama.train.base_model import build_model
    from videollama.train.config import ConfigError, ModelSection

    tok_dir = tmp_path / "tok"
    tiny_tokenizer.save_pretrained(tok_dir)
    torch.manual_seed(0)
    plain, _ = build_model(ModelSection(preset="tiny", tokenizer_path=str(tok_dir)), with_audio_vision=False,
                           cache_dir=tmp_path)
    scaled, _ = build_model(ModelSection(preset="tiny", tokenizer_path=str(tok_dir), llm_context=2048,
                                         llm_rope_factor=4), with_audio_vision=False, cache_dir=tmp_path)
    scaled.load_state_dict(plain.state_dict())
    ids = torch.arange(3, 40)[None]
    with torch.no_grad():
        # position p under factor 4 is position p / 4 unscaled: the same logits as the plain LLM at positions p / 4
        quarter = plain.language_model(input_ids=ids, position_ids=torch.arange(ids.shape[1])[None] / 4).logits
        at_scaled = scaled.language_model(input_ids=ids).logits
        at_plain = plain.language_model(input_ids=ids).logits
    off_quarter, off_plain = (at_scaled - quarter).abs().max(), (at_scaled - at_plain).abs().max()
    assert off_quarter < 1e-5 and off_plain > 100 * off_quarter
    scaled.save_pretrained(tmp_path / "out")
    reloaded = VideoLlama.from_pretrained(tmp_path / "out")
    assert reloaded.config.llm["rope_parameters"]["factor"] == 4.0
    with torch.no_grad():
        assert torch.allclose(reloaded.language_model(input_ids=ids).logits, at_scaled, atol=1e-5)
    with pytest.raises(ConfigError, match="llm_rope_factor must be >= 1"):
        build_model(ModelSection(preset="tiny", tokenizer_path=str(tok_dir), llm_rope_factor=0.5),
                    with_audio_vision=False, cache_dir=tmp_path)


def test_short_video_sample_is_unchanged(tiny_tokenizer, short_clips):
    """A video that fits one window at the rate gives exactly today's sample."""
    today = dataset(tiny_tokenizer, short_clips / "records.json", short_clips)
    windowed = dataset(tiny_tokenizer, short_clips / "records.json", short_clips, window_fps=1.0, max_windows=3)
    for index in range(2):
        a, b = today[index], windowed[index]
        assert set(a) == set(b)
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
        assert torch.equal(a["frames"], b["frames"]) and a["frames"].shape == (8, 3, SIZE, SIZE)


def test_audio_visual_sample_is_inference_prompt(tiny_tokenizer, model, short_clips):
    """``with_audio`` on a short clip: inference's audio+video preamble, the same frames, and the clip's
    sound as inference reads it; with or without ``window_fps`` (the clip fits one window)."""
    from videollama.media.audio import load_audio

    today = dataset(tiny_tokenizer, short_clips / "records.json", short_clips)
    av = dataset(tiny_tokenizer, short_clips / "records.json", short_clips, with_audio=True)
    av_windows = dataset(tiny_tokenizer, short_clips / "records.json", short_clips, with_audio=True, window_fps=1.0)
    pipe = Pipeline(model, tiny_tokenizer)
    for index in range(2):
        sample, plain = av[index], today[index]
        path = short_clips / av.records[sample["index"]]["video"]
        features = pipe.encode_media(path, MediaOptions(use_audio=True))
        assert features.audio is not None  # inference hears this clip: the prompt below is its audio+video one
        preamble = features.preamble.replace(IMAGE_PLACEHOLDER, IMAGE_PLACEHOLDER * 32).replace(
            AUDIO_PLACEHOLDER, AUDIO_PLACEHOLDER * 8)
        assert "Close your ears, open your eyes" in preamble
        turns = []
        for i, qa in enumerate(av.records[sample["index"]]["QA"]):
            turns += [Turn("human", f"{preamble} {qa['q']}" if i == 0 else qa["q"]), Turn("gpt", qa["a"])]
        expected = encode_conversation(tiny_tokenizer, turns, "llama_2", 4096)
        assert torch.equal(sample["input_ids"], expected.input_ids) and torch.equal(sample["labels"], expected.labels)
        assert torch.equal(sample["frames"], plain["frames"])  # the same 8 frames and crop as without sound
        assert torch.equal(sample["av_audio"], load_audio(path)[None])  # (1, 8, 1, 128, 204)
        again = av_windows[index]
        assert torch.equal(again["input_ids"], sample["input_ids"]) and torch.equal(again["av_audio"], sample["av_audio"])


def test_audio_visual_record_without_sound_is_skipped_with_its_reason(tiny_tokenizer, short_clips, tmp_path):
    """``with_audio``: a clip without an audio stream is a bad record; the dataset moves on and says why."""
    import shutil

    from eval_fixtures import write_video

    silent = write_video(tmp_path / "silent.mp4", "red")
    shutil.copy(short_clips / "0.mp4", tmp_path / "0.mp4")
    records = [{"video": "silent.mp4", "QA": [{"q": "What moves?", "a": "nothing."}]},
               {"video": "0.mp4", "QA": [{"q": "What moves?", "a": "a circle."}]}]
    (tmp_path / "records.json").write_text(json.dumps(records))
    av = dataset(tiny_tokenizer, tmp_path / "records.json", tmp_path, with_audio=True)
    sample = av[0]
    assert sample["index"] == 1 and sample["av_audio"].shape == (1, 8, 1, 128, 204)
    assert av.skipped.failed == 1 and silent.name in av.skipped.reasons[0]
    assert "audio" in av.skipped.reasons[0].lower()
    assert "\n" not in av.skipped.reasons[0]  # one line


def test_audio_visual_batch_goes_to_both_branches_on_the_audio_branch(tiny_tokenizer, model, short_clips):
    """An audio-branch run (frames otherwise for ImageBind's vision path) batches an audio-visual sample's
    frames for the vision branch and its sound for the audio branch; the model takes both."""
    av = dataset(tiny_tokenizer, short_clips / "records.json", short_clips, with_audio=True)
    samples = [av[0], av[1]]
    batch = collate(samples, pad_id=0, media_key="visual_audio_values")
    assert "visual_audio_values" not in batch
    assert batch["pixel_values"].shape == (2, 8, 3, SIZE, SIZE)
    assert torch.equal(batch["audio_values"], torch.cat([s["av_audio"] for s in samples]))  # (2, 8, 1, 128, 204)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       pixel_values=batch["pixel_values"], audio_values=batch["audio_values"]).logits
    assert logits.shape[:2] == batch["input_ids"].shape and torch.isfinite(logits).all()
    with pytest.raises(ValueError, match="audio-visual"):
        collate([samples[0], dataset(tiny_tokenizer, short_clips / "records.json", short_clips)[0]], pad_id=0)


def test_videochat_one_turn_asks_one_drawn_question_after_the_video(tiny_tokenizer, short_clips):
    """``turns: one``: one question-answer pair per draw, opened by the video block; the whole chat otherwise."""
    whole = dataset(tiny_tokenizer, short_clips / "records.json", short_clips)
    one = dataset(tiny_tokenizer, short_clips / "records.json", short_clips, turns="one")
    ids = tiny_tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
    answers = set()
    for seed in range(12):
        sample = one.get(0, seed=seed)
        text = tiny_tokenizer.decode([t for t in sample["input_ids"].tolist() if t != ids])
        answer = " ".join(tiny_tokenizer.decode(
            [t for t, label in zip(sample["input_ids"].tolist(), sample["labels"].tolist()) if label != -100]).split())
        assert int((sample["input_ids"] == ids).sum()) == 32 and answer.count("</s>") == 1
        assert ("What moves?" in text) != ("What colour is it?" in text)  # exactly one question asked
        answers.add(answer)
    assert answers == {"a circle. </s>", "red </s>"}
    full = tiny_tokenizer.decode(whole.get(0, seed=0)["input_ids"].tolist())
    assert "What moves?" in full and "What colour is it?" in full


def test_window_options_are_checked():
    from videollama.train.config import ConfigError, config_from_dict

    def cfg(branch="vision", model_audio=False, dataset_type="videochat_instruct", **spec):
        return {"model": {"preset": "tiny", "with_audio": model_audio}, "run": {"branch": branch},
                "data": {"datasets": {"v": {"type": dataset_type, **spec}}}}

    for config, fragment in ((cfg(max_windows=2), "needs window_fps"), (cfg(window_fps=0), "positive"),
                             (cfg(window_fps=1, max_windows=0), "max_windows must be >= 1"),
                             (cfg(window_frames=8), "window_frames needs window_fps"),
                             (cfg(window_fps=1, window_frames=0), "window_frames must be >= 1"),
                             (cfg(window_fps=1, with_audio=True), "model.with_audio"),
                             (cfg(model_audio=True, dataset_type="webvid", with_audio=True), "videochat_instruct"),
                             (cfg("audio", True, window_fps=1), "or of the audio branch with with_audio")):
        with pytest.raises(ConfigError, match=fragment):
            config_from_dict(config)
    assert config_from_dict(cfg(window_fps=1, max_windows=4)).data.datasets["v"].window_fps == 1.0
    # audio-visual samples on the audio branch: frames go through the vision branch, so no ImageBind vision encoder
    av = config_from_dict(cfg("audio", True, window_fps=1, with_audio=True))
    assert av.data.datasets["v"].with_audio and not av.needs_imagebind_vision
    assert config_from_dict(cfg("audio", True)).needs_imagebind_vision  # the paper's frames for the audio branch


# ------------------------------------------------------------------------------------------------ batches
@pytest.fixture(scope="module")
def mixed_batch(tiny_tokenizer, long_data, short_clips):
    short = dataset(tiny_tokenizer, short_clips / "records.json", short_clips, window_fps=1.0, max_windows=3,
                    with_audio=True)
    long = long_dataset(tiny_tokenizer, long_data, with_audio=True)
    samples = [short[0], long[0], long[1]]
    return samples, collate(samples, pad_id=0)


def test_collate_mixes_one_and_three_window_samples(mixed_batch):
    samples, batch = mixed_batch
    media = batch["pixel_values"]
    assert isinstance(media, list) and len(media) == 1 + 2 * MAX_WINDOWS  # every window its own item
    assert torch.equal(media[0], samples[0]["frames"])
    for k, window in enumerate(samples[1]["frames"] + samples[2]["frames"]):
        assert torch.equal(media[1 + k], window)
    assert batch["audio_values"].shape == (1 + 2 * MAX_WINDOWS, 8, 1, 128, 204)  # the short clip's sound, then the windows'
    assert torch.equal(batch["audio_values"][:1], samples[0]["av_audio"])
    assert torch.equal(batch["audio_values"][1:1 + MAX_WINDOWS], samples[1]["av_audio"])
    lengths = [len(s["input_ids"]) for s in samples]
    assert batch["input_ids"].shape == (3, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths


def test_forward_backward_on_windows(model, mixed_batch):
    from videollama.model import VISION_BRANCH_TRAINABLE
    from videollama.train.recipe import token_loss_sum

    _, batch = mixed_batch
    model.set_trainable(VISION_BRANCH_TRAINABLE)
    model.train()
    try:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       pixel_values=batch["pixel_values"], audio_values=batch["audio_values"], use_cache=False).logits
        loss, tokens = token_loss_sum(logits, batch["labels"])
        assert torch.isfinite(loss) and tokens > 0
        (loss / tokens).backward()
        grads = [p.grad for p in model.frame_position_embedding.parameters()]
        rows = grads[0].abs().sum(1)  # (max_frames,): the windows' frames 0..5 (at least) got a gradient
        assert (rows[:6] > 0).all()
        assert model.video_projection.weight.grad.abs().sum() > 0
        with pytest.raises(UsageError, match="ImageHere"):  # a window short: the placeholders are not filled
            model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"][:-1],
                  audio_values=batch["audio_values"])
    finally:
        model.zero_grad(set_to_none=True)
        model.set_trainable([])
        model.eval()


# ------------------------------------------------------------------------------------------------ long clips
def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "meta.json"}


def test_long_generation_is_deterministic(long_data, tmp_path):
    again = tmp_path / "again"
    generate_long(again, clips=2, seed=0, test_clips=2, settings=SETTINGS, workers=2)
    assert _digest(again) == _digest(long_data)
    other = tmp_path / "other"
    generate_long(other, clips=2, seed=1, test_clips=2, settings=SETTINGS)
    assert (other / "qa/long_test.json").read_text() != (long_data / "qa/long_test.json").read_text()
    with pytest.raises(UsageError, match="overwrite"):
        generate_long(other, clips=1, seed=1, test_clips=0, settings=SETTINGS)


def test_more_training_questions_without_rendering(long_data, tmp_path):
    """--train-questions K: more time-located questions per training clip; --questions-only rewrites them from the
    truth, exactly as a full generation with K writes them, and leaves the held-out questions alone."""
    import shutil

    from videollama.synthav.long import rewrite_training_questions

    full = tmp_path / "full"
    generate_long(full, clips=2, seed=0, test_clips=2, settings=SETTINGS, train_questions=3)
    records = json.loads((full / "long/long_instruct.json").read_text())
    one = json.loads((long_data / "long/long_instruct.json").read_text())
    assert all(len(r["QA"]) > len(o["QA"]) for r, o in zip(records, one, strict=True))
    assert all(len({qa["q"] for qa in r["QA"]}) == len(r["QA"]) for r in records)  # no question twice
    assert (full / "qa/long_test.json").read_text() == (long_data / "qa/long_test.json").read_text()
    copy = tmp_path / "copy"
    shutil.copytree(long_data, copy)
    assert rewrite_training_questions(copy, 3)["train_turns"] == sum(len(r["QA"]) for r in records)
    assert (copy / "long/long_instruct.json").read_text() == (full / "long/long_instruct.json").read_text()
    rewrite_training_questions(copy, 1)  # back to one per type: the original file
    assert (copy / "long/long_instruct.json").read_text() == (long_data / "long/long_instruct.json").read_text()
    with pytest.raises(UsageError, match="train_questions >= 1"):
        rewrite_training_questions(copy, 0)


def test_long_clip_lengths_and_decoded_media(long_data):
    from videollama.media.video import VideoReader

    truth = [json.loads(line) for line in (long_data / "long/truth.jsonl").read_text().splitlines()]
    assert [t["split"] for t in truth] == ["long_instruct"] * 2 + ["long_test"] * 2
    for record in truth:
        clip = LongClip.from_dict(record["clip"])
        assert SETTINGS.min_seconds <= clip.duration < SETTINGS.max_seconds + SETTINGS.max_scene_seconds
        assert all(4 <= d <= 8 and d == int(d) for d in clip.durations)
        assert clip.starts == tuple(np.cumsum([0] + clip.durations[:-1]))
        with VideoReader(long_data / record["media"]) as reader:  # H.264 at 8 fps, every scene's frames
            assert reader.num_frames == round(clip.duration * 8) and abs(reader.duration - clip.duration) < 0.2
        with open(long_data / record["media"], "rb") as f:
            import av

            with av.open(f) as container:
                assert container.streams.video[0].codec_context.name == "h264"
                assert container.streams.audio[0].codec_context.name == "aac"


def test_long_questions_match_the_timeline(long_data):
    truth = {t["media"].split("/")[-1]: LongClip.from_dict(t["clip"])
             for t in map(json.loads, (long_data / "long/truth.jsonl").read_text().splitlines())}
    items = load_long_items(long_data)
    assert {it.qtype for it in items} <= set(LONG_TYPES) and len(items) >= 6
    for item in items:
        clip = truth[item.video.name]
        scenes = list(zip(clip.starts, clip.scenes))
        if item.qtype == "first_time":  # the earliest scene time at which an object of that name is visible
            name = item.question.split("the ")[1].split(" first")[0]
            first = min(start + o.on_frame / 8 for start, scene in scenes for o in scene.objects if o.name == name)
            assert item.truth_seconds == first and float(item.answer) == first
            tolerance = when_tolerance(clip.duration, SETTINGS)
            assert item.tolerance == pytest.approx(tolerance, abs=1e-6)
            assert item.chance == pytest.approx(when_chance(first, tolerance, clip.duration), abs=1e-6)
        elif item.qtype == "screen_at":
            h, m, s = map(int, item.question.rsplit(" at ", 1)[1].rstrip("?").split(":"))
            t = 3600 * h + 60 * m + s
            frame_objects = [o.shape for start, scene in scenes for o in scene.objects
                             if start + o.on_frame / 8 <= t < start + o.off_frame / 8]
            assert frame_objects == [item.answer]
        elif item.qtype == "count":
            name = item.question.split("the ")[1].split(" appear")[0]
            shows = sum(any(o.name == name for o in scene.objects) for scene in clip.scenes)
            assert item.choices[shows - 1] == item.answer and item.chance == pytest.approx(0.2)
        elif item.qtype == "order":
            assert item.answer in item.choices and len(item.choices) == 2
        if item.choices:
            assert item.answer in item.choices and item.chance == pytest.approx(1 / len(item.choices), abs=1e-6)


def test_when_scoring_and_chance():
    item = LongTestItem("x", Path("v.mp4"), "first_time", "When?", "20", (), 0.25, truth_seconds=20.0,
                        tolerance=12.5)
    assert is_right(item, "It first appears at 30 seconds.")
    assert is_right(item, "7.5")
    assert not is_right(item, "33") and not is_right(item, "never")
    closed = LongTestItem("y", Path("v.mp4"), "order", "Which?", "red circle", ("red circle", "blue star"), 0.5)
    assert is_right(closed, "the red circle.") and not is_right(closed, "blue star, then red circle")
    # 99 s at 1 fps, windows of 32 frames, at most 4: 4 windows of 24.75 s -> half a window each side
    assert when_tolerance(99.0, LongSettings()) == pytest.approx(24.75 / 2)
    assert when_chance(50.0, 10.0, 100.0) == pytest.approx(0.2)
    assert when_chance(5.0, 10.0, 100.0) == pytest.approx(0.15)  # clipped at the clip's start
    scores = score_long([item, closed], ["30", "blue star"])
    assert scores["first_time"]["accuracy"] == 1.0 and scores["order"]["accuracy"] == 0.0
    assert scores["time_located"]["items"] == 1 and scores["all"]["accuracy"] == 0.5
    assert scores["all"]["chance"] == pytest.approx(0.375)


# ------------------------------------------------------------------------------------------------ variant
def test_quick_long_variant_trains_and_evaluates(tiny_tokenizer, model, long_data, tmp_path):
    """A fake finished chain run (tiny model + tiny stage-2 data) -> 2 steps of the long variant -> evaluation."""
    from videollama.synthav.chain import run_long_variant
    from videollama.synthav.generate import generate
    from videollama.synthav.long_eval import evaluate_long, format_long_table

    run = tmp_path / "run"
    model.save_pretrained(run / "model", tokenizer=tiny_tokenizer)
    generate(run / "data", clips=2, seed=0, test_clips=0, instruct_clips=2, images=2)
    # both steps read the long clips (3 windows each, with their sound)
    folder = run_long_variant(run, long_data, seed=0, quick=True, extra=["data.datasets.long_instruct.sample_ratio=1e9"])
    assert folder == run / "long_variant/seed_0/export" and (folder / "config.json").is_file()
    metrics = [json.loads(line) for line in (run / "long_variant/seed_0/metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == [0, 1]
    # the YAML's LoRA adapters trained and were merged into the exported LLM; frozen parts stay as they were
    start, trained = (VideoLlama.from_pretrained(d).state_dict() for d in (run / "model", folder))
    assert set(start) == set(trained)  # plain weights: no adapter tensors left in the export
    llm = [k for k in start if k.startswith("language_model.") and k.endswith(("q_proj.weight", "down_proj.weight"))]
    assert llm and all(not torch.equal(start[k], trained[k]) for k in llm)
    assert all(torch.equal(start[k], trained[k]) for k in start if k.startswith(("vision_model.", "image_qformer.", "audio_qformer.")))
    # the YAML's model.llm_context reaches the exported LLM: the engine serving it takes prompts that long
    assert json.loads((folder / "config.json").read_text())["videollama"]["llm"]["max_position_embeddings"] == 2048
    results = evaluate_long(folder, long_data, limit=3,
                            settings=LongSettings(fps=1.0, max_windows=MAX_WINDOWS))
    assert results["reading"]["window_frames"] == WINDOW and results["questions"] == 3
    shorter = evaluate_long(folder, long_data, limit=3, which=("windows",), window_frames=4,
                            settings=LongSettings(fps=1.0, max_windows=2 * MAX_WINDOWS))
    assert shorter["reading"]["window_frames"] == 4 and list(shorter["settings"]) == ["windows"]
    for setting in ("windows", "uniform8"):
        row = results["settings"][setting]["types"]
        assert row["all"]["items"] == 3 and 0 <= row["all"]["accuracy"] <= 1
    assert "windows" in format_long_table(results)


def test_long_seeds_pairs_the_gap_by_seed():
    """scripts/synthav/long_seeds.py: means over seeds, the time-located gap taken seed by seed."""
    from scripts.synthav.long_seeds import format_summary, summarize

    def result(windows: float, uniform: float) -> dict:
        row = lambda acc: {"types": {"time_located": {"items": 3, "accuracy": acc, "chance": 0.25},  # noqa: E731
                                     "all": {"items": 5, "accuracy": acc / 2, "chance": 0.3}}}
        return {"model_dir": "m", "settings": {"windows": row(windows), "uniform8": row(uniform)}}

    summary = summarize([result(0.5, 0.2), result(0.3, 0.2), result(0.4, 0.1)])
    assert summary["gap"]["per_seed"] == [0.3, 0.1, 0.3]
    assert summary["gap"]["mean"] == pytest.approx(0.2333, abs=1e-4) and summary["gap"]["met"]
    assert summary["settings"]["windows"]["time_located"] == {"mean": 0.4, "std": pytest.approx(0.0816, abs=1e-4),
                                                               "chance": 0.25}
    assert summary["settings"]["uniform8"]["all"]["mean"] == pytest.approx(0.0833, abs=1e-4)
    assert "short by" not in format_summary(summary)
    assert "short by 0.10" in format_summary(summarize([result(0.3, 0.2)]))
