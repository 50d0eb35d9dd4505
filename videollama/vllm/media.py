"""vLLM's media items -> the tensors our encoders take, decoded by ``videollama.media``.

vLLM fetches ``video_url`` / ``image_url`` parts (data URLs, http(s), or ``file://`` below
``--allowed-local-media-path``) and hands them on with their original bytes. A video is decoded from
those bytes by our own code, both streams from the same file, as ``Pipeline`` reads it
(:func:`videollama.long_video.encode_video_file`): the sampled positions (``VideoSampling``: a frame
count or a rate), cut into windows of at most ``window_frames`` (default the model's ``max_frames``)
frames, each window's frames read at its positions by one :class:`~videollama.media.VideoReader`, and
the sound as the whole file's 8 clips (one window) or each window's 8 clips (``window_audio_clips``).
Frames, timestamps and fbank equal ``Pipeline``'s bit for bit (vLLM's own frame decoding is not used).

vLLM builds the prompt before any encoder runs, so every window is decoded here, up front: the frames
travel to the engine as uint8 (the reader's resized RGB, a quarter of the float pixels; the model
CLIP-normalises each window as the reader would). Memory is therefore every sampled frame at once, where
``Pipeline`` holds one window: it is bounded by the window budget and by ``max_model_len``.

A video whose sampled frames exceed the budget (``max_windows`` windows) has its frames *merged*, and which
frames merge depends on the encoders' features, which only the engine has. Such a video travels as its file
(:class:`MergedVideo`): the engine reads it with ``Pipeline``'s own code, window by window, and fills in the
windows' time labels the prompt could not know (``model.py``). Here every sampled frame is decoded once and
dropped first, so that a file the engine would fail on is refused here (a 400) instead of stopping the engine.

An image is decoded by Pillow from its bytes, as ``load_image`` does. An audio part arrives as vLLM's
decoded waveform, mixed to mono, and is resampled to 16 kHz by our sinc resampler (torchaudio's, as
``load_audio``); our clip cutting and fbank then run on it.

Decoded frames without bytes (vLLM's offline API, or the dummy inputs vLLM profiles with) are resized
by our transforms and sampled by count only (one window); their timestamps come from vLLM's metadata
(``frames_indices`` / ``fps``).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from io import BytesIO
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import UsageError
from ..long_video import fit_windows, window_audio_clips
from ..media import MediaError, NoAudioError, VideoReader, audio_to_clips, load_image, resize_squash, sample_indices
from ..media.audio import SAMPLE_RATE
from ..media.audio_span import whole_file_audio
from ..media.resample import resample
from ..media.windows import VideoSampling, WindowSpan, split_windows, time_label, window_spans

UINT8_MAX = 255.0
VIDEO_ITEM = "video_url"  # how an error names the video (vLLM keeps no file name)


@dataclass(frozen=True)
class VideoReading:
    """How the processor reads a video: the request's sampling and what the model and vLLM allow."""

    sampling: VideoSampling  # from mm_processor_kwargs (MediaOptions' meaning)
    image_size: int
    window_frames: int  # frames per window: the request's window_frames, else the model's max_frames
    with_audio: bool  # the model has the audio branch
    context: int | None  # the LLM's positions: the default window budget, as Pipeline's
    max_model_len: int  # vLLM's: a video whose windows alone exceed it is refused before decoding
    window_positions: Callable[[bool], int]  # prompt positions of one window, without / with sound
    can_merge: bool = True  # the tokenizer spells a time label's digits one token each (the engine fills them in)


@dataclass(frozen=True)
class MergedVideo:
    """A video read by the engine (its frames merge to fit ``sampling.max_windows`` windows)."""

    data: bytes  # the file
    sampling: VideoSampling  # as Pipeline reads it: the window budget set, so the number of windows is known
    heard: bool  # the prompt gives every window its sound


@dataclass(frozen=True)
class DecodedVideo:
    frames: torch.Tensor  # (F, 3, S, S) uint8 RGB: every window's sampled frames, in time order; F = 0 when merged
    window_frames: list[int]  # frames per window (one window up to max_frames sampled frames)
    audio: torch.Tensor | None  # (W, 8, 1, 128, 204) log-mel clips per window, or None without a sound track
    message_seconds: list[float]  # one window: the times the prompt states (``VideoClip.message_seconds``)
    windows: list[WindowSpan]  # each window's time range (its label in the prompt); unknown (0-0) when merged
    duration: float  # seconds, stated by the preamble of a silent windowed video
    merged: MergedVideo | None = None  # the engine reads the file and merges its frames


# A merged video's reading, as mm kwargs travel (one float64 row): frames, fps (NaN when not given),
# max_frames, max_windows, window_frames, heard. NaN everywhere: the video's frames came decoded.
MERGE_FIELDS = 6


def merge_row(merged: MergedVideo | None) -> torch.Tensor:
    """``MergedVideo`` (less its bytes) -> (MERGE_FIELDS,) float64, read back by :func:`merge_from_row`."""
    if merged is None:
        return torch.full((MERGE_FIELDS,), float("nan"), dtype=torch.float64)
    s = merged.sampling
    return torch.tensor([math.nan if s.frames is None else s.frames, math.nan if s.fps is None else s.fps,
                         s.max_frames, s.max_windows, s.window_frames, float(merged.heard)], dtype=torch.float64)


def merge_from_row(row: torch.Tensor) -> tuple[VideoSampling, bool] | None:
    """(MERGE_FIELDS,) -> the engine's reading (sampling, heard), or None for a video sent as frames."""
    frames, fps, max_frames, max_windows, window_frames, heard = row.tolist()
    if math.isnan(max_windows):
        return None
    sampling = VideoSampling(frames=None if math.isnan(frames) else int(frames), fps=None if math.isnan(fps) else fps,
                             max_frames=int(max_frames), max_windows=int(max_windows), window_frames=int(window_frames))
    return sampling, bool(heard)


def _original_bytes(item) -> bytes | None:
    return getattr(item, "original_bytes", None)


def decode_video(item, reading: VideoReading) -> DecodedVideo:
    """A vLLM video item -> frames (+ fbank when it has a sound track and the model hears).

    Raises:
        MediaError: the bytes are no readable video (named ``video_url``, never the temporary file).
        UsageError: the sampled frames would need merging and the tokenizer cannot have the labels filled in,
            or their windows alone exceed ``max_model_len`` (both before any frame is decoded).
    """
    data = _original_bytes(item)
    if data is None:
        frames, metadata = item if isinstance(item, tuple) else (item, None)
        return _decoded_frames(np.asarray(frames), metadata, reading)
    with tempfile.TemporaryDirectory(prefix="videollama-vllm-") as workdir:
        path = Path(workdir) / "video"
        path.write_bytes(data)
        try:
            return _read_file(path, reading, data)
        except MediaError as err:  # name the request's item, never the server's temporary file
            raise MediaError(VIDEO_ITEM, err.problem) from None


def _read_file(path: Path, reading: VideoReading, data: bytes) -> DecodedVideo:
    """``encode_video_file``'s reading, every window kept (the encoders run later, in the engine), or, when the
    frames must merge, the file for the engine to read."""
    with VideoReader(path, image_size=reading.image_size, normalize=False) as reader:
        heard = reading.with_audio and reader.info.has_audio  # Pipeline's budget: audio tokens when a track exists
        sampling = fit_windows(reading.sampling, reading.context, reading.window_positions(heard))
        positions = sampling.frame_positions(reader.num_frames, reader.fps)
        chunks = split_windows(positions, reading.window_frames)
        if len(chunks) > 1 and _check_windows(len(positions), len(chunks), sampling, reading, heard):
            if len(time_label(0, reader.duration)) != len(time_label(0, 0)):
                raise UsageError("mm_processor_kwargs: the vLLM plugin merges the frames of videos up to 99 hours "
                                 "long (a longer one's time labels grow a digit); ask for fewer frames")
            for chunk in chunks:  # every sampled frame decodes here, so the engine reads them without failing
                reader.read(chunk)  # and is dropped at once
            windows = [WindowSpan(0.0, 0.0, ())] * sampling.max_windows  # labels: known after merging, in the engine
            merged = MergedVideo(data, replace(sampling, window_frames=reading.window_frames), heard)
            return DecodedVideo(torch.empty(0, 3, reading.image_size, reading.image_size, dtype=torch.uint8), [],
                                None, [], windows, reader.duration, merged)
        size = reading.image_size
        frames = torch.empty(len(positions), 3, size, size, dtype=torch.uint8)  # filled window by window
        first_times, times, message_seconds, start = [], [], [], 0
        for chunk in chunks:
            clip = reader.read(chunk)
            # the reader's pixels are uint8 / 255: back to uint8 exactly (the error is far below 0.5)
            frames[start:start + len(chunk)] = clip.frames.mul_(UINT8_MAX).round_()
            start += len(chunk)
            first_times.append(clip.timestamps[0])
            times.append(list(clip.timestamps))
            message_seconds = clip.message_seconds
            del clip
        windows = window_spans(first_times, times, reader.duration)
        duration = reader.duration
    audio = None
    if reading.with_audio:
        try:
            audio = window_audio_clips(path, windows) if len(windows) > 1 else whole_file_audio(path)[None]
        except NoAudioError:
            audio = None
    return DecodedVideo(frames, [len(c) for c in chunks], audio,
                        message_seconds if len(chunks) == 1 else [], windows, duration)


def _check_windows(sampled: int, windows: int, sampling: VideoSampling, reading: VideoReading, heard: bool) -> bool:
    """Whether the frames merge into ``sampling.max_windows`` windows; refuses, before decoding, what the plugin
    cannot serve as ``Pipeline`` would: merging with a tokenizer that does not spell a time label's digits one
    token each (the engine fills them in after merging), a label past 99 hours (it grows a digit), and
    windows that alone overflow ``max_model_len``."""
    budget = None if sampling.max_windows is None else sampling.max_windows * reading.window_frames
    merge = budget is not None and sampled > budget
    if merge and not reading.can_merge:
        given = "" if reading.sampling.max_windows is not None else ", by default what fits half the model's context"
        raise UsageError(f"mm_processor_kwargs: {sampled} sampled frames do not fit {sampling.max_windows} windows "
                         f"of {reading.window_frames} frames (max_windows{given}), and this model's tokenizer does "
                         "not spell each digit of a time label as one token, which the vLLM plugin needs to merge "
                         f"frames: ask for at most {budget} frames (num_frames, or max_frames with fps) or raise "
                         "max_windows")
    if merge:
        windows = sampling.max_windows
    need = windows * reading.window_positions(heard)
    if need > reading.max_model_len:
        raise UsageError(f"mm_processor_kwargs: {windows} windows of video take {need} prompt positions, over "
                         f"max_model_len ({reading.max_model_len}); ask for fewer frames (num_frames, or fps and "
                         "max_frames)")
    return merge


def _decoded_frames(frames: np.ndarray, metadata: dict | None, reading: VideoReading) -> DecodedVideo:
    """Frames already decoded by vLLM (T, H, W, 3) uint8 -> our uniform sample, resized, as uint8."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"a decoded video must be (frames, height, width, 3) RGB, got shape {frames.shape}")
    num_frames = reading.sampling.frames
    if num_frames is None or num_frames > reading.window_frames:
        raise UsageError(f"a video vLLM decoded without its file is read as at most {reading.window_frames} frames "
                         "(num_frames); fps and longer sampling need the file (send it as a video_url)")
    picks = sample_indices(len(frames), num_frames)
    pixels = torch.from_numpy(frames[picks]).permute(0, 3, 1, 2).float() / UINT8_MAX  # (T, H, W, 3) -> (T, 3, H, W)
    resized = resize_squash(pixels, reading.image_size).mul_(UINT8_MAX).round_().clamp_(0, UINT8_MAX)
    fps = float((metadata or {}).get("fps") or 1.0)
    source_indices = (metadata or {}).get("frames_indices") or list(range(len(frames)))
    seconds = [source_indices[i] / fps for i in picks]  # index / fps, as the official message
    span = WindowSpan(seconds[0], seconds[-1], tuple(seconds))
    return DecodedVideo(resized.to(torch.uint8), [len(picks)], None, seconds, [span], seconds[-1])


def decode_image(item, *, image_size: int) -> torch.Tensor:
    """A vLLM image item (PIL, from its bytes when known) -> (1, 3, S, S)."""
    data = _original_bytes(item)
    image = Image.open(BytesIO(data)) if data is not None else getattr(item, "media", item)
    if not isinstance(image, Image.Image):
        raise ValueError(f"an image must be a PIL image or an encoded image file, got {type(image).__name__}")
    return load_image(image, image_size=image_size)


def decode_audio(waveform: np.ndarray) -> torch.Tensor:
    """A mono 16 kHz waveform from vLLM's parser (resampled by :class:`SincResampler`) -> (8, 1, 128, 204)."""
    samples = torch.as_tensor(np.asarray(waveform, dtype=np.float32))
    if samples.ndim != 1:
        raise ValueError(f"an audio waveform must be mono (samples,), got shape {tuple(samples.shape)}")
    return audio_to_clips(samples[None], SAMPLE_RATE)


class SincResampler:
    """vLLM's resampler interface over ours (torchaudio's sinc resampling, as ``load_audio`` uses)."""

    def resample(self, audio: np.ndarray, *, orig_sr: float) -> np.ndarray:
        if orig_sr != int(orig_sr):
            raise ValueError(f"audio sample rate must be a whole number of Hz, got {orig_sr}")
        samples = torch.as_tensor(np.asarray(audio, dtype=np.float32))
        return resample(samples, int(orig_sr), SAMPLE_RATE).numpy()
