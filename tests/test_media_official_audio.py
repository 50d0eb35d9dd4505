"""``load_audio`` gives what the official Video-LLaMA demo feeds ImageBind (issue 17, audio part).

The oracle is ``official_audio_reference``: a NumPy rebuild of torchaudio 0.12.1's ``load`` /
sinc ``resample`` / ``kaldi.fbank``, pytorchvideo 0.1.5's ``ConstantClipsPerVideoSampler`` and
ImageBind's ``waveform2melspec`` (in-place mean subtraction on slice views), sharing no code with
``videollama``. The first group of tests pins that oracle's arithmetic against values derived by
hand from the definitions; the second compares ``load_audio`` with it on speech (espeak-ng),
music and stereo files at 8, 16, 22.05, 32 and 48 kHz, 1 to 60 s, as WAV, FLAC and AAC/MP4.

The tolerance is the issue's 1e-3 on the normalised features. The official pipeline runs in
float32; its rounding alone moves near-silent mel bins (energies close to the log floor) by up
to ~6e-4 against exact arithmetic, so the bound leaves little room, and none for a different
window, resampler or mean subtraction (those move features by 0.1 to 2.2).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import official_audio_reference as ref
from audio_fixtures import SIGNAL_KINDS, make_signal_file, write_audio
from videollama.media.audio import load_audio

TOLERANCE = 1e-3
RATES = (8000, 16000, 22050, 32000, 48000)
DURATIONS = (1, 3, 10, 17.3, 60)
FLOOR = (math.log(np.finfo(np.float32).eps) - ref.FBANK_MEAN) / ref.FBANK_STD  # log(eps), normalised
PADDING = -ref.FBANK_MEAN / ref.FBANK_STD  # a zero-padded column after normalisation
FRAME, HOP = 400, 160  # kaldi frame length and shift at 16 kHz (25 ms, 10 ms)

# Each kind meets every rate and every duration once (a Latin square). The slow pairs are kept
# apart: AAC (encoding is the slow part of making a fixture) only up to 10 s, 60 s never at
# 48 kHz.
CASES = [
    ("speech", 8000, 60, ".wav"),
    ("speech", 16000, 17.3, ".flac"),
    ("speech", 22050, 3, ".wav"),  # espeak-ng's own rate
    ("speech", 32000, 10, ".mp4"),
    ("speech", 48000, 1, ".mp4"),
    ("music", 8000, 10, ".mp4"),
    ("music", 16000, 60, ".flac"),
    ("music", 22050, 1, ".flac"),
    ("music", 32000, 17.3, ".wav"),
    ("music", 48000, 3, ".mp4"),
    ("stereo", 8000, 1, ".mp4"),
    ("stereo", 16000, 3, ".mp4"),
    ("stereo", 22050, 17.3, ".flac"),
    ("stereo", 32000, 60, ".wav"),
    ("stereo", 48000, 10, ".wav"),
]
# 2.3 s: the float D - 2 falls just below 0.3, so int() puts every clip but the first one sample
# earlier than exact arithmetic would (see test_clip_bounds_follow_pytorchvideo_0_1_5); that one
# sample moves the features by ~0.4.
TRUNCATION_CASE = ("speech", 16000, 2.3, ".wav")


@pytest.fixture(scope="session")
def audio_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("official-audio")


# --------------------------------------------------------------------------- the oracle, by hand
@pytest.mark.parametrize("num_samples, expected", [
    # 10 s: step (10 - 2) / 8 = 1 s -> starts 0, 1, ..., 7 s (not 0, 8/7, ... as with / 7)
    (160_000, [(16_000 * k, 16_000 * k + 32_000) for k in range(8)]),
    # 3 s: step 1/8 s = 2000 samples; the clips overlap and the last 0.125 s is never read
    (48_000, [(2_000 * k, 2_000 * k + 32_000) for k in range(8)]),
    # 60 s: step 58/8 = 7.25 s
    (960_000, [(116_000 * k, 116_000 * k + 32_000) for k in range(8)]),
    # 17.3 s: the float 17.3 - 2 = 15.3000000000000007 s, so k * 30600.0000000000014 -> 30600 k
    (276_800, [(30_600 * k, 30_600 * k + 32_000) for k in range(8)]),
    # 2.3 s: the float 2.3 - 2 = 0.29999999999999982 s, so int() truncates k * 599.99999999999964
    # to 600 k - 1: the slices start one sample early (exact arithmetic would give 600 k)
    (36_800, [(0, 32_000)] + [(600 * k - 1, 600 * k - 1 + 32_000) for k in range(1, 8)]),
    # 1 s: shorter than a clip -> 8 times the whole track (the slice end 32000 is clipped)
    (16_000, [(0, 16_000)] * 8),
])
def test_clip_bounds_follow_pytorchvideo_0_1_5(num_samples, expected):
    assert ref.clip_bounds(num_samples) == expected


def test_mean_subtraction_shifts_overlaps_once_per_clip():
    # 4 samples/s, 2-s clips, 2 clips over 3 s: step (3 - 2) / 2 = 0.5 s -> [0, 8) and [2, 10)
    bounds = ref.clip_bounds(12, sample_rate=4, clips=2)
    assert bounds == [(0, 8), (2, 10)]
    track = np.ones((1, 12), dtype=np.float32)
    seen = ref.shifted_clips(track, bounds)
    # clip 0: mean 1 -> [0, 8) becomes 0; clip 1 then holds six 0 and two 1: mean 0.25
    np.testing.assert_array_equal(seen[0], np.zeros((1, 8)))
    np.testing.assert_array_equal(seen[1], [[-0.25] * 6 + [0.75] * 2])
    np.testing.assert_array_equal(track, [[0, 0] + [-0.25] * 6 + [0.75, 0.75, 1, 1]])


def test_mean_subtraction_is_over_all_channels():
    bounds = [(0, 8), (2, 10)]
    track = np.stack([np.ones(12), np.full(12, 3.0)]).astype(np.float32)
    seen = ref.shifted_clips(track, bounds)
    # clip 0: mean (8 * 1 + 8 * 3) / 16 = 2 -> channel 0 becomes -1, channel 1 becomes 1
    np.testing.assert_array_equal(seen[0], [[-1] * 8, [1] * 8])
    # clip 1: (-6 + 2 + 6 + 6) / 16 = 0.5
    np.testing.assert_array_equal(seen[1], [[-1.5] * 6 + [0.5] * 2, [0.5] * 6 + [2.5] * 2])


@pytest.mark.parametrize("rate, reduced, width", [
    # gcd-reduced rates (o, n) and w = ceil(6 o / (0.99 min(o, n)))
    (8000, (1, 2), 7),  # ceil(6.06)
    (22050, (441, 320), 9),  # ceil(8.35)
    (32000, (2, 1), 13),  # ceil(12.12)
    (44100, (441, 160), 17),  # ceil(16.70)
    (48000, (3, 1), 19),  # ceil(18.18)
])
def test_resample_kernel_size(rate, reduced, width):
    kernel, w, orig, new = ref.sinc_resample_kernel(rate, ref.TARGET_RATE)
    assert (orig, new) == reduced and w == width
    assert kernel.shape == (new, 2 * width + orig) and kernel.dtype == np.float32


@pytest.mark.parametrize("rate", [8000, 22050, 32000, 48000])
def test_resample_is_the_windowed_sinc_sum(rate):
    """Output j = sum_q x[q] h((q / o - j / n) b), h(t) = sinc(pi t) cos^2(pi t / 12) b / o for
    |t| < 6 (b = 0.99 min(o, n)), evaluated directly in float64 for every j."""
    x = np.random.default_rng(rate).uniform(-1, 1, size=(1, 301)).astype(np.float32)
    g = math.gcd(rate, ref.TARGET_RATE)
    o, n = rate // g, ref.TARGET_RATE // g
    b = 0.99 * min(o, n)
    q = np.arange(x.shape[1])
    expected = []
    for j in range(math.ceil(301 * n / o)):
        t = (q / o - j / n) * b
        h = np.where(np.abs(t) < 6, np.sinc(t) * np.cos(math.pi * t / 12) ** 2 * b / o, 0.0)
        expected.append(float(h @ x[0]))
    got = ref.sinc_resample(x, rate)
    assert got.shape == (1, len(expected)) and got.dtype == np.float32
    np.testing.assert_allclose(got[0], expected, atol=2e-5)  # float32 kernel, as torchaudio


@pytest.mark.parametrize("rate", [8000, 22050, 32000, 48000])
@pytest.mark.parametrize("freq", [500.0, 1000.0])
def test_resample_keeps_a_tone(rate, freq):
    """A tone well inside the pass band (cut-off 0.99 x the lower Nyquist, with a wide Hann
    transition: 3 kHz from 8 kHz loses 2%) keeps its amplitude and phase (no delay)."""
    seconds, amplitude, phase = 0.25, 0.5, 0.3
    x = amplitude * np.sin(2 * math.pi * freq * np.arange(int(rate * seconds)) / rate + phase)
    y = ref.sinc_resample(x[None].astype(np.float32), rate)[0]
    assert y.shape == (int(ref.TARGET_RATE * seconds),)
    want = amplitude * np.sin(2 * math.pi * freq * np.arange(y.size) / ref.TARGET_RATE + phase)
    interior = slice(32, -32)  # the zero padding bends the first and last filter spans
    assert np.abs(y - want)[interior].max() < 1e-3


def test_resample_at_16k_is_identity():
    x = np.random.default_rng(0).uniform(-1, 1, size=(2, 1000)).astype(np.float32)
    assert ref.sinc_resample(x, ref.TARGET_RATE) is x


def test_fbank_frames_and_empty_mel_bin():
    fbank = ref.kaldi_fbank(np.random.default_rng(0).uniform(-0.5, 0.5, 32_000).astype(np.float32))
    assert fbank.shape == (198, 128)  # 1 + (32000 - 400) // 160
    banks = ref.mel_banks()
    assert banks.shape == (128, 257) and not banks[:, -1].any()  # Nyquist column is zero
    # with 128 bins the 4th triangle falls between two 31.25 Hz FFT bins: log(eps) everywhere
    assert not banks[3].any() and banks[np.arange(128) != 3].any(axis=1).all()
    np.testing.assert_allclose(fbank[:, 3], math.log(np.finfo(np.float32).eps))


# --------------------------------------------------------------------------- load_audio vs oracle
def test_cases_cover_every_rate_duration_and_kind():
    for kind in SIGNAL_KINDS:
        mine = [case for case in CASES if case[0] == kind]
        assert sorted(case[1] for case in mine) == sorted(RATES)
        assert sorted(case[2] for case in mine) == sorted(DURATIONS)
    assert {case[3] for case in CASES} == {".wav", ".flac", ".mp4"}


@pytest.mark.parametrize("kind, rate, seconds, suffix", [*CASES, TRUNCATION_CASE],
                         ids=[f"{k}-{r}Hz-{s}s-{x[1:]}" for k, r, s, x in [*CASES, TRUNCATION_CASE]])
def test_load_audio_matches_official(audio_dir, kind, rate, seconds, suffix):
    path = make_signal_file(audio_dir, kind, rate, seconds, suffix)
    expected = ref.official_audio_features(path)
    got = load_audio(path)
    assert got.dtype == torch.float32 and tuple(got.shape) == expected.shape == (8, 1, 128, 204)
    diff = np.abs(got.numpy() - expected)
    worst = np.unravel_index(diff.argmax(), diff.shape)
    assert diff.max() <= TOLERANCE, f"max |diff| {diff.max():.3g} at (clip, 0, bin, frame) {worst}"


def _straddling_frames(step: int) -> set[int]:
    """kaldi frames [160 m, 160 m + 400) holding both sample step - 1 and sample step."""
    return set(range(math.ceil((step - FRAME + 1) / HOP), (step - 1) // HOP + 1))


def test_constant_track_shows_the_in_place_steps(audio_dir):
    """3 s of a constant 0.25 at 16 kHz. Clip k spans [2000 k, 2000 k + 32000); subtracting each
    clip's mean in place leaves a step where every earlier clip ended (32000 - 2000 j samples
    into clip k, j = 1..k), and only frames across a step rise above the log floor. Subtracting
    on a copy would leave all 8 clips at the floor (kaldi removes each frame's DC)."""
    path = write_audio(audio_dir / "constant.wav", np.full((1, 48_000), 0.25, dtype=np.float32), 16_000)
    got = load_audio(path).numpy()
    np.testing.assert_allclose(got, ref.official_audio_features(path), rtol=0, atol=TOLERANCE)
    assert _straddling_frames(30_000) == {186, 187}  # clip 1's single step, by hand
    for k in range(8):
        lit = {int(m) for m in np.flatnonzero(got[k, 0, :, :198].max(axis=0) > FLOOR + 0.01)}
        assert lit == set().union(*(_straddling_frames(32_000 - 2_000 * j) for j in range(1, k + 1))), k
    np.testing.assert_allclose(got[0, 0, :, :198], FLOOR, atol=1e-5)
    np.testing.assert_allclose(got[:, 0, :, 198:], PADDING, atol=1e-6)
