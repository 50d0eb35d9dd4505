"""Helpers for the vLLM tests: the vLLM venv (``make vllm``) and a ``vllm serve`` process on loopback.

vLLM lives in its own venv (it pins its own torch and transformers), so the tests drive it as a
separate process: ``vllm_python()`` builds the venv with ``make vllm`` when it is missing (idempotent,
a few minutes the first time) and returns its interpreter, or ``None`` with the reason the build failed;
``vllm_server`` starts ``vllm serve`` on a free 127.0.0.1 port and stops its whole process group.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from serve_helpers import free_port

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
BUILD_TIMEOUT_S = 1200.0
START_TIMEOUT_S = 600.0  # two shared CPU cores: imports, the model and vLLM's profiling run take minutes
STOP_TIMEOUT_S = 30.0
POLL_S = 1.0
LOG_TAIL_CHARS = 3000
# Small on purpose: the SynthAV model's context is 512 positions and these machines have little memory.
SERVER_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "1"}


def vllm_python() -> tuple[Path | None, str]:
    """(the vLLM venv's python, "") once ``make vllm`` succeeded, else (None, why not)."""
    try:
        done = subprocess.run(["make", "-C", str(ROOT), "vllm"], capture_output=True, text=True,
                              timeout=BUILD_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as err:
        return None, f"`make vllm` could not run: {err}"
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
        return None, f"`make vllm` failed (exit {done.returncode}): " + " | ".join(tail)
    return VLLM_PYTHON, ""


@contextmanager
def vllm_server(python: Path, model_dir: Path, *args: str, log_path: Path) -> Iterator[str]:
    """``vllm serve model_dir *args`` on 127.0.0.1; yields the base URL ("http://127.0.0.1:PORT")."""
    port = free_port()
    command = [str(python.parent / "vllm"), "serve", str(model_dir), "--host", "127.0.0.1",
               "--port", str(port), *args]
    with log_path.open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**os.environ, **SERVER_ENV})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _healthy(base):
            if process.poll() is not None or time.monotonic() > deadline:
                state = f"exited with {process.returncode}" if process.poll() is not None else "timed out"
                raise RuntimeError(f"vllm serve {state}; log tail:\n{log_path.read_text()[-LOG_TAIL_CHARS:]}")
            time.sleep(POLL_S)
        yield base
    finally:
        _stop(process)


def _healthy(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=POLL_S) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (it spawns an engine core and workers), then SIGKILL."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(STOP_TIMEOUT_S)
