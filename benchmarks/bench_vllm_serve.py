"""The same 64 concurrent streamed requests through ``videollama serve`` and through ``vllm serve``.

Both servers serve the shipped SynthAV model (fp32, CPU) on loopback, one after the other (never
side by side, so they do not share the cores). Requests: the two example clips with sound (video +
audio, both branches), a PNG and a 16 kHz WAV, sent as ``data:`` URLs / ``input_audio`` (which both
servers take); request i sends item i mod 4, asks a question holding its id, greedy, with ``max_tokens``
16 + i mod 64 (the request set and the client come from ``bench_serve_load.py``). Each server first
answers every item once (warm-up); then all requests go at once, streamed with usage. Reported per
server: requests/s, completion tokens/s, latency p50/p95 (sent -> last chunk), time to first token
p50/p95, and how many of vLLM's answers equal ``videollama serve``'s (text up to surrounding whitespace:
ours strips it as the official demo does; token count; finish reason).

vLLM runs from its own venv (``make vllm``; the plugin in ``videollama/vllm/``). Its flags: ``--dtype
float32 --max-model-len 512 --enforce-eager --max-num-seqs 64`` (``VLLM_CPU_KVCACHE_SPACE=1`` GiB);
ours: ``--max-batch 8`` (``--max-batch``). One run, as documented in docs/benchmarks.md.

Run: ``python benchmarks/bench_vllm_serve.py [--requests 64] [--max-batch 8] [--output FILE]``
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from bench_serve_load import (MODEL_NAME, Media, Report, RunResult, Server, check_against, concurrent, make_specs,
                              send, timing_cells)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from media_fixtures import make_tone_audio  # noqa: E402
from vllm_helpers import vllm_python, vllm_server  # noqa: E402

from videollama.defaults import SHIPPED_MODEL  # noqa: E402

EXAMPLES = SHIPPED_MODEL.parent / "examples"
START_TIMEOUT_S = 600.0
VLLM_ARGS = ["--dtype", "float32", "--max-model-len", "512", "--enforce-eager", "--max-num-seqs", "64",
             "--limit-mm-per-prompt", '{"video": 1, "image": 1, "audio": 1}']


def make_media(root: Path) -> list[Media]:
    def data_url(path: Path, mime: str) -> str:
        return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"

    image = root / "image.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(image)
    audio = make_tone_audio(root / "tone.wav", 5.0, freq=660)
    media = [Media(clip.name, "video", {"type": "video_url", "video_url": {"url": data_url(clip, "video/mp4")}})
             for clip in sorted(EXAMPLES.glob("*.mp4"))]
    media.append(Media("image.png", "image", {"type": "image_url", "image_url": {"url": data_url(image, "image/png")}}))
    media.append(Media("tone.wav", "audio", {"type": "input_audio", "input_audio": {
        "data": base64.b64encode(audio.read_bytes()).decode(), "format": "wav"}}))
    return media


async def load_run(name: str, url: str, media: list[Media], specs) -> RunResult:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=START_TIMEOUT_S)
    for spec in make_specs(media, len(media), 4):  # warm-up: every item once
        outcome = await send(client, spec)
        if outcome.error:
            raise RuntimeError(f"{name}: warm-up request failed: {outcome.error}")
    outcomes, wall = await concurrent(client, specs)
    return RunResult(name, outcomes, wall)


async def ours(args, media, specs, workdir: Path) -> RunResult:
    server_args = argparse.Namespace(model=SHIPPED_MODEL, requests=args.requests, time_limit=START_TIMEOUT_S,
                                     device="cpu", dtype="fp32", threads=None)
    server = Server(server_args, workdir, args.max_batch, workdir / "videollama-serve.log")
    try:
        async with httpx.AsyncClient() as http:
            await server.wait_ready(http, START_TIMEOUT_S)
        return await load_run(f"videollama serve --max-batch {args.max_batch}", server.url, media, specs)
    finally:
        server.stop()


def table(report: Report, runs: list[RunResult]) -> None:
    report("| server | requests | ok | same answer as videollama serve | requests/s | tokens/s | latency p50 ms "
           "| latency p95 ms | TTFT p50 ms | TTFT p95 ms | wall s |")
    report("|---|---|---|---|---|---|---|---|---|---|---|")
    for run in runs:
        ok = run.ok
        same = "(reference)" if run is runs[0] else f"{len(ok) - run.mismatched} of {len(run.outcomes)}"
        report(f"| {run.name} | {len(run.outcomes)} | {len(ok)} | {same} | {len(ok) / run.wall_s:.2f} "
               f"| {run.tokens / run.wall_s:.1f} | {timing_cells(run, 95)} | {run.wall_s:.1f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=64, help="concurrent requests per server")
    parser.add_argument("--max-tokens", type=int, default=16, help="smallest max_tokens (request i: + i mod 64)")
    parser.add_argument("--max-batch", type=int, default=8, help="videollama serve's --max-batch")
    parser.add_argument("--output", type=Path, default=None, help="also write the printed report to this file")
    args = parser.parse_args()
    python, why = vllm_python()
    if python is None:
        print(f"bench_vllm_serve: no vLLM venv: {why}", file=sys.stderr)
        return 2
    report = Report(args.output)
    report(f"bench_vllm_serve: SynthAV (fp32, CPU), {os.cpu_count()} CPUs ({platform.machine()}, load average "
           f"{', '.join(f'{x:.2f}' for x in os.getloadavg())} at start), Python {platform.python_version()}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="videollama-vllm-bench-") as tmp:
        workdir = Path(tmp)
        media = make_media(workdir)
        specs = make_specs(media, args.requests, args.max_tokens)
        reference = asyncio.run(ours(args, media, specs, workdir))
        with vllm_server(python, SHIPPED_MODEL, "--served-model-name", MODEL_NAME, *VLLM_ARGS,
                         log_path=workdir / "vllm-serve.log") as url:
            vllm_run = asyncio.run(load_run("vllm serve (plugin)", url, media, specs))
    # Ours strips the answer as the official demo does; vLLM keeps the first token's leading space.
    for run in (reference, vllm_run):
        run.outcomes = [dataclasses.replace(o, text=o.text.strip()) for o in run.outcomes]
    check_against(reference, specs, None)
    check_against(vllm_run, specs, {o.rid: o for o in reference.outcomes})
    table(report, [reference, vllm_run])
    for problem in (reference.problems + vllm_run.problems)[:10]:
        report(f"- {problem}")
    report(f"total time {time.perf_counter() - started:.1f} s")
    report.save()
    return 0 if not (reference.problems or vllm_run.errors or vllm_run.lost) else 1


if __name__ == "__main__":  # vLLM is a separate process here, but keep the guard its docs ask for
    sys.exit(main())
