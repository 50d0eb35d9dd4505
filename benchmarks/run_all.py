"""Run every benchmark in sequence (``make bench``) with modest sizes; print their tables and a summary.

Each benchmark runs as its own process (its output streams through as it comes); the exit status
is non-zero when any of them fails. ``bench_serve_load.py`` runs too when it exists.

    python benchmarks/run_all.py                    # all of them (about 10-15 minutes on 2 cores)
    python benchmarks/run_all.py --only chat train  # a subset, by name without the bench_ prefix
    python benchmarks/run_all.py --list
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# name -> arguments (modest sizes; every script's own defaults are the documented full runs).
BENCHMARKS: dict[str, list[str]] = {
    "decode": ["--repeats", "2"],
    "chat": ["--repeats", "3"],
    "convert": [],  # the defaults: full-size frozen encoders, 3-6 minutes, ~10 GB of temporary disk
    "train": ["--steps", "8"],
    "stage0_threads": ["--steps", "5"],
    "serve_load": [],  # written separately; run with its defaults when present
    "vllm_serve": [],  # needs the vLLM venv (built with `make vllm` when missing)
    "long_video": ["--minutes", "1", "10", "60"],  # the full run adds 120 minutes (about 5 minutes in all)
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help=f"run only these (of {', '.join(BENCHMARKS)})")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args()

    selected = args.only or list(BENCHMARKS)
    unknown = [n for n in selected if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    if args.list:
        for name in BENCHMARKS:
            script = HERE / f"bench_{name}.py"
            print(f"{name:12s} {script.relative_to(HERE.parent)} {' '.join(BENCHMARKS[name])}"
                  f"{'' if script.exists() else '  (not present)'}")
        return 0

    results: list[tuple[str, str, float]] = []
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    for name in selected:
        script = HERE / f"bench_{name}.py"
        if not script.exists():
            results.append((name, "not present (skipped)", 0.0))
            continue
        cmd = [sys.executable, str(script), *BENCHMARKS[name]]
        print(f"\n{'=' * 100}\n== {name}: {' '.join(cmd[1:])}\n{'=' * 100}", flush=True)
        start = time.perf_counter()
        code = subprocess.call(cmd, cwd=HERE.parent, env=env)
        seconds = time.perf_counter() - start
        results.append((name, "ok" if code == 0 else f"FAILED (exit {code})", seconds))

    print(f"\n{'=' * 100}\n| benchmark | result | seconds |\n|---|---|---|")
    for name, status, seconds in results:
        print(f"| {name} | {status} | {seconds:.0f} |")
    failed = [name for name, status, _ in results if status.startswith("FAILED")]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
