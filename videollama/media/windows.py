"""Which frames of a long video are read, and how they are cut into windows with time labels.

Video-LLaMA's video Q-Former reads at most ``max_frames`` (32) frames: its frame-position table
has 32 rows. A video sampled more densely (``--frames N`` with N > 32, or ``--fps F``) is cut into
windows of at most ``max_frames`` consecutive sampled frames; each window goes through the
Q-Formers on its own, with frame positions 0..k-1, and becomes its own 32 soft tokens
(:mod:`videollama.long_video`). The prompt names each window by its time range, e.g.
``00:01:04-00:02:08`` (:func:`time_label`).

* :class:`VideoSampling` says how many frames to sample: a count (``frames``, the official
  uniform sampler, any count from 1 to :data:`MAX_SAMPLED_FRAMES`) or a rate (``fps``, frames per
  second of video, capped at ``max_frames``; past the cap the official uniform sampler spreads
  ``max_frames`` frames over the whole video instead).
* :func:`frames_at_rate` turns a rate into frame positions; :func:`split_windows` cuts positions
  into balanced windows (33 frames -> 17 + 16, never 32 + 1).
* ``max_windows`` (optional) is a budget: past ``max_windows * window_frames`` sampled frames, the
  most similar adjacent frames are merged (:mod:`videollama.frame_merge`) until they fit.
* ``window_frames`` (optional, default the model's own: ``VideoLlamaConfig.window_frames``, else its
  ``max_frames``) is the window length: shorter windows name times more finely (each window's time
  label covers fewer seconds) at the price of more prompt tokens per minute of video. Video-LLaMA was
  trained on clips of 8 frames, so windows of 8 also keep every frame position at one the model was
  trained on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import UsageError

__all__ = [
    "DEFAULT_FPS_MAX_FRAMES",
    "MAX_SAMPLED_FRAMES",
    "VideoSampling",
    "WindowSpan",
    "clock",
    "frames_at_rate",
    "resolve_window_frames",
    "split_windows",
    "time_label",
    "window_spans",
]

# More sampled frames than this is a typo, not a request (100,000 frames is 28 hours at 1 fps).
MAX_SAMPLED_FRAMES = 100_000
# The default cap of a rate: three hours at one frame per second.
DEFAULT_FPS_MAX_FRAMES = 3 * 3600
SECONDS_PER_HOUR = 3600
SECONDS_PER_MINUTE = 60


@dataclass(frozen=True)
class VideoSampling:
    """How many frames of a video are read: ``frames`` (a count) or ``fps`` (a rate), not both.

    ``max_frames`` caps a rate; ``max_windows`` (None: no budget) merges frames so that at most
    that many windows reach the LLM; ``window_frames`` (None: the model's own) is the most
    frames one window holds (:func:`resolve_window_frames`). Invalid values raise ``ValueError`` naming
    the field.
    """

    frames: int | None = 8
    fps: float | None = None
    max_frames: int = DEFAULT_FPS_MAX_FRAMES
    max_windows: int | None = None
    window_frames: int | None = None

    def __post_init__(self) -> None:
        if (self.frames is None) == (self.fps is None):
            raise UsageError("give either frames (a count) or fps (a rate), not both and not neither")
        if self.frames is not None and not 1 <= self.frames <= MAX_SAMPLED_FRAMES:
            raise UsageError(f"frames must be between 1 and {MAX_SAMPLED_FRAMES:,}, got {self.frames}")
        if self.fps is not None and not (math.isfinite(self.fps) and self.fps > 0):
            raise UsageError(f"fps must be a positive number of frames per second, got {self.fps}")
        if not 1 <= self.max_frames <= MAX_SAMPLED_FRAMES:
            raise UsageError(f"max_frames must be between 1 and {MAX_SAMPLED_FRAMES:,}, got {self.max_frames}")
        if self.max_windows is not None and self.max_windows < 1:
            raise UsageError(f"max_windows must be >= 1, got {self.max_windows}")
        if self.window_frames is not None and self.window_frames < 1:
            raise UsageError(f"window_frames must be >= 1, got {self.window_frames}")

    def frame_positions(self, num_video_frames: int, video_fps: float) -> list[int]:
        """Positions (in presentation order) of the frames to read from a video of
        ``num_video_frames`` frames at ``video_fps``."""
        from .video import sample_indices

        if self.frames is not None:
            return sample_indices(num_video_frames, self.frames)
        positions = frames_at_rate(num_video_frames, video_fps, self.fps)  # type: ignore[arg-type]
        if len(positions) > self.max_frames:
            return sample_indices(num_video_frames, self.max_frames)
        return positions


def resolve_window_frames(window_frames: int | None, model_max_frames: int, model_default: int | None = None) -> int:
    """Frames per window: ``window_frames`` (a request's), else the model's own default (``VideoLlamaConfig.
    window_frames``, the windows it was trained on), else its ``max_frames`` (its frame-position table's rows,
    which no window may exceed)."""
    if window_frames is None:
        return model_default or model_max_frames
    if not 1 <= window_frames <= model_max_frames:
        raise UsageError(f"window_frames must be between 1 and the model's max_frames ({model_max_frames}), "
                         f"got {window_frames}")
    return window_frames


def frames_at_rate(num_video_frames: int, video_fps: float, fps: float) -> list[int]:
    """Positions of one frame every ``1 / fps`` seconds, from 0: frame ``round(k * video_fps / fps)``
    for every k that lands inside the video (a rate above the video's gives every frame once)."""
    if num_video_frames < 1 or video_fps <= 0 or fps <= 0:
        raise UsageError(f"need frames >= 1 and positive rates, got {num_video_frames}, {video_fps}, {fps}")
    step = video_fps / fps  # video frames per sampled frame
    count = math.ceil(num_video_frames / step - 1e-9)
    positions = sorted({min(num_video_frames - 1, round(k * step)) for k in range(count)})
    return positions


def split_windows(positions: list[int], window_frames: int) -> list[list[int]]:
    """Cut ``positions`` into ``ceil(n / window_frames)`` consecutive windows of balanced sizes
    (sizes differ by at most one, larger first)."""
    if window_frames < 1:
        raise UsageError(f"window_frames must be >= 1, got {window_frames}")
    count = max(1, math.ceil(len(positions) / window_frames))
    base, extra = divmod(len(positions), count)
    windows, start = [], 0
    for w in range(count):
        size = base + (w < extra)
        windows.append(positions[start:start + size])
        start += size
    return windows


@dataclass(frozen=True)
class WindowSpan:
    """One window of a long video: the time range it covers and the times of its frames."""

    start: float  # seconds
    end: float
    frame_times: tuple[float, ...]  # the sampled frames it holds (a merged frame: its first frame's time)

    @property
    def label(self) -> str:
        return time_label(self.start, self.end)


def window_spans(first_times: list[float], frame_times: list[list[float]], duration: float) -> list[WindowSpan]:
    """Spans of consecutive windows: window w covers [its first frame, the next window's first
    frame), the last one ends at ``duration`` (or its last frame, if the duration is shorter)."""
    spans = []
    for w, times in enumerate(frame_times):
        end = first_times[w + 1] if w + 1 < len(first_times) else max(duration, times[-1])
        spans.append(WindowSpan(first_times[w], end, tuple(times)))
    return spans


def time_label(start: float, end: float) -> str:
    """``HH:MM:SS-HH:MM:SS`` of a time range (start rounded down, end rounded up to whole seconds)."""
    return f"{clock(math.floor(start))}-{clock(math.ceil(end))}"


def clock(seconds: int) -> str:
    """``HH:MM:SS`` of a whole number of seconds (the format of the windows' time labels)."""
    hours, rest = divmod(max(0, seconds), SECONDS_PER_HOUR)
    minutes, secs = divmod(rest, SECONDS_PER_MINUTE)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}"
