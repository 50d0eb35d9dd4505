"""Independent NumPy reference of the official Video-LLaMA audio input (test oracle; no torch).

What the official demo computes for a media file (``video_llama/models/ImageBind/data.py::
load_and_transform_audio_data(paths, device, clips_per_video=8)`` in the Video-LLaMA environment:
torchaudio 0.12.1, pytorchvideo 0.1.5), rebuilt here from the published definitions and sharing
no code with ``videollama``:

1. ``torchaudio.load``: every channel of the first audio stream at its native rate, float32;
   16-bit PCM becomes ``x / 32768`` (:func:`decode_native`: soundfile for WAV/FLAC, PyAV for
   other containers, never resampled by the decoder).
2. ``torchaudio.functional.resample(wave, sr, 16000)`` with its defaults (Hann-windowed sinc,
   ``lowpass_filter_width=6``, ``rolloff=0.99``); nothing happens when ``sr == 16000``
   (:func:`sinc_resample_kernel`, :func:`sinc_resample`).
3. pytorchvideo 0.1.5 ``ConstantClipsPerVideoSampler(clip_duration=2, clips_per_video=8)``:
   clip ``k`` starts at ``k * Fraction(max(D - 2, 0)) / 8`` seconds with ``D = N / 16000`` a
   Python float; the slice is ``[int(start * 16000), int(end * 16000))`` (:func:`clip_bounds`).
4. ImageBind's ``waveform2melspec``: ``waveform -= waveform.mean()`` on the slice *view* of the
   whole (all-channel) track, clip after clip, so samples shared by overlapping clips are
   shifted once per clip holding them (:func:`shifted_clips`); then
   ``torchaudio.compliance.kaldi.fbank`` of channel 0 (:func:`kaldi_fbank`), transpose,
   zero-pad / crop to 204 frames, and torchvision ``Normalize(-4.268, 9.138)``
   (:func:`official_audio_features`).

Precision follows the official dtypes where a value is stored (float32 waveform, float32
resampling kernel, float32 mel banks and window, float32 normalisation); sums and the FFT run
in float64, which differs from torch's float32 accumulation only at ~1e-7 relative.
"""

from __future__ import annotations

import math
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import soundfile

__all__ = [
    "CLIP_SECONDS",
    "FBANK_MEAN",
    "FBANK_STD",
    "NUM_CLIPS",
    "TARGET_RATE",
    "clip_bounds",
    "decode_native",
    "features_from_waveform",
    "kaldi_fbank",
    "mel_banks",
    "official_audio_features",
    "shifted_clips",
    "sinc_resample",
    "sinc_resample_kernel",
]

# ImageBind load_and_transform_audio_data, as Video-LLaMA calls it
TARGET_RATE = 16000
CLIP_SECONDS = 2
NUM_CLIPS = 8
TARGET_FRAMES = 204
NUM_MEL_BINS = 128
FBANK_MEAN, FBANK_STD = -4.268, 9.138
# torchaudio.functional.resample defaults
LOWPASS_FILTER_WIDTH = 6
ROLLOFF = 0.99
# torchaudio.compliance.kaldi.fbank: ImageBind's arguments and the defaults it leaves alone
FRAME_LENGTH_MS, FRAME_SHIFT_MS = 25.0, 10.0
PREEMPHASIS = 0.97
LOW_FREQ, HIGH_FREQ = 20.0, 0.0
EPSILON = np.finfo(np.float32).eps  # kaldi.py: torch.finfo(torch.float).eps
MEL_SCALE, MEL_BREAK = 1127.0, 700.0

SOUNDFILE_SUFFIXES = (".wav", ".flac")
PCM_SCALE = {"u8": 128.0, "s16": 32768.0, "s32": 2.0**31}  # integer sample formats -> [-1, 1)
_MATMUL_ROWS = 1 << 15  # resampling blocks per matrix product (bounds the temporary copy)


# ----------------------------------------------------------------------------- decoding
def decode_native(path: str | os.PathLike[str]) -> tuple[np.ndarray, int]:
    """(channels, N) float32 samples of the first audio stream at its native rate, and the rate."""
    path = Path(path)
    if path.suffix.lower() in SOUNDFILE_SUFFIXES:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)  # (N, C)
        return np.ascontiguousarray(data.T), int(rate)
    chunks: list[np.ndarray] = []
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate
        for frame in container.decode(stream):
            chunks.append(_frame_to_planar_float(frame))
    return np.concatenate(chunks, axis=1), int(rate)


def _frame_to_planar_float(frame: av.AudioFrame) -> np.ndarray:
    """One decoded frame -> (channels, n) float32, without touching its rate."""
    array = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if not frame.format.is_planar:  # packed: (1, n * C), interleaved
        array = array.reshape(-1, channels).T
    name = frame.format.name.rstrip("p")
    if name in PCM_SCALE:
        offset = PCM_SCALE[name] if name == "u8" else 0.0
        return ((array.astype(np.float64) - offset) / PCM_SCALE[name]).astype(np.float32)
    if name not in ("flt", "dbl"):
        raise ValueError(f"unexpected decoded sample format {frame.format.name!r}")
    return array.astype(np.float32)


# ----------------------------------------------------------------------------- resampling
def sinc_resample_kernel(orig_freq: int, new_freq: int, lowpass_filter_width: int = LOWPASS_FILTER_WIDTH,
                         rolloff: float = ROLLOFF) -> tuple[np.ndarray, int, int, int]:
    """torchaudio's Hann-windowed sinc polyphase filters.

    Both rates are divided by their gcd (``o``, ``n``). Output phase ``i`` (of ``n``) sits at
    ``i / n`` input periods of ``1 / o``; its filter spans input offsets ``-w .. w + o - 1``
    with ``w = ceil(width * o / (rolloff * min(o, n)))``:
    ``t = (idx / o - i / n) * b`` (``b = rolloff * min(o, n)``) clipped to ``[-width, width]``,
    ``h = sinc(pi t) * cos(pi t / (2 width))**2 * b / o``. Computed in float32, the dtype of the
    waveform torchaudio passes in.

    Returns:
        (kernel (n, 2w + o) float32, w, o, n)
    """
    gcd = math.gcd(orig_freq, new_freq)
    orig, new = orig_freq // gcd, new_freq // gcd
    base = min(orig, new) * rolloff
    width = math.ceil(lowpass_filter_width * orig / base)
    f32 = np.float32
    idx = np.arange(-width, width + orig, dtype=f32)
    phases = -np.arange(new, dtype=f32)[:, None] / f32(new)  # (n, 1): -i / n
    t = (phases + idx[None, :] / f32(orig)) * f32(base)
    t = np.clip(t, -lowpass_filter_width, lowpass_filter_width).astype(f32)
    window = np.cos(t * f32(math.pi) / f32(lowpass_filter_width) / f32(2)) ** 2
    t = t * f32(math.pi)
    with np.errstate(invalid="ignore", divide="ignore"):
        sinc = np.where(t == 0, f32(1), np.sin(t) / t)
    kernel = (sinc * window * f32(base / orig)).astype(f32)
    return kernel, width, orig, new


def sinc_resample(wave: np.ndarray, orig_freq: int, new_freq: int = TARGET_RATE) -> np.ndarray:
    """(channels, N) float32 at ``orig_freq`` -> (channels, ceil(N * n / o)) float32 at ``new_freq``.

    Zero-pads ``w`` samples before and ``w + o`` after, takes block ``m`` of ``2w + o`` samples
    starting at ``m * o`` (the conv1d with stride ``o``), filters it with every phase, and
    interleaves the phases: output sample ``m * n + i``. Identity when the rates are equal.
    """
    if orig_freq == new_freq:
        return wave
    kernel, width, orig, new = sinc_resample_kernel(orig_freq, new_freq)
    taps = kernel.shape[1]
    length = wave.shape[-1]
    padded = np.pad(wave.astype(np.float64), ((0, 0), (width, width + orig)))
    blocks = (padded.shape[-1] - taps) // orig + 1
    target = math.ceil(new * length / orig)
    out = np.empty((wave.shape[0], blocks * new), dtype=np.float32)
    filters = kernel.astype(np.float64).T  # (taps, n)
    for channel in range(wave.shape[0]):
        windows = np.lib.stride_tricks.sliding_window_view(padded[channel], taps)[::orig]  # (blocks, taps)
        for start in range(0, blocks, _MATMUL_ROWS):
            stop = min(start + _MATMUL_ROWS, blocks)
            out[channel, start * new:stop * new] = (windows[start:stop] @ filters).reshape(-1)
    return out[:, :target]


# ----------------------------------------------------------------------------- clip placement
def clip_bounds(num_samples: int, sample_rate: int = TARGET_RATE, clip_duration: int = CLIP_SECONDS,
                clips: int = NUM_CLIPS) -> list[tuple[int, int]]:
    """[a, b) sample slice of each clip, as pytorchvideo 0.1.5 and ImageBind compute it.

    ``D = num_samples / sample_rate`` (float); ``step = Fraction(max(D - clip, 0)) / clips``
    (0.1.5 divides by ``clips``, later versions by ``clips - 1``); clip ``k`` is
    ``[int(k step sr), int((k step + clip) sr))``, the upper end clipped by the slicing. The
    sampler stops early only when ``step * (k + 1) > max(D - clip, 0)``, which cannot happen
    for ``k + 1 <= clips``, so there are always ``clips`` clips.
    """
    duration = num_samples / sample_rate
    max_start = Fraction(max(duration - clip_duration, 0))
    step = Fraction(max_start, clips)
    bounds = []
    for k in range(clips):
        start = step * k
        end = start + Fraction(clip_duration)
        bounds.append((int(start * sample_rate), min(int(end * sample_rate), num_samples)))
    return bounds


def shifted_clips(track: np.ndarray, bounds: list[tuple[int, int]]) -> list[np.ndarray]:
    """Mutates ``track`` (channels, N) as ``waveform2melspec`` does and returns each clip as the
    fbank sees it (a copy taken right after its own shift, before later clips shift it again).

    For each clip in order: ``view = track[:, a:b]; view -= view.mean()`` (mean over every
    channel and sample of the view, stored back in the track's float32).
    """
    seen = []
    for start, end in bounds:
        view = track[:, start:end]
        view -= np.float32(view.mean(dtype=np.float64))
        seen.append(view.copy())
    return seen


# ----------------------------------------------------------------------------- kaldi fbank
def _mel(freq: np.ndarray) -> np.ndarray:
    return MEL_SCALE * np.log(1.0 + freq / MEL_BREAK)


def mel_banks(num_bins: int = NUM_MEL_BINS, padded_window: int = 512, sample_rate: float = TARGET_RATE,
              low_freq: float = LOW_FREQ, high_freq: float = HIGH_FREQ) -> np.ndarray:
    """(num_bins, padded_window // 2 + 1) float32 triangles, as ``kaldi.get_mel_banks`` (float32
    tensors, scalar ends in float64) plus the zero Nyquist column ``fbank`` pads on."""
    f32 = np.float32
    nyquist = 0.5 * sample_rate
    if high_freq <= 0.0:
        high_freq += nyquist
    mel_low = MEL_SCALE * math.log(1.0 + low_freq / MEL_BREAK)
    mel_high = MEL_SCALE * math.log(1.0 + high_freq / MEL_BREAK)
    delta = (mel_high - mel_low) / (num_bins + 1)
    bins = np.arange(num_bins, dtype=f32)[:, None]
    left = f32(mel_low) + bins * f32(delta)
    center = f32(mel_low) + (bins + f32(1)) * f32(delta)
    right = f32(mel_low) + (bins + f32(2)) * f32(delta)
    fft_freqs = f32(sample_rate / padded_window) * np.arange(padded_window // 2, dtype=f32)
    mel = (f32(MEL_SCALE) * np.log(f32(1) + fft_freqs / f32(MEL_BREAK)))[None, :]
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    weights = np.maximum(f32(0), np.minimum(up, down)).astype(f32)
    return np.pad(weights, ((0, 0), (0, 1)))


def _hann(length: int) -> np.ndarray:
    """torch.hann_window(length, periodic=False): 0.5 - 0.5 cos(2 pi n / (length - 1))."""
    n = np.arange(length, dtype=np.float64)
    return (0.5 - 0.5 * np.cos(2.0 * math.pi * n / (length - 1))).astype(np.float32)


def kaldi_fbank(signal: np.ndarray, sample_rate: int = TARGET_RATE, num_mel_bins: int = NUM_MEL_BINS) -> np.ndarray:
    """(N,) float32 -> (frames, num_mel_bins) float32 log mel energies, as
    ``kaldi.fbank(htk_compat=True, use_energy=False, window_type='hanning', dither=0.0)``.

    snip_edges: frames of 400 samples every 160 (only whole frames); per frame: subtract its
    mean, pre-emphasis ``x[j] - 0.97 x[max(j - 1, 0)]``, Hann window, zero-pad to 512,
    ``|rfft|^2``, mel triangles, ``log(max(., eps))``.
    """
    length = int(sample_rate * FRAME_LENGTH_MS * 0.001)
    shift = int(sample_rate * FRAME_SHIFT_MS * 0.001)
    padded = 1 << (length - 1).bit_length()
    if signal.shape[0] < length:
        raise ValueError(f"{signal.shape[0]} samples: kaldi.fbank needs at least one {length}-sample frame")
    count = 1 + (signal.shape[0] - length) // shift
    frames = np.lib.stride_tricks.sliding_window_view(signal.astype(np.float64), length)[::shift][:count]
    frames = frames - frames.mean(axis=1, keepdims=True)
    previous = np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
    frames = (frames - PREEMPHASIS * previous) * _hann(length)
    power = np.abs(np.fft.rfft(frames, n=padded, axis=1)) ** 2  # (frames, padded // 2 + 1)
    energies = power @ mel_banks(num_mel_bins, padded, sample_rate).astype(np.float64).T
    return np.log(np.maximum(energies, EPSILON)).astype(np.float32)


# ----------------------------------------------------------------------------- pipeline
def features_from_waveform(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    """(channels, N) float32 at ``sample_rate`` -> (8, 1, 128, 204) float32 official features."""
    track = np.array(sinc_resample(np.asarray(wave, dtype=np.float32), sample_rate, TARGET_RATE),
                     dtype=np.float32)  # owned copy: the shifts below mutate it
    out = np.zeros((NUM_CLIPS, 1, NUM_MEL_BINS, TARGET_FRAMES), dtype=np.float32)
    for k, clip in enumerate(shifted_clips(track, clip_bounds(track.shape[1]))):
        feats = kaldi_fbank(clip[0]).T[:, :TARGET_FRAMES]  # (bins, frames), cropped
        out[k, 0, :, :feats.shape[1]] = feats  # the rest stays zero: padding before Normalize
    return (out - np.float32(FBANK_MEAN)) / np.float32(FBANK_STD)


def official_audio_features(path: str | os.PathLike[str]) -> np.ndarray:
    """What the official demo feeds ImageBind for ``path``: (8, 1, 128, 204) float32."""
    wave, rate = decode_native(path)
    return features_from_waveform(wave, rate)
