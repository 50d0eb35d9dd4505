"""Apply an explicit key table to a state dict; shared by every converter in this package.

A key table maps official names to ours one to one; ``expected`` gives the official shape of every
official key. :func:`apply_key_table` sorts each source key into exactly one bucket of a
:class:`~videollama.convert.report.ConversionReport` (converted, ignored on purpose, unexpected, wrong
shape) and lists every table key the source lacks as missing. :class:`FusedKey` covers the one
many-to-one case (EVA's separate ``q_bias``/``v_bias`` become one ``qkv.bias``).

Values stay lazy (:class:`~videollama.convert.safe_load.LazyTensor`): nothing is read here.
:func:`random_tensors` makes well-scaled random tensors for given shapes (test and benchmark
fixtures in the official layouts).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from .report import ConversionReport
from .safe_load import LazyTensor

Shape = tuple[int, ...]


@dataclass(frozen=True)
class FusedKey:
    """Several official tensors combined into one of ours (e.g. q_bias + v_bias -> qkv.bias)."""

    sources: tuple[str, ...]
    target: str
    shape: Shape  # shape of the combined tensor
    combine: Callable[[list[Tensor]], Tensor]


def as_lazy(value: LazyTensor | Tensor, origin: str) -> LazyTensor:
    return value if isinstance(value, LazyTensor) else LazyTensor.of(value, origin)


def apply_key_table(
    state: Mapping[str, LazyTensor | Tensor],
    table: Mapping[str, str],
    expected: Mapping[str, Shape],
    *,
    source: str,
    ignored: Callable[[str], bool] = lambda key: False,
    fused: list[FusedKey] = (),  # type: ignore[assignment]
) -> tuple[dict[str, LazyTensor], ConversionReport]:
    """Map ``state`` through ``table`` (+ ``fused``); returns (ours, report). Never raises."""
    report = ConversionReport(source=source)
    ours: dict[str, LazyTensor] = {}
    fused_sources = {key: f for f in fused for key in f.sources}
    shape_ok: dict[str, bool] = {}
    for key, value in state.items():
        target = table.get(key)
        if target is None and key not in fused_sources:
            (report.ignored if ignored(key) else report.unexpected).append(key)
            continue
        want = tuple(expected[key])
        if tuple(value.shape) != want:
            report.shape_mismatch.append((key, tuple(value.shape), want))
            shape_ok[key] = False
            continue
        shape_ok[key] = True
        if target is not None:
            ours[target] = as_lazy(value, f"{source}:{key}")
    for f in fused:
        present = [k for k in f.sources if k in state]
        if len(present) == len(f.sources) and all(shape_ok.get(k) for k in f.sources):
            parts = [as_lazy(state[k], f"{source}:{k}") for k in f.sources]
            ours[f.target] = LazyTensor(torch.Size(f.shape), parts[0].dtype,
                                        lambda parts=parts, f=f: f.combine([p.load() for p in parts]),
                                        f"{source}:{'+'.join(f.sources)}")
    report.missing = [k for k in table if k not in state]
    report.missing += [k for f in fused for k in f.sources if k not in state]
    report.converted = len(ours)
    return ours, report


def random_tensors(
    shapes: Mapping[str, Shape],
    seed: int = 0,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> dict[str, Tensor]:
    """Random tensors that keep a forward pass well behaved (``device='meta'``: shapes only).

    1-D ``*weight`` (norms) ~ 1 + N(0, 0.1); 1-D others (biases) ~ N(0, 0.02); matrices and convs ~
    N(0, 1/fan_in); 3-D tokens/position tables ~ N(0, 0.5); ``position_ids`` = arange; ``inv_freq``
    follows RoPE. Keys are generated in a fixed order from one seeded generator.
    """
    if torch.device(device).type == "meta":
        return {k: torch.empty(s, dtype=_dtype_for(k, dtype), device="meta") for k, s in shapes.items()}
    generator = torch.Generator().manual_seed(seed)
    out: dict[str, Tensor] = {}
    for key, shape in shapes.items():
        if key.endswith("position_ids"):
            out[key] = torch.arange(shape[-1]).reshape(shape)
            continue
        if key.endswith("inv_freq"):
            out[key] = 1.0 / (10000 ** (torch.arange(0, 2 * shape[0], 2, dtype=torch.float32) / (2 * shape[0])))
            continue
        noise = torch.randn(shape, generator=generator)
        if len(shape) == 1:
            value = 1.0 + 0.1 * noise if key.endswith("weight") else 0.02 * noise
        elif len(shape) == 3 or key.endswith(("embedding.weight", "embeddings.weight")):
            value = 0.5 * noise
        elif len(shape) == 0:
            value = noise
        else:
            value = noise / math.sqrt(math.prod(shape[1:]))
        out[key] = value.to(device=device, dtype=dtype)
    return out


def _dtype_for(key: str, dtype: torch.dtype) -> torch.dtype:
    return torch.int64 if key.endswith("position_ids") else dtype
