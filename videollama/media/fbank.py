"""Kaldi-compatible log mel filterbank in plain torch (no torchaudio).

Reproduces ``torchaudio.compliance.kaldi.fbank`` for the settings ImageBind's audio loader uses
(``htk_compat=True, use_energy=False, window_type="hanning", num_mel_bins=128, dither=0.0,
frame_length=25, frame_shift=10``) and the other kaldi defaults it leaves alone:
``snip_edges=True`` (only whole frames), ``round_to_power_of_two=True`` (400-sample frames are
zero-padded to a 512-point FFT), ``remove_dc_offset=True``, ``preemphasis_coefficient=0.97``,
power spectrum, ``low_freq=20``, ``high_freq=0`` (= Nyquist), ``use_log_fbank=True`` with the
float32 epsilon as the floor.

Steps, per frame of ``frame_length`` samples taken every ``frame_shift`` samples:
    1. subtract the frame mean (DC offset);
    2. pre-emphasis ``x[n] - 0.97 x[n-1]`` with ``x[-1] = x[0]``;
    3. window (``hanning``: symmetric Hann; ``povey``: Hann ** 0.85; also ``hamming``,
       ``rectangular``);
    4. zero-pad to the next power of two, power spectrum ``|rfft|^2``;
    5. triangular filters equally spaced on the mel scale ``1127 ln(1 + f / 700)`` between
       ``low_freq`` and ``high_freq``; the Nyquist bin gets weight 0;
    6. ``log(max(energy, eps))``.

With 128 bins at 16 kHz, filter 3 covers no FFT bin (the 512-point FFT is too coarse there), so
its output is the constant ``log(eps) = -15.942`` in every frame, in torchaudio and here.
(kaldi-native-fbank refuses this configuration instead.)

Example::

    feats = kaldi_fbank(torch.randn(1, 32000))  # (198, 128) for 2 s at 16 kHz
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import torch

__all__ = ["EPSILON", "kaldi_fbank", "kaldi_fbank_many", "mel_banks", "num_frames"]

EPSILON = torch.finfo(torch.float32).eps  # log floor, as torchaudio's _get_epsilon
MEL_BREAK_HZ = 700.0  # mel(f) = 1127 ln(1 + f / 700)
MEL_HIGH_FREQ_Q = 1127.0
ENERGY_FLOOR = 1.0  # kaldi's default energy_floor (only used with use_energy=True)
POVEY_POWER = 0.85
HAMMING_ALPHA, HAMMING_BETA = 0.54, 0.46
MS_PER_SECOND = 1000.0
WINDOWS = ("hanning", "povey", "hamming", "rectangular")


def _mel(freq: torch.Tensor | float) -> torch.Tensor | float:
    if isinstance(freq, torch.Tensor):
        return MEL_HIGH_FREQ_Q * torch.log1p(freq / MEL_BREAK_HZ)
    return MEL_HIGH_FREQ_Q * math.log1p(freq / MEL_BREAK_HZ)


@functools.lru_cache(maxsize=16)
def mel_banks(num_bins: int, fft_size: int, sample_rate: float, low_freq: float,
              high_freq: float) -> torch.Tensor:
    """(num_bins, fft_size // 2 + 1) float32 triangular mel filters (last column, Nyquist, = 0).

    Cached: do not modify the returned tensor.
    """
    nyquist = 0.5 * sample_rate
    if high_freq <= 0.0:
        high_freq += nyquist  # kaldi: non-positive high_freq is an offset from Nyquist
    if not 0.0 <= low_freq < high_freq <= nyquist:
        raise ValueError(f"need 0 <= low_freq < high_freq <= {nyquist}, got {low_freq}, {high_freq}")
    mel_low, mel_high = _mel(low_freq), _mel(high_freq)
    delta = (mel_high - mel_low) / (num_bins + 1)
    bins = torch.arange(num_bins, dtype=torch.float64).unsqueeze(1)  # (num_bins, 1)
    left, center, right = mel_low + bins * delta, mel_low + (bins + 1) * delta, mel_low + (bins + 2) * delta
    freqs = (sample_rate / fft_size) * torch.arange(fft_size // 2, dtype=torch.float64)
    mel = _mel(freqs).unsqueeze(0)  # (1, fft_size // 2)
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    weights = torch.clamp(torch.minimum(up, down), min=0.0)  # (num_bins, fft_size // 2)
    weights = torch.nn.functional.pad(weights, (0, 1))  # Nyquist column: weight 0
    return weights.to(torch.float32)


def _window(name: str, length: int) -> torch.Tensor:
    if name == "hanning":
        return torch.hann_window(length, periodic=False, dtype=torch.float64)
    if name == "povey":
        return torch.hann_window(length, periodic=False, dtype=torch.float64).pow(POVEY_POWER)
    if name == "hamming":
        return torch.hamming_window(length, periodic=False, alpha=HAMMING_ALPHA, beta=HAMMING_BETA,
                                    dtype=torch.float64)
    if name == "rectangular":
        return torch.ones(length, dtype=torch.float64)
    raise ValueError(f"unknown window {name!r}; expected one of {WINDOWS}")


def num_frames(num_samples: int, *, sample_rate: int = 16000, frame_length_ms: float = 25.0,
               frame_shift_ms: float = 10.0) -> int:
    """Frames kaldi produces with snip_edges=True (0 if shorter than one frame)."""
    length = int(sample_rate * frame_length_ms / MS_PER_SECOND)
    shift = int(sample_rate * frame_shift_ms / MS_PER_SECOND)
    return 0 if num_samples < length else 1 + (num_samples - length) // shift


def kaldi_fbank(
    waveform: torch.Tensor,
    *,
    sample_rate: int = 16000,
    num_mel_bins: int = 128,
    frame_length_ms: float = 25.0,
    frame_shift_ms: float = 10.0,
    window: str = "hanning",
    dither: float = 0.0,
    preemphasis: float = 0.97,
    remove_dc: bool = True,
    htk_compat: bool = True,
    use_energy: bool = False,
    low_freq: float = 20.0,
    high_freq: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Log mel filterbank of channel 0 of ``waveform`` ((C, N) or (N,)) -> (frames, num_mel_bins)
    float32 (one more column, the log energy, if ``use_energy``: last with ``htk_compat``,
    first otherwise). Fewer than one frame of samples gives a (0, bins) tensor."""
    if waveform.dim() == 2:
        signal = waveform[0]
    elif waveform.dim() == 1:
        signal = waveform
    else:
        raise ValueError(f"waveform must be (N,) or (channels, N), got {tuple(waveform.shape)}")
    return kaldi_fbank_many(
        [signal], sample_rate=sample_rate, num_mel_bins=num_mel_bins, frame_length_ms=frame_length_ms,
        frame_shift_ms=frame_shift_ms, window=window, dither=dither, preemphasis=preemphasis,
        remove_dc=remove_dc, htk_compat=htk_compat, use_energy=use_energy, low_freq=low_freq,
        high_freq=high_freq, generator=generator)[0]


def kaldi_fbank_many(
    signals: Sequence[torch.Tensor],
    *,
    sample_rate: int = 16000,
    num_mel_bins: int = 128,
    frame_length_ms: float = 25.0,
    frame_shift_ms: float = 10.0,
    window: str = "hanning",
    dither: float = 0.0,
    preemphasis: float = 0.97,
    remove_dc: bool = True,
    htk_compat: bool = True,
    use_energy: bool = False,
    low_freq: float = 20.0,
    high_freq: float = 0.0,
    generator: torch.Generator | None = None,
) -> list[torch.Tensor]:
    """:func:`kaldi_fbank` of several 1-D signals in one batched pass (same result as one call
    each; fewer, larger tensor ops)."""
    length = int(sample_rate * frame_length_ms / MS_PER_SECOND)  # 400 samples
    shift = int(sample_rate * frame_shift_ms / MS_PER_SECOND)  # 160 samples
    fft_size = 1 << max(0, (length - 1).bit_length())  # next power of two: 512
    extra = 1 if use_energy else 0
    counts, pieces = [], []
    for signal in signals:
        if signal.dim() != 1:
            raise ValueError(f"each signal must be 1-D, got {tuple(signal.shape)}")
        signal = signal.to(torch.float32).contiguous()
        count = num_frames(signal.numel(), sample_rate=sample_rate, frame_length_ms=frame_length_ms,
                           frame_shift_ms=frame_shift_ms)
        counts.append(count)
        if count:
            pieces.append(signal.unfold(0, length, shift))  # (F_i, L) overlapping views
    if not pieces:
        return [torch.zeros(0, num_mel_bins + extra) for _ in signals]
    frames = torch.cat(pieces)  # (F, L), F = sum of F_i
    if dither != 0.0:
        frames = frames + dither * torch.randn(frames.shape, generator=generator)
    if remove_dc:
        frames = frames - frames.mean(dim=1, keepdim=True)
    if use_energy:  # kaldi raw_energy=True: energy before pre-emphasis and windowing
        energy = frames.pow(2).sum(dim=1).clamp_min(EPSILON).log()
        energy = energy.clamp_min(math.log(ENERGY_FLOOR))
    if preemphasis != 0.0:
        previous = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)  # x[n-1] with x[-1] = x[0]
        frames = frames - preemphasis * previous
    frames = frames * _window(window, length).to(torch.float32)
    frames = torch.nn.functional.pad(frames, (0, fft_size - length))  # (F, fft_size)
    power = torch.fft.rfft(frames).abs().pow(2)  # (F, fft_size // 2 + 1)
    banks = mel_banks(num_mel_bins, fft_size, float(sample_rate), float(low_freq), float(high_freq))
    feats = (power @ banks.T).clamp_min(EPSILON).log()  # (F, num_mel_bins)
    if use_energy:
        column = energy.unsqueeze(1)
        feats = torch.cat([feats, column] if htk_compat else [column, feats], dim=1)
    return list(torch.split(feats, counts))
