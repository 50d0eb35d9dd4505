"""Audio loading and ImageBind-style clip features: 8 clips x (1, 128 mel bins, 204 frames).

Official behaviour reproduced (``models/ImageBind/data.py::load_and_transform_audio_data`` with
``clips_per_video=8``, in the official environment's pytorchvideo 0.1.5 and torchaudio; see
``docs/architecture.md``, "Media preprocessing"):

1. read every channel of the first audio stream at its own rate (PyAV; ``torchaudio.load``
   gives the same float samples), then resample to 16 kHz with torchaudio's band-limited sinc
   resampler, reimplemented in plain torch (:mod:`videollama.media.resample`);
2. place 8 windows of 2 s with pytorchvideo 0.1.5's ``ConstantClipsPerVideoSampler``: window
   ``k`` starts at ``k * max(D - 2, 0) / 8`` seconds, ``D = samples / 16000`` (ImageBind's own
   later pytorchvideo pin divides by 7; the Video-LLaMA install has 0.1.5). The sample range is
   ``[int(start * 16000), int((start + 2) * 16000))`` computed with exact fractions. Audio
   shorter than 2 s gives 8 identical windows holding the whole (shorter) signal; windows
   overlap when ``D < 16``, and the last one ends before the track does when ``D > 2``;
3. per window, in order: subtract the window's mean over all channels **in place** on the
   track (the official ``waveform -= waveform.mean()`` acts on a slice view, so a sample shared
   by several overlapping windows is shifted once by each of them, and a later window's mean is
   taken after the earlier shifts), kaldi fbank of channel 0 (so stereo is represented by its
   left channel, not a downmix), transpose to (128, frames), zero-pad or crop to 204 frames
   (2 s -> 198 frames + 6 zero columns; shorter audio -> more zero columns), then
   ``(x - AUDIO_MEAN) / AUDIO_STD``.

Kaldi's per-frame DC removal cancels most of what the mean subtraction does, but not at the
frame edges' pre-emphasis, so the in-place quirk is kept for fidelity. Audio shorter than one
25 ms fbank frame is refused (the official code divides by zero there and the demo falls back to
video only); :class:`NoAudioError` lets callers do the same.
"""

from __future__ import annotations

import logging
import os
from fractions import Fraction

import av
import numpy as np
import torch

from .errors import MediaError, NoAudioError
from .fbank import kaldi_fbank_many, num_frames
from .resample import resample
from .seeking import ffmpeg_reason
from .video import _info, _stream_seconds, open_media

__all__ = [
    "AUDIO_MEAN",
    "AUDIO_STD",
    "CLIP_SECONDS",
    "NUM_CLIPS",
    "NUM_MEL_BINS",
    "SAMPLE_RATE",
    "TARGET_FRAMES",
    "audio_to_clips",
    "clip_sample_ranges",
    "clip_starts",
    "load_audio",
    "load_waveform",
]

logger = logging.getLogger(__name__)

AUDIO_MEAN = -4.268  # ImageBind's fbank statistics (AudioSet)
AUDIO_STD = 9.138
SAMPLE_RATE = 16000
NUM_CLIPS = 8  # Video-LLaMA calls ImageBind's loader with clips_per_video=8
CLIP_SECONDS = 2.0
TARGET_FRAMES = 204  # fbank frames per clip after padding/cropping
NUM_MEL_BINS = 128
# Decoding must yield at least this fraction of the duration in the stream header; less means
# the file was cut short (a truncated download whose index survived).
_COMPLETE_FRACTION = 0.9


def load_waveform(path: str | os.PathLike[str], *, sample_rate: int = SAMPLE_RATE,
                  max_bytes: int | None = None, max_duration: float | None = None) -> torch.Tensor:
    """Decode the first audio stream of a video or audio file -> (channels, N) float32 at
    ``sample_rate``; every channel is kept. The stream is decoded at its own rate and then
    resampled with torchaudio's sinc resampler (:func:`~videollama.media.resample.resample`).

    Raises:
        NoAudioError: no audio stream, or it holds no decodable samples.
        MediaError: unreadable, empty or over-limit file.
    """
    with open_media(path, max_bytes=max_bytes) as container:
        if not container.streams.audio:
            raise NoAudioError(path, "no audio stream")
        info = _info(path, container)
        if max_duration is not None and info.duration > max_duration:
            raise MediaError(path, f"media lasts {info.duration:.1f} s, over the limit of {max_duration:g} s")
        stream = container.streams.audio[0]
        declared = _stream_seconds(stream)  # this stream's own length (0.0 if the header has none)
        native_rate = stream.rate or stream.codec_context.sample_rate
        if not native_rate:
            raise MediaError(path, "audio stream has no sample rate")
        to_float = _float_converter(stream, native_rate)  # sample format only, the rate is kept
        max_samples = None if max_duration is None else int(max_duration * native_rate)
        chunks: list[np.ndarray] = []
        total = errors = 0
        try:
            for packet in container.demux(stream):
                try:
                    frames = packet.decode()
                except av.FFmpegError as err:  # a damaged packet: skip it, as players do
                    errors += 1
                    logger.warning("%s: skipped an undecodable audio packet (%s)", path, ffmpeg_reason(err))
                    continue
                for frame in frames:
                    frame.pts = None  # resample by sample count; avoids timestamp gap handling
                    for out in to_float.resample(frame):
                        chunks.append(out.to_ndarray())  # (channels, n) planar float32
                        total += chunks[-1].shape[1]
                if max_samples is not None and total > max_samples:
                    raise MediaError(path, f"audio lasts over the limit of {max_duration:g} s")
            for out in to_float.resample(None):  # flush the converter
                chunks.append(out.to_ndarray())
        except av.FFmpegError as err:
            raise MediaError(path, f"cannot decode audio ({ffmpeg_reason(err)})") from err
    waveform = torch.from_numpy(np.concatenate(chunks, axis=1)) if chunks else torch.zeros(0, 0)  # (C, N)
    if waveform.shape[-1] == 0:
        detail = f" ({errors} damaged packets)" if errors else ""
        raise NoAudioError(path, f"audio stream has no decodable samples{detail}")
    decoded = waveform.shape[1] / native_rate
    if declared > 0 and decoded < _COMPLETE_FRACTION * declared:
        raise MediaError(path, f"truncated or corrupt: decoded {decoded:.2f} s of audio, "
                               f"the stream header says {declared:.2f} s")
    return resample(waveform, native_rate, sample_rate)  # (C, N') at sample_rate


def _float_converter(stream: av.audio.stream.AudioStream, rate: int) -> av.AudioResampler:
    """Planar float32 at the stream's own rate and channel layout (a format conversion only:
    integer samples are scaled by 1 / 2**(bits - 1), as torchaudio.load does)."""
    try:
        return av.AudioResampler(format="fltp", layout=stream.layout, rate=rate)
    except (ValueError, av.FFmpegError):  # unusual layout descriptions: fall back to the count
        return av.AudioResampler(format="fltp", layout=f"{stream.channels}c", rate=rate)


def clip_starts(duration: float, clips: int = NUM_CLIPS, clip_seconds: float = CLIP_SECONDS) -> list[float]:
    """Start times (s) of pytorchvideo 0.1.5's ConstantClipsPerVideoSampler: ``k * max(D - clip, 0)
    / clips``; e.g. 10 s -> 0, 1, 2, ..., 7."""
    return [float(start) for start in _exact_starts(duration, clips, clip_seconds)]


def _exact_starts(duration: float, clips: int, clip_seconds: float) -> list[Fraction]:
    if clips < 1:
        raise ValueError(f"clips must be >= 1, got {clips}")
    # pytorchvideo 0.1.5: Fraction(Fraction(max(duration - clip_duration, 0)), clips_per_video) * k
    step = Fraction(max(duration - clip_seconds, 0)) / clips
    return [step * k for k in range(clips)]


def clip_sample_ranges(num_samples: int, sample_rate: int = SAMPLE_RATE, clips: int = NUM_CLIPS,
                       clip_seconds: float = CLIP_SECONDS) -> list[tuple[int, int]]:
    """[start, end) sample index of each clip, as ``waveform[:, int(start * sr):int(end * sr)]``
    (ends past the signal are clipped by slicing, so short audio gives shorter clips)."""
    duration = num_samples / sample_rate
    ranges = []
    for start in _exact_starts(duration, clips, clip_seconds):
        end = start + Fraction(clip_seconds)
        ranges.append((int(start * sample_rate), min(int(end * sample_rate), num_samples)))
    return ranges


def audio_to_clips(waveform: torch.Tensor, sample_rate: int = SAMPLE_RATE, clips: int = NUM_CLIPS,
                   clip_seconds: float = CLIP_SECONDS, target_frames: int = TARGET_FRAMES,
                   num_mel_bins: int = NUM_MEL_BINS) -> torch.Tensor:
    """(channels, N) or (N,) waveform at ``sample_rate`` -> (clips, 1, num_mel_bins, target_frames)
    normalised log-mel features, the ImageBind audio input."""
    if waveform.dim() == 1:
        waveform = waveform.unsqueeze(0)  # (1, N)
    if waveform.dim() != 2:
        raise ValueError(f"waveform must be (N,) or (channels, N), got {tuple(waveform.shape)}")
    if num_frames(waveform.shape[1], sample_rate=sample_rate) == 0:
        raise ValueError(f"audio of {waveform.shape[1]} samples is shorter than one 25 ms fbank frame")
    track = waveform.float().clone()  # (C, N); the windows' mean subtraction edits it in place
    signals = []
    for start, end in clip_sample_ranges(waveform.shape[1], sample_rate, clips, clip_seconds):
        segment = track[:, start:end]  # (C, n), a view: overlapping windows share samples
        segment -= segment.mean()  # over all channels (official), in place, as the official code
        signals.append(segment[0].clone())  # the fbank reads channel 0 as it is now
    out = torch.zeros(clips, 1, num_mel_bins, target_frames)  # zero columns = padding
    for k, feats in enumerate(kaldi_fbank_many(signals, sample_rate=sample_rate, num_mel_bins=num_mel_bins)):
        feats = feats.T[:, :target_frames]  # (F, bins) -> (bins, F), cropped to target_frames
        out[k, 0, :, : feats.shape[1]] = feats
    return (out - AUDIO_MEAN) / AUDIO_STD  # (clips, 1, bins, target_frames)


def load_audio(path: str | os.PathLike[str], clips: int = NUM_CLIPS, *, clip_seconds: float = CLIP_SECONDS,
               sample_rate: int = SAMPLE_RATE, target_frames: int = TARGET_FRAMES,
               num_mel_bins: int = NUM_MEL_BINS, max_bytes: int | None = None,
               max_duration: float | None = None) -> torch.Tensor:
    """Audio of a video or audio file -> (clips, 1, num_mel_bins, target_frames) features.

    Raises:
        NoAudioError: no audio stream, or too little audio for one fbank frame.
        MediaError: unreadable, empty or over-limit file.
    """
    waveform = load_waveform(path, sample_rate=sample_rate, max_bytes=max_bytes, max_duration=max_duration)
    if num_frames(waveform.shape[1], sample_rate=sample_rate) == 0:
        raise NoAudioError(path, f"audio is only {waveform.shape[1] / sample_rate * 1000:.1f} ms long, "
                                 "shorter than one 25 ms fbank frame")
    return audio_to_clips(waveform, sample_rate, clips, clip_seconds, target_frames, num_mel_bins)
