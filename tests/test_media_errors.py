"""Bad media: every failure is a MediaError with one line naming the file; documented fallbacks."""

from __future__ import annotations

import pickle

import pytest

from media_fixtures import make_numbered_video, make_tone_audio, truncate_file
from videollama.media import (
    MediaError,
    NoAudioError,
    NoVideoError,
    load_audio,
    load_image,
    load_video,
    load_waveform,
    probe,
)


def assert_one_line_error(excinfo, path, *phrases: str) -> None:
    message = str(excinfo.value)
    assert isinstance(excinfo.value, MediaError) and isinstance(excinfo.value, ValueError)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    for phrase in phrases:
        assert phrase in message, message


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    (root / "zero.mp4").write_bytes(b"")
    (root / "text.mp4").write_text("this is a text file, not a video\n" * 20)
    make_numbered_video(root / "cut.mp4", 100, 25, gop=25, with_audio=True)
    truncate_file(root / "cut.mp4", 0.5)  # the index (moov) is at the end: gone
    make_numbered_video(root / "cut_faststart.mp4", 100, 25, gop=25, with_audio=True, faststart=True)
    truncate_file(root / "cut_faststart.mp4", 0.5)  # index intact, the data behind it missing
    make_tone_audio(root / "audio_only.m4a", 3.0)
    make_tone_audio(root / "audio_only.wav", 3.0)
    make_numbered_video(root / "silent.mp4", 50, 25)
    make_numbered_video(root / "one_frame.mp4", 1, 25, with_audio=True)
    make_numbered_video(root / "ok.mp4", 100, 25, with_audio=True)
    return root


@pytest.mark.parametrize("loader", [load_video, load_audio, probe, load_image])
def test_zero_bytes(media, loader):
    with pytest.raises(MediaError) as excinfo:
        loader(media / "zero.mp4")
    assert_one_line_error(excinfo, media / "zero.mp4", "empty file")


@pytest.mark.parametrize("loader", [load_video, load_audio, probe, load_image])
def test_text_file_named_mp4(media, loader):
    with pytest.raises(MediaError) as excinfo:
        loader(media / "text.mp4")
    assert_one_line_error(excinfo, media / "text.mp4", "not a")


@pytest.mark.parametrize("loader", [load_video, load_audio, probe])
def test_truncated_mp4_without_index(media, loader):
    with pytest.raises(MediaError) as excinfo:
        loader(media / "cut.mp4")
    assert_one_line_error(excinfo, media / "cut.mp4", "truncated")


@pytest.mark.parametrize("loader", [load_video, load_audio])
def test_truncated_mp4_with_index(media, loader):
    path = media / "cut_faststart.mp4"
    assert probe(path).num_frames == 100  # the headers survive ...
    with pytest.raises(MediaError) as excinfo:  # ... but the frames and samples do not
        loader(path)
    assert_one_line_error(excinfo, path, "truncated")


def test_audio_only_file_as_video(media):
    for name in ("audio_only.m4a", "audio_only.wav"):
        with pytest.raises(NoVideoError) as excinfo:
            load_video(media / name)
        assert_one_line_error(excinfo, media / name, "no video stream")
        assert load_audio(media / name).shape == (8, 1, 128, 204)  # the audio itself is fine
        info = probe(media / name)
        assert (info.has_video, info.has_audio) == (False, True)
        assert info.duration == pytest.approx(3.0, abs=0.1)


def test_video_without_audio(media):
    path = media / "silent.mp4"
    for loader in (load_audio, load_waveform):
        with pytest.raises(NoAudioError) as excinfo:
            loader(path)
        assert_one_line_error(excinfo, path, "no audio stream")
    assert load_video(path).frames.shape == (8, 3, 224, 224)  # video-only still works
    assert probe(path).has_audio is False


def test_one_frame_video_is_not_an_error(media):
    clip = load_video(media / "one_frame.mp4")  # official: n = min(n_frms, vlen) = 1
    assert clip.frames.shape == (1, 3, 224, 224)
    assert clip.timestamps == [0.0]


@pytest.mark.parametrize("num_frames", [0, 33, 100])
def test_frame_count_out_of_range(media, num_frames):
    with pytest.raises(MediaError) as excinfo:
        load_video(media / "ok.mp4", num_frames)
    assert_one_line_error(excinfo, media / "ok.mp4", "between 1 and 32", str(num_frames))


def test_size_and_duration_limits(media):
    path = media / "ok.mp4"  # 4 s
    for loader in (load_video, load_audio, probe, load_image):
        with pytest.raises(MediaError) as excinfo:
            loader(path, max_bytes=1000)
        assert_one_line_error(excinfo, path, "over the limit of 1000 bytes")
    for loader in (load_video, load_audio):
        with pytest.raises(MediaError) as excinfo:
            loader(path, max_duration=2.5)
        assert_one_line_error(excinfo, path, "over the limit of 2.5 s")
    assert load_video(path, max_duration=5, max_bytes=10**7).frames.shape[0] == 8


def test_missing_file_and_directory(media):
    for loader in (load_video, load_audio, probe, load_image):
        with pytest.raises(MediaError) as excinfo:
            loader(media / "nope.mp4")
        assert_one_line_error(excinfo, media / "nope.mp4", "no such file")
    with pytest.raises(MediaError) as excinfo:
        load_video(media)
    assert_one_line_error(excinfo, media, "directory")


def test_error_messages_are_one_line_and_picklable():
    err = NoAudioError("clip.mp4", "no audio\nstream")
    assert str(err) == "clip.mp4: no audio stream"
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is NoAudioError and str(copy) == str(err) and copy.path == "clip.mp4"
