"""The vLLM plugin's parts that run without vLLM: prompts and media, against our own Pipeline and loaders.

Prompts: vLLM renders our Jinja chat template (``videollama/vllm/chat_template.py``); the processor then
adds what only the decoded file can tell (``videollama/vllm/prompt.py``). Together they must give exactly
the prompt ``Pipeline`` builds for every media kind, template, branch set and conversation shape.
Media (``videollama/vllm/media.py``): a video from vLLM's bytes and an audio part from vLLM's samples
must give our loaders' tensors bit for bit; a video read in windows must give the windows, frames and
sound clips ``long_video.encode_video_file`` reads. A video whose frames merge travels as its file, with zero
time labels in the prompt whose digits the engine fills in: the checks on the tokenizer that this needs.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoTokenizer

from videollama.config import HF_ARCHITECTURE, HF_MODEL_TYPE, VideoLlamaConfig
from videollama.defaults import SHIPPED_MODEL
from videollama.model import VideoLlamaHFConfig
from videollama.templates import get_template, join_question, media_message, system_for, windowed_video_message
from videollama.vllm.chat_template import chat_template
from videollama.vllm.prompt import VideoFacts, finish_prompt

STAMPS = "The video contains 8 frames sampled at 0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5 seconds. "
LABELS = ("00:00:00-00:00:27", "00:00:27-00:00:54", "00:00:54-00:01:20")  # a video read in three windows
DURATION = 80.0
KINDS = [None, "video", "video+sound", "windows", "windows+sound", "image", "audio"]
HEARD = ("video+sound", "windows+sound", "audio")
VIDEOS = ("video", "video+sound", "windows", "windows+sound")


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(str(SHIPPED_MODEL))


def _pipeline_prompt(template_name: str, kind: str | None, turns, system: str | None, audio_branch: bool) -> str:
    """What ``Pipeline.prompt_text`` renders (media preamble in the first user message)."""
    template = get_template(template_name)
    video, audio, image = kind in VIDEOS, kind in HEARD, kind == "image"
    preamble = media_message(video=video, image=image, audio=audio, timestamps=STAMPS if kind == "video" else "")
    if kind in ("windows", "windows+sound"):  # MediaFeatures.preamble of a windowed video
        preamble = windowed_video_message(list(LABELS), audio=audio, duration=DURATION)
    turns = [(join_question(preamble, turns[0][0]), turns[0][1]), *turns[1:]]
    return template.render(system_for(template, video=video, image=image, audio=audio, system=system,
                                      audio_branch=audio_branch), turns)


def _vllm_prompt(tokenizer, template_name: str, kind: str | None, messages, audio_branch: bool) -> str:
    rendered = tokenizer.apply_chat_template(messages, tokenize=False,
                                             chat_template=chat_template(template_name, audio_branch=audio_branch))
    assert rendered.startswith(tokenizer.bos_token)
    facts = None
    if kind in ("video", "video+sound"):
        facts = VideoFacts(STAMPS, has_audio=kind == "video+sound")
    elif kind in ("windows", "windows+sound"):
        facts = VideoFacts("", has_audio=kind == "windows+sound", windows=LABELS, duration=DURATION)
    return finish_prompt(rendered[len(tokenizer.bos_token):], facts, template_name, audio_branch=audio_branch)


@pytest.mark.parametrize("template_name", ["llama_2", "vicuna_v0"])
@pytest.mark.parametrize("kind, audio_branch", [(kind, branch) for kind in KINDS for branch in (True, False)
                                                 if branch or kind not in HEARD])  # without the branch nothing is heard
@pytest.mark.parametrize("system", [None, "Answer in one word."])
def test_chat_template_and_video_facts_give_the_pipelines_prompt(tokenizer, template_name, kind, system, audio_branch):
    part = "video" if kind in VIDEOS else kind
    first = [{"type": "text", "text": "Is the red star small"}, {"type": "text", "text": "or large?"}]
    if part:
        first.insert(1, {"type": part})  # media may sit anywhere in the message: it goes first
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": first}, {"role": "assistant", "content": " small "},
        {"role": "user", "content": "And its colour?"}, {"role": "user", "content": "One word."}]
    turns = [("Is the red star small\nor large?", "small"), ("And its colour?\nOne word.", None)]
    assert (_vllm_prompt(tokenizer, template_name, kind, messages, audio_branch)
            == _pipeline_prompt(template_name, kind, turns, system, audio_branch))


def test_a_video_with_sound_gets_the_audio_visual_preamble():
    plain = get_template("llama_2").render("", [(join_question(media_message(video=True), "Why?"), None)])
    finished = finish_prompt(plain, VideoFacts(STAMPS, has_audio=True), "llama_2", audio_branch=True)
    assert finished.startswith("[INST] <<SYS>>\n\n<</SYS>>\n\nClose your eyes, open your ears")
    assert finished.index("<AudioHere>") < finished.index("<ImageHere>")
    assert STAMPS not in finished  # the official AV prompt has no sampling sentence


def test_the_chat_template_refuses_two_media_items(tokenizer):
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "audio"}, {"type": "text", "text": "?"}]}]
    with pytest.raises(Exception, match="one media item"):
        tokenizer.apply_chat_template(messages, chat_template=chat_template("llama_2", audio_branch=True), tokenize=False)


def test_finish_prompt_needs_the_video_preamble():
    with pytest.raises(ValueError, match="video preamble"):
        finish_prompt("[INST] hello [/INST]", VideoFacts(STAMPS, has_audio=False), "llama_2", audio_branch=True)


def test_config_json_names_the_architecture_for_vllm(tmp_path):
    config = VideoLlamaConfig.load(SHIPPED_MODEL / "config.json")
    config.save(tmp_path / "config.json")
    document = json.loads((tmp_path / "config.json").read_text())
    assert (document["model_type"], document["architectures"]) == (HF_MODEL_TYPE, [HF_ARCHITECTURE])
    assert VideoLlamaConfig.load(tmp_path / "config.json") == config
    hf = VideoLlamaHFConfig(videollama=document["videollama"])
    assert hf.get_text_config().hidden_size == config.llm_hidden_size
    assert hf.model.num_video_tokens == 32 and hf.model.num_audio_tokens == 8


# ---------------------------------------------------------------------------------------------- media
# vLLM hands the plugin a video as ``MediaWithBytes`` (its decoded frames plus ``original_bytes``); the
# plugin reads only ``original_bytes``, so a plain object carrying the bytes is the same input here.
@pytest.fixture(scope="module")
def clip_with_sound(tmp_path_factory):
    from media_fixtures import make_numbered_video

    return make_numbered_video(tmp_path_factory.mktemp("vllm-clip") / "clip.mp4", 20, fps=10, size=(96, 64),
                               with_audio=True)


def test_a_video_from_vllms_bytes_decodes_as_our_loader_reads_the_file(clip_with_sound):
    from videollama.media import load_audio, load_video, normalize
    from videollama.media.windows import VideoSampling
    from videollama.vllm.media import decode_video

    item = SimpleNamespace(original_bytes=clip_with_sound.read_bytes())
    decoded = decode_video(item, _reading(VideoSampling(frames=6)))
    clip = load_video(clip_with_sound, 6, image_size=112)
    assert decoded.window_frames == [6] and torch.equal(normalize(decoded.frames), clip.frames)
    assert decoded.message_seconds == clip.message_seconds
    assert torch.equal(decoded.audio, load_audio(clip_with_sound)[None])  # one window: the whole file's 8 clips


def test_a_broken_video_names_the_request_item_not_a_server_path():
    from videollama.media import MediaError
    from videollama.media.windows import VideoSampling
    from videollama.vllm.media import decode_video

    with pytest.raises(MediaError) as caught:
        decode_video(SimpleNamespace(original_bytes=b"not a video\n" * 100), _reading(VideoSampling()))
    assert str(caught.value).startswith("video_url: ") and "/" not in str(caught.value)


def test_an_audio_part_through_vllms_samples_and_our_resampler_equals_load_audio(tmp_path):
    import soundfile

    from media_fixtures import make_tone_audio
    from videollama.media import load_audio
    from videollama.vllm.media import SincResampler, decode_audio

    path = make_tone_audio(tmp_path / "tone.wav", 3.0, freq=440, sample_rate=44100, tone_start=0.5, tone_seconds=1.5)
    samples, rate = soundfile.read(str(path), dtype="float32")  # what vLLM's audio decoder returns (mono)
    waveform = SincResampler().resample(samples, orig_sr=rate)
    assert torch.equal(decode_audio(waveform), load_audio(path))


# ---------------------------------------------------------------------------------------------- long videos
class _FrameRecorder:
    """Stands in for ``VideoLlama`` in ``encode_video_file``: records each window's frames as encoded."""

    def __init__(self, window_frames: int) -> None:
        self.config = SimpleNamespace(max_frames=window_frames, window_frames=None)
        self.device, self.dtype = torch.device("cpu"), torch.float32
        self.windows: list[torch.Tensor] = []

    def encode_video(self, frames: torch.Tensor) -> torch.Tensor:
        self.windows.append(frames[0].clone())  # (k, 3, S, S)
        return torch.zeros(1, 32, 4)


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory):
    from media_fixtures import make_video_segment

    return make_video_segment(tmp_path_factory.mktemp("vllm-long") / "long.mp4", 80, fps=5, size=(64, 64))


def _reading(sampling, **limits):
    from videollama.vllm.media import VideoReading

    return VideoReading(sampling, **{"image_size": 112, "window_frames": 32, "with_audio": True, "context": 512,
                                     "max_model_len": 512, "window_positions": lambda heard: 60, **limits})


def test_a_long_video_from_vllms_bytes_gives_the_windows_encode_video_file_reads(long_clip):
    from videollama.long_video import encode_video_file, window_audio_clips
    from videollama.media import normalize
    from videollama.media.windows import VideoSampling
    from videollama.vllm.media import decode_video

    sampling = VideoSampling(frames=None, fps=1.0, max_windows=3)  # 80 frames -> 27 + 27 + 26
    recorder = _FrameRecorder(32)
    timeline = encode_video_file(recorder, long_clip, sampling, image_size=112).timeline
    decoded = decode_video(SimpleNamespace(original_bytes=long_clip.read_bytes()), _reading(sampling))
    assert decoded.frames.dtype == torch.uint8 and decoded.window_frames == [27, 27, 26]
    for sent, encoded in zip(decoded.frames.split(decoded.window_frames), recorder.windows, strict=True):
        assert torch.equal(normalize(sent), encoded)  # the model normalises the uint8 frames as the reader does
    assert decoded.windows == timeline.windows and decoded.duration == timeline.duration
    assert torch.equal(decoded.audio, window_audio_clips(long_clip, timeline.windows))  # (3, 8, 1, 128, 204)


def test_shorter_windows_from_vllms_bytes_equal_encode_video_files(long_clip):
    from videollama.long_video import encode_video_file
    from videollama.media import normalize
    from videollama.media.windows import VideoSampling
    from videollama.vllm.media import decode_video

    sampling = VideoSampling(frames=None, fps=0.25, window_frames=8)  # 20 frames -> 7 + 7 + 6
    recorder = _FrameRecorder(32)
    timeline = encode_video_file(recorder, long_clip, sampling, image_size=112).timeline
    decoded = decode_video(SimpleNamespace(original_bytes=long_clip.read_bytes()), _reading(sampling, window_frames=8))
    assert decoded.window_frames == [7, 7, 6] and decoded.windows == timeline.windows
    for sent, encoded in zip(decoded.frames.split(decoded.window_frames), recorder.windows, strict=True):
        assert torch.equal(normalize(sent), encoded)


def test_frames_that_merge_travel_as_the_file_after_every_sampled_frame_decoded_once(long_clip, monkeypatch):
    from videollama.media import VideoReader
    from videollama.media.windows import VideoSampling
    from videollama.vllm.media import decode_video, merge_from_row, merge_row

    read = []
    real_read = VideoReader.read
    monkeypatch.setattr(VideoReader, "read", lambda self, positions: read.append(list(positions)) or
                        real_read(self, positions))
    sampling = VideoSampling(frames=None, fps=1.0, max_windows=2)  # 80 frames into 64: they merge
    data = long_clip.read_bytes()
    decoded = decode_video(SimpleNamespace(original_bytes=data), _reading(sampling))
    assert sum(map(len, read)) == 80  # every sampled frame decoded here, so the engine cannot fail on one
    assert decoded.frames.shape[0] == 0 and decoded.audio is None and decoded.duration == pytest.approx(80.0, abs=0.2)
    assert decoded.merged.data == data and decoded.merged.heard
    assert len(decoded.windows) == 2  # the budget: the labels are known only after merging
    expected = VideoSampling(frames=None, fps=1.0, max_windows=2, window_frames=32)
    assert decoded.merged.sampling == expected
    assert merge_from_row(merge_row(decoded.merged)) == (expected, True)
    assert merge_from_row(merge_row(None)) is None


@pytest.mark.parametrize("limits, fragment", [
    ({"sampling": {"max_windows": 2}, "can_merge": False}, "do not fit 2 windows of 32 frames (max_windows)"),
    ({"context": 256, "can_merge": False}, "do not fit 2 windows of 32 frames (max_windows, by default"),  # 128 // 60
    ({"max_model_len": 150}, "3 windows of video take 180 prompt positions, over max_model_len (150)"),
    ({"sampling": {"max_windows": 3, "window_frames": 8}, "max_model_len": 150},
     "3 windows of video take 180 prompt positions"),  # merged: the budget's windows count
], ids=["max_windows", "default budget", "max_model_len", "merged over max_model_len"])
def test_a_long_video_the_plugin_cannot_serve_as_pipeline_is_refused_before_decoding(long_clip, monkeypatch,
                                                                                      limits, fragment):
    from videollama.media import VideoReader
    from videollama.media.windows import VideoSampling
    from videollama.vllm.media import decode_video

    monkeypatch.setattr(VideoReader, "read", lambda *_: pytest.fail("decoded frames before refusing"))
    given = limits.pop("sampling", {})
    sampling = VideoSampling(frames=None, fps=1.0, **given)
    reading = _reading(sampling, **limits, **({"window_frames": given["window_frames"]} if "window_frames" in given else {}))
    with pytest.raises(ValueError) as caught:
        decode_video(SimpleNamespace(original_bytes=long_clip.read_bytes()), reading)
    assert str(caught.value).startswith("mm_processor_kwargs: ") and fragment in str(caught.value)


# ---------------------------------------------------------------------------------------------- merged labels
class _DigitPairs:
    """A tokenizer that spells "00" as one token (as BPE vocabularies do), around the shipped one."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.pair = tokenizer, len(tokenizer)
        self.zero = tokenizer.convert_tokens_to_ids("0")

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)

    def __call__(self, text, **kwargs):
        ids, out = self.tokenizer(text, **kwargs)["input_ids"], []
        for token in ids:
            if token == self.zero and out and out[-1] == self.zero:
                out[-1] = self.pair
            else:
                out.append(token)
        return {"input_ids": out}


def _processor(tokenizer):
    from videollama.processor import Processor

    return Processor(tokenizer, VideoLlamaConfig.load(SHIPPED_MODEL / "config.json"))


def test_the_shipped_tokenizer_spells_every_label_digit_as_one_token(tokenizer):
    from videollama.vllm.prompt import label_digit_ids

    ids = label_digit_ids(_processor(tokenizer))
    assert ids is not None and len(set(ids)) == 10
    assert [tokenizer.decode([token]) for token in ids] == list("0123456789")


@pytest.mark.parametrize("heard", [False, True], ids=["silent", "with sound"])
def test_a_merged_preamble_with_the_real_digits_at_its_embedded_places_is_the_pipelines(tokenizer, heard):
    from videollama.vllm.prompt import ZERO_LABEL, label_digit_ids, merged_video_span

    processor = _processor(tokenizer)
    digit_ids = label_digit_ids(processor)
    merged = VideoFacts("", heard, windows=(ZERO_LABEL,) * 3, duration=DURATION, merged=True)
    full, is_embed = merged_video_span(processor, merged, digit_ids)
    media = {processor.image_token_id, processor.audio_token_id}
    assert int(is_embed.sum()) == sum(t in media for t in full) + (2 if heard else 1) * 3 * 12
    # what the engine does: the real labels' digits, in prompt order, at the embedded places that are not media
    digits = [int(c) for label in LABELS for c in label if c.isdigit()] * (2 if heard else 1)
    filled, it = list(full), iter(digits)
    for i, embedded in enumerate(is_embed.tolist()):
        if embedded and full[i] not in media:
            filled[i] = digit_ids[next(it)]
    assert next(it, None) is None
    zeros = processor.tokenize(merged.preamble, add_bos=False)
    start = next(i for i in range(len(zeros)) if zeros[i:i + len(full)] == full)
    real = processor.tokenize(VideoFacts("", heard, windows=LABELS, duration=DURATION).preamble, add_bos=False)
    assert len(real) == len(zeros) and real[start:start + len(full)] == filled
    assert real[:start] == zeros[:start] and real[start + len(full):] == zeros[start + len(full):]
    assert tokenizer.decode(real[:start]).rstrip().endswith(("that:", "<Video>"))  # the span starts at a label digit


def test_a_tokenizer_that_joins_digits_cannot_have_labels_filled_in(tokenizer):
    from videollama.vllm.prompt import ZERO_LABEL, label_digit_ids, merged_video_span

    processor = _processor(_DigitPairs(tokenizer))
    assert label_digit_ids(processor) is None
    with pytest.raises(ValueError, match="cannot merge"):
        merged_video_span(processor, VideoFacts("", False, windows=(ZERO_LABEL,) * 2, duration=DURATION, merged=True),
                          None)
