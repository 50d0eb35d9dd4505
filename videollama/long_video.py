"""Videos of any length: sampled frames cut into windows, each window its own 32 video tokens.

Up to ``max_frames`` (32) sampled frames nothing changes: one window, the official prompt
sentence, the same frames and tokens as :func:`~videollama.media.load_video`. Beyond that (or beyond
a shorter window length, ``VideoSampling.window_frames``; ``max_frames`` below stands for either):

1. the sampled positions (:class:`~videollama.media.windows.VideoSampling`) are cut into balanced
   windows of at most ``max_frames`` frames (:func:`~videollama.media.windows.split_windows`);
2. each window is decoded (one :class:`~videollama.media.video.VideoReader` for the whole file,
   so ascending windows decode as one pass would), run through the ViT and the image Q-Former
   (:meth:`VideoLlama.encode_frames`), then its pixels are dropped;
3. without a budget, the window's features go straight through the video Q-Former with frame
   positions 0..k-1 (:meth:`VideoLlama.encode_frame_features`) -> 32 tokens; with a budget of
   ``max_windows`` windows, the features enter a :class:`~videollama.frame_merge.FrameMemory` of
   ``max_windows * max_frames`` frames that merges the most similar adjacent frames, and the
   memory is cut into windows at the end;
4. audio, when used, is read per window by :class:`~videollama.media.audio_span.AudioSpanReader`:
   8 clips of 2 s placed by the official rule inside the window's time span -> 8 tokens.

Peak memory is one window of decoded frames plus the soft tokens (32 x D per window) and, with a
budget, ``max_windows * max_frames`` frames of image-Q-Former features: it does not grow with the
video's length (``benchmarks/bench_long_video.py``, ``docs/long-video.md``).

Without a given budget, :func:`fit_windows` sets one: as many windows as fit
:data:`MEDIA_CONTEXT_SHARE` of the LLM's context, each taking :func:`window_positions` prompt
positions (``Pipeline`` and the vLLM plugin both use it, so they cut a video the same way).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F

from .frame_merge import FrameMemory, MergedFrame
from .media.audio_span import AudioSpanReader
from .media.errors import NoAudioError
from .media.transforms import denormalize
from .media.video import DEFAULT_IMAGE_SIZE, VideoClip, VideoReader
from .media.windows import VideoSampling, WindowSpan, resolve_window_frames, split_windows, time_label, window_spans
from .model import VideoLlama

__all__ = ["MEDIA_CONTEXT_SHARE", "THUMBNAIL_SIZE", "Timeline", "VideoEncoding", "encode_video_file",
           "encode_window_audio", "fit_windows", "window_audio_clips", "window_positions"]

THUMBNAIL_SIZE = 96  # pixels, the longer side of a timeline thumbnail
UINT8_MAX = 255
# With no window budget given, a long video's soft tokens may fill at most this share of the LLM's context
# (the rest is for the text and the answer); beyond it the most similar frames are merged.
MEDIA_CONTEXT_SHARE = 0.5


@dataclass
class Timeline:
    """When the windows and the sampled frames of a video are (the API's extension field)."""

    windows: list[WindowSpan]
    frame_times: list[float]  # every sampled frame, seconds
    duration: float
    merged_frames: int = 0  # sampled frames merged into others to fit a window budget
    thumbnails: list[np.ndarray] = field(default_factory=list, repr=False)  # (h, w, 3) uint8, one per window

    def to_dict(self) -> dict:
        """JSON-ready: {"duration", "merged_frames", "frame_times", "windows": [{"start", "end", "label",
        "frame_times"}]} (seconds rounded to milliseconds)."""
        return {
            "duration": round(self.duration, 3),
            "merged_frames": self.merged_frames,
            "frame_times": [round(t, 3) for t in self.frame_times],
            "windows": [{"start": round(w.start, 3), "end": round(w.end, 3), "label": w.label,
                         "frame_times": [round(t, 3) for t in w.frame_times]} for w in self.windows],
        }


@dataclass
class VideoEncoding:
    """A video as the LLM reads it: one row of soft tokens per window."""

    video: torch.Tensor  # (W, num_video_tokens, D)
    timeline: Timeline
    clip: VideoClip | None = None  # one window only: the sampled clip (for the official prompt sentence)
    audio: torch.Tensor | None = None  # (W, num_audio_tokens, D), filled by encode_window_audio

    @property
    def windowed(self) -> bool:
        """Read beyond max_frames (in windows, possibly merged into one), not as one official clip."""
        return self.clip is None


@torch.inference_mode()
def encode_video_file(model: VideoLlama, path: str | os.PathLike[str], sampling: VideoSampling, *,
                      image_size: int = DEFAULT_IMAGE_SIZE, resize: str = "squash", frame_lookup: str = "index",
                      max_bytes: int | None = None, max_duration: float | None = None) -> VideoEncoding:
    """Decode and encode the sampled frames of ``path`` window by window (see the module docstring).

    Raises:
        MediaError / NoVideoError: as :class:`~videollama.media.video.VideoReader`.
    """
    window_frames = resolve_window_frames(sampling.window_frames, model.config.max_frames, model.config.window_frames)
    with VideoReader(path, image_size=image_size, resize=resize, frame_lookup=frame_lookup, max_bytes=max_bytes,
                     max_duration=max_duration) as reader:
        positions = sampling.frame_positions(reader.num_frames, reader.fps)
        chunks = split_windows(positions, window_frames)
        if len(chunks) == 1:  # today's path: one clip, one window
            clip = reader.read(positions)
            video = model.encode_video(clip.frames[None].to(model.device, model.dtype))
            span = window_spans([clip.timestamps[0]], [clip.timestamps], reader.duration)
            timeline = Timeline(span, list(clip.timestamps), reader.duration, thumbnails=[_thumbnail(clip.frames[0])])
            return VideoEncoding(video, timeline, clip=clip)
        budget = None if sampling.max_windows is None else sampling.max_windows * window_frames
        if budget is not None and len(positions) > budget:
            return _encode_merged(model, reader, chunks, budget, len(positions), window_frames)
        rows, first_times, times, thumbnails = [], [], [], []
        for chunk in chunks:
            clip = reader.read(chunk)
            rows.append(model.encode_video(clip.frames[None].to(model.device, model.dtype)))  # (1, 32, D)
            first_times.append(clip.timestamps[0])
            times.append(list(clip.timestamps))
            thumbnails.append(_thumbnail(clip.frames[0]))
            del clip  # the window's pixels go before the next window is decoded
        spans = window_spans(first_times, times, reader.duration)
        timeline = Timeline(spans, [t for window in times for t in window], reader.duration, thumbnails=thumbnails)
        return VideoEncoding(torch.cat(rows), timeline)


def _encode_merged(model: VideoLlama, reader: VideoReader, chunks: list[list[int]], budget: int,
                   sampled: int, window_frames: int) -> VideoEncoding:
    """Windows through a :class:`FrameMemory` of ``budget`` frames, cut into windows at the end."""
    memory = FrameMemory(budget)
    frame_times: list[float] = []
    for chunk in chunks:
        clip = reader.read(chunk)
        features = model.encode_frames(clip.frames[None].to(model.device, model.dtype))[0]  # (T, Q, 768)
        for t, time in enumerate(clip.timestamps):
            memory.add(MergedFrame(features[t].clone(), time, time, thumbnail=_thumbnail(clip.frames[t])))
        frame_times += clip.timestamps
        del clip, features
    groups = split_windows(list(range(len(memory))), window_frames)
    rows, first_times, times, thumbnails = [], [], [], []
    for group in groups:
        slots = [memory.frames[i] for i in group]
        stacked = torch.stack([slot.features for slot in slots])[None]  # (1, T, Q, 768)
        rows.append(model.encode_frame_features(stacked))
        first_times.append(slots[0].first_time)
        times.append([slot.first_time for slot in slots])
        thumbnails.append(slots[0].thumbnail)
    spans = window_spans(first_times, times, reader.duration)
    timeline = Timeline(spans, frame_times, reader.duration, merged_frames=sampled - len(memory),
                        thumbnails=thumbnails)
    return VideoEncoding(torch.cat(rows), timeline)


@torch.inference_mode()
def encode_window_audio(model: VideoLlama, path: str | os.PathLike[str], windows: list[WindowSpan], *,
                        max_bytes: int | None = None, missing: torch.Tensor | None = None) -> torch.Tensor:
    """8 tokens per window from the audio of its span -> (W, num_audio_tokens, D). ``missing``: the clips
    (8, 1, 128, 204) a window whose span holds no audio hears instead (None: that raises).

    Raises:
        NoAudioError: no audio stream, or (``missing`` None) a window's span holds no audio.
    """
    rows = []
    with AudioSpanReader(path, max_bytes=max_bytes) as audio:
        for window in windows:
            try:
                clips = audio.clips(window.start, window.end)  # (8, 1, 128, 204)
            except NoAudioError:
                if missing is None:
                    raise
                clips = missing
            rows.append(model.encode_audio(clips[None].to(model.device, model.dtype)))
    return torch.cat(rows)


def window_audio_clips(path: str | os.PathLike[str], windows: list[WindowSpan], *,
                       max_bytes: int | None = None) -> torch.Tensor:
    """The log-mel clips :func:`encode_window_audio` encodes, before the model: (W, 8, 1, 128, 204).

    Training reads a long video's sound with it (``videollama.train.data``), so a trained window hears
    exactly what an inference window hears.

    Raises:
        NoAudioError: no audio stream, or a window's span holds no audio.
    """
    with AudioSpanReader(path, max_bytes=max_bytes) as audio:
        return torch.stack([audio.clips(window.start, window.end) for window in windows])  # (W, 8, 1, 128, 204)


def window_positions(tokenizer, config, with_audio: bool) -> int:
    """Prompt positions one window of a long video takes: its video (and audio) tokens and time labels."""
    label = len(tokenizer(f" {time_label(0, 0)} ", add_special_tokens=False)["input_ids"])
    return config.num_video_tokens + label + (config.num_audio_tokens + label if with_audio else 0)


def fit_windows(sampling: VideoSampling, context: int | None, per_window: int) -> VideoSampling:
    """``sampling`` with a window budget: as given, else as many windows of ``per_window`` positions as fit
    :data:`MEDIA_CONTEXT_SHARE` of ``context`` (no budget when the context is unknown)."""
    if sampling.max_windows is not None or context is None:
        return sampling
    fit = max(1, int(context * MEDIA_CONTEXT_SHARE) // per_window)
    return replace(sampling, max_windows=fit)


def _thumbnail(frame: torch.Tensor) -> np.ndarray:
    """A CLIP-normalised (3, S, S) frame -> (h, w, 3) uint8 of THUMBNAIL_SIZE pixels."""
    pixels = denormalize(frame[None].float()).clamp_(0, 1)  # (1, 3, S, S) in [0, 1]
    small = F.interpolate(pixels, size=(THUMBNAIL_SIZE, THUMBNAIL_SIZE), mode="bilinear", antialias=True,
                          align_corners=False)
    return (small[0].permute(1, 2, 0) * UINT8_MAX).round().to(torch.uint8).numpy()
