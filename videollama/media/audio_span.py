"""Audio clips of one time span of a long file, decoded by seeking: never the whole track in memory.

:func:`~videollama.media.audio.load_audio` reads the whole track, as the official loader does;
for an hour of 48 kHz stereo that is 1.4 GB of float samples. A window of a long video needs only
its own span: :class:`AudioSpanReader` seeks to it, decodes it (plus a short margin on each side,
so the decoder's overlap and the resampler's filter see real neighbours), resamples to 16 kHz and
places the official 8 clips of 2 s inside the span, as if the span were the whole track
(:func:`~videollama.media.audio.audio_to_clips`: window ``k`` starts at ``k * max(D - 2, 0) / 8``
seconds into the span, ``D`` its length).

A span up to :data:`WHOLE_SPAN_SECONDS` long is decoded whole (the official in-place mean
subtraction of overlapping clips then acts as it does on a short file); a longer span (a window
that merged many frames) decodes only its 8 clips, which cannot overlap once the span exceeds
18 s. The native-rate excerpt starts on a multiple of the resampler's period, so its 16 kHz
samples sit on the same grid as a whole-track resample.
"""

from __future__ import annotations

import math
import os

import av
import numpy as np
import torch

from .audio import CLIP_SECONDS, NUM_CLIPS, SAMPLE_RATE, _float_converter, audio_to_clips, clip_sample_ranges, load_audio
from .errors import MediaError, NoAudioError
from .fbank import num_frames
from .resample import resample
from .seeking import ffmpeg_reason
from .video import open_media

__all__ = ["AudioSpanReader", "WHOLE_SPAN_SECONDS", "whole_file_audio"]

# Spans up to this long are decoded whole; longer ones clip by clip.
WHOLE_SPAN_SECONDS = 64.0
# Decoded on each side of a span: covers the AAC/MP3 frame overlap (2048 samples) and the sinc filter.
_MARGIN_SECONDS = 0.1


class AudioSpanReader:
    """The first audio stream of a file, read span by span. Use as a context manager.

    Raises:
        NoAudioError: no audio stream.
        MediaError: unreadable file, or a stream without a sample rate.
    """

    def __init__(self, path: str | os.PathLike[str], *, max_bytes: int | None = None,
                 sample_rate: int = SAMPLE_RATE) -> None:
        self.path, self.sample_rate = path, sample_rate
        self._container = open_media(path, max_bytes=max_bytes)
        if not self._container.streams.audio:
            self._container.close()
            raise NoAudioError(path, "no audio stream")
        self._stream = stream = self._container.streams.audio[0]
        self.native_rate = stream.rate or stream.codec_context.sample_rate
        if not self.native_rate:
            self._container.close()
            raise MediaError(path, "audio stream has no sample rate")
        start = stream.start_time if stream.start_time is not None else 0
        self._start_seconds = float(start * stream.time_base) if stream.time_base else 0.0
        # native samples per resampler period: excerpts start on multiples of it
        self._period = self.native_rate // math.gcd(self.native_rate, sample_rate)

    @property
    def stated_seconds(self) -> float | None:
        """The track's length as its header states it (None when it does not); cheap, but it can differ from the
        decoded length by an audio frame (:meth:`track_seconds`)."""
        stream = self._stream
        return float(stream.duration * stream.time_base) if stream.duration and stream.time_base else None

    def track_seconds(self) -> float:
        """The track's length as the official loader measures it: decoded samples, resampled to ``sample_rate``,
        over ``sample_rate``. Decodes the whole track but keeps none of it (a container's stated duration can
        differ by an audio frame, which would move every clip's start)."""
        stream = self._stream
        self._container.seek(0, stream=stream, backward=True)
        native = 0
        try:
            for packet in self._container.demux(stream):
                try:
                    native += sum(frame.samples for frame in packet.decode())
                except av.FFmpegError:  # a damaged packet: skipped, as the whole-track loader skips it
                    continue
        except av.FFmpegError as err:
            raise MediaError(self.path, f"cannot decode audio ({ffmpeg_reason(err)})") from err
        return math.ceil(native * self.sample_rate / self.native_rate) / self.sample_rate

    def clips(self, start: float, end: float, clips: int = NUM_CLIPS) -> torch.Tensor:
        """The ``clips`` official 2-s clips of the span [start, end) seconds -> (clips, 1, 128, 204).

        Raises:
            NoAudioError: the span holds too little audio for one fbank frame.
        """
        if end <= start:
            raise ValueError(f"empty audio span [{start}, {end})")
        duration = end - start
        if duration <= WHOLE_SPAN_SECONDS:
            return audio_to_clips(self._checked(self.waveform(start, end), start), self.sample_rate, clips)
        sr, first = self.sample_rate, int(start * self.sample_rate)
        pieces = []  # each clip's samples exactly as the official slice of the span's waveform would hold them
        for lo, hi in clip_sample_ranges(int(end * sr) - first, sr, clips, CLIP_SECONDS):
            piece = self._checked(self.samples(first + lo, first + hi), (first + lo) / sr)
            pieces.append(audio_to_clips(piece, sr, 1))
        return torch.cat(pieces)  # (clips, 1, 128, 204)

    def _checked(self, waveform: torch.Tensor, start: float) -> torch.Tensor:
        if num_frames(waveform.shape[-1], sample_rate=self.sample_rate) == 0:
            raise NoAudioError(self.path, f"no audio at {start:.1f} s (the track is shorter than the video?)")
        return waveform

    def waveform(self, start: float, end: float) -> torch.Tensor:
        """(channels, N) float32 at ``sample_rate`` for [start, end) seconds of the track (cut short
        where the track ends), as the official ``waveform[int(start * sr):int(end * sr)]`` slices."""
        return self.samples(int(start * self.sample_rate), int(end * self.sample_rate))

    def samples(self, lo: int, hi: int) -> torch.Tensor:
        """(channels, N) float32: samples [lo, hi) of the track resampled to ``sample_rate`` (cut short where it ends)."""
        rate, sr = self.native_rate, self.sample_rate
        first = max(0, math.floor((lo / sr - _MARGIN_SECONDS) * rate))
        first -= first % self._period  # on the resampler's grid
        last = math.ceil((hi / sr + _MARGIN_SECONDS) * rate)
        native = self._decode(first, last)  # (C, n) from native sample `first`
        if native.shape[1] == 0:
            return native
        out = resample(native, rate, sr)
        offset = first * sr // rate  # exact: `first` is a multiple of the period
        return out[:, max(lo - offset, 0):max(hi - offset, 0)].contiguous()

    def _decode(self, first: int, last: int) -> torch.Tensor:
        """Native samples [first, last) of the track (sample 0 = the stream's start)."""
        stream, rate = self._stream, self.native_rate
        # A margin before the first sample: the decoder's first frame after a seek lacks its overlap
        # (and at the start, the priming packet sits before 0).
        seconds = first / rate + self._start_seconds - _MARGIN_SECONDS
        self._container.seek(math.floor(seconds / stream.time_base), stream=stream, backward=True)
        to_float = _float_converter(stream, rate)
        chunks: list[np.ndarray] = []
        position: int | None = None  # native sample index of the next decoded sample
        try:
            for packet in self._container.demux(stream):
                try:
                    frames = packet.decode()
                except av.FFmpegError:  # a damaged packet (or the first one after a seek): skip it
                    continue
                for frame in frames:
                    if position is None or frame.pts is not None:
                        position = self._sample_of(frame, position)
                    frame.pts = None  # a format conversion only; timestamps are tracked here
                    samples = np.concatenate([out.to_ndarray() for out in to_float.resample(frame)] or
                                             [np.zeros((len(stream.layout.channels), 0), np.float32)], axis=1)
                    lo, hi = max(first - position, 0), min(last - position, samples.shape[1])
                    if lo < hi:
                        chunks.append(samples[:, lo:hi])
                    position += samples.shape[1]
                if position is not None and position >= last:
                    break
        except av.FFmpegError as err:
            raise MediaError(self.path, f"cannot decode audio ({ffmpeg_reason(err)})") from err
        if not chunks:
            return torch.zeros(len(stream.layout.channels) or 1, 0)
        return torch.from_numpy(np.concatenate(chunks, axis=1))  # (C, n)

    def _sample_of(self, frame: av.AudioFrame, position: int | None) -> int:
        if frame.pts is None or frame.time_base is None:
            if position is None:
                raise MediaError(self.path, "audio frames carry no timestamps: cannot seek in the track")
            return position
        return round((float(frame.pts * frame.time_base) - self._start_seconds) * self.native_rate)

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> "AudioSpanReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def whole_file_audio(path: str | os.PathLike[str], *, max_bytes: int | None = None) -> torch.Tensor:
    """The official 8 clips of 2 s of a whole file's track -> (8, 1, 128, 204).

    Up to :data:`WHOLE_SPAN_SECONDS` the whole track is decoded, as the official
    loader does (:func:`~videollama.media.audio.load_audio`); a longer file (an hour sampled as 8 frames) seeks to its 8
    clips only (:class:`AudioSpanReader`), so memory does not grow with its length.
    """
    with AudioSpanReader(path, max_bytes=max_bytes) as reader:
        stated = reader.stated_seconds
        if stated is None or stated > WHOLE_SPAN_SECONDS:  # unknown or long: measured, then sought clip by clip
            duration = reader.track_seconds()
            if duration > WHOLE_SPAN_SECONDS:
                return reader.clips(0.0, duration)
    return load_audio(path, max_bytes=max_bytes)
