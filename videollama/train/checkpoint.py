"""Crash-safe training checkpoints: atomic directory per step, keep-last-K, ``latest`` pointer.

Layout under the run's output folder::

    checkpoints/
      checkpoint-00001000/
        model.safetensors   trainable weights only (what the official .pth "model" held)
        optimizer.pt        optimizer.state_dict()
        scheduler.json      LinearWarmupCosineLR.state_dict()
        data.json           data position: sampler state + per-dataset state (skip stats, ...)
        config.yaml         the TrainConfig of the run
        rng.pt              RNG states of every rank (python, numpy, torch CPU, CUDA)
        extra.json          anything else JSON-able the trainer wants back (step counters, ...)
        meta.json           step, time, file list -- written last: its presence marks completeness
      latest                text file naming the newest complete checkpoint directory

How a save stays atomic: everything is written into ``.tmp-checkpoint-<step>-<pid>`` inside the
same folder, every file and the folder are fsynced, the folder is renamed into place with
``os.replace``, then ``latest`` is replaced the same way (temp file + fsync + ``os.replace``).
A crash at any moment leaves either the old or the new checkpoint complete; ``load_latest``
ignores ``.tmp-*`` leftovers and any directory without ``meta.json``. Old checkpoints beyond
``keep_last_k`` are deleted only after ``latest`` points at the new one.

Single writer: under DDP/FSDP only rank 0 calls :func:`save_checkpoint`; gather the per-rank RNG
states first (``torch.distributed.gather_object(capture_rng_state())``) and pass the list as
``state["rng"]``; each rank restores ``loaded.rng[rank]``. FSDP users pass full (gathered) state
dicts -- the trainable parts are small (22M parameters at 7B).

For tests, ``VIDEOLLAMA_CHECKPOINT_TEST_SLEEP=<seconds>`` pauses after each file is written into
the temporary folder (``<file name>:<seconds>`` pauses after that file only), so a test can kill
the process in the middle of a save.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

__all__ = [
    "CheckpointError",
    "LoadedCheckpoint",
    "save_checkpoint",
    "load_checkpoint",
    "load_latest",
    "list_checkpoints",
    "capture_rng_state",
    "restore_rng_state",
]

LATEST = "latest"
PREFIX = "checkpoint-"
TMP_PREFIX = ".tmp-"
STEP_DIGITS = 8
META = "meta.json"
FORMAT_VERSION = 1
_NAME_RE = re.compile(rf"^{PREFIX}(\d+)$")
_TEST_SLEEP_ENV = "VIDEOLLAMA_CHECKPOINT_TEST_SLEEP"

logger = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or read (message names the path)."""


@dataclass
class LoadedCheckpoint:
    """What :func:`load_checkpoint` returns. Missing parts are None / empty."""

    path: Path
    step: int
    model: dict[str, torch.Tensor]
    optimizer: dict | None = None
    scheduler: dict | None = None
    data: dict | None = None
    config: str | None = None  # YAML text
    rng: list | None = None  # one entry per rank
    extra: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- RNG
def capture_rng_state() -> dict[str, Any]:
    """RNG states of this process: python, numpy, torch CPU and (if present) every CUDA device."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------- helpers
def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # some platforms cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _test_pause(name: str) -> None:
    setting = os.environ.get(_TEST_SLEEP_ENV)
    if setting:
        target, _, seconds = setting.rpartition(":")
        if not target or target == name:
            time.sleep(float(seconds))


def _write(path: Path, writer) -> None:
    writer(path)
    _fsync_file(path)
    _test_pause(path.name)


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}-{os.getpid()}")
    tmp.write_text(text)
    _fsync_file(tmp)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _step_name(step: int) -> str:
    return f"{PREFIX}{step:0{STEP_DIGITS}d}"


def list_checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in ``directory`` as (step, path), oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for child in directory.iterdir():
        match = _NAME_RE.match(child.name)
        if match and child.is_dir() and (child / META).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


# ---------------------------------------------------------------------------------------------- save
def save_checkpoint(directory: str | Path, step: int, state: dict[str, Any], *, keep_last_k: int = 2) -> Path:
    """Write ``state`` as checkpoint ``step`` in ``directory``; return its path.

    ``state`` keys (all optional except ``model``): ``model`` (name -> tensor, the trainable
    weights), ``optimizer``, ``scheduler``, ``data``, ``config`` (YAML text), ``rng`` (list, one
    per rank), ``extra`` (JSON-able dict). Unknown keys raise (a typo must not drop state).
    """
    known = {"model", "optimizer", "scheduler", "data", "config", "rng", "extra"}
    unknown = set(state) - known
    if unknown:
        raise CheckpointError(f"unknown checkpoint state keys {sorted(unknown)}; expected {sorted(known)}")
    if "model" not in state:
        raise CheckpointError("checkpoint state needs 'model' (the trainable weights)")
    if keep_last_k < 1:
        raise ValueError("keep_last_k must be >= 1")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / _step_name(step)
    tmp = directory / f"{TMP_PREFIX}{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    files = []

    def put(name: str, writer) -> None:
        _write(tmp / name, writer)
        files.append(name)

    # Tensors must be contiguous, detached CPU tensors with no shared storage for safetensors.
    model = {k: v.detach().to("cpu").contiguous().clone() for k, v in state["model"].items()}
    put("model.safetensors", lambda p: save_file(model, str(p), metadata={"step": str(step)}))
    if state.get("optimizer") is not None:
        put("optimizer.pt", lambda p: torch.save(state["optimizer"], p))
    for key in ("scheduler", "data", "extra"):
        if state.get(key) is not None:
            put(f"{key}.json", lambda p, key=key: p.write_text(json.dumps(state[key], indent=1)))
    if state.get("config") is not None:
        put("config.yaml", lambda p: p.write_text(state["config"]))
    if state.get("rng") is not None:
        put("rng.pt", lambda p: torch.save(state["rng"], p))
    meta = {"format": FORMAT_VERSION, "step": step, "time": time.time(), "files": files,
            "sizes": {name: (tmp / name).stat().st_size for name in files}}
    put(META, lambda p: p.write_text(json.dumps(meta, indent=1)))
    _fsync_dir(tmp)

    if final.exists():  # re-saving the same step: move the old one aside first
        stale = directory / f"{TMP_PREFIX}old-{final.name}-{os.getpid()}"
        os.replace(final, stale)
        shutil.rmtree(stale, ignore_errors=True)
    os.replace(tmp, final)
    _fsync_dir(directory)
    _write_text_atomic(directory / LATEST, final.name + "\n")
    _prune(directory, keep_last_k, keep=final)
    return final


def _prune(directory: Path, keep_last_k: int, keep: Path) -> None:
    complete = list_checkpoints(directory)
    for _, path in complete[:-keep_last_k]:
        if path != keep:
            shutil.rmtree(path, ignore_errors=True)
    # Leftovers of this process's interrupted saves are safe to remove; others may be live.
    for child in directory.iterdir():
        if child.name.startswith(TMP_PREFIX) and child.name.endswith(f"-{os.getpid()}") and child.is_dir():
            shutil.rmtree(child, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- load
def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Read one complete checkpoint directory."""
    path = Path(path)
    meta_file = path / META
    if not meta_file.is_file():
        raise CheckpointError(f"{path}: not a complete checkpoint (no {META})")
    try:
        meta = json.loads(meta_file.read_text())
        for name, size in meta.get("sizes", {}).items():
            actual = (path / name).stat().st_size
            if actual != size:
                raise CheckpointError(f"{path / name}: size {actual} differs from the recorded {size}")
        loaded = LoadedCheckpoint(path=path, step=int(meta["step"]), model=load_file(str(path / "model.safetensors")),
                                  meta=meta)
        if (path / "optimizer.pt").is_file():
            loaded.optimizer = torch.load(path / "optimizer.pt", map_location=map_location, weights_only=False)
        for key in ("scheduler", "data", "extra"):
            if (path / f"{key}.json").is_file():
                setattr(loaded, key, json.loads((path / f"{key}.json").read_text()))
        if (path / "config.yaml").is_file():
            loaded.config = (path / "config.yaml").read_text()
        if (path / "rng.pt").is_file():
            loaded.rng = torch.load(path / "rng.pt", weights_only=False)
    except CheckpointError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise CheckpointError(f"{path}: cannot read checkpoint ({' '.join(str(err).split())})") from None
    loaded.extra = loaded.extra or {}
    return loaded


def load_latest(directory: str | Path, *, map_location: str | torch.device = "cpu") -> LoadedCheckpoint | None:
    """The newest complete checkpoint in ``directory`` (None when there is none).

    Follows ``latest`` when it names a complete checkpoint; otherwise (pointer missing, stale or
    damaged) falls back to the highest-numbered complete directory. Temporary leftovers of an
    interrupted save are ignored.
    """
    directory = Path(directory)
    candidates = list_checkpoints(directory)
    pointer = directory / LATEST
    if pointer.is_file():
        name = pointer.read_text().strip()
        named = [c for c in candidates if c[1].name == name]
        if named:
            candidates = [c for c in candidates if c[1].name != name] + named  # try the pointer first
    for _, path in reversed(candidates):
        try:
            return load_checkpoint(path, map_location=map_location)
        except CheckpointError as err:
            logger.warning("skipping damaged checkpoint: %s", err)  # fall back to an older one
    return None
