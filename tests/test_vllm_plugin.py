"""Video-LLaMA served by ``vllm serve`` through our plugin (videollama/vllm/), against our own Pipeline.

One ``vllm serve`` of the shipped SynthAV model (fp32, CPU) answers every test here through the openai
client. Greedy answers must equal ``Pipeline``'s token for token, with the same prompt ids and the same
first-token logits (to 1e-4; the server returns raw logits for the whole vocabulary), for a video, a
video with sound (both branches), an image, an audio clip, and an 80 s video read at one frame per second
in three time-labelled windows (``mm_processor_kwargs`` ``fps`` / ``max_windows``), silent and with sound,
and the same video merged into two windows (read by the engine; only the prompt's label digits differ).
vLLM runs from its own venv (``make vllm``); these tests are skipped, with the reason, only when that venv
cannot be built.
"""

from __future__ import annotations

import base64
import json
import shutil

import numpy as np
import pytest
import torch
from media_fixtures import make_numbered_video, make_tone_audio, make_video_segment
from PIL import Image
from vllm_helpers import vllm_python, vllm_server

from videollama import GenerationConfig, MediaOptions, Pipeline
from videollama.defaults import SHIPPED_MODEL

pytestmark = pytest.mark.slow

SERVED_NAME = "synthav"
QUESTION = "What is shown and heard?"
MAX_NEW_TOKENS = 12
NUM_FRAMES = 8
SERVER_FRAMES = 6  # the server's --mm-processor-kwargs default, for requests that name no frame count or rate
LOGIT_TOLERANCE = 1e-4
EXAMPLES = SHIPPED_MODEL.parent / "examples"
EXAMPLE_CLIP = EXAMPLES / json.loads((EXAMPLES / "examples.json").read_text())["examples"][0]["file"]  # 4 s, with sound
CASES = {"video": ("video.mp4", "video_url"), "video_audio": ("av.mp4", "video_url"),
         "image": ("image.png", "image_url"), "audio": ("audio.wav", "audio_url"),
         "audio_44k": ("audio44k.wav", "audio_url"),  # resampled to 16 kHz: our resampler on vLLM's samples
         "long_video": ("long.mp4", "video_url"), "long_video_audio": ("long_av.mp4", "video_url")}  # 80 s
SHORT_CASES = [case for case in CASES if not case.startswith("long")]
HEARD = ("video_audio", "audio", "audio_44k", "long_video_audio")
# 80 frames in 3 windows (27 + 27 + 26): the default budget with sound on this 512-position model, given here
LONG_KWARGS = {"fps": 1, "max_windows": 3}
MERGED_KWARGS = {"fps": 1, "max_windows": 2}  # 80 frames merged into 2 windows of 32
ZERO_LABEL = "00:00:00-00:00:00"  # a merged video's labels in vLLM's prompt (the engine embeds the real digits)


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("vllm-media")
    make_numbered_video(root / "video.mp4", 24, fps=8, size=(112, 112))  # no sound track
    shutil.copy(EXAMPLE_CLIP, root / "av.mp4")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(root / "image.png")
    make_tone_audio(root / "audio.wav", 5.0, freq=660)  # 16 kHz mono: vLLM's decoder gives our samples
    make_tone_audio(root / "audio44k.wav", 5.0, freq=440, sample_rate=44100, tone_start=1.0, tone_seconds=2.0)
    make_numbered_video(root / "long.mp4", 160, fps=2, size=(64, 64))  # 80 s, no sound track
    make_video_segment(root / "long_av.mp4", 80, fps=5, size=(64, 64))  # 80 s with a tone whose loudness steps
    return root


@pytest.fixture(scope="module")
def server_log(tmp_path_factory):
    return tmp_path_factory.mktemp("vllm-log") / "serve.log"


@pytest.fixture(scope="module")
def server(media_dir, server_log):
    python, why = vllm_python()
    if python is None:
        pytest.skip(f"vLLM venv unavailable: {why}")
    args = ["--served-model-name", SERVED_NAME, "--dtype", "float32", "--max-model-len", "512", "--enforce-eager",
            "--max-num-seqs", "8", "--allowed-local-media-path", str(media_dir), "--logprobs-mode", "raw_logits",
            "--max-logprobs", "-1", "--trust-request-mm-kwargs", "--limit-mm-per-prompt", '{"video": 1, "image": 1, "audio": 1}',
            "--mm-processor-kwargs", json.dumps({"num_frames": SERVER_FRAMES})]
    with vllm_server(python, SHIPPED_MODEL, *args, log_path=server_log) as base:
        yield base


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def pipeline():
    return Pipeline.from_pretrained(SHIPPED_MODEL, dtype=torch.float32)


def _message(media_dir, case: str, text: str = QUESTION) -> list[dict]:
    name, part = CASES[case]
    return [{"role": "user", "content": [{"type": part, part: {"url": (media_dir / name).as_uri()}},
                                         {"type": "text", "text": text}]}]


def _reference(pipeline, path, options: MediaOptions = MediaOptions(num_frames=NUM_FRAMES)):
    """Pipeline's prompt ids, first-token logits and greedy ids for one media file."""
    media = pipeline.encode_media(path, options)
    ids = pipeline.prompt_ids(media, [(QUESTION, None)])
    with torch.inference_mode():
        embeds = pipeline.model.embed_inputs(torch.tensor([ids]), media.video, media.audio)
        logits = pipeline.model.language_model(inputs_embeds=embeds).logits[0, -1]
    request = pipeline.request(media, [(QUESTION, None)], GenerationConfig(do_sample=False, max_new_tokens=MAX_NEW_TOKENS))
    return media, ids, logits.numpy(), pipeline.engine.generate_all([request])[0]


def _assert_same_prompt(served: list[int], ids: list[int], media, tokenizer) -> None:
    """vLLM's prompt ids are Pipeline's; for merged frames, but with zeros for the windows' label digits."""
    if not media.timeline or not media.timeline.merged_frames:
        assert served == ids
        return
    zero = tokenizer.convert_tokens_to_ids("0")
    differ = [i for i, (a, b) in enumerate(zip(served, ids, strict=True)) if a != b]
    assert differ and all(served[i] == zero for i in differ)
    labels = [w.label for w in media.timeline.windows]
    copies = 2 if media.audio is not None else 1
    assert len(differ) == copies * sum(c not in "0:-" for label in labels for c in label)
    served_text, text = tokenizer.decode(served), tokenizer.decode(ids)
    assert served_text.count(ZERO_LABEL) == copies * len(labels)
    assert all(text.count(label) == copies for label in labels)


def _ask_and_compare(client, pipeline, media_dir, case: str, mm_kwargs: dict):
    """The served greedy answer, prompt ids and first-token logits equal Pipeline's with the same options."""
    media, ids, logits, generated = _reference(pipeline, media_dir / CASES[case][0], MediaOptions(**mm_kwargs))
    assert (media.audio is not None) == (case in HEARD)
    response = client.chat.completions.create(
        model=SERVED_NAME, messages=_message(media_dir, case), temperature=0.0, max_tokens=MAX_NEW_TOKENS,
        logprobs=True, top_logprobs=-1,
        extra_body={"return_token_ids": True, "return_tokens_as_token_ids": True, "mm_processor_kwargs": mm_kwargs})
    choice = response.choices[0]
    _assert_same_prompt(response.model_extra["prompt_token_ids"], ids, media, pipeline.tokenizer)
    assert choice.model_extra["token_ids"] == generated
    first = {int(entry.token.removeprefix("token_id:")): entry.logprob for entry in choice.logprobs.content[0].top_logprobs}
    assert sorted(first) == list(range(len(logits)))  # the whole vocabulary came back
    served = np.array([first[i] for i in range(len(logits))])
    assert np.abs(served - logits).max() < LOGIT_TOLERANCE
    return media


@pytest.mark.parametrize("case", SHORT_CASES)
def test_greedy_answer_prompt_and_first_logits_equal_pipeline(case, client, pipeline, media_dir):
    _ask_and_compare(client, pipeline, media_dir, case, {"num_frames": NUM_FRAMES})


@pytest.mark.parametrize("case", ["long_video", "long_video_audio"])
def test_a_long_video_in_time_labelled_windows_equals_pipeline(case, client, pipeline, media_dir):
    media = _ask_and_compare(client, pipeline, media_dir, case, LONG_KWARGS)
    assert media.windowed and media.windows == 3
    assert [w.label for w in media.timeline.windows] == ["00:00:00-00:00:27", "00:00:27-00:00:54", "00:00:54-00:01:20"]


@pytest.mark.parametrize("case", ["long_video", "long_video_audio"])
def test_frames_merged_to_fit_the_budget_are_read_by_the_engine_as_pipeline_reads_them(case, client, pipeline,
                                                                                      media_dir):
    media = _ask_and_compare(client, pipeline, media_dir, case, MERGED_KWARGS)
    assert media.windows == 2 and media.timeline.merged_frames == 80 - 64
    assert [w.label for w in media.timeline.windows] != [ZERO_LABEL] * 2  # the real labels, which the engine embeds


def test_shorter_windows_equal_pipeline(client, pipeline, media_dir):
    media = _ask_and_compare(client, pipeline, media_dir, "long_video_audio", {"fps": 0.25, "window_frames": 8})
    assert media.windows == 3 and [len(w.frame_times) for w in media.timeline.windows] == [7, 7, 6]


@pytest.mark.parametrize("case, mm_kwargs", [("video", {"num_frames": NUM_FRAMES}),
                                             ("video_audio", {"num_frames": NUM_FRAMES}),
                                             ("long_video_audio", {"fps": 1}),  # default budget: 3 windows
                                             ("long_video_audio", MERGED_KWARGS)],
                         ids=["video", "video_audio", "long_video_audio", "merged"])
def test_a_repeated_video_is_served_from_vllms_processor_cache_with_the_same_prompt(case, mm_kwargs, client, pipeline,
                                                                                    media_dir):
    media, ids, _, generated = _reference(pipeline, media_dir / CASES[case][0], MediaOptions(**mm_kwargs))
    for _ in range(2):  # the first call may already hit the cache; the second does (the labels come from it)
        response = client.chat.completions.create(
            model=SERVED_NAME, messages=_message(media_dir, case), temperature=0.0, max_tokens=MAX_NEW_TOKENS,
            extra_body={"return_token_ids": True, "mm_processor_kwargs": mm_kwargs})
        _assert_same_prompt(response.model_extra["prompt_token_ids"], ids, media, pipeline.tokenizer)
        assert response.choices[0].model_extra["token_ids"] == generated


def test_video_with_sound_streams_the_pipelines_answer_from_both_branches(client, pipeline, media_dir):
    options = MediaOptions(num_frames=SERVER_FRAMES)  # the request names no frame count: the server's default
    media = pipeline.encode_media(media_dir / "av.mp4", options)
    assert media.audio is not None and media.video is not None
    expected = pipeline.chat(media_dir / "av.mp4", options=options).ask(
        QUESTION, GenerationConfig(do_sample=False, max_new_tokens=MAX_NEW_TOKENS))
    data = base64.b64encode((media_dir / "av.mp4").read_bytes()).decode()
    messages = [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": f"data:video/mp4;base64,{data}"}},
                                             {"type": "text", "text": QUESTION}]}]
    stream = client.chat.completions.create(model=SERVED_NAME, messages=messages, temperature=0.0,
                                            max_tokens=MAX_NEW_TOKENS, stream=True)
    pieces = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
    assert len(pieces) >= 2  # streamed, not one body
    assert "".join(pieces).strip() == expected


def test_frame_count_comes_from_mm_processor_kwargs_over_the_servers_default(client, pipeline, media_dir):
    for mm_kwargs, frames in (({"num_frames": 4}, 4), ({}, SERVER_FRAMES)):
        _, ids, _, _ = _reference(pipeline, media_dir / "video.mp4", MediaOptions(num_frames=frames))
        response = client.chat.completions.create(
            model=SERVED_NAME, messages=_message(media_dir, "video"), temperature=0.0, max_tokens=1,
            extra_body={"return_token_ids": True, "mm_processor_kwargs": mm_kwargs})
        assert response.model_extra["prompt_token_ids"] == ids
        assert f"The video contains {frames} frames" in pipeline.tokenizer.decode(ids)


def _bad_content(problem: str, media_dir) -> list[dict]:
    video = {"type": "video_url", "video_url": {"url": (media_dir / "video.mp4").as_uri()}}
    (media_dir / "not-a-video.mp4").write_bytes(b"plain text, not a media file\n" * 64)
    return {
        "two videos": [video, video],
        "unknown media type": [{"type": "hologram_url", "hologram_url": {"url": (media_dir / "video.mp4").as_uri()}}],
        "file outside the allowed path": [{"type": "video_url", "video_url": {"url": "file:///etc/hostname"}}],
        "not a media file": [{"type": "video_url", "video_url": {"url": (media_dir / "not-a-video.mp4").as_uri()}}],
    }[problem]


@pytest.mark.parametrize("problem", ["two videos", "unknown media type", "file outside the allowed path",
                                     "not a media file"])
def test_bad_requests_get_a_4xx(problem, client, media_dir):
    import openai

    content = [*_bad_content(problem, media_dir), {"type": "text", "text": "?"}]
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model=SERVED_NAME, max_tokens=1, messages=[{"role": "user", "content": content}])
    assert 400 <= caught.value.status_code < 500, f"{problem}: {caught.value}"
    assert "videollama-vllm-" not in str(caught.value)  # never a server-side temporary path


@pytest.mark.parametrize("case, mm_kwargs, named", [
    ("video", {"fps": 0}, "mm_processor_kwargs.fps"),
    ("video", {"fps": -1.5}, "mm_processor_kwargs.fps"),
    ("video", {"fps": "fast"}, "mm_processor_kwargs.fps"),
    ("video", {"num_frames": 0}, "mm_processor_kwargs.num_frames"),
    ("video", {"num_frames": 100_001}, "mm_processor_kwargs.num_frames"),
    ("video", {"fps": 1, "max_frames": 0}, "mm_processor_kwargs.max_frames"),
    ("video", {"fps": 1, "max_windows": 0}, "mm_processor_kwargs.max_windows"),
    ("video", {"num_frames": 8, "fps": 1}, "not both"),
    ("long_video", {"fps": 1, "window_frames": 4, "max_windows": 20}, "over max_model_len"),  # 20 windows of 51
    ("video", {"num_frames": 40, "window_frames": 0}, "mm_processor_kwargs.window_frames"),
    ("video", {"num_frames": 40, "window_frames": 33}, "mm_processor_kwargs.window_frames"),
], ids=["fps 0", "fps negative", "fps text", "num_frames 0", "num_frames over 100,000", "max_frames 0",
        "max_windows 0", "num_frames and fps", "windows over max_model_len", "window_frames 0", "window_frames over max_frames"])
def test_bad_sampling_is_refused_with_a_400_naming_it(case, mm_kwargs, named, client, media_dir):
    import openai

    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model=SERVED_NAME, messages=_message(media_dir, case), max_tokens=1,
                                       extra_body={"mm_processor_kwargs": mm_kwargs})
    assert caught.value.status_code == 400
    assert named in str(caught.value)


def test_startup_registered_the_plugin_and_warmed_up_cleanly(server, server_log):
    log = server_log.read_text()
    assert "Loading chat template fallback" in log  # our chat template, registered by the plugin
    assert "warmup failed" not in log  # vLLM's processor warm-up (one item of each modality) went through
