"""Crash-safe, verified training checkpoints: atomic directory per step, keep-last-K, ``latest`` pointer.

Layout under the run's output folder::

    checkpoints/
      checkpoint-00001000/
        model.safetensors   trainable weights only (what the official .pth "model" held)
        optimizer.pt        optimizer state dict (tensors and plain values only)
        scheduler.json      LinearWarmupCosineLR.state_dict()
        data.json           data position: sampler state + per-dataset state (skip stats, ...)
        config.yaml         the TrainConfig of the run
        rng.pt              RNG states of every rank (python, numpy, torch CPU, CUDA) as tensors and plain values
        extra.json          anything else JSON-able the trainer wants back (step counters, ...)
        meta.json           step, time, file list, sizes and SHA-256 of every file -- written last
      latest                text file naming the newest complete checkpoint directory

How a save stays atomic: everything is written into ``.tmp-checkpoint-<step>-<pid>`` inside the
same folder, every file and the folder are fsynced, the folder is renamed into place with
``os.replace``, then ``latest`` is replaced the same way (temp file + fsync + ``os.replace``).
A crash at any moment leaves either the old or the new checkpoint complete; ``load_latest``
ignores ``.tmp-*`` leftovers, and :func:`remove_leftovers` deletes those of dead processes (the
trainer calls it when a run starts). Old checkpoints beyond ``keep_last_k`` are deleted only after
``latest`` points at the new one.

How a load stays safe: every file's size and SHA-256 must match ``meta.json`` before it is parsed,
so damage of any size (a flipped header byte, a file overwritten with same-size garbage) is found.
Nothing is unpickled with code execution: ``.pt`` parts are read with ``torch.load(weights_only=True)``
(tensors, numbers, strings and containers only; a crafted pickle is refused, not run), the rest is
safetensors, JSON and YAML text. :func:`load_latest` falls back to the newest checkpoint that
verifies, with a one-line warning per damaged one, and raises :class:`NoUsableCheckpoint` when
checkpoints exist but none verifies (so a resume never silently starts over).

Single writer: under DDP/FSDP only rank 0 calls :func:`save_checkpoint`; gather the per-rank RNG
states first (``torch.distributed.gather_object(capture_rng_state())``) and pass the list as
``state["rng"]``; each rank restores ``loaded.rng[rank]``. FSDP users pass full (gathered) state
dicts -- the trainable parts are small (22M parameters at 7B).

For tests, ``VIDEOLLAMA_CHECKPOINT_TEST_SLEEP=<seconds>`` pauses after each file is written into
the temporary folder (``<file name>:<seconds>`` pauses after that file only), so a test can kill
the process in the middle of a save.
"""

from __future__ import annotations

import hashlib
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
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import VideoLlamaError

__all__ = [
    "TrainingCheckpointError",
    "NoUsableCheckpoint",
    "LoadedCheckpoint",
    "save_checkpoint",
    "load_checkpoint",
    "load_latest",
    "list_checkpoints",
    "remove_leftovers",
    "capture_rng_state",
    "restore_rng_state",
]

LATEST = "latest"
PREFIX = "checkpoint-"
TMP_PREFIX = ".tmp-"
STEP_DIGITS = 8
META = "meta.json"
FORMAT_VERSION = 2  # 2: SHA-256 per file in meta.json, RNG state without numpy objects (weights_only loads)
_NAME_RE = re.compile(rf"^{PREFIX}(\d+)$")
_LEFTOVER_PID_RE = re.compile(rf"^{re.escape(TMP_PREFIX)}.*-(\d+)$")  # .tmp-<what>-<pid of the writer>
_HASH_CHUNK = 1 << 20
# What a damaged or crafted file raises while it is parsed (after its checksum matched the metadata).
_PARSE_ERRORS = (OSError, ValueError, KeyError, TypeError, RuntimeError, EOFError, SafetensorError)
_TEST_SLEEP_ENV = "VIDEOLLAMA_CHECKPOINT_TEST_SLEEP"

logger = logging.getLogger(__name__)


class TrainingCheckpointError(VideoLlamaError, ValueError):
    """A checkpoint cannot be written or read, or fails verification (one line naming the path)."""


class NoUsableCheckpoint(TrainingCheckpointError):
    """Checkpoints exist, but none of them verifies (the message names each and why)."""


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
    """RNG states of this process: python, numpy, torch CPU and (if present) every CUDA device.

    Only tensors, numbers, strings, lists and dicts, so the state round-trips through
    ``torch.load(weights_only=True)`` (numpy's key array becomes an int64 tensor).
    """
    version, internal, gauss_next = random.getstate()
    kind, key, pos, has_gauss, cached_gaussian = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "state": list(internal), "gauss_next": gauss_next},
        "numpy": {"kind": str(kind), "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put back what :func:`capture_rng_state` took (CUDA states only where CUDA is present)."""
    python, numpy_state = state["python"], state["numpy"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss_next"]))
    np.random.set_state((numpy_state["kind"], numpy_state["key"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _check_rng(rng: Any, path: Path) -> None:
    """The loaded ``rng.pt`` has the shape :func:`restore_rng_state` reads (one dict per rank)."""
    fields = {"python": dict, "numpy": dict, "torch": torch.Tensor}
    if not isinstance(rng, list) or not all(
            isinstance(rank, dict) and all(isinstance(rank.get(k), t) for k, t in fields.items()) for rank in rng):
        raise TrainingCheckpointError(f"{path}: not an RNG state list (one dict of python, numpy, torch states per rank)")


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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


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


def _checkpoint_dirs(directory: Path) -> list[tuple[int, Path]]:
    """Every ``checkpoint-<step>`` directory (complete or not) as (step, path), oldest first."""
    if not directory.is_dir():
        return []
    found = []
    for child in directory.iterdir():
        match = _NAME_RE.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child))
    return sorted(found)


def list_checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in ``directory`` as (step, path), oldest first (verified only on load)."""
    return [(step, path) for step, path in _checkpoint_dirs(Path(directory)) if (path / META).is_file()]


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process is starting: none of its saves is under way
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_leftovers(directory: str | Path) -> list[Path]:
    """Delete the ``.tmp-*`` leftovers of saves that were killed mid-write; return what was removed.

    A leftover whose writer (the pid at the end of its name) still runs on this machine is kept: it may be
    a save under way. Call it when a run starts, before its first save.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for child in sorted(directory.iterdir()):
        match = _LEFTOVER_PID_RE.match(child.name)
        if not match:
            continue
        if _process_alive(int(match.group(1))):
            logger.warning("kept %s: the process that writes it (pid %s) is running", child, match.group(1))
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
        removed.append(child)
    return removed


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
        raise TrainingCheckpointError(f"unknown checkpoint state keys {sorted(unknown)}; expected {sorted(known)}")
    if "model" not in state:
        raise TrainingCheckpointError("checkpoint state needs 'model' (the trainable weights)")
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
            "sizes": {name: (tmp / name).stat().st_size for name in files},
            "sha256": {name: _sha256(tmp / name) for name in files}}
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
def _read_meta(path: Path) -> dict[str, Any]:
    """``meta.json`` of a checkpoint, checked: this format, and every listed file with its size and SHA-256."""
    meta_file = path / META
    if not meta_file.is_file():
        raise TrainingCheckpointError(f"{path}: not a complete checkpoint (no {META})")
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise TrainingCheckpointError(f"{meta_file}: unreadable ({' '.join(str(err).split())})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise TrainingCheckpointError(f"{meta_file}: checkpoint format {found}, this version reads format {FORMAT_VERSION} "
                              "(checksummed files, no pickled objects)")
    files, sizes, sums = meta.get("files"), meta.get("sizes"), meta.get("sha256")
    well_formed = (isinstance(files, list) and isinstance(sizes, dict) and isinstance(sums, dict)
                   and isinstance(meta.get("step"), int) and "model.safetensors" in files
                   and all(isinstance(n, str) and n in sizes and n in sums and n == Path(n).name for n in files))
    if not well_formed:
        raise TrainingCheckpointError(f"{meta_file}: malformed (needs step, and files with their sizes and sha256)")
    for name in files:
        file = path / name
        if not file.is_file():
            raise TrainingCheckpointError(f"{file}: missing (listed in {META})")
        size = file.stat().st_size
        if size != sizes[name]:
            raise TrainingCheckpointError(f"{file}: size {size} differs from the recorded {sizes[name]}")
        if _sha256(file) != sums[name]:
            raise TrainingCheckpointError(f"{file}: checksum mismatch (the file changed after it was saved)")
    return meta


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Read one complete checkpoint directory, every file verified against ``meta.json`` first.

    Raises :class:`TrainingCheckpointError` (one line naming the file) for anything missing, damaged or refused.
    """
    path = Path(path)
    meta = _read_meta(path)
    files = set(meta["files"])
    try:
        loaded = LoadedCheckpoint(path=path, step=meta["step"], model=load_file(str(path / "model.safetensors")),
                                  meta=meta)
        if "optimizer.pt" in files:
            loaded.optimizer = _load_pickle_free(path / "optimizer.pt", map_location)
        for key in ("scheduler", "data", "extra"):
            if f"{key}.json" in files:
                setattr(loaded, key, json.loads((path / f"{key}.json").read_text()))
        if "config.yaml" in files:
            loaded.config = (path / "config.yaml").read_text()
        if "rng.pt" in files:
            loaded.rng = _load_pickle_free(path / "rng.pt", "cpu")
            _check_rng(loaded.rng, path / "rng.pt")
    except TrainingCheckpointError:
        raise
    except _PARSE_ERRORS as err:
        raise TrainingCheckpointError(f"{path}: cannot read checkpoint ({' '.join(str(err).split())})") from None
    loaded.extra = loaded.extra or {}
    return loaded


def _load_pickle_free(path: Path, map_location: str | torch.device) -> Any:
    """``torch.load`` that builds tensors and plain values only: a pickle that would run code is refused."""
    from ..convert.safe_load import first_specific_line

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises UnpicklingError/RuntimeError/EOFError/IndexError/... for bad files
        text = str(err)
        if "Weights only load failed" in text:
            raise TrainingCheckpointError(f"{path}: refused: it holds more than tensors and plain values, loading it would "
                                  f"need to run code ({first_specific_line(text)})") from None
        raise TrainingCheckpointError(f"{path}: not a readable torch file ({type(err).__name__}: "
                              f"{first_specific_line(text) if text.strip() else 'no detail'})") from None


def load_latest(directory: str | Path, *, map_location: str | torch.device = "cpu") -> LoadedCheckpoint | None:
    """The newest checkpoint in ``directory`` that verifies; None when there is no checkpoint at all.

    Follows ``latest`` when it names a checkpoint; otherwise (pointer missing or stale) starts from the
    highest-numbered ``checkpoint-*`` directory. A damaged one (unverifiable, missing ``meta.json``,
    unreadable) is skipped with a one-line warning naming it, and the next older one is tried.
    Temporary leftovers of an interrupted save are ignored. Raises :class:`NoUsableCheckpoint` when
    checkpoints exist but none verifies.
    """
    directory = Path(directory)
    candidates = _checkpoint_dirs(directory)
    pointer = directory / LATEST
    if pointer.is_file():
        name = pointer.read_text(errors="replace").strip()
        named = [c for c in candidates if c[1].name == name]
        if named:
            candidates = [c for c in candidates if c[1].name != name] + named  # try the pointer first
    damaged = []
    for _, path in reversed(candidates):
        try:
            return load_checkpoint(path, map_location=map_location)
        except TrainingCheckpointError as err:
            logger.warning("skipping damaged checkpoint: %s", err)  # the message names the file; try an older one
            damaged.append(str(err))
    if damaged:
        raise NoUsableCheckpoint(f"{directory}: no checkpoint verifies ({len(damaged)} damaged; newest: {damaged[0]})")
    return None
