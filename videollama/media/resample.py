"""Band-limited sinc resampling in plain torch, as ``torchaudio.functional.resample`` computes it.

The official audio loader resamples every track to 16 kHz with torchaudio's default method
(``sinc_interp_hann``, ``lowpass_filter_width=6``, ``rolloff=0.99``). We reproduce it without the
torchaudio dependency (its wheels do not load beside the CPU torch here):

1. reduce the rates by their gcd: ``orig = orig_freq / g``, ``new = new_freq / g``, so one
   period of the polyphase filter bank consumes ``orig`` input samples and yields ``new`` outputs;
2. cut off at ``base = min(orig, new) * rolloff`` (in the reduced units) and give each of the
   ``new`` phases a windowed-sinc filter over ``2 * width + orig`` taps, ``width =
   ceil(lowpass_filter_width * orig / base)``: for tap time ``t`` (input samples, relative to the
   output instant, scaled by ``base``) clamped to ``[-w, w]`` (``w = lowpass_filter_width``),
   ``h(t) = sinc(pi t) * cos(pi t / (2 w))**2 * base / orig``;
3. pad the signal with ``width`` zeros on the left and ``width + orig`` on the right, run a
   strided ``conv1d`` (stride ``orig``) with the ``new`` filters, interleave the phases, and keep
   ``ceil(new * length / orig)`` samples.

The filters are computed in the waveform's dtype, as torchaudio does. Same rates return the input.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["resample", "sinc_resample_kernel"]

LOWPASS_FILTER_WIDTH = 6  # torchaudio's default: zero crossings of the sinc on each side
ROLLOFF = 0.99  # cutoff as a fraction of the lower Nyquist frequency


def sinc_resample_kernel(orig_freq: int, new_freq: int, *, lowpass_filter_width: int = LOWPASS_FILTER_WIDTH,
                         rolloff: float = ROLLOFF, dtype: torch.dtype = torch.float32,
                         device: torch.device | str | None = None) -> tuple[torch.Tensor, int]:
    """Polyphase filters (new, 1, 2 * width + orig) for the gcd-reduced rates, and ``width``."""
    gcd = math.gcd(orig_freq, new_freq)
    orig, new = orig_freq // gcd, new_freq // gcd
    base = min(orig, new) * rolloff
    width = math.ceil(lowpass_filter_width * orig / base)
    taps = torch.arange(-width, width + orig, dtype=dtype, device=device)[None, None] / orig  # (1, 1, K)
    phases = torch.arange(0, -new, -1, dtype=dtype, device=device)[:, None, None] / new  # (new, 1, 1)
    t = (phases + taps) * base  # (new, 1, K): tap times in units of the cutoff period
    t = t.clamp_(-lowpass_filter_width, lowpass_filter_width)
    window = torch.cos(t * math.pi / lowpass_filter_width / 2) ** 2  # Hann
    t = t * math.pi
    sinc = torch.where(t == 0, torch.ones((), dtype=dtype, device=device), t.sin() / t)
    return sinc * window * (base / orig), width


def resample(waveform: torch.Tensor, orig_freq: int, new_freq: int, *,
             lowpass_filter_width: int = LOWPASS_FILTER_WIDTH, rolloff: float = ROLLOFF) -> torch.Tensor:
    """(..., N) waveform at ``orig_freq`` Hz -> (..., ceil(N * new_freq / orig_freq)) at ``new_freq``."""
    if orig_freq <= 0 or new_freq <= 0 or int(orig_freq) != orig_freq or int(new_freq) != new_freq:
        raise ValueError(f"sample rates must be positive integers, got {orig_freq} and {new_freq}")
    orig_freq, new_freq = int(orig_freq), int(new_freq)
    if orig_freq == new_freq:
        return waveform
    gcd = math.gcd(orig_freq, new_freq)
    orig, new = orig_freq // gcd, new_freq // gcd
    kernel, width = sinc_resample_kernel(orig_freq, new_freq, lowpass_filter_width=lowpass_filter_width,
                                         rolloff=rolloff, dtype=waveform.dtype, device=waveform.device)
    shape = waveform.shape
    signals = waveform.reshape(-1, shape[-1])  # (B, N)
    length = signals.shape[-1]
    padded = F.pad(signals, (width, width + orig))  # (B, width + N + width + orig)
    phases = F.conv1d(padded[:, None], kernel, stride=orig)  # (B, new, frames)
    out = phases.transpose(1, 2).reshape(signals.shape[0], -1)  # (B, frames * new): phases interleaved
    target = math.ceil(new * length / orig)
    return out[:, :target].reshape(*shape[:-1], -1)
