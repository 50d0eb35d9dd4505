"""Synthetic media for tests: numbered videos, tones, broken files (PyAV only, written to tmp).

* :func:`make_numbered_video` paints each frame's index as a 4x4 grid of black/white blocks
  (16 bits, most significant bit top-left). Blocks are large, so the number survives H.264 and a
  resize to 224x224; :func:`read_frame_number` reads it back from a decoded frame. That makes
  "which frames were sampled" a checkable fact.
* :func:`make_tone_audio` writes a sine tone (optionally only inside a time window, silence
  elsewhere) as WAV (PCM) or M4A/MP4 (AAC), chosen by the file suffix.
* :func:`truncate_file` cuts a file to a fraction of its bytes.

Other test modules may import these (``from media_fixtures import ...``; ``tests/`` is on
``sys.path`` under pytest's default rootdir-relative import mode).
"""

from __future__ import annotations

import math
import os
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import av
import numpy as np
import torch

BITS_GRID = 4  # the frame index is drawn as a BITS_GRID x BITS_GRID grid of bits
NUM_BITS = BITS_GRID * BITS_GRID
DARK, LIGHT = 16, 235  # video-range levels: nothing clips in the YUV round trip
VFR_TIME_BASE = Fraction(1, 90000)  # MPEG clock, used when explicit timestamps are given

__all__ = [
    "make_long_video",
    "make_video_segment",
    "make_numbered_video",
    "make_tone_audio",
    "numbered_frame",
    "read_frame_number",
    "truncate_file",
]


def numbered_frame(index: int, width: int, height: int) -> np.ndarray:
    """An (H, W, 3) uint8 RGB image whose 4x4 block grid spells ``index`` in binary."""
    if not 0 <= index < 2**NUM_BITS:
        raise ValueError(f"frame index {index} does not fit in {NUM_BITS} bits")
    bits = [(index >> (NUM_BITS - 1 - k)) & 1 for k in range(NUM_BITS)]
    grid = np.array(bits, dtype=np.uint8).reshape(BITS_GRID, BITS_GRID)
    rows = (np.arange(height) * BITS_GRID) // height  # (H,) which grid row each pixel row is in
    cols = (np.arange(width) * BITS_GRID) // width  # (W,)
    lit = grid[rows[:, None], cols[None, :]]  # (H, W) in {0, 1}
    gray = np.where(lit == 1, LIGHT, DARK).astype(np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2)  # (H, W, 3)


def read_frame_number(frame: torch.Tensor) -> int:
    """Read the index painted by :func:`numbered_frame` from a (3, H, W) frame in [0, 1]."""
    if frame.dim() != 3 or frame.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) frame, got {tuple(frame.shape)}")
    gray = frame.float().mean(dim=0)  # (H, W)
    height, width = gray.shape
    value = 0
    for row in range(BITS_GRID):
        for col in range(BITS_GRID):
            # sample the middle half of each cell, away from blurred block edges
            y0, y1 = (4 * row + 1) * height // 16, (4 * row + 3) * height // 16
            x0, x1 = (4 * col + 1) * width // 16, (4 * col + 3) * width // 16
            bit = int(gray[y0:y1, x0:x1].mean().item() > 0.5)
            value = (value << 1) | bit
    return value


def _x264_options(gop: int | None, bframes: int) -> dict[str, str]:
    params = [f"bframes={bframes}"]
    if gop is not None:
        # fixed GOP: exactly one keyframe every `gop` frames (no scene-cut keyframes)
        params += [f"keyint={gop}", f"min-keyint={gop}", "scenecut=0"]
    return {"preset": "veryfast", "crf": "20", "x264-params": ":".join(params)}


def _tone(num_samples: int, sample_rate: int, freq: float, amplitude: float,
          start: float = 0.0, seconds: float | None = None) -> np.ndarray:
    """(num_samples,) float32 sine that is non-zero only in [start, start + seconds)."""
    t = np.arange(num_samples) / sample_rate
    wave = amplitude * np.sin(2 * math.pi * freq * t)
    end = math.inf if seconds is None else start + seconds
    wave[(t < start) | (t >= end)] = 0.0
    return wave.astype(np.float32)


def _add_audio(container: av.container.OutputContainer, codec: str, samples: np.ndarray,
               sample_rate: int) -> list[av.Packet]:
    """Add an audio stream to ``container`` and encode (channels, N) float32 samples into it.

    Returns the packets (not yet muxed), so the caller can interleave them with other streams.
    """
    channels = samples.shape[0]
    layout = "mono" if channels == 1 else "stereo" if channels == 2 else f"{channels}c"
    stream = container.add_stream(codec, rate=sample_rate, layout=layout)
    fmt = "s16" if codec.startswith("pcm_s16") else "fltp"
    chunk = stream.codec_context.frame_size or 1024
    packets: list[av.Packet] = []
    for start in range(0, samples.shape[1], chunk):
        piece = samples[:, start:start + chunk]
        if fmt == "s16":
            data = (np.clip(piece, -1, 1) * 32767).astype(np.int16).T.reshape(1, -1)  # packed
        else:
            data = np.ascontiguousarray(piece)  # planar (C, n)
        frame = av.AudioFrame.from_ndarray(data, format=fmt, layout=layout)
        frame.sample_rate = sample_rate
        frame.pts = start
        packets += stream.encode(frame)
    packets += stream.encode(None)
    return packets


def _mux_in_time_order(container: av.container.OutputContainer, packets: list[av.Packet]) -> None:
    def decode_time(packet: av.Packet) -> float:
        stamp = packet.dts if packet.dts is not None else packet.pts
        return float(stamp * packet.time_base) if stamp is not None else 0.0

    for packet in sorted(packets, key=decode_time):
        container.mux(packet)


def make_numbered_video(
    path: str | os.PathLike[str],
    n_frames: int,
    fps: float = 25.0,
    size: tuple[int, int] = (160, 128),
    gop: int | None = None,
    with_audio: bool = False,
    *,
    bframes: int = 3,
    timestamps: Sequence[float] | None = None,
    audio_freq: float = 440.0,
    audio_rate: int = 16000,
    faststart: bool = False,
) -> Path:
    """Write an H.264 video whose frame ``i`` shows the number ``i`` (see :func:`numbered_frame`).

    Args:
        path: output file; the container follows the suffix (.mp4, .mkv, ...).
        n_frames: number of frames.
        fps: nominal frame rate (constant-rate timestamps ``i / fps`` unless ``timestamps``).
        size: (width, height), both even.
        gop: keyframe interval in frames (fixed, no scene cuts); None keeps x264's default (250).
        with_audio: also write an AAC tone track lasting as long as the video.
        bframes: x264 B-frames (3 = x264 default; gives out-of-order decoding).
        timestamps: explicit presentation time of each frame in seconds (variable frame rate).
        audio_freq, audio_rate: tone frequency and sample rate of the audio track.
        faststart: put the mp4 index (moov) first, as web uploads usually are.
    """
    path = Path(path)
    width, height = size
    if timestamps is not None and len(timestamps) != n_frames:
        raise ValueError("need one timestamp per frame")
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), mode="w", options=options) as container:
        rate = Fraction(fps).limit_denominator(1001)
        stream = container.add_stream("libx264", rate=rate, options=_x264_options(gop, bframes))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        time_base = VFR_TIME_BASE if timestamps is not None else 1 / rate
        stream.codec_context.time_base = time_base
        packets: list[av.Packet] = []
        if with_audio:  # every stream must exist before the first packet is muxed
            seconds = (timestamps[-1] + 1 / fps) if timestamps is not None else n_frames / fps
            wave = _tone(int(round(seconds * audio_rate)), audio_rate, audio_freq, 0.5)
            packets += _add_audio(container, "aac", wave[None, :], audio_rate)
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(numbered_frame(i, width, height), format="rgb24")
            seconds = timestamps[i] if timestamps is not None else i / rate
            frame.pts = int(round(Fraction(seconds) / time_base))
            frame.time_base = time_base
            packets += stream.encode(frame)
        packets += stream.encode(None)
        _mux_in_time_order(container, packets)
    return path


def make_tone_audio(
    path: str | os.PathLike[str],
    seconds: float,
    freq: float = 440.0,
    sample_rate: int = 16000,
    *,
    channels: int = 1,
    tone_start: float = 0.0,
    tone_seconds: float | None = None,
    amplitude: float = 0.5,
) -> Path:
    """Write ``seconds`` of audio: a sine at ``freq`` inside [tone_start, tone_start+tone_seconds),
    silence elsewhere. ``.wav`` -> 16-bit PCM, ``.m4a``/``.mp4`` -> AAC, ``.mp3`` -> MP3.
    Every channel carries the same signal."""
    path = Path(path)
    codec = {".wav": "pcm_s16le", ".m4a": "aac", ".mp4": "aac", ".mp3": "libmp3lame"}.get(
        path.suffix.lower())
    if codec is None:
        raise ValueError(f"unsupported audio suffix {path.suffix!r}")
    num_samples = int(round(seconds * sample_rate))
    wave = _tone(num_samples, sample_rate, freq, amplitude, tone_start, tone_seconds)
    with av.open(str(path), mode="w") as container:
        samples = np.repeat(wave[None, :], channels, axis=0)  # (channels, N)
        _mux_in_time_order(container, _add_audio(container, codec, samples, sample_rate))
    return path


def truncate_file(path: str | os.PathLike[str], fraction: float = 0.5) -> Path:
    """Keep only the first ``fraction`` of the file's bytes (a download cut short)."""
    path = Path(path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def make_long_video(path: str | os.PathLike[str], seconds: int, *, segment_seconds: int = 60, **segment) -> Path:
    """Write a long H.264 + AAC video: one :func:`make_video_segment` of ``segment_seconds``, then
    that segment's packets copied again and again with shifted timestamps (no re-encoding, so an
    hour takes seconds). ``seconds`` must be a multiple of ``segment_seconds`` when longer.
    Used by the long-video tests and ``benchmarks/bench_long_video.py``."""
    path = Path(path)
    if seconds <= segment_seconds:
        return make_video_segment(path, seconds, **segment)
    if seconds % segment_seconds:
        raise ValueError(f"seconds ({seconds}) must be a multiple of segment_seconds ({segment_seconds})")
    base = make_video_segment(path.with_name(path.stem + ".segment.mp4"), segment_seconds, **segment)
    try:
        with av.open(str(base)) as source, av.open(str(path), mode="w") as target:
            outputs = {s.index: target.add_stream_from_template(s) for s in source.streams}
            for repeat in range(seconds // segment_seconds):
                source.seek(0)
                for packet in source.demux():
                    if packet.dts is None:  # the demuxer's flush packets
                        continue
                    shift = int(repeat * segment_seconds / packet.time_base)
                    packet.pts, packet.dts = packet.pts + shift, packet.dts + shift
                    packet.stream = outputs[packet.stream.index]
                    target.mux(packet)
    finally:
        base.unlink(missing_ok=True)
    return path


def make_video_segment(path: str | os.PathLike[str], seconds: int, fps: int = 25, size: tuple[int, int] = (64, 64),
                       gop_seconds: float = 2.0, audio_rate: int = 8000, audio_freq: float = 440.0) -> Path:
    """Write an H.264 + AAC video second by second (memory stays flat while writing).

    Every frame of second ``s`` shows the number ``s % 65536`` (:func:`numbered_frame`), so a
    decoded frame tells which second it came from; the sound is a tone whose loudness steps every
    second. Keyframes every ``gop_seconds``.
    """
    path = Path(path)
    width, height = size
    with av.open(str(path), mode="w") as container:
        options = {**_x264_options(max(1, round(gop_seconds * fps)), bframes=0), "preset": "ultrafast"}
        video = container.add_stream("libx264", rate=fps, options=options)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.codec_context.time_base = Fraction(1, fps)
        audio = container.add_stream("aac", rate=audio_rate, layout="mono", options={"aac_coder": "fast"})
        chunk = audio.codec_context.frame_size or 1024
        audio_pts = 0
        for second in range(seconds):
            image = numbered_frame(second % 2**NUM_BITS, width, height)
            for k in range(fps):
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                frame.pts = second * fps + k
                for packet in video.encode(frame):
                    container.mux(packet)
            while audio_pts < (second + 1) * audio_rate:  # the tone up to the end of this second
                t = (audio_pts + np.arange(chunk)) / audio_rate
                loudness = 0.1 + 0.4 * ((t.astype(int) * 7919) % 10) / 10  # steps every second
                wave = (loudness * np.sin(2 * math.pi * audio_freq * t)).astype(np.float32)[None, :]
                piece = av.AudioFrame.from_ndarray(wave, format="fltp", layout="mono")
                piece.sample_rate, piece.pts = audio_rate, audio_pts
                audio_pts += chunk
                for packet in audio.encode(piece):
                    container.mux(packet)
        for stream in (video, audio):
            for packet in stream.encode(None):
                container.mux(packet)
    return path
