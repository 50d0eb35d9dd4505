"""Benchmark: long videos at 1 frame per second through the SynthAV model, in bounded memory.

Videos: H.264 (25 fps, keyframe every 2 s, 64x64) with AAC sound (8 kHz mono), 1, 10, 60 and 120
minutes, written once into ``--cache-dir`` by ``tests/media_fixtures.make_long_video`` (one
minute encoded, then its packets repeated with shifted timestamps: an hour takes seconds).

For each length a fresh process loads the shipped SynthAV model (``videollama/assets/synthav-model``)
and does what ``videollama chat FILE "When does the bell ring?" --fps 1 --greedy`` does: sample one
frame per second, decode / encode / drop window by window, audio per window, merge into the windows
that fit the model's 512-token context, answer (8 new tokens). It reports its peak RSS
(``resource.getrusage``) and the wall time of reading + answering (model loading excluded).
Verdicts: peak RSS of every length within 1.2x the 1-minute peak; seconds per video-minute of
every length >= 10 min within 1.3x of the 120-minute run's (the 1-minute run is dominated by fixed
costs: the answer, opening the file).

Decoding: on the 10-minute clip, the frames the decoder had to produce to sample 1 fps (seeking to
a keyframe when one lies between two wanted frames, else decoding forward) vs decoding every frame,
with wall times.

Run: ``python benchmarks/bench_long_video.py [--minutes 1 10 60 120] [--cache-dir /tmp/videollama-bench/long]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import av

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from media_fixtures import make_long_video  # noqa: E402
from videollama.media.video import VideoReader  # noqa: E402
from videollama.media.windows import VideoSampling  # noqa: E402

SYNTHAV = ROOT / "videollama" / "assets" / "synthav-model"
QUESTION = "When does the bell ring?"
FPS = 1.0
VIDEO_FPS, SIZE, GOP_SECONDS = 25, (64, 64), 2.0
RSS_RATIO, TIME_RATIO = 1.2, 1.3

CHILD = r"""
import json, resource, sys, time
import torch
torch.set_num_threads(1)
from videollama.engine import GenerationConfig
from videollama.inference import MediaOptions, Pipeline

pipe = Pipeline.from_pretrained(sys.argv[1])
start = time.perf_counter()
chat = pipe.chat(sys.argv[2], options=MediaOptions(fps=float(sys.argv[4])))
read = time.perf_counter() - start
answer = chat.ask(sys.argv[3], GenerationConfig(do_sample=False, max_new_tokens=8))
total = time.perf_counter() - start
timeline = chat.media.timeline
print(json.dumps({"peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "read_s": read, "total_s": total,
                  "sampled": len(timeline.frame_times), "windows": len(timeline.windows),
                  "merged": timeline.merged_frames, "answer": answer}))
"""


def clip(cache: Path, minutes: int) -> Path:
    path = cache / f"long_{minutes}min_{VIDEO_FPS}fps_{SIZE[0]}px.mp4"
    if not path.is_file():
        started = time.perf_counter()
        partial = path.with_name(path.stem + ".partial.mp4")
        make_long_video(partial, minutes * 60, fps=VIDEO_FPS, size=SIZE, gop_seconds=GOP_SECONDS)
        partial.rename(path)
        print(f"generated {path.name} in {time.perf_counter() - started:.0f} s", flush=True)
    return path


def run_chat(path: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(SYNTHAV), str(path), QUESTION, str(FPS)],
                         capture_output=True, text=True, check=False, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"{path.name}: the chat process failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def decode_comparison(path: Path) -> tuple[dict, dict]:
    """(sampling at FPS, decoding every frame): frames produced by the decoder and seconds."""
    started = time.perf_counter()
    with VideoReader(path, image_size=112) as reader:
        positions = VideoSampling(frames=None, fps=FPS).frame_positions(reader.num_frames, reader.fps)
        for start in range(0, len(positions), 32):  # window by window, as the pipeline reads
            reader.read(positions[start:start + 32])
        sampled = {"sampled": len(positions), "decoded": reader.stats.frames, "seeks": reader.stats.seeks,
                   "seconds": time.perf_counter() - started, "total": reader.num_frames}
    started = time.perf_counter()
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        decoded = sum(1 for _ in container.decode(stream))
    return sampled, {"decoded": decoded, "seconds": time.perf_counter() - started}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=int, nargs="+", default=[1, 10, 60, 120])
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/videollama-bench/long"))
    args = parser.parse_args()
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    minutes = sorted(args.minutes)
    results = {}
    for m in minutes:
        results[m] = run_chat(clip(args.cache_dir, m))
        print(f"{m} min: {json.dumps(results[m])}", flush=True)
    base, longest = results[minutes[0]], results[minutes[-1]]
    per_minute_ref = longest["total_s"] / minutes[-1]
    print(f"\n### Long video at {FPS:g} fps, SynthAV model (peak RSS vs the {minutes[0]}-min run; seconds per video-minute "
          f"vs the {minutes[-1]}-min run)\n")
    print("| video | sampled frames | windows (merged frames) | peak RSS | x shortest | read + answer | s / video-min | "
          "x longest |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    ok = True
    for m in minutes:
        r = results[m]
        rss_ratio = r["peak"] / base["peak"]
        time_ratio = (r["total_s"] / m) / per_minute_ref
        ok &= rss_ratio <= RSS_RATIO and (m < 10 or time_ratio <= TIME_RATIO)
        print(f"| {m} min | {r['sampled']:,} | {r['windows']} ({r['merged']:,}) | {r['peak'] / 2**20:.0f} MiB | "
              f"{rss_ratio:.2f} | {r['total_s']:.1f} s | {r['total_s'] / m:.2f} | {time_ratio:.2f} |")
    probe_minutes = 10 if 10 in minutes else minutes[0]
    sampled, every = decode_comparison(clip(args.cache_dir, probe_minutes))
    print(f"\n### Decoding, {probe_minutes}-min clip ({sampled['total']:,} frames, keyframe every {GOP_SECONDS:g} s)\n")
    print("| method | frames decoded | seeks | seconds | sampled frames / s | decoded frames / s |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| sample {FPS:g} fps (ours, window by window, resized) | {sampled['decoded']:,} | {sampled['seeks']:,} | "
          f"{sampled['seconds']:.1f} | {sampled['sampled'] / sampled['seconds']:.0f} | "
          f"{sampled['decoded'] / sampled['seconds']:.0f} |")
    print(f"| decode every frame (no resize) | {every['decoded']:,} | 0 | {every['seconds']:.1f} | "
          f"{sampled['sampled'] / every['seconds']:.0f} | {every['decoded'] / every['seconds']:.0f} |")
    print(f"\nverdict: {'PASS' if ok else 'FAIL'} (RSS <= {RSS_RATIO}x, time per minute <= {TIME_RATIO}x)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
