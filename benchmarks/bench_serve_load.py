"""Load test of the HTTP API on loopback: many concurrent streamed requests with media, checked answer by answer.

What it does, in one bounded run (``--requests`` at most 512 per pass, at most 1 + 2 x ``--repeats`` passes,
everything under ``--time-limit``, 300 s by default):

1. Writes a small media set into a temporary media root: three H.264 clips (different sizes, frame rates
   and tones, one without an audio track), two images (PNG, JPEG) and a WAV tone. Requests send them in
   all the ways the API takes: video by path below ``--media-root`` and as a ``data:`` URL, images as a
   ``data:`` URL and by path, audio as ``input_audio``.
2. Starts the real server (``python -m videollama serve``, a subprocess on 127.0.0.1 and a free port) with
   ``--max-batch 8`` (``--max-batch`` here). Model: the tiny random model (``--model tiny``, the default)
   or any model folder (``--model DIR``, with ``--device``/``--dtype``).
3. Warm-up: one request per media item (the server caches encoded media by content, so the timed runs
   measure scheduling and decoding, not first-time media encoding).
4. Reference pass: every request alone, one after the other (each is its own engine batch of 1).
5. Load: all ``--requests`` requests at once (asyncio + the official ``openai`` AsyncOpenAI client),
   each streamed with ``stream_options.include_usage``; ``--repeats`` times (3), the median repeat is
   shown. Every request asks a question holding its own id (``[req-017] ...``) and uses greedy decoding
   (``temperature 0``) and a known ``max_tokens``: request i sends media item i mod 6 and asks for
   ``--max-tokens`` + (i mod 64) tokens, so a swapped answer shows in its text or its token count even
   with the untrained tiny model (whose answers hardly depend on the id, and which gives both images
   the same text). The report says how many reference answers are distinct.
   Checks: every request completes (a finish reason and usage arrive), none fails, and each streamed
   answer, its token count and finish reason equal that request's reference (no answer lost or swapped).
6. Runs 2-5 again on a server started with ``--max-batch 1`` (one at a time; no reference pass there, the
   answers must equal the same references) and prints the throughput ratio batched / one-at-a-time.

Reported per run: requests, ok, errors, lost, mismatched, latency p50/p99 (request sent -> last chunk),
time to first token p50/p99 (request sent -> first non-empty text delta), throughput in requests/s and
completion tokens/s (over the run's wall time), and the mean engine batch size (from ``/health``).
Percentiles are nearest-rank (with 64 requests p99 is the slowest request).

Exit status: 0 when everything completed and matched; 1 when any request failed, was lost or got another
answer than alone; 2 when the time limit was hit or a server did not start.

Run: ``python benchmarks/bench_serve_load.py [--model tiny|DIR] [--requests 64] [--max-tokens 16]
[--max-batch 8] [--repeats 3] [--threads N] [--output FILE]``
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from media_fixtures import make_numbered_video, make_tone_audio  # noqa: E402

MAX_REQUESTS = 512
DISTINCT_MAX_TOKENS = 64  # request i asks for --max-tokens + (i mod 64) new tokens
MODEL_NAME = "videollama-bench"
STARTUP_POLL_S = 0.25
SHUTDOWN_WAIT_S = 10.0
EXIT_OK, EXIT_MISMATCH, EXIT_ABORTED = 0, 1, 2


# ------------------------------------------------------------------------------------------ media and requests
@dataclass(frozen=True)
class Media:
    name: str
    kind: str  # video | image | audio
    part: dict  # the OpenAI content part


def _data_url(path: Path, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def make_media(root: Path) -> list[Media]:
    """Six distinct media items, sent in every way the API accepts."""
    from PIL import Image

    make_numbered_video(root / "clip_a.mp4", 16, fps=8, size=(160, 128), with_audio=True, audio_freq=440.0)
    make_numbered_video(root / "clip_b.mp4", 24, fps=12, size=(96, 64), with_audio=True, audio_freq=880.0)
    make_numbered_video(root / "clip_c.mp4", 12, fps=6, size=(128, 96))  # no audio track
    y, x = np.mgrid[0:96, 0:128]
    gradient = np.stack([x * 2, y * 2, (x + y)], axis=-1).clip(0, 255).astype(np.uint8)
    Image.fromarray(gradient).save(root / "gradient.png")
    checker = (((x // 16 + y // 16) % 2) * 200 + 30).astype(np.uint8)
    Image.fromarray(np.stack([checker, 255 - checker, checker // 2], axis=-1)).save(root / "checker.jpg", quality=90)
    make_tone_audio(root / "tone.wav", 1.5, freq=660.0)
    return [
        Media("clip_a.mp4 (path)", "video", {"type": "video_url", "video_url": {"url": "clip_a.mp4"}}),
        Media("clip_b.mp4 (data URL)", "video",
              {"type": "video_url", "video_url": {"url": _data_url(root / "clip_b.mp4", "video/mp4")}}),
        Media("clip_c.mp4 (path, no audio)", "video", {"type": "video_url", "video_url": {"url": "clip_c.mp4"}}),
        Media("gradient.png (data URL)", "image",
              {"type": "image_url", "image_url": {"url": _data_url(root / "gradient.png", "image/png")}}),
        Media("checker.jpg (path)", "image", {"type": "image_url", "image_url": {"url": "checker.jpg"}}),
        Media("tone.wav (input_audio)", "audio", {"type": "input_audio", "input_audio": {
            "data": base64.b64encode((root / "tone.wav").read_bytes()).decode(), "format": "wav"}}),
    ]


QUESTIONS = {"video": "What happens in this video?", "image": "Describe this image.", "audio": "What do you hear?"}


@dataclass(frozen=True)
class Spec:
    rid: str
    media: Media
    question: str
    max_tokens: int

    def messages(self) -> list[dict]:
        return [{"role": "user", "content": [self.media.part, {"type": "text", "text": self.question}]}]


def make_specs(media: list[Media], count: int, max_tokens: int) -> list[Spec]:
    """Request i: media item i mod M and ``max_tokens + i mod 64``. Distinct max_tokens make a swapped answer
    show in its token count even when the model (the untrained tiny one) gives the same text to questions
    that differ only in their id, or to different images."""
    specs = []
    for i in range(count):
        item = media[i % len(media)]
        rid = f"req-{i:03d}"
        specs.append(Spec(rid, item, f"[{rid}] {QUESTIONS[item.kind]}", max_tokens + i % DISTINCT_MAX_TOKENS))
    return specs


# ------------------------------------------------------------------------------------------ one request
@dataclass
class Outcome:
    rid: str
    text: str = ""
    completion_tokens: int | None = None
    finish_reason: str | None = None
    error: str | None = None
    latency_s: float | None = None
    ttft_s: float | None = None

    @property
    def complete(self) -> bool:
        return self.error is None and self.finish_reason is not None and self.completion_tokens is not None


async def send(client, spec: Spec) -> Outcome:
    """One streamed request; never raises (failures are recorded in the outcome)."""
    out = Outcome(spec.rid)
    parts: list[str] = []
    start = time.perf_counter()
    try:
        stream = await client.chat.completions.create(
            model=MODEL_NAME, messages=spec.messages(), temperature=0, max_tokens=spec.max_tokens, stream=True,
            stream_options={"include_usage": True})
        async for chunk in stream:
            if chunk.choices:
                choice = chunk.choices[0]
                if choice.delta.content:
                    if out.ttft_s is None:
                        out.ttft_s = time.perf_counter() - start
                    parts.append(choice.delta.content)
                if choice.finish_reason:
                    out.finish_reason = choice.finish_reason
            if chunk.usage is not None:
                out.completion_tokens = chunk.usage.completion_tokens
    except asyncio.CancelledError:
        out.error = "cancelled (time limit)"
        raise
    except Exception as err:  # recorded and reported
        out.error = f"{type(err).__name__}: {' '.join(str(err).split())[:200]}"
    finally:
        out.latency_s = time.perf_counter() - start
        out.text = "".join(parts)
    return out


# ------------------------------------------------------------------------------------------ the server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m videollama serve`` in a subprocess on loopback; its log goes to a file."""

    def __init__(self, args, media_root: Path, max_batch: int, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        cmd = [sys.executable, "-m", "videollama", "serve", "--model", str(args.model), "--host", "127.0.0.1",
               "--port", str(self.port), "--model-name", MODEL_NAME, "--media-root", str(media_root),
               "--max-batch", str(max_batch), "--max-queue", str(max(64, args.requests)),
               "--timeout", str(args.time_limit), "--device", args.device, "--log-level", "warning"]
        if args.dtype:
            cmd += ["--dtype", args.dtype]
        env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
        if args.threads:
            env["OMP_NUM_THREADS"] = str(args.threads)
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)

    async def wait_ready(self, http: httpx.AsyncClient, timeout_s: float) -> float:
        start = time.perf_counter()
        while time.perf_counter() - start < timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with status {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if (await http.get(f"{self.url}/health", timeout=2.0)).status_code == 200:
                    return time.perf_counter() - start
            except httpx.HTTPError:
                pass
            await asyncio.sleep(STARTUP_POLL_S)
        raise TimeoutError(f"the server did not answer /health within {timeout_s:.0f} s:\n{self.log_tail()}")

    async def health(self, http: httpx.AsyncClient) -> dict:
        return (await http.get(f"{self.url}/health", timeout=10.0)).json()

    def log_tail(self, lines: int = 20) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown
            try:
                self.proc.wait(SHUTDOWN_WAIT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


# ------------------------------------------------------------------------------------------ runs and checks
def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


@dataclass
class RunResult:
    name: str
    outcomes: list[Outcome]
    wall_s: float
    batches: int = 0
    batched_jobs: int = 0
    max_batch_seen: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.complete]

    @property
    def errors(self) -> int:
        return sum(p.startswith("error ") for p in self.problems)

    @property
    def lost(self) -> int:
        return sum(p.startswith("lost ") for p in self.problems)

    @property
    def mismatched(self) -> int:
        return sum(p.startswith("mismatch ") for p in self.problems)

    @property
    def tokens(self) -> int:
        return sum(o.completion_tokens or 0 for o in self.ok)


def check_against(run: RunResult, specs: list[Spec], refs: dict[str, Outcome] | None) -> None:
    """Record every error, lost request and answer that differs from the request's reference."""
    by_id = {o.rid: o for o in run.outcomes}
    for spec in specs:
        out = by_id.get(spec.rid)
        if out is None:
            run.problems.append(f"lost {spec.rid}: no outcome at all")
        elif out.error is not None:
            run.problems.append(f"error {spec.rid}: {out.error}")
        elif not out.complete:
            run.problems.append(f"lost {spec.rid}: the stream ended without a finish reason or usage")
        elif refs is not None:
            ref = refs[spec.rid]
            if (out.text, out.completion_tokens, out.finish_reason) != (ref.text, ref.completion_tokens,
                                                                         ref.finish_reason):
                run.problems.append(f"mismatch {spec.rid}: {out.text!r} ({out.completion_tokens} tokens, "
                                    f"{out.finish_reason}), alone {ref.text!r} ({ref.completion_tokens} tokens, "
                                    f"{ref.finish_reason})")


async def sequential(client, specs: list[Spec]) -> tuple[list[Outcome], float]:
    start = time.perf_counter()
    outcomes = [await send(client, spec) for spec in specs]
    return outcomes, time.perf_counter() - start


async def concurrent(client, specs: list[Spec]) -> tuple[list[Outcome], float]:
    start = time.perf_counter()
    outcomes = await asyncio.gather(*(send(client, spec) for spec in specs))
    return list(outcomes), time.perf_counter() - start


async def measured(name: str, server: Server, http: httpx.AsyncClient, runner, *runner_args) -> RunResult:
    before = (await server.health(http))["scheduler"]
    outcomes, wall = await runner(*runner_args)
    after = (await server.health(http))["scheduler"]
    return RunResult(name, outcomes, wall, batches=after["batches"] - before["batches"],
                     batched_jobs=(after["completed"] + after["cancelled"] + after["timed_out"] + after["failed"])
                     - (before["completed"] + before["cancelled"] + before["timed_out"] + before["failed"]),
                     max_batch_seen=after["max_batch_seen"])


def median_run(runs: list[RunResult]) -> RunResult:
    """The repeat with the median requests/s (the lower middle one for an even count)."""
    ordered = sorted(runs, key=lambda r: len(r.ok) / r.wall_s)
    return ordered[(len(ordered) - 1) // 2]


# ------------------------------------------------------------------------------------------ report
class Report:
    def __init__(self, output: Path | None) -> None:
        self.lines: list[str] = []
        self.output = output

    def __call__(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)

    def save(self) -> None:
        if self.output is not None:
            self.output.parent.mkdir(parents=True, exist_ok=True)
            self.output.write_text("\n".join(self.lines) + "\n")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f}"


def timing_cells(run: RunResult, high: float) -> str:
    """Table cells "latency p50 | latency p<high> | TTFT p50 | TTFT p<high>" (ms) over the completed requests."""
    lat = [o.latency_s for o in run.ok]
    ttft = [o.ttft_s for o in run.ok if o.ttft_s is not None]
    return " | ".join(_ms(percentile(values, q)) for values in (lat, ttft) for q in (50, high))


def table(report: Report, runs: list[RunResult]) -> None:
    report("| run | requests | ok | errors | lost | mismatched | latency p50 ms | latency p99 ms | TTFT p50 ms "
           "| TTFT p99 ms | requests/s | tokens/s | mean batch | wall s |")
    report("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for run in runs:
        mean_batch = f"{run.batched_jobs / run.batches:.2f}" if run.batches else "-"
        report(f"| {run.name} | {len(run.outcomes)} | {len(run.ok)} | {run.errors} | {run.lost} | {run.mismatched} "
               f"| {timing_cells(run, 99)} | {len(run.ok) / run.wall_s:.2f} | {run.tokens / run.wall_s:.1f} "
               f"| {mean_batch} | {run.wall_s:.1f} |")


# ------------------------------------------------------------------------------------------ main
async def run_all(args, report: Report, workdir: Path) -> int:
    import openai

    deadline = time.monotonic() + args.time_limit

    def left() -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"the time limit of {args.time_limit:g} s is spent")
        return remaining

    media_root = workdir / "media"
    media_root.mkdir()
    media = make_media(media_root)
    specs = make_specs(media, args.requests, args.max_tokens)
    warmups = [Spec(f"warmup-{i}", m, QUESTIONS[m.kind], args.max_tokens) for i, m in enumerate(media)]
    report(f"media: {', '.join(m.name for m in media)}")
    report(f"requests: {len(specs)} streamed, greedy (temperature 0), max_tokens "
           f"{min(s.max_tokens for s in specs)}..{max(s.max_tokens for s in specs)} (known per request), "
           f"each question tagged with its id ({specs[0].question!r} ...)")
    report()

    limits = httpx.Limits(max_connections=args.requests + 16, max_keepalive_connections=args.requests + 16)
    runs: list[RunResult] = []  # the reference pass, then one median run per server
    load_runs: dict[int, list[RunResult]] = {}  # max_batch -> every repeat
    refs: dict[str, Outcome] | None = None
    async with httpx.AsyncClient(trust_env=False) as http:
        for max_batch in (args.max_batch, 1) if args.max_batch > 1 else (1,):
            server = Server(args, media_root, max_batch, workdir / f"server-batch{max_batch}.log")
            try:
                startup = await server.wait_ready(http, left())
                report(f"server --max-batch {max_batch}: ready in {startup:.1f} s ({server.url})")
                client = openai.AsyncOpenAI(
                    base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=args.time_limit,
                    http_client=openai.DefaultAsyncHttpxClient(limits=limits, trust_env=False))
                async with client:
                    warm, _ = await asyncio.wait_for(sequential(client, warmups), left())
                    bad = [f"{o.rid}: {o.error}" for o in warm if not o.complete]
                    if bad:
                        report("warm-up failed: " + "; ".join(bad))
                        report(server.log_tail())
                        return EXIT_MISMATCH
                    if refs is None:
                        ref_run = await asyncio.wait_for(measured(
                            f"alone, one after another (--max-batch {max_batch})", server, http,
                            sequential, client, specs), left())
                        check_against(ref_run, specs, None)
                        runs.append(ref_run)
                        if ref_run.problems:
                            report("reference pass failed:\n  " + "\n  ".join(ref_run.problems[:10]))
                            return EXIT_MISMATCH
                        refs = {o.rid: o for o in ref_run.outcomes}
                        texts = len({o.text for o in ref_run.outcomes})
                        pairs = len({(o.text, o.completion_tokens) for o in ref_run.outcomes})
                        report(f"reference answers: {pairs} distinct (text, token count) among {len(specs)} "
                               f"({texts} distinct texts); a swap is caught whenever the two differ")
                    for repeat in range(args.repeats):
                        run = await asyncio.wait_for(measured(
                            f"{len(specs)} concurrent, --max-batch {max_batch}", server, http,
                            concurrent, client, specs), left())
                        check_against(run, specs, refs)
                        load_runs.setdefault(max_batch, []).append(run)
                        report(f"  {len(specs)} concurrent, repeat {repeat + 1}/{args.repeats}: "
                               f"{len(run.ok)} complete, {len(run.problems)} problems, {run.batches} engine batches, "
                               f"{len(run.ok) / run.wall_s:.2f} requests/s")
            finally:
                server.stop()

    medians = {b: median_run(rs) for b, rs in load_runs.items()}
    runs += [medians[b] for b in sorted(medians, reverse=True)]
    report()
    report(f"Each concurrent row is the median of its {args.repeats} repeats by requests/s; latencies and TTFT "
           f"are per request within that repeat.")
    report()
    table(report, runs)
    problems = [p for run in [*runs[:1], *(r for rs in load_runs.values() for r in rs)] for p in run.problems]
    batched, single = medians.get(args.max_batch), medians.get(1)
    if batched is not None and single is not None and batched.ok and single.ok and args.max_batch > 1:
        rps = (len(batched.ok) / batched.wall_s) / (len(single.ok) / single.wall_s)
        tps = (batched.tokens / batched.wall_s) / (single.tokens / single.wall_s)
        p50 = percentile([o.latency_s for o in single.ok], 50) / percentile([o.latency_s for o in batched.ok], 50)
        report()
        report(f"batched (--max-batch {args.max_batch}) vs one at a time (--max-batch 1), same {len(specs)} "
               f"concurrent requests: {rps:.2f}x the requests/s, {tps:.2f}x the tokens/s, "
               f"p50 latency {p50:.2f}x lower")
    report()
    if problems:
        report(f"FAILED: {len(problems)} problems")
        for p in problems[:20]:
            report(f"  {p}")
        return EXIT_MISMATCH
    checked = len(runs[0].outcomes) + sum(len(r.outcomes) for rs in load_runs.values() for r in rs)
    report(f"OK: every request of every run completed with the answer it gets alone ({checked} requests checked)")
    return EXIT_OK


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny", help="'tiny' (the tiny random model, the default) or a model folder")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default=None, help="default: as saved")
    parser.add_argument("--requests", type=int, default=64, help=f"concurrent requests per run (1..{MAX_REQUESTS})")
    parser.add_argument("--max-tokens", type=int, default=16,
                        help="smallest max_tokens (request i asks for this + i mod 64)")
    parser.add_argument("--max-batch", type=int, default=8, help="the batched server's --max-batch (compared with 1)")
    parser.add_argument("--repeats", type=int, default=3, help="concurrent runs per server (the median is shown)")
    parser.add_argument("--time-limit", type=float, default=300.0, help="for the whole run, servers included (s)")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the server (default: unset)")
    parser.add_argument("--output", type=Path, default=None, help="also write the printed report to this file")
    args = parser.parse_args()
    if not 1 <= args.requests <= MAX_REQUESTS:
        parser.error(f"--requests must be between 1 and {MAX_REQUESTS}")
    if args.max_tokens < 1 or args.max_batch < 1 or not 1 <= args.repeats <= 10:
        parser.error("--max-tokens and --max-batch must be >= 1, --repeats between 1 and 10")

    report = Report(args.output)
    import torch

    report(f"bench_serve_load: model {args.model}, device {args.device}, {os.cpu_count()} CPUs "
           f"({platform.machine()}, load average {', '.join(f'{x:.2f}' for x in os.getloadavg())} at start), "
           f"torch {torch.__version__}, Python {platform.python_version()}, server threads "
           f"{args.threads or 'default'}")
    report(f"command: python {' '.join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="videollama-load-") as tmp:
        try:
            status = asyncio.run(run_all(args, report, Path(tmp)))
        except (TimeoutError, asyncio.TimeoutError) as err:
            report(f"ABORTED: {str(err) or f'the time limit of {args.time_limit:g} s was hit'}")
            status = EXIT_ABORTED
        except RuntimeError as err:
            report(f"ABORTED: {err}")
            status = EXIT_ABORTED
    report(f"total time {time.perf_counter() - started:.1f} s (limit {args.time_limit:g} s)")
    report.save()
    return status


if __name__ == "__main__":
    sys.exit(main())
