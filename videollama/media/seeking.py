"""Finding decoded frames by presentation time: seek to the keyframe before, decode forward.

:func:`scan_packets` demuxes (never decodes) the whole video stream once, as decord's index does:
frame ``i`` is the packet with the ``i``-th smallest pts, and the keyframe packets' pts tell the
seeker where a seek can land. :class:`FrameSeeker` answers ascending target pts with the decoded frame
whose pts is nearest: it keeps decoding forward while no keyframe lies between its position and the
next target, and otherwise seeks (``container.seek`` flushes the decoder) to the keyframe at or before
it. Non-reference frames well before a target are skipped by the decoder (``skip_frame="NONREF"``):
nothing references them, so every decoded frame is bit-identical to a decode-everything pass.
:class:`DecodeStats` counts the work, for tests and benchmarks.
"""

from __future__ import annotations

import bisect
import collections
import logging
import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator

import av

from .errors import MediaError

__all__ = ["DecodeStats", "FrameSeeker", "PacketScan", "UnseekableError", "ffmpeg_reason", "scan_packets"]

logger = logging.getLogger(__name__)

# Non-reference frames more than this many nominal frame durations before a target are skipped.
# Frames closer than that are always decoded, so the nearest-pts choice sees every candidate.
_SKIP_MARGIN_FRAMES = 4
# With no keyframe index (e.g. MPEG-TS), keep decoding forward when the next target is closer
# than this instead of seeking (a seek re-decodes from the previous keyframe).
_NO_INDEX_FORWARD_SECONDS = 1.0
# First seek back-off when a seek lands after its target (it doubles on each retry).
_SEEK_BACKOFF_SECONDS = 1.0
# At end of stream, the last frame stands in for a later target only if it is this close;
# farther means the file is cut short (e.g. a truncated download whose index survived).
_END_TOLERANCE_FRAMES = 3
_END_TOLERANCE_FRACTION = 0.1  # ... or within this fraction of the duration

@dataclass
class DecodeStats:
    """How much work sampling took (for tests and benchmarks)."""

    packets: int = 0  # packets handed to the decoder (skipped non-reference ones included)
    frames: int = 0  # frames the decoder produced
    seeks: int = 0
    decode_errors: int = 0  # packets the decoder rejected (logged; sampling went on)


def ffmpeg_reason(err: av.FFmpegError) -> str:
    """FFmpeg's own short description of an error, without the file name PyAV appends."""
    return getattr(err, "strerror", None) or str(err)



class FrameSeeker:
    """Returns, for ascending target pts, the decoded frame whose pts is nearest to each target.

    Keeps the decoder's last two output frames so that consecutive targets between them are
    answered without decoding; seeks only when a keyframe lies between the current position and
    the next target (or when there is no current position).
    """

    def __init__(self, path: str | os.PathLike[str], container: av.container.InputContainer,
                 stream: av.video.stream.VideoStream, rate: Fraction, keyframes: list[int] | None = None) -> None:
        self.path = path
        self.container = container
        self.stream = stream
        self.codec = stream.codec_context
        self.time_base = stream.time_base
        self.start_pts = stream.start_time or 0
        self.frame_pts = float(1 / (rate * self.time_base))  # nominal frame duration in pts units
        # exact keyframe pts from the packet scan when there was one, else the demuxer's index
        self._scanned_keyframes = keyframes is not None
        self.keyframes = keyframes if keyframes is not None else self._keyframe_pts()
        self.stats = DecodeStats()
        self._packets: Iterator[av.Packet] | None = None
        self._pending: collections.deque[av.VideoFrame] = collections.deque()
        self._prev: av.VideoFrame | None = None  # output frame before _last (None right after a seek)
        self._last: av.VideoFrame | None = None
        self._at_start = False  # True when _last is the first frame after seeking to the stream start

    def _keyframe_pts(self) -> list[int]:
        """Approximate keyframe pts from the demuxer index (empty if the format has none).

        The mp4 index stores decode timestamps; keyframes of one stream share the same
        pts - dts offset, taken from the first entry and the stream's start time.
        """
        try:
            entries = [(e.timestamp, e.is_keyframe) for e in self.stream.index_entries]
        except (AttributeError, av.FFmpegError):  # PyAV < 14 or a demuxer without an index
            return []
        keyframes = sorted(ts for ts, key in entries if key)
        if not keyframes:
            return []
        offset = max(0, self.start_pts - entries[0][0])
        return [ts + offset for ts in keyframes]

    def _keyframe_at_or_before(self, target: int) -> int | None:
        pos = bisect.bisect_right(self.keyframes, target)
        return self.keyframes[pos - 1] if pos else None

    def _should_seek(self, target: int) -> bool:
        if self._last is None:
            return True
        last = self._last.pts
        if last >= target:
            return self._prev is None and not self._at_start and last > target
        if self.keyframes:
            keyframe = self._keyframe_at_or_before(target)
            return keyframe is not None and keyframe > last
        return (target - last) * self.time_base > _NO_INDEX_FORWARD_SECONDS

    def _seek(self, target: int) -> None:
        self._at_start = target <= self.start_pts
        if self._at_start:  # the very beginning: 0 (or below) lands on the first packet in every format
            target = min(0, self.start_pts)
        # backward=True: land on the keyframe at or before target; the decoder is flushed.
        self.container.seek(target, stream=self.stream, backward=True, any_frame=False)
        self.stats.seeks += 1
        if self.stats.seeks == 1 and not self._scanned_keyframes:  # Matroska loads its index on the first seek
            self.keyframes = self._keyframe_pts()
        self._packets = self.container.demux(self.stream)
        self._pending.clear()
        self._prev = self._last = None

    def _next_frame(self, target: int) -> av.VideoFrame | None:
        """The decoder's next output frame, or None at end of stream."""
        skip_before = target - _SKIP_MARGIN_FRAMES * self.frame_pts
        while not self._pending:
            if self._packets is None:
                return None
            try:
                packet = next(self._packets)
            except StopIteration:
                self._packets = None
                return None
            except av.FFmpegError as err:
                raise MediaError(self.path, f"corrupt or truncated video data ({ffmpeg_reason(err)})") from err
            far_before = packet.pts is not None and packet.pts < skip_before
            self.codec.skip_frame = "NONREF" if far_before else "DEFAULT"
            self.stats.packets += packet.size > 0
            try:
                frames = self.codec.decode(packet)
            except av.FFmpegError as err:
                self.stats.decode_errors += 1
                logger.warning("%s: skipped an undecodable video packet (%s)", self.path, ffmpeg_reason(err))
                continue
            self.stats.frames += len(frames)
            for frame in frames:
                if frame.pts is None:  # no timestamp from the container: continue the sequence
                    prev = self._pending[-1] if self._pending else self._last
                    frame.pts = round(prev.pts + self.frame_pts) if prev is not None else self.start_pts
            self._pending.extend(frames)
        return self._pending.popleft()

    def frame_at(self, target: int, duration: float) -> av.VideoFrame:
        """The frame whose pts is nearest ``target`` (ties go to the earlier frame)."""
        if self._should_seek(target):
            self._seek(target)
        backoff = _SEEK_BACKOFF_SECONDS
        while True:
            ended = False
            while self._last is None or self._last.pts < target:
                frame = self._next_frame(target)
                if frame is None:
                    ended = True
                    break
                self._prev, self._last = self._last, frame
            landed_late = self._last is None or (
                self._prev is None and self._last.pts > target)  # nothing decoded at/before target
            if not landed_late or self._at_start:
                break
            # The seek landed after the target (formats whose seek is not keyframe-exact, such as
            # MPEG-TS, or a cut-off file): seek further back, doubling the distance each time.
            self._seek(target - round(backoff / self.time_base))
            backoff *= 2
        if ended:
            return self._end_of_stream(target, duration)
        if self._prev is not None and target - self._prev.pts <= self._last.pts - target:
            return self._prev
        return self._last

    def _end_of_stream(self, target: int, duration: float) -> av.VideoFrame:
        seconds = float((target - self.start_pts) * self.time_base)
        if self._last is None:
            raise MediaError(self.path, f"truncated or corrupt: no frame could be decoded near {seconds:.2f} s")
        gap = float((target - self._last.pts) * self.time_base)
        tolerance = max(_END_TOLERANCE_FRAMES * float(self.frame_pts * self.time_base),
                        _END_TOLERANCE_FRACTION * duration)
        if gap > tolerance:
            last = float((self._last.pts - self.start_pts) * self.time_base)
            raise MediaError(self.path, f"truncated or corrupt: video ends at {last:.2f} s, "
                                        f"before the frame wanted at {seconds:.2f} s")
        return self._last  # the last frame stays on screen until the end


class UnseekableError(Exception):
    """The container cannot seek back (raised by the packet scan; becomes a MediaError)."""


@dataclass
class PacketScan:
    """Every packet of the video stream, read once without decoding (as decord's index)."""

    pts: list[int] | None  # presentation timestamps in ascending order; None if a packet had none
    keyframes: list[int] | None  # pts of the keyframe packets, ascending (None as above)
    count: int  # packets (decord's frame count)


def scan_packets(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> PacketScan:
    """Demux (not decode) the whole stream, then rewind: frame ``i`` is the packet with the
    ``i``-th smallest pts."""
    pts: list[int] = []
    keyframes: list[int] = []
    count = 0
    missing = False
    for packet in container.demux(stream):
        if packet.size == 0:  # the demuxer's end-of-stream flush packet
            continue
        count += 1
        if packet.pts is None:
            missing = True
            continue
        pts.append(packet.pts)
        if packet.is_keyframe:
            keyframes.append(packet.pts)
    try:
        container.seek(stream.start_time or 0, stream=stream, backward=True)
    except av.FFmpegError as err:
        raise UnseekableError(f"the stream cannot be rewound after its packet scan ({ffmpeg_reason(err)}): "
                              "a raw elementary or live stream; remux it into a file first "
                              "(ffmpeg -i IN -c copy OUT.mp4)") from err
    if missing:
        return PacketScan(None, None, count)
    return PacketScan(sorted(pts), sorted(keyframes), count)
