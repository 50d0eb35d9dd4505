"""Write a model's tensors as safetensors shards, one tensor in memory at a time.

``safetensors.torch.save_file`` needs every tensor of a shard in memory at once (and builds a
second, serialised copy). Converting a 13B model that way costs several GB per shard. The
safetensors format is simple enough to stream: an 8-byte little-endian header length, a JSON header
(name -> dtype, shape, byte offsets), then the raw bytes of each tensor back to back. Shapes and
dtypes are known before any data is read (:class:`~videollama.convert.safe_load.LazyTensor`), so the
header is written first and each tensor is then loaded, cast, written and dropped.

Sources are released (their memory maps dropped) every ``release_every`` bytes read, so the pages
of the input files that were touched leave the process's resident set as the conversion proceeds.
The result is the standard layout: ``model.safetensors``, or ``model-0000i-of-0000n.safetensors`` +
``model.safetensors.index.json``; every file is re-opened with the safetensors library to check it.

Every floating-point tensor is checked after its cast: a NaN or an infinity, already in the source or
made by the cast (a float64 1e300 is inf in bf16 and fp16), raises :class:`NonFiniteTensorError`
naming the key, so a written folder never holds non-finite weights.
"""

from __future__ import annotations

import json
import struct
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import VideoLlamaError
from .safe_load import SAFETENSORS_DTYPES, LazyTensor

__all__ = ["NonFiniteTensorError", "WrittenShards", "write_shards", "parse_size"]

HEADER_ALIGN = 8  # the header is padded with spaces to a multiple of 8 bytes
HEADER_LENGTH_BYTES = 8
DEFAULT_RELEASE_EVERY = 256 * 2**20
SINGLE_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
_DTYPE_NAMES = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items()}
_SIZE_UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "B": 1}


class NonFiniteTensorError(VideoLlamaError, ValueError):
    """A tensor holds NaN or infinite values, in its source or after the cast to the stored dtype."""


@dataclass
class WrittenShards:
    files: list[Path] = field(default_factory=list)
    total_bytes: int = 0
    tensors: int = 0
    largest_tensor: tuple[str, int] = ("", 0)  # (name, bytes)


def parse_size(text: str | int) -> int:
    """'5GB', '500MB', '2GiB' or a number of bytes -> bytes."""
    if isinstance(text, int):
        return text
    s = text.strip().upper()
    for unit in sorted(_SIZE_UNITS, key=len, reverse=True):
        if s.endswith(unit):
            return int(float(s[: -len(unit)]) * _SIZE_UNITS[unit])
    return int(s)


def write_shards(
    directory: str | Path,
    tensors: Mapping[str, LazyTensor],
    *,
    dtype_for: Callable[[str, torch.dtype], torch.dtype],
    max_shard_bytes: int,
    release: Callable[[], None] = lambda: None,
    release_every: int = DEFAULT_RELEASE_EVERY,
    metadata: dict[str, str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> WrittenShards:
    """Stream ``tensors`` (in the given order) into safetensors shards under ``directory``.

    Args:
        dtype_for: (name, source dtype) -> dtype to store (the cast happens one tensor at a time).
        max_shard_bytes: a shard is closed before it would exceed this (a larger tensor gets its own).
        release: called every ``release_every`` bytes read, to drop the sources' memory maps.
    """
    if sys.byteorder != "little":  # pragma: no cover - every platform torch ships wheels for
        raise RuntimeError("safetensors files are little-endian; this writer does not byte-swap")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    plan = _plan_shards(tensors, dtype_for, max_shard_bytes)
    names = [SINGLE_NAME] if len(plan) == 1 else [f"model-{i + 1:05d}-of-{len(plan):05d}.safetensors" for i in range(len(plan))]
    out = WrittenShards()
    since_release = 0
    for name, shard in zip(names, plan):
        path = directory / name
        header, data_bytes = _header(shard, metadata or {"format": "pt"})
        with path.open("wb") as f:
            f.write(struct.pack("<Q", len(header)))
            f.write(header)
            for key, lazy, out_dtype in shard:
                source = lazy.load()
                tensor = source.to(out_dtype).contiguous()
                _check_finite(key, lazy, source, tensor)
                del source
                f.write(tensor.reshape(-1).view(torch.uint8).numpy().data)  # (numel * itemsize,) raw bytes
                nbytes = tensor.numel() * tensor.element_size()
                if nbytes > out.largest_tensor[1]:
                    out.largest_tensor = (key, nbytes)
                since_release += lazy.nbytes
                del tensor
                if since_release >= release_every:
                    release()
                    since_release = 0
        if path.stat().st_size != HEADER_LENGTH_BYTES + len(header) + data_bytes:
            raise OSError(f"{path}: wrote {path.stat().st_size} bytes, expected {HEADER_LENGTH_BYTES + len(header) + data_bytes}")
        out.files.append(path)
        out.total_bytes += data_bytes
        out.tensors += len(shard)
        if progress:
            progress(f"wrote {path.name} ({len(shard)} tensors, {data_bytes / 1e9:.2f} GB)")
    release()
    if len(plan) > 1:
        weight_map = {key: name for name, shard in zip(names, plan) for key, _, _ in shard}
        index = {"metadata": {"total_size": out.total_bytes}, "weight_map": weight_map}
        (directory / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    _verify(out.files, {key for shard in plan for key, _, _ in shard})
    return out


def _check_finite(key: str, lazy: LazyTensor, source: torch.Tensor, stored: torch.Tensor) -> None:
    """Raise :class:`NonFiniteTensorError` when ``stored`` (``source`` cast) holds a NaN or an infinity."""
    if not stored.is_floating_point() or bool(torch.isfinite(stored).all()):
        return
    if not bool(torch.isfinite(source).all()):
        nan, inf = int(torch.isnan(source).sum()), int(torch.isinf(source).sum())
        raise NonFiniteTensorError(f"{key}: {nan} NaN and {inf} infinite values in {lazy.origin}; a model folder "
                                   "never stores non-finite weights (a damaged or diverged checkpoint?)")
    largest = float(source.abs().max())
    raise NonFiniteTensorError(f"{key}: values up to {largest:.3g} in {lazy.origin} overflow to inf in {stored.dtype} "
                               f"(largest finite {torch.finfo(stored.dtype).max:.3g}); a damaged checkpoint?")


def _plan_shards(tensors, dtype_for, max_shard_bytes) -> list[list[tuple[str, LazyTensor, torch.dtype]]]:
    shards: list[list[tuple[str, LazyTensor, torch.dtype]]] = [[]]
    size = 0
    for key, lazy in tensors.items():
        out_dtype = dtype_for(key, lazy.dtype)
        if out_dtype not in _DTYPE_NAMES:
            raise ValueError(f"{key}: cannot store dtype {out_dtype} in safetensors")
        nbytes = lazy.numel * out_dtype.itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((key, lazy, out_dtype))
        size += nbytes
    return shards


def _header(shard, metadata: dict[str, str]) -> tuple[bytes, int]:
    entries: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for key, lazy, out_dtype in shard:
        nbytes = lazy.numel * out_dtype.itemsize
        entries[key] = {"dtype": _DTYPE_NAMES[out_dtype], "shape": list(lazy.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header = json.dumps(entries, separators=(",", ":")).encode("utf-8")
    header += b" " * (-len(header) % HEADER_ALIGN)
    return header, offset


def _verify(files: list[Path], keys: set[str]) -> None:
    """Re-open every shard with the safetensors library: headers parse and the key set is complete."""
    from safetensors import safe_open

    found: set[str] = set()
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            found |= set(f.keys())
    if found != keys:
        raise OSError(f"written shards hold {len(found)} tensors, expected {len(keys)}")
