"""Audio test signals for the official-audio tests: speech, music, stereo, written as WAV/FLAC/MP4.

* speech: espeak-ng (22.05 kHz mono) converted by sox to the wanted rate and cut (repeating
  the sentence as needed) to an exact number of samples;
* music: a few harmonic notes, each with an attack/decay envelope, on a small DC offset;
* stereo: speech on the left, music on the right (the channels differ, so a loader that
  downmixes, or reads the wrong channel, or takes the mean of one channel only, is caught).

:func:`write_audio` writes (channels, N) float32 samples by suffix: ``.wav`` / ``.flac`` as
16-bit PCM (soundfile), ``.mp4`` as AAC in an MP4 container (PyAV). Needs the ``espeak-ng`` and
``sox`` programs for speech (``make system-deps`` installs them).
"""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import av
import numpy as np
import soundfile

__all__ = ["SIGNAL_KINDS", "make_signal_file", "music", "speech", "write_audio"]

SIGNAL_KINDS = ("speech", "music", "stereo")
SPEECH_TEXT = ("The quick brown fox jumps over the lazy dog. Video LLaMA listens to the sound track "
               "of a clip, eight windows of two seconds each, and tells what it hears.")
ESPEAK_RATE = 22050  # espeak-ng writes 22.05 kHz mono 16-bit
NOTES_HZ = (220.0, 277.18, 329.63, 440.0, 392.0, 293.66)  # A3 C#4 E4 A4 G4 D4, cycled
NOTE_SECONDS = 0.45
HARMONICS = 5  # partial h has amplitude 1 / h
MUSIC_PEAK = 0.4
MUSIC_DC = 0.05  # a constant offset: the per-clip mean subtraction then has work to do
ATTACK_SECONDS, DECAY_PER_SECOND = 0.02, 4.0
AAC_BITRATE = 128_000


def _run(args: list[str]) -> None:
    if shutil.which(args[0]) is None:
        raise RuntimeError(f"{args[0]} is not installed; `make system-deps` installs espeak-ng and sox")
    subprocess.run(args, check=True, capture_output=True)


def speech(workdir: Path, sample_rate: int, num_samples: int) -> np.ndarray:
    """(num_samples,) float32 espeak-ng speech at ``sample_rate`` (sox's resampler), the
    sentence repeated until long enough. Cached in ``workdir`` per rate and length."""
    base = workdir / "espeak.wav"
    if not base.exists():
        _run(["espeak-ng", "-w", str(base), SPEECH_TEXT])
    out = workdir / f"speech-{sample_rate}-{num_samples}.wav"
    if not out.exists():
        base_seconds = soundfile.info(str(base)).duration
        repeats = math.ceil(num_samples / sample_rate / base_seconds)
        _run(["sox", str(base), "-b", "16", str(out), "rate", str(sample_rate),
              "repeat", str(repeats), "trim", "0", f"{num_samples}s"])
    wave, rate = soundfile.read(str(out), dtype="float32")
    if rate != sample_rate or wave.shape != (num_samples,):
        raise RuntimeError(f"sox made {wave.shape} samples at {rate} Hz, wanted {num_samples} at {sample_rate}")
    return wave


def music(sample_rate: int, num_samples: int) -> np.ndarray:
    """(num_samples,) float32: notes of ``NOTES_HZ`` in turn, harmonics 1..5 at 1/h, each note
    with a linear attack and exponential decay, plus ``MUSIC_DC``."""
    t = np.arange(num_samples) / sample_rate
    note = (t // NOTE_SECONDS).astype(np.int64)
    local = t - note * NOTE_SECONDS  # seconds since the note began
    freq = np.asarray(NOTES_HZ)[note % len(NOTES_HZ)]
    tone = sum(np.sin(2 * math.pi * h * freq * t) / h for h in range(1, HARMONICS + 1))
    envelope = np.minimum(local / ATTACK_SECONDS, 1.0) * np.exp(-DECAY_PER_SECOND * local)
    peak = sum(1.0 / h for h in range(1, HARMONICS + 1))
    return (MUSIC_PEAK * tone * envelope / peak + MUSIC_DC).astype(np.float32)


def write_audio(path: Path, samples: np.ndarray, sample_rate: int) -> Path:
    """Write (channels, N) float32 in [-1, 1]: .wav/.flac as 16-bit PCM, .mp4 as AAC."""
    suffix = path.suffix.lower()
    if suffix in (".wav", ".flac"):
        soundfile.write(str(path), samples.T, sample_rate, subtype="PCM_16")
        return path
    if suffix != ".mp4":
        raise ValueError(f"unsupported fixture suffix {suffix!r}")
    channels = samples.shape[0]
    layout = {1: "mono", 2: "stereo"}[channels]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("aac", rate=sample_rate, layout=layout)
        stream.bit_rate = AAC_BITRATE
        chunk = stream.codec_context.frame_size or 1024
        for start in range(0, samples.shape[1], chunk):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, start:start + chunk]),
                                               format="fltp", layout=layout)
            frame.sample_rate = sample_rate
            frame.pts = start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def make_signal_file(workdir: Path, kind: str, sample_rate: int, seconds: float, suffix: str) -> Path:
    """Write a ``kind`` signal (see :data:`SIGNAL_KINDS`) of ``round(seconds * rate)`` samples."""
    num_samples = int(round(seconds * sample_rate))
    if kind == "speech":
        samples = speech(workdir, sample_rate, num_samples)[None, :]
    elif kind == "music":
        samples = music(sample_rate, num_samples)[None, :]
    elif kind == "stereo":
        samples = np.stack([speech(workdir, sample_rate, num_samples), music(sample_rate, num_samples)])
    else:
        raise ValueError(f"unknown signal kind {kind!r}; expected one of {SIGNAL_KINDS}")
    return write_audio(workdir / f"{kind}-{sample_rate}-{seconds:g}s{suffix}", samples, sample_rate)
