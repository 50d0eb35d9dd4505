"""Long videos: sampling beyond 32 frames, windows with time labels, per-window audio, frame merging,
the placeholder checks, the CLI's bad-input errors and the API's extension fields.

The bounded-memory test (peak RSS of a long clip vs a short one) is ``test_long_video_memory.py``.
"""

from __future__ import annotations

import httpx
import pytest
import torch

from media_fixtures import make_long_video, make_numbered_video, read_frame_number
from serve_helpers import running_server
from videollama.cli import DEFAULT_FPS_MAX_FRAMES as CLI_FPS_MAX_FRAMES
from videollama.cli import main
from videollama.errors import UsageError
from videollama.frame_merge import FrameMemory, MergedFrame
from videollama.inference import MediaOptions
from videollama.media import load_audio, load_video
from videollama.media.audio import audio_to_clips, load_waveform
from videollama.media.audio_span import AudioSpanReader
from videollama.media.transforms import denormalize
from videollama.media.video import VideoReader, sample_indices
from videollama.media.windows import (
    DEFAULT_FPS_MAX_FRAMES, MAX_SAMPLED_FRAMES, VideoSampling, frames_at_rate, split_windows, time_label,
)
from videollama.serve.api import create_app
from videollama.serve.settings import ServeSettings
from videollama.tokenizer import AUDIO_PLACEHOLDER, IMAGE_PLACEHOLDER

QUESTION = "What happens?"


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("long")
    return {
        "numbered": make_numbered_video(root / "numbered.mp4", 80, fps=8, size=(96, 64), with_audio=True, gop=16),
        "minutes": make_long_video(root / "minutes.mp4", 120, fps=5, size=(32, 32)),
    }


# ----------------------------------------------------------------------------------- sampling and labels
def test_frames_at_rate_picks_one_frame_per_period():
    assert frames_at_rate(100, 25.0, 1.0) == [0, 25, 50, 75]
    assert frames_at_rate(101, 25.0, 1.0) == [0, 25, 50, 75, 100]
    assert frames_at_rate(10, 5.0, 2.0) == [0, 2, 5, 8]  # round(k * 2.5)
    assert frames_at_rate(6, 5.0, 50.0) == [0, 1, 2, 3, 4, 5]  # above the video's rate: every frame once


def test_rate_past_its_cap_spreads_the_cap_uniformly():
    sampling = VideoSampling(frames=None, fps=1.0, max_frames=10)
    assert sampling.frame_positions(25 * 100, 25.0) == list(range(0, 2500, 250))


def test_split_windows_is_balanced_and_ordered():
    assert [len(w) for w in split_windows(list(range(33)), 32)] == [17, 16]
    assert [len(w) for w in split_windows(list(range(64)), 32)] == [32, 32]
    assert [len(w) for w in split_windows(list(range(100)), 32)] == [25, 25, 25, 25]
    windows = split_windows(list(range(70)), 32)
    assert sum(windows, []) == list(range(70)) and max(map(len, windows)) <= 32


def test_time_labels():
    assert time_label(64.0, 128.0) == "00:01:04-00:02:08"
    assert time_label(3599.5, 3725.2) == "00:59:59-01:02:06"
    assert time_label(0, 0.4) == "00:00:00-00:00:01"


@pytest.mark.parametrize("kwargs, fragment", [
    ({"frames": 0}, "frames must be between 1 and 100,000, got 0"),
    ({"frames": -3}, "got -3"),
    ({"frames": MAX_SAMPLED_FRAMES + 1}, "frames must be between"),
    ({"frames": None, "fps": 0.0}, "fps must be a positive number"),
    ({"frames": None, "fps": -1.0}, "fps must be a positive number"),
    ({"frames": None, "fps": float("inf")}, "fps must be a positive number"),
    ({"frames": None, "fps": 1.0, "max_frames": 0}, "max_frames must be between"),
    ({"frames": None, "fps": 1.0, "max_frames": 200_000}, "max_frames must be between"),
    ({"frames": 8, "max_windows": 0}, "max_windows must be >= 1"),
    ({"frames": 8, "window_frames": 0}, "window_frames must be >= 1"),
    ({"frames": 8, "fps": 1.0}, "either frames"),
])
def test_sampling_refuses_bad_numbers(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(")):
        VideoSampling(**kwargs)


def test_cli_default_cap_matches_the_library():
    assert CLI_FPS_MAX_FRAMES == DEFAULT_FPS_MAX_FRAMES


@pytest.mark.parametrize("flags, fragment", [
    (["--frames", "0"], "frames must be between 1 and 100,000, got 0"),
    (["--frames", "-2"], "got -2"),
    (["--frames", "100001"], "frames must be between"),
    (["--fps", "0"], "fps must be a positive number"),
    (["--fps", "-0.5"], "fps must be a positive number"),
    (["--fps", "1", "--max-frames", "1000000"], "max_frames must be between"),
    (["--fps", "1", "--frames", "8"], "not both"),
    (["--max-windows", "0"], "max_windows must be >= 1"),
    (["--window-frames", "-1"], "window_frames must be >= 1"),
])
def test_cli_bad_sampling_is_one_line_exit_2(flags, fragment, capsys, tmp_path):
    # the numbers are checked before anything is loaded: the media file need not even exist
    assert main(["chat", str(tmp_path / "missing.mp4"), "q", "--model", "tiny", *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and fragment in err


# ----------------------------------------------------------------------------------- up to 32 frames: as today
@pytest.mark.parametrize("frames", [8, 32])
def test_up_to_max_frames_is_exactly_the_official_path(tiny_pipeline, clips, frames):
    path = clips["numbered"]
    model = tiny_pipeline.model
    features = tiny_pipeline.encode_media(path, MediaOptions(num_frames=frames))
    clip = load_video(path, frames)
    assert not features.windowed and features.windows == 1
    assert torch.equal(features.video, model.encode_video(clip.frames[None]))
    assert torch.equal(features.audio, model.encode_audio(load_audio(path)[None]))
    assert features.timestamps == clip.timestamp_message()
    prompt = tiny_pipeline.prompt_text(features, [(QUESTION, None)])
    assert prompt.count(IMAGE_PLACEHOLDER) == 1 and clip.timestamp_message() not in prompt  # AV message: no sentence
    silent = tiny_pipeline.encode_media(path, MediaOptions(num_frames=frames, use_audio=False))
    assert clip.timestamp_message() in tiny_pipeline.prompt_text(silent, [(QUESTION, None)])
    assert features.timeline.frame_times == clip.timestamps


def test_a_rate_within_max_frames_is_one_official_clip(tiny_pipeline, clips):
    path = clips["numbered"]  # 10 s at 8 fps: 2 fps gives 20 frames
    features = tiny_pipeline.encode_media(path, MediaOptions(fps=2.0, use_audio=False))
    positions = frames_at_rate(80, 8.0, 2.0)
    with VideoReader(path) as reader:
        clip = reader.read(positions)
    assert len(positions) == 20 and features.windows == 1 and not features.windowed
    assert torch.equal(features.video, tiny_pipeline.model.encode_video(clip.frames[None]))
    assert features.timestamps == clip.timestamp_message()


# ----------------------------------------------------------------------------------- windows
def test_windows_hold_their_own_frames_tokens_and_labels(tiny_pipeline, clips):
    path = clips["numbered"]  # 80 frames; 40 sampled -> windows of 20 + 20
    model, processor = tiny_pipeline.model, tiny_pipeline.processor
    features = tiny_pipeline.encode_media(path, MediaOptions(num_frames=40))
    positions = list(range(0, 80, 2))
    assert features.windowed and features.video.shape == (2, model.config.num_video_tokens, features.video.shape[-1])
    for row, window in enumerate(split_windows(positions, model.config.max_frames)):
        frames = load_video_positions(path, window)
        assert [read_frame_number(f) for f in denormalize(frames)] == window
        torch.testing.assert_close(features.video[row], model.encode_video(frames[None])[0])  # positions 0..k-1
    timeline = features.timeline
    assert [(w.start, w.end) for w in timeline.windows] == [(0.0, 5.0), (5.0, 10.0)]
    assert [w.label for w in timeline.windows] == ["00:00:00-00:00:05", "00:00:05-00:00:10"]
    assert timeline.frame_times == [p / 8 for p in positions]
    # audio: 8 clips placed by the official rule inside each window's span
    waveform = load_waveform(path)
    for row, (start, end) in enumerate([(0.0, 5.0), (5.0, 10.0)]):
        clips_of_span = audio_to_clips(waveform[:, int(start * 16000):int(end * 16000)])
        torch.testing.assert_close(features.audio[row], model.encode_audio(clips_of_span[None])[0],
                                   atol=1e-5, rtol=1e-4)
    prompt = tiny_pipeline.prompt_text(features, [(QUESTION, None)])
    assert "00:00:00-00:00:05 <AudioHere> 00:00:05-00:00:10 <AudioHere>" in prompt
    assert "<Video>00:00:00-00:00:05 <ImageHere> 00:00:05-00:00:10 <ImageHere></Video>" in prompt
    ids = tiny_pipeline.prompt_ids(features, [(QUESTION, None)])
    assert ids.count(processor.image_token_id) == 2 * model.config.num_video_tokens
    assert ids.count(processor.audio_token_id) == 2 * model.config.num_audio_tokens
    silent = tiny_pipeline.encode_media(path, MediaOptions(num_frames=40, use_audio=False))
    assert "The video lasts 10.0 seconds and is shown in 2 windows" in tiny_pipeline.prompt_text(silent, [(QUESTION, None)])


def test_shorter_windows_hold_window_frames_each(tiny_pipeline, clips, monkeypatch):
    path = clips["numbered"]  # 80 frames; 20 sampled in windows of at most 8 -> 7 + 7 + 6
    model = tiny_pipeline.model
    features = tiny_pipeline.encode_media(path, MediaOptions(num_frames=20, window_frames=8, use_audio=False))
    positions = sample_indices(80, 20)
    windows = split_windows(positions, 8)
    assert [len(w) for w in windows] == [7, 7, 6] and features.windowed and features.windows == 3
    for row, window in enumerate(windows):
        frames = load_video_positions(path, window)
        torch.testing.assert_close(features.video[row], model.encode_video(frames[None])[0])
    assert [len(w.frame_times) for w in features.timeline.windows] == [7, 7, 6]
    assert features.timeline.windows[1].start == positions[7] / 8  # the second window starts at its first frame
    # with a budget, the merged frames are cut into windows of window_frames too: 20 frames -> 2 windows of 8
    merged = tiny_pipeline.encode_media(path, MediaOptions(num_frames=20, window_frames=8, max_windows=2,
                                                           use_audio=False))
    assert merged.windows == 2 and merged.timeline.merged_frames == 4
    assert [len(w.frame_times) for w in merged.timeline.windows] == [8, 8]
    # up to window_frames frames: one official clip, as without the option
    one = tiny_pipeline.encode_media(path, MediaOptions(num_frames=8, window_frames=8, use_audio=False))
    assert not one.windowed and torch.equal(one.video, tiny_pipeline.encode_media(
        path, MediaOptions(num_frames=8, use_audio=False)).video)
    # a model trained on shorter windows (its config's window_frames) is read in them unless a request says otherwise
    monkeypatch.setattr(model.config, "window_frames", 8)
    monkeypatch.setattr(tiny_pipeline, "_cache", type(tiny_pipeline._cache)())
    own = tiny_pipeline.encode_media(path, MediaOptions(num_frames=20, use_audio=False))
    assert own.windows == 3 and torch.equal(own.video, features.video)
    assert tiny_pipeline.encode_media(path, MediaOptions(num_frames=20, window_frames=32, use_audio=False)).windows == 1
    with pytest.raises(UsageError, match=rf"window_frames must be between 1 and the model's max_frames "
                                         rf"\({model.config.max_frames}\), got {model.config.max_frames + 1}"):
        tiny_pipeline.encode_media(path, MediaOptions(num_frames=40, window_frames=model.config.max_frames + 1))


def load_video_positions(path, positions):
    with VideoReader(path) as reader:
        return reader.read(positions).frames


def test_an_answer_comes_from_windowed_features(tiny_pipeline, clips):
    from videollama.engine import GenerationConfig

    chat = tiny_pipeline.chat(clips["minutes"], options=MediaOptions(fps=0.5))  # 60 frames -> 2 windows
    assert chat.media.windows == 2 and len(chat.media.timeline.frame_times) == 60
    answer = chat.ask(QUESTION, GenerationConfig(do_sample=False, max_new_tokens=3))
    assert chat.turns == [(QUESTION, answer)]
    assert [w.label for w in chat.media.timeline.windows] == ["00:00:00-00:01:00", "00:01:00-00:02:00"]


def test_window_budget_merges_into_max_windows(tiny_pipeline, clips):
    features = tiny_pipeline.encode_media(clips["minutes"], MediaOptions(fps=0.5, max_windows=1, use_audio=False))
    timeline = features.timeline
    assert features.windows == 1 and features.windowed and timeline.merged_frames == 60 - 32
    assert len(timeline.frame_times) == 60 and len(timeline.windows[0].frame_times) == 32
    assert (timeline.windows[0].start, timeline.windows[0].end) == (0.0, 120.0)
    assert "00:00:00-00:02:00 <ImageHere>" in features.preamble


def test_default_budget_fits_the_context(tiny_pipeline, clips, monkeypatch):
    per_window = tiny_pipeline.window_tokens(with_audio=False)
    monkeypatch.setattr(tiny_pipeline.engine, "max_positions", 2 * per_window + 1)  # half of it: one window
    monkeypatch.setattr(tiny_pipeline, "_cache", type(tiny_pipeline._cache)())
    features = tiny_pipeline.encode_media(clips["minutes"], MediaOptions(fps=0.5, use_audio=False))  # 2 windows' worth
    assert features.windows == 1 and features.timeline.merged_frames == 60 - 32
    assert features.notice.startswith("60 sampled frames merged into 32 (1 windows) to fit the model's context")


# ----------------------------------------------------------------------------------- merging
def test_frame_memory_merges_the_most_similar_neighbours():
    a, b, c = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([[0.1, 1.0]])
    memory = FrameMemory(capacity=2)
    for t, features in enumerate([a, b, c]):
        memory.add(MergedFrame(features, float(t), float(t)))
    assert len(memory) == 2 and memory.merges == 1
    first, second = memory.frames
    assert torch.equal(first.features, a) and (first.first_time, first.last_time) == (0.0, 0.0)
    assert (second.first_time, second.last_time, second.count) == (1.0, 2.0, 2)
    torch.testing.assert_close(second.features, (b + c) / 2)
    memory.add(MergedFrame(torch.tensor([[0.05, 1.0]]), 3.0, 3.0))  # joins the (b, c) pair, weighted 2:1
    assert [f.count for f in memory.frames] == [1, 3]
    torch.testing.assert_close(memory.frames[1].features, (b + c + torch.tensor([[0.05, 1.0]])) / 3)
    with pytest.raises(ValueError, match="time order"):
        memory.add(MergedFrame(a, 1.0, 1.0))


# ----------------------------------------------------------------------------------- checks and audio spans
def test_placeholder_counts_are_checked(tiny_pipeline):
    model, processor = tiny_pipeline.model, tiny_pipeline.processor
    prompt = f"<Video>{IMAGE_PLACEHOLDER}</Video> x"
    with pytest.raises(ValueError, match="1 <ImageHere> and 0 <AudioHere> markers but the media give 2 video"):
        processor.tokenize(prompt, expected=(2, 0))
    q, width = model.config.num_video_tokens, model.config.llm_hidden_size
    half = [processor.image_token_id] * (q // 2)
    text = processor.tokenize("x y", add_bos=False)
    ids = torch.tensor([text + half + text + half])  # q placeholders in all, in two half runs
    with pytest.raises(ValueError, match=f"a run of {q // 2} <ImageHere> tokens is not a whole number"):
        model.embed_inputs(ids, torch.zeros(1, q, width))
    whole = torch.tensor([text + half + half + text])  # the same count in one run: accepted
    assert model.embed_inputs(whole, torch.zeros(1, q, width)).shape == (1, whole.shape[1], width)
    assert AUDIO_PLACEHOLDER not in prompt


def test_audio_span_equals_the_whole_track_slice(clips):
    path = clips["numbered"]
    waveform = load_waveform(path)
    with AudioSpanReader(path) as reader:
        for start, end in [(0.0, 4.0), (3.3, 7.7), (6.0, 10.0)]:
            torch.testing.assert_close(reader.waveform(start, end),
                                       waveform[:, int(start * 16000):int(end * 16000)], atol=1e-6, rtol=0)


def test_a_long_file_read_as_one_clip_decodes_only_its_audio_clips(clips, monkeypatch, tmp_path):
    """--frames 8 on a 90-s file: the 8 official clips of 2 s, sought out one by one (never the whole
    track), equal to the whole-track path; files up to WHOLE_SPAN_SECONDS still decode the whole track.
    (One encoded segment: in the test's packet-copied long files every copy restarts the AAC priming, so
    timestamps and decoded-sample counts disagree past the first copy.)"""
    from videollama.media import audio_span
    from videollama.media.audio_span import WHOLE_SPAN_SECONDS, whole_file_audio

    path = make_long_video(tmp_path / "ninety.mp4", 90, segment_seconds=90, fps=2, size=(32, 32))
    expected = load_audio(path)  # (8, 1, 128, 204), the official whole-track path
    with AudioSpanReader(path) as reader:
        assert reader.track_seconds() == load_waveform(path).shape[-1] / 16000 > WHOLE_SPAN_SECONDS

    def whole_track(*args, **kwargs):
        raise AssertionError("the whole track was decoded")

    monkeypatch.setattr(audio_span, "load_audio", whole_track)
    sought = whole_file_audio(path)
    assert sought.shape == expected.shape == (8, 1, 128, 204)
    torch.testing.assert_close(sought, expected, atol=2e-3, rtol=0)
    with pytest.raises(AssertionError, match="whole track"):  # a short file takes the official path
        whole_file_audio(clips["numbered"])


# ----------------------------------------------------------------------------------- the API's fields
@pytest.fixture(scope="module")
def server(tiny_pipeline, clips):
    settings = ServeSettings(model_name="t", media_root=clips["minutes"].parent, max_duration_s=600,
                             default_max_tokens=2, max_sampled_frames=200)
    with running_server(create_app(tiny_pipeline, settings)) as url:
        yield url


def _request(server, **extra):
    body = {"messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": "minutes.mp4"}},
                                                      {"type": "text", "text": QUESTION}]}],
            "temperature": 0, "max_tokens": 2, **extra}
    return httpx.post(f"{server}/v1/chat/completions", json=body, timeout=120)


def test_api_video_sampling_and_timeline(server):
    reply = _request(server, video_sampling={"fps": 0.5, "max_windows": 1, "max_frames": 200})
    assert reply.status_code == 200, reply.text
    timeline = reply.json()["video_timeline"]
    assert [(w["start"], w["end"], w["label"]) for w in timeline["windows"]] == [(0.0, 120.0, "00:00:00-00:02:00")]
    assert len(timeline["windows"][0]["frame_times"]) == 32
    assert timeline["frame_times"] == [float(t) for t in range(0, 120, 2)] and timeline["merged_frames"] == 28
    assert timeline["duration"] == 120.0
    plain = _request(server)  # 8 frames, as today: one window covering the clip
    assert [w["frame_times"] for w in plain.json()["video_timeline"]["windows"]] == [[0.0, 15.0, 30.0, 45.0, 60.0,
                                                                                      75.0, 90.0, 105.0]]
    short = _request(server, video_sampling={"frames": 24, "window_frames": 8})  # 3 windows of 8
    assert [len(w["frame_times"]) for w in short.json()["video_timeline"]["windows"]] == [8, 8, 8]
    streamed = _request(server, stream=True, video_sampling={"frames": 40, "max_windows": 2})
    first = next(line for line in streamed.text.splitlines() if line.startswith("data: "))
    assert '"video_timeline"' in first and "00:01:00-00:02:00" in first


@pytest.mark.parametrize("extra, fragment", [
    ({"video_sampling": {"fps": 0}}, "video_sampling.fps"),
    ({"video_sampling": {"frames": -1}}, "video_sampling.frames"),
    ({"video_sampling": {"frames": 201}}, "at most 200"),
    ({"video_sampling": {"fps": 1, "max_frames": 100_000}}, "at most 200"),
    ({"video_sampling": {"fps": 1, "frames": 4}}, "not both"),
    ({"video_sampling": {"fps": 1}, "frames": 4}, "frames or video_sampling"),
    ({"video_sampling": {"fps": 1, "bogus": 2}}, "unknown field"),
    ({"video_sampling": {"frames": 40, "window_frames": 0}}, "video_sampling.window_frames"),
    ({"video_sampling": {"frames": 40, "window_frames": 33}}, "window_frames must be at most the model's max_frames (32)"),
])
def test_api_bad_video_sampling_is_400(server, extra, fragment):
    reply = _request(server, **extra)
    assert reply.status_code == 400 and fragment in reply.json()["error"]["message"], reply.text


def test_api_duration_limit_applies_before_decoding(tiny_pipeline, clips, monkeypatch):
    import videollama.long_video as long_video

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded a video over the duration limit")

    monkeypatch.setattr(long_video, "VideoReader", no_decoding)
    settings = ServeSettings(media_root=clips["minutes"].parent, max_duration_s=60)
    with running_server(create_app(tiny_pipeline, settings)) as url:
        reply = _request(url, video_sampling={"fps": 1})
    assert reply.status_code == 400 and "over the limit of 60 s" in reply.json()["error"]["message"]


# ----------------------------------------------------------------------------------- the web demo's timeline
def test_web_timeline_strip_shows_each_window(tiny_pipeline, clips):
    from videollama.serve.web import build_demo, timeline_items

    features = tiny_pipeline.encode_media(clips["numbered"], MediaOptions(num_frames=40))
    items = timeline_items(features)
    assert [caption for _, caption in items] == ["00:00:00-00:00:05 (20 frames)", "00:00:05-00:00:10 (20 frames)"]
    thumbnail = items[1][0]
    assert thumbnail.shape == (96, 96, 3) and thumbnail.dtype.name == "uint8"
    assert read_frame_number(torch.from_numpy(thumbnail).permute(2, 0, 1).float() / 255) == 40  # window 2's first
    assert timeline_items(None) == []
    demo = build_demo(tiny_pipeline, examples=[])
    ids = {getattr(block, "elem_id", None) for block in demo.blocks.values()}
    assert {"vl-timeline", "vl-fps", "vl-max-windows", "vl-frames", "vl-window-frames"} <= ids
    respond = next(f.fn for f in demo.fns.values() if f.api_name == "respond")
    # question, history, turns, video, image, audio, use audio, greedy, temperature, top-p, max tokens,
    # frames, fps, max windows, frames per window, subject
    *_, strip = next(respond(QUESTION, [], [], str(clips["minutes"]), None, None, False, True, 1.0, 0.9, 2,
                             8, 0.5, 1, 0, None))
    assert [caption for _, caption in strip] == ["00:00:00-00:02:00 (32 frames)"]  # 60 frames merged into 1 window
    *_, strip = next(respond(QUESTION, [], [], str(clips["minutes"]), None, None, False, True, 1.0, 0.9, 2,
                             8, 0.5, 8, 8, None))  # 60 frames in windows of at most 8: 4 x 8 + 4 x 7
    captions = [caption for _, caption in strip]
    assert len(captions) == 8 and captions[0] == "00:00:00-00:00:16 (8 frames)" and captions[-1].endswith("(7 frames)")


# ----------------------------------------------------------------------------------- unknown durations
def _remux(source, target, **options):
    import av

    with av.open(str(source)) as src, av.open(str(target), "w", **options) as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                dst.mux(packet)
    return target


def test_a_video_without_duration_is_sampled_from_its_packet_scan(tmp_path):
    from videollama.media import MediaError, probe

    source = make_numbered_video(tmp_path / "v.mp4", 100, fps=10, size=(64, 64), gop=20)
    live = _remux(source, tmp_path / "live.mkv", options={"live": "1"})  # no duration, no index (a live recording)
    assert probe(live).duration == 0.0
    with VideoReader(live) as reader:
        assert reader.duration == 10.0
        positions = VideoSampling(frames=None, fps=1.0).frame_positions(reader.num_frames, reader.fps)
        clip = reader.read(positions)
    assert [read_frame_number(f) for f in denormalize(clip.frames)] == list(range(0, 100, 10))
    with pytest.raises(MediaError, match="lasts 10.0 s, over the limit of 5 s"):  # the limit holds, from the scan
        VideoReader(live, max_duration=5)
    raw = _remux(source, tmp_path / "raw.h264", format="h264")  # cannot be rewound: refused in one line
    with pytest.raises(MediaError, match="cannot be rewound after its packet scan .* remux it into a file"):
        VideoReader(raw)


def test_window_audio_past_the_end_of_the_track_raises_or_hears_the_given_clips(tmp_path):
    from types import SimpleNamespace

    from media_fixtures import make_video_segment

    from videollama.long_video import encode_window_audio, window_audio_clips
    from videollama.media import NoAudioError
    from videollama.media.windows import WindowSpan

    clip = make_video_segment(tmp_path / "ten.mp4", 10, fps=5)
    model = SimpleNamespace(device=torch.device("cpu"), dtype=torch.float32,
                            encode_audio=lambda clips: clips.flatten(2).mean(-1, keepdim=True))  # (1, 8, 1)
    inside, past = WindowSpan(0.0, 8.0, ()), WindowSpan(20.0, 28.0, ())
    with pytest.raises(NoAudioError):
        encode_window_audio(model, clip, [inside, past])
    missing = torch.full((8, 1, 128, 204), 3.0)
    rows = encode_window_audio(model, clip, [inside, past], missing=missing)  # (2, 8, 1)
    assert torch.equal(rows[0], model.encode_audio(window_audio_clips(clip, [inside]))[0])
    assert torch.equal(rows[1], torch.full((8, 1), 3.0))
