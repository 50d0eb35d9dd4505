"""Benchmark: long videos at 1 frame per second through the SynthAV model, in bounded memory.

Videos: H.264 (25 fps, keyframe every 2 s, 64x64) with AAC sound (8 kHz mono), 1, 10, 60 and 120
minutes, written once into ``--cache-dir`` by ``tests/media_fixtures.make_long_video`` (one
minute encoded, then its packets repeated with shifted timestamps: an hour takes seconds).

For each length a fresh process loads the shipped SynthAV model (``videollama/assets/synthav-model``)
and does what ``videollama chat FILE "When does the bell ring?" --fps 1 --greedy`` does: sample one
frame per second, decode / encode / drop window by window, audio per window, merge into the windows
that fit the model's 512-token context, answer (8 new tokens). It reports its peak RSS
(``resource.getrusage``) and the wall and CPU time of reading + answering (model loading excluded).
Verdicts: peak RSS of every length within 1.2x the 1-minute peak; time linear in length: the
marginal CPU seconds per video-minute between consecutive lengths (1 -> 10, 10 -> 60, 60 -> 120
minutes) within 1.3x of each other from 10 minutes on (fixed costs, the answer and opening the
file, cancel out of a marginal). CPU time, because the wall time on a shared machine moves with the
other jobs' load (both are printed).

Decoding: on a 10-minute clip at 64x64 and at 640x360 (generated the same way), the frames the
decoder had to produce to sample 1 fps (seeking to a keyframe when one lies between two wanted
frames, else decoding forward) vs decoding every frame, with wall times.

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
DECODE_SIZES = ((64, 64), (640, 360))  # the decoding comparison: the benchmark's clips, and frames that cost to decode
RSS_RATIO, TIME_RATIO = 1.2, 1.3
LINEAR_FROM = 10  # minutes: shorter runs are dominated by fixed costs

CHILD = r"""
import json, resource, sys, time
import torch
torch.set_num_threads(1)
from videollama.engine import GenerationConfig
from videollama.inference import MediaOptions, Pipeline

pipe = Pipeline.from_pretrained(sys.argv[1])
def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
start, cpu_start = time.perf_counter(), cpu()
chat = pipe.chat(sys.argv[2], options=MediaOptions(fps=float(sys.argv[4])))
read = time.perf_counter() - start
answer = chat.ask(sys.argv[3], GenerationConfig(do_sample=False, max_new_tokens=8))
total, cpu_total = time.perf_counter() - start, cpu() - cpu_start
timeline = chat.media.timeline
print(json.dumps({"peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "read_s": read, "total_s": total, "cpu_s": cpu_total,
                  "sampled": len(timeline.frame_times), "windows": len(timeline.windows),
                  "merged": timeline.merged_frames, "answer": answer}))
"""


def clip(cache: Path, minutes: int, size: tuple[int, int] = SIZE) -> Path:
    path = cache / f"long_{minutes}min_{VIDEO_FPS}fps_{size[0]}x{size[1]}.mp4"
    if not path.is_file():
        started = time.perf_counter()
        partial = path.with_name(path.stem + ".partial.mp4")
        make_long_video(partial, minutes * 60, fps=VIDEO_FPS, size=size, gop_seconds=GOP_SECONDS)
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
    base = results[minutes[0]]
    print(f"\n### Long video at {FPS:g} fps, SynthAV model (peak RSS vs the {minutes[0]}-min run; marginal CPU "
          "seconds per video-minute from the previous length)\n")
    print("| video | sampled frames | windows (merged frames) | peak RSS | x shortest | wall, read + answer | "
          "CPU, read + answer | marginal CPU s / video-min |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    rss_ok, marginals = True, {}
    for previous, m in zip([None, *minutes], minutes):
        r = results[m]
        rss_ratio = r["peak"] / base["peak"]
        rss_ok &= rss_ratio <= RSS_RATIO
        if previous is not None:
            marginals[m] = (r["cpu_s"] - results[previous]["cpu_s"]) / (m - previous)
        marginal = f"{marginals[m]:.3f}" if m in marginals else "-"
        print(f"| {m} min | {r['sampled']:,} | {r['windows']} ({r['merged']:,}) | {r['peak'] / 2**20:.0f} MiB | "
              f"{rss_ratio:.2f} | {r['total_s']:.1f} s | {r['cpu_s']:.1f} s | {marginal} |")
    steady = [v for m, v in marginals.items() if m > LINEAR_FROM]  # steps that start at >= LINEAR_FROM minutes
    linear_ok = not steady or max(steady) <= TIME_RATIO * min(steady)
    ok = rss_ok and linear_ok
    probe_minutes = 10 if 10 in minutes else minutes[0]
    print(f"\n### Decoding {FPS:g} fps from a {probe_minutes}-min clip ({probe_minutes * 60 * VIDEO_FPS:,} frames at "
          f"{VIDEO_FPS} fps, keyframe every {GOP_SECONDS:g} s)\n")
    print("| frames | method | frames decoded | seeks | seconds | sampled frames / s | decoded frames / s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for size in DECODE_SIZES:
        sampled, every = decode_comparison(clip(args.cache_dir, probe_minutes, size))
        label = f"{size[0]}x{size[1]}"
        print(f"| {label} | sample (ours: seek past keyframes, window by window, resized) | {sampled['decoded']:,} | "
              f"{sampled['seeks']:,} | {sampled['seconds']:.1f} | {sampled['sampled'] / sampled['seconds']:.0f} | "
              f"{sampled['decoded'] / sampled['seconds']:.0f} |")
        print(f"| {label} | decode every frame (no resize) | {every['decoded']:,} | 0 | {every['seconds']:.1f} | "
              f"{sampled['sampled'] / every['seconds']:.0f} | {every['decoded'] / every['seconds']:.0f} |")
    print(f"\nverdict: {'PASS' if ok else 'FAIL'} (peak RSS <= {RSS_RATIO}x the shortest: {rss_ok}; marginal CPU "
          f"per video-minute from {LINEAR_FROM} min on within {TIME_RATIO}x: {linear_ok})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
