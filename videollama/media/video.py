"""Video probing and frame sampling with PyAV: seek to each wanted frame, never decode everything.

Official behaviour reproduced (``video_llama/processors/video_processor.py``, see "Media
preprocessing" in ``docs/architecture.md``): decord 0.6.0 ``VideoReader(height=224, width=224)``
squashes frames to 224x224; ``n = min(num_frames, vlen)`` frames are picked by
``np.arange(0, vlen, vlen / n).astype(int)`` ("uniform") or half at random from each half of the
video ("headtail"); pixels are scaled to [0, 1] and CLIP-normalised; the prompt gets "The video
contains {n} frames sampled at ... seconds. ".

Which frame is "frame i": decord reads every packet of the stream once (no decoding), sorts
their presentation timestamps, and frame ``i`` is the ``i``-th of them; ``vlen`` is the number of
packets. :func:`load_video` does the same scan. With ``frame_lookup="index"`` (the default, as the
official loader) it returns exactly that frame, and the prompt says ``i / avg_fps`` seconds, as
the official message does, even where a variable-frame-rate clip showed the frame at another
time. With ``frame_lookup="time"`` it returns the frame on screen at ``i / avg_fps`` and the
prompt tells that frame's real time. On constant-frame-rate video both are the same frames.
Either way :attr:`VideoClip.indices` are positions in presentation order (what decord calls frame
numbers) and :attr:`VideoClip.timestamps` are the frames' real presentation times.

How frames are fetched (:mod:`videollama.media.seeking`): for each wanted presentation time
(ascending) the seeker keeps decoding forward while no keyframe lies between its position and the
target, and otherwise seeks to the keyframe at or before it; it returns the frame whose pts is
nearest. Every decoded frame is bit-identical to a decode-everything pass.

Resizing runs the FFmpeg filter graph decord builds, ``scale=W:H:flags=bilinear`` then
``format=rgb24`` (decord's bundled FFmpeg 4.1 defaults the scale filter to bilinear): one
swscale pass from the decoder's pixel format, bit-identical to decord's frames on
constant-frame-rate clips (``tests/test_media_decord_parity.py``).
"""

from __future__ import annotations

import bisect
import os
from dataclasses import dataclass, field
from fractions import Fraction

import av
import numpy as np
import torch

from ..errors import UsageError
from .errors import MediaError, NoVideoError, check_media_file
from .seeking import DecodeStats, FrameSeeker, UnseekableError, ffmpeg_reason, scan_packets

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "DEFAULT_NUM_FRAMES",
    "FRAME_LOOKUPS",
    "FrameResizer",
    "MAX_FRAMES",
    "RESIZE_MODES",
    "SAMPLING_MODES",
    "DecodeStats",
    "MediaInfo",
    "VideoClip",
    "VideoReader",
    "load_video",
    "open_media",
    "probe",
    "sample_indices",
]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP / EVA-CLIP pixel statistics (RGB)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_NUM_FRAMES = 8  # official: every config and the demo use 8 frames
MAX_FRAMES = 32  # rows of the video frame-position embedding table
DEFAULT_IMAGE_SIZE = 224
RESIZE_MODES = ("squash", "keep_aspect")
SAMPLING_MODES = ("uniform", "headtail")
# "index": the i-th frame in presentation order (official, decord); "time": the frame on screen at i / fps.
FRAME_LOOKUPS = ("index", "time")
# decord's resize: FFmpeg's scale filter with its FFmpeg-4.1 default flags, then RGB.
_RESIZE_FILTER = "{width}:{height}:flags=bilinear"
AV_TIME_BASE = 1_000_000  # FFmpeg's container-level time unit (microseconds)
UINT8_MAX = 255.0

# Fewer packets than this fraction of the header's frame count means the file was cut short.
_COMPLETE_FRACTION = 0.9
# Decoder threading: "AUTO" = frame + slice threads (frame threads do the work for H.264).
_THREAD_TYPE = "AUTO"


@dataclass
class MediaInfo:
    """What :func:`probe` learns from the container headers (no frame is decoded)."""

    path: str
    has_video: bool
    has_audio: bool
    duration: float  # seconds (video stream if present, else audio, else container); 0.0 = unknown
    width: int  # 0 when there is no video
    height: int
    fps: float  # average frame rate; 0.0 when there is no video
    num_frames: int | None  # from the header, else round(duration * fps); None if unknown


@dataclass
class VideoClip:
    """Sampled frames of one video and when they were shown."""

    frames: torch.Tensor  # (T, 3, H, W) float32, CLIP-normalised (or in [0, 1] if normalize=False)
    timestamps: list[float]  # seconds from the stream start: pts of each frame actually decoded
    indices: list[int]  # position of each frame in presentation order (decord's frame number)
    fps: float  # average frame rate of the stream
    duration: float  # seconds
    frame_lookup: str = "index"  # how the frames were chosen (FRAME_LOOKUPS)
    stats: DecodeStats = field(default_factory=DecodeStats)

    @property
    def message_seconds(self) -> list[float]:
        """The times the prompt states: ``index / fps`` (official) with ``frame_lookup="index"``,
        the frames' real times with ``"time"``."""
        if self.frame_lookup == "index":
            return [i / self.fps for i in self.indices]
        return list(self.timestamps)

    def timestamp_message(self) -> str:
        return timestamp_message(self.message_seconds)


def timestamp_message(seconds: list[float]) -> str:
    """The official prompt sentence, e.g. "The video contains 8 frames sampled at 0.0, 0.7,
    ... seconds. " (seconds rounded to 0.1; note the trailing space)."""
    stamps = ", ".join(str(round(t, 1)) for t in seconds)
    return f"The video contains {len(seconds)} frames sampled at {stamps} seconds. "


# --------------------------------------------------------------------------- opening / probing


def open_media(path: str | os.PathLike[str], *, max_bytes: int | None = None) -> av.container.InputContainer:
    """Open ``path`` with PyAV after basic checks; every failure is a one-line :class:`MediaError`.

    The caller closes the container (use it as a context manager).
    """
    check_media_file(path, max_bytes)
    try:
        container = av.open(os.fspath(path), mode="r", metadata_errors="ignore")
    except av.FFmpegError as err:
        raise MediaError(path, f"not a readable media file or truncated ({ffmpeg_reason(err)})") from err
    if not container.streams.video and not container.streams.audio:
        container.close()
        raise MediaError(path, "not a media file (no video or audio stream)")
    return container


def _stream_seconds(stream: av.stream.Stream) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    return 0.0


def _video_rate(stream: av.video.stream.VideoStream) -> Fraction | None:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:  # None or 0 means unknown
            return Fraction(rate)
    return None


def _info(path: str | os.PathLike[str], container: av.container.InputContainer) -> MediaInfo:
    container_seconds = container.duration / AV_TIME_BASE if container.duration else 0.0
    has_audio = bool(container.streams.audio)
    if not container.streams.video:
        audio_seconds = _stream_seconds(container.streams.audio[0])
        return MediaInfo(os.fspath(path), False, has_audio, audio_seconds or container_seconds,
                         0, 0, 0.0, None)
    stream = container.streams.video[0]
    rate = _video_rate(stream)
    fps = float(rate) if rate else 0.0
    duration = _stream_seconds(stream) or container_seconds
    num_frames: int | None = stream.frames or None
    if num_frames is None and duration > 0 and fps > 0:
        num_frames = max(1, round(duration * fps))  # header has no count: estimate
    if duration == 0.0 and num_frames and fps > 0:
        duration = num_frames / fps
    ctx = stream.codec_context
    return MediaInfo(os.fspath(path), True, has_audio, duration, ctx.width, ctx.height, fps, num_frames)


def probe(path: str | os.PathLike[str], *, max_bytes: int | None = None) -> MediaInfo:
    """Read stream information from the headers. Raises :class:`MediaError` for a missing, empty,
    truncated, non-media or over-``max_bytes`` file."""
    with open_media(path, max_bytes=max_bytes) as container:
        return _info(path, container)


# --------------------------------------------------------------------------- which frames


def sample_indices(num_video_frames: int, n: int, sampling: str = "uniform",
                   generator: torch.Generator | None = None) -> list[int]:
    """Frame indices the official sampler picks (``n`` is first capped at ``num_video_frames``).

    * ``uniform``: ``np.arange(0, vlen, vlen / n).astype(int)``, the left edge of each of ``n``
      equal bins. numpy's float step occasionally yields ``n + 1`` values (e.g. vlen 17, n 7; never
      for n = 8); the first ``n`` are kept.
    * ``headtail``: ``n // 2`` sorted random indices from the first half and the rest from the
      second half (official uses ``n // 2`` for both, i.e. one frame fewer for odd ``n``).
    """
    if num_video_frames < 1:
        raise ValueError(f"num_video_frames must be >= 1, got {num_video_frames}")
    if n < 1:
        raise UsageError(f"number of frames must be >= 1, got {n}")
    vlen = num_video_frames
    n = min(n, vlen)
    if sampling == "uniform":
        return [int(i) for i in np.arange(0, vlen, vlen / n).astype(int)[:n]]
    if sampling == "headtail":
        half = vlen // 2
        n_head = n // 2
        head = torch.randperm(half, generator=generator)[:n_head].sort().values
        tail = half + torch.randperm(vlen - half, generator=generator)[: n - n_head].sort().values
        return [int(i) for i in torch.cat([head, tail])]
    raise UsageError(f"unknown sampling {sampling!r}; expected one of {SAMPLING_MODES}")


# --------------------------------------------------------------------------- pixels


class FrameResizer:
    """Decoded frame -> (h, w, 3) uint8 RGB through decord's FFmpeg filter graph
    (``scale=w:h:flags=bilinear,format=rgb24``). The graph is built for the frames' size and pixel
    format and rebuilt only when they change."""

    def __init__(self, image_size: int, resize: str, sar: Fraction) -> None:
        self.image_size, self.resize, self.sar = image_size, resize, sar
        self._graph: av.filter.Graph | None = None
        self._key: tuple[int, int, str] | None = None

    def _build(self, frame: av.VideoFrame, time_base: Fraction) -> av.filter.Graph:
        width, height = _output_size(frame, self.image_size, self.resize, self.sar)
        graph = av.filter.Graph()
        source = graph.add_buffer(width=frame.width, height=frame.height, format=frame.format, time_base=time_base)
        scale = graph.add("scale", _RESIZE_FILTER.format(width=width, height=height))
        to_rgb = graph.add("format", "rgb24")
        sink = graph.add("buffersink")
        source.link_to(scale)
        scale.link_to(to_rgb)
        to_rgb.link_to(sink)
        graph.configure()
        return graph

    def __call__(self, frame: av.VideoFrame, time_base: Fraction) -> np.ndarray:
        key = (frame.width, frame.height, frame.format.name)
        if key != self._key:
            self._graph, self._key = self._build(frame, time_base), key
        self._graph.push(frame)
        return self._graph.pull().to_ndarray()  # (h, w, 3)


def _output_size(frame: av.VideoFrame, image_size: int, resize: str, sar: Fraction) -> tuple[int, int]:
    """(width, height) of the resized frame: a square for "squash"; for "keep_aspect" the longer
    displayed side becomes image_size (sar: pixel aspect ratio)."""
    if resize == "squash":
        return image_size, image_size
    display_width = frame.width * float(sar)
    scale = image_size / max(display_width, frame.height)
    width = max(1, min(image_size, round(display_width * scale)))
    height = max(1, min(image_size, round(frame.height * scale)))
    return width, height


def _pixel_aspect(stream: av.video.stream.VideoStream) -> Fraction:
    """Sample (pixel) aspect ratio; 1 when unset (FFmpeg reports unknown as 0 or None)."""
    for sar in (stream.sample_aspect_ratio, stream.codec_context.sample_aspect_ratio):
        if sar:
            return Fraction(sar)
    return Fraction(1)


def _letterbox(images: list[np.ndarray], image_size: int) -> torch.Tensor:
    """Centre (h, w, 3) uint8 images on image_size squares filled with CLIP_MEAN -> (T, 3, S, S)
    float32 in [0, 1]."""
    out = torch.tensor(CLIP_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    out = out.repeat(len(images), 1, image_size, image_size)  # (T, 3, S, S)
    for i, image in enumerate(images):
        height, width, _ = image.shape
        top, left = (image_size - height) // 2, (image_size - width) // 2
        pixels = torch.from_numpy(image).permute(2, 0, 1).float() / UINT8_MAX  # (3, h, w)
        out[i, :, top:top + height, left:left + width] = pixels
    return out


# --------------------------------------------------------------------------- public entry point


def load_video(
    path: str | os.PathLike[str],
    num_frames: int = DEFAULT_NUM_FRAMES,
    *,
    image_size: int = DEFAULT_IMAGE_SIZE,
    resize: str = "squash",
    sampling: str = "uniform",
    frame_lookup: str = "index",
    generator: torch.Generator | None = None,
    max_frames: int = MAX_FRAMES,
    max_bytes: int | None = None,
    max_duration: float | None = None,
    normalize: bool = True,
) -> VideoClip:
    """Sample ``min(num_frames, frames in the video)`` frames as the official loader does.

    Args:
        path: any file FFmpeg can demux with a video stream.
        num_frames: frames wanted (official: 8). A one-frame video gives one frame.
        image_size: output side length; frames are always image_size x image_size.
        resize: "squash" (official: stretch to a square) or "keep_aspect" (longer side to
            image_size, the rest letterboxed with the CLIP mean colour, i.e. 0 after normalising).
        sampling: "uniform" (eval, demo, instruction tuning) or "headtail" (random; pretraining).
        frame_lookup: "index" (official: frame i is the i-th in presentation order) or "time"
            (the frame on screen at i / fps, and the prompt states real times); they differ only
            on variable-frame-rate video.
        generator: randomness for "headtail".
        max_frames: upper bound on num_frames (the model's frame-position table has 32 rows).
        max_bytes, max_duration: refuse larger/longer files with a MediaError.
        normalize: CLIP-normalise; False returns float32 pixels in [0, 1].

    Raises:
        MediaError: unreadable, empty, truncated or over-limit file, or num_frames out of range.
        NoVideoError: the file has no video stream.
    """
    if not 1 <= num_frames <= max_frames:
        raise MediaError(path, f"num_frames must be between 1 and {max_frames} "
                               f"(the frame-position table size), got {num_frames}")
    if sampling not in SAMPLING_MODES:
        raise UsageError(f"unknown sampling {sampling!r}; expected one of {SAMPLING_MODES}")
    with VideoReader(path, image_size=image_size, resize=resize, frame_lookup=frame_lookup, max_bytes=max_bytes,
                     max_duration=max_duration, normalize=normalize) as reader:
        return reader.read(sample_indices(reader.num_frames, num_frames, sampling, generator))


class VideoReader:
    """An open video, scanned once, from which frames are read in ascending batches.

    ``load_video`` reads one batch; long videos are read window by window
    (:mod:`videollama.long_video`): the container, the packet scan and the decoder position stay
    between batches, so reading ascending windows one after another decodes no more than reading
    all their frames at once, and only one batch of decoded frames is held at a time. The packet
    scan keeps one Python int per packet (about 40 bytes: 7 MB for two hours at 25 fps).

    Use as a context manager; every failure is a :class:`MediaError` (``NoVideoError`` when there
    is no video stream).
    """

    def __init__(self, path: str | os.PathLike[str], *, image_size: int = DEFAULT_IMAGE_SIZE, resize: str = "squash",
                 frame_lookup: str = "index", max_bytes: int | None = None, max_duration: float | None = None,
                 normalize: bool = True) -> None:
        if resize not in RESIZE_MODES:
            raise UsageError(f"unknown resize {resize!r}; expected one of {RESIZE_MODES}")
        if frame_lookup not in FRAME_LOOKUPS:
            raise UsageError(f"unknown frame_lookup {frame_lookup!r}; expected one of {FRAME_LOOKUPS}")
        self.path, self.image_size, self.resize, self.normalize = path, image_size, resize, normalize
        self._container = open_media(path, max_bytes=max_bytes)
        try:
            self._open(max_duration, frame_lookup)
        except BaseException:
            self._container.close()
            raise

    def _open(self, max_duration: float | None, frame_lookup: str) -> None:
        path, container = self.path, self._container
        self.info = info = _info(path, container)
        if not info.has_video:
            raise NoVideoError(path, "no video stream (audio-only file?)")
        self._stream = stream = container.streams.video[0]
        rate = _video_rate(stream)
        if rate is None:
            raise MediaError(path, "video stream has no frame rate")
        if max_duration is not None and info.duration > max_duration:  # header check, before any packet is read
            raise MediaError(path, f"video lasts {info.duration:.1f} s, over the limit of {max_duration:g} s")
        self._rate = rate
        stream.thread_type = _THREAD_TYPE
        try:
            scan = scan_packets(container, stream)
        except UnseekableError as err:
            raise MediaError(path, str(err)) from err
        except av.FFmpegError as err:
            raise MediaError(path, f"corrupt or truncated video data ({ffmpeg_reason(err)})") from err
        if scan.count < 1:
            raise MediaError(path, "video stream has no frames")
        if stream.frames and scan.count < _COMPLETE_FRACTION * stream.frames:
            raise MediaError(path, f"truncated or corrupt: {scan.count} video packets present, "
                                   f"the stream header says {stream.frames}")
        self._scan = scan
        self._seeker = FrameSeeker(path, container, stream, rate, keyframes=scan.keyframes)
        self._rescale = FrameResizer(self.image_size, self.resize, _pixel_aspect(stream))
        self.frame_lookup = frame_lookup if scan.pts is not None else "time"
        self.duration = info.duration or self._scanned_duration()
        if max_duration is not None and self.duration > max_duration:  # a header without a duration
            raise MediaError(path, f"video lasts {self.duration:.1f} s, over the limit of {max_duration:g} s")

    def _scanned_duration(self) -> float:
        """Seconds from the packet scan, for streams whose headers give no duration (a broken index)."""
        frame_seconds = 1 / float(self._rate)
        if self._scan.pts is None:
            return self._scan.count * frame_seconds
        return float((self._scan.pts[-1] - self._seeker.start_pts) * self._stream.time_base) + frame_seconds

    @property
    def num_frames(self) -> int:
        """Frames in the stream (packets, as decord counts them)."""
        return self._scan.count

    @property
    def fps(self) -> float:
        return float(self._rate)

    @property
    def stats(self) -> DecodeStats:
        """Decoding work so far, over every batch read."""
        return self._seeker.stats

    def read(self, wanted: list[int]) -> VideoClip:
        """Decode the frames at positions ``wanted`` (ascending, in presentation order) -> a clip."""
        if any(b < a for a, b in zip(wanted, wanted[1:])):
            raise ValueError("frame positions must be ascending")
        if wanted and not 0 <= wanted[0] <= wanted[-1] < self.num_frames:
            raise ValueError(f"frame positions must lie in [0, {self.num_frames}), got {wanted[0]}..{wanted[-1]}")
        stream, scan, seeker, rate = self._stream, self._scan, self._seeker, self._rate
        start = seeker.start_pts
        if self.frame_lookup == "index":
            targets = [scan.pts[i] for i in wanted]  # the i-th frame in presentation order
        else:  # "time", or packets without timestamps: the frame shown at i / fps
            targets = [start + round(Fraction(i) / rate / stream.time_base) for i in wanted]
        images, timestamps, indices = [], [], []
        try:
            for i, target in zip(wanted, targets):
                frame = seeker.frame_at(target, self.duration)
                images.append(self._rescale(frame, stream.time_base))
                timestamps.append(float((frame.pts - start) * stream.time_base))
                indices.append(bisect.bisect_left(scan.pts, frame.pts) if scan.pts is not None else i)
        except av.FFmpegError as err:
            raise MediaError(self.path, f"cannot decode video ({ffmpeg_reason(err)})") from err
        return VideoClip(frames=self._to_tensor(images), timestamps=timestamps, indices=indices, fps=float(rate),
                         duration=self.duration, frame_lookup=self.frame_lookup, stats=seeker.stats)

    def _to_tensor(self, images: list[np.ndarray]) -> torch.Tensor:
        if self.resize == "squash":
            frames = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)  # (T, S, S, 3) -> (T, 3, S, S)
            frames = frames.float().div_(UINT8_MAX)  # [0, 1]
        else:
            frames = _letterbox(images, self.image_size)  # (T, 3, S, S) in [0, 1]
        if self.normalize:
            from .transforms import normalize as clip_normalize

            frames = clip_normalize(frames)
        return frames

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
