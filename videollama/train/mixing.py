"""Dataset mixing: one dataset per batch, chosen in proportion to ``sample_ratio``; exact resume.

The official ``MultiIterLoader`` draws, for every batch, one dataset with probability
``ratio / sum(ratios)`` (100:24 -> WebVid 80.6 %, CC595k 19.4 %; no ratios -> uniform). Here the
whole data order is a pure function of ``(seed, step)``:

* **Dataset choice.** Step ``s`` (the global batch index) picks its dataset from one seeded
  stream of uniform draws, so every rank picks the same dataset at the same step.
* **Records.** Each dataset is read as an endless sequence of seeded permutations (epoch ``e`` of
  dataset ``d`` is ``randperm(len_d)`` seeded by ``(seed, d, e)``). A step that picks ``d``
  consumes the next ``global_batch = batch_size * world_size`` positions of that sequence.
* **DDP.** Rank ``r`` takes positions ``[r * batch_size, (r + 1) * batch_size)`` of the global
  batch: ranks see disjoint records, and the union over ranks equals what one process with
  ``batch_size * world_size`` would see. Resuming with a different world size but the same
  global batch therefore continues the same global data order.
* **Gradient accumulation.** :class:`AccumulationSampler` reads each step's global batch
  (``batch_size * world_size * accum``) as ``accum`` micro-batches per rank, so accumulation sees
  exactly the records of the bigger batch.
* **Augmentation seeds.** Every draw carries a seed derived from ``(seed, d, position)``, so frame
  sampling and crops are reproducible regardless of DataLoader workers or resume.

The DataLoader prefetches, so the sampler cannot know which batches the trainer has consumed:
the trainer owns the step counter. Save ``sampler.state_dict(next_step)`` in a checkpoint and
call ``sampler.load_state_dict(state)`` before creating the DataLoader iterator to resume.

    sampler = MultiDatasetSampler([len(a), len(b)], [100, 24], batch_size=4, seed=42)
    loader = DataLoader(MixedDataset([a, b]), batch_sampler=sampler, collate_fn=collate)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from .config import ConfigError

__all__ = ["SampleKey", "MultiDatasetSampler", "AccumulationSampler", "MixedDataset", "normalized_ratios"]

_CHOICE_CHUNK = 65536  # dataset choices are generated in chunks of this many steps
_SEED_SALT_CHOICE = 0x5EED  # distinguishes the choice stream from the permutation streams


class SampleKey(NamedTuple):
    """What the sampler hands to :class:`MixedDataset`: which record, with which random seed."""

    dataset: int  # index into the dataset list
    index: int  # record index inside that dataset
    seed: int  # seed for this draw's augmentation (frames, crop, prompt)
    step: int  # global batch index that drew it


def normalized_ratios(ratios: Sequence[float] | None, count: int) -> np.ndarray:
    """Probabilities ∝ ratios (uniform when None), validated."""
    if ratios is None:
        return np.full(count, 1.0 / count)
    values = np.asarray(ratios, dtype=np.float64)
    if values.shape != (count,) or (values <= 0).any() or not np.isfinite(values).all():
        raise ConfigError(f"need {count} positive finite sample ratios, got {list(ratios)}")
    return values / values.sum()


def _seed_of(*parts: int) -> int:
    """A 63-bit seed from integers (stable across processes and Python versions)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class MultiDatasetSampler(Sampler[list[SampleKey]]):
    """Batch sampler over several datasets: yields lists of :class:`SampleKey` for this rank.

    Args:
        dataset_sizes: number of records of each dataset.
        ratios: mixing weights (``sample_ratio``); None for uniform.
        batch_size: samples per rank per step.
        seed: run seed; all ranks must use the same one.
        rank, world_size: this process's slice of the global batch.
        num_steps: stop after this many steps (None: endless).
    """

    def __init__(
        self,
        dataset_sizes: Sequence[int],
        ratios: Sequence[float] | None,
        batch_size: int,
        *,
        seed: int = 42,
        rank: int = 0,
        world_size: int = 1,
        num_steps: int | None = None,
    ) -> None:
        if not dataset_sizes:
            raise ConfigError("no datasets to sample from")
        for i, size in enumerate(dataset_sizes):
            if size < 1:
                raise ConfigError(f"dataset {i} is empty")
        if batch_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"bad batch_size/rank/world_size: {batch_size}/{rank}/{world_size}")
        self.sizes = [int(s) for s in dataset_sizes]
        self.probs = normalized_ratios(ratios, len(self.sizes))
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.num_steps = num_steps
        self.next_step = 0  # first step the next iterator yields (set by the trainer / resume)
        self._choice_cache: dict[int, np.ndarray] = {}
        self._perm_cache: dict[tuple[int, int], np.ndarray] = {}

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    # Pure functions of (seed, step) -------------------------------------------------------
    def choices(self, start: int, stop: int) -> np.ndarray:
        """Dataset index chosen at each step in ``[start, stop)``."""
        out = []
        chunk = start // _CHOICE_CHUNK
        while chunk * _CHOICE_CHUNK < stop:
            out.append(self._choice_chunk(chunk))
            chunk += 1
        first = (start // _CHOICE_CHUNK) * _CHOICE_CHUNK
        return np.concatenate(out)[start - first : stop - first] if out else np.zeros(0, dtype=np.int64)

    def _choice_chunk(self, chunk: int) -> np.ndarray:
        if chunk not in self._choice_cache:
            rng = np.random.default_rng(_seed_of(self.seed, _SEED_SALT_CHOICE, chunk))
            uniform = rng.random(_CHOICE_CHUNK)
            cumulative = np.cumsum(self.probs)
            cumulative[-1] = 1.0  # guard against rounding
            self._choice_cache = {chunk: np.searchsorted(cumulative, uniform, side="right").astype(np.int64)}
        return self._choice_cache[chunk]

    def cursors_at(self, step: int) -> list[int]:
        """Positions consumed from each dataset's record sequence before ``step``."""
        counts = np.bincount(self.choices(0, step), minlength=len(self.sizes)) if step > 0 else np.zeros(len(self.sizes))
        return [int(c) * self.global_batch for c in counts]

    def _record(self, dataset: int, position: int) -> int:
        size = self.sizes[dataset]
        epoch, offset = divmod(position, size)
        key = (dataset, epoch)
        if key not in self._perm_cache:
            if len(self._perm_cache) > 2 * len(self.sizes):
                self._perm_cache.clear()
            generator = torch.Generator().manual_seed(_seed_of(self.seed, dataset, epoch))
            self._perm_cache[key] = torch.randperm(size, generator=generator).numpy()
        return int(self._perm_cache[key][offset])

    def batch_at(self, step: int, cursors: list[int] | None = None, *, part: int | None = None) -> list[SampleKey]:
        """This rank's keys for ``step`` (``cursors``: positions before ``step``, to skip a replay).

        ``part``: which ``batch_size`` slice of the global batch to read (default: this rank's).
        """
        cursors = self.cursors_at(step) if cursors is None else cursors
        dataset = int(self.choices(step, step + 1)[0])
        start = cursors[dataset] + (self.rank if part is None else part) * self.batch_size
        return [
            SampleKey(dataset, self._record(dataset, pos), _seed_of(self.seed, dataset, pos, 1), step)
            for pos in range(start, start + self.batch_size)
        ]

    # Sampler protocol -----------------------------------------------------------------------
    def __iter__(self) -> Iterator[list[SampleKey]]:
        step = self.next_step
        cursors = self.cursors_at(step)
        while self.num_steps is None or step < self.num_steps:
            keys = self.batch_at(step, cursors)
            cursors[keys[0].dataset] += self.global_batch
            yield keys
            step += 1

    def __len__(self) -> int:
        if self.num_steps is None:
            raise TypeError("endless sampler has no length (set num_steps)")
        return max(0, self.num_steps - self.next_step)

    def state_dict(self, next_step: int | None = None) -> dict[str, Any]:
        """Resume state: the next step to run (defaults to ``self.next_step``) + identity checks."""
        step = self.next_step if next_step is None else int(next_step)
        return {
            "next_step": step,
            "seed": self.seed,
            "sizes": list(self.sizes),
            "probs": [float(p) for p in self.probs],
            "global_batch": self.global_batch,
            "cursors": self.cursors_at(step),  # informational: records consumed per dataset
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, mine in (("seed", self.seed), ("sizes", self.sizes), ("global_batch", self.global_batch)):
            if state[key] != mine:
                raise ConfigError(f"cannot resume the data order: {key} was {state[key]}, now {mine}")
        if not np.allclose(state["probs"], self.probs):
            raise ConfigError(f"cannot resume the data order: sample ratios changed ({state['probs']} -> {list(self.probs)})")
        self.next_step = int(state["next_step"])


class AccumulationSampler(MultiDatasetSampler):
    """The data order under gradient accumulation: step ``s`` reads the global batch of ``batch_size x
    processes x accum`` records (one dataset, :class:`MultiDatasetSampler`'s order for that global batch),
    every process in ``accum`` micro-batches of ``batch_size``.

    Micro-batch ``m`` of process ``r`` is slice ``m * processes + r`` of the global batch, so the union of
    all micro-batches of all processes is exactly what one process with ``batch_size x processes x accum``
    and no accumulation reads at that step (same records, same augmentation seeds). With ``accum == 1`` it
    is :class:`MultiDatasetSampler` itself. Yields micro-batches; ``num_steps``, ``next_step`` and the
    state dict count steps (``global_batch`` includes ``accum``, so resuming with another split of the
    same global batch continues the same order).
    """

    def __init__(self, dataset_sizes: Sequence[int], ratios: Sequence[float] | None, batch_size: int, *, seed: int = 42, rank: int = 0,
                 world_size: int = 1, accum: int = 1, num_steps: int | None = None) -> None:
        if accum < 1:
            raise ConfigError(f"accum must be >= 1, got {accum}")
        super().__init__(dataset_sizes, ratios, batch_size, seed=seed, rank=rank, world_size=world_size * accum,
                         num_steps=num_steps)
        self.process_rank, self.processes, self.accum = int(rank), int(world_size), int(accum)

    def micro_batch_at(self, step: int, micro: int, cursors: list[int] | None = None) -> list[SampleKey]:
        """This process's keys for micro-batch ``micro`` of ``step``."""
        if not 0 <= micro < self.accum:
            raise ValueError(f"micro-batch {micro} of {self.accum}")
        return self.batch_at(step, cursors, part=micro * self.processes + self.process_rank)

    def __iter__(self) -> Iterator[list[SampleKey]]:
        step = self.next_step
        cursors = self.cursors_at(step)
        while self.num_steps is None or step < self.num_steps:
            for micro in range(self.accum):
                keys = self.micro_batch_at(step, micro, cursors)
                yield keys
            cursors[keys[0].dataset] += self.global_batch
            step += 1

    def __len__(self) -> int:
        return super().__len__() * self.accum


class MixedDataset(Dataset):
    """Routes a :class:`SampleKey` to its dataset: ``datasets[key.dataset].get(key.index, key.seed)``.

    The returned sample dict gets ``step`` added (collate passes it on as ``batch["step"]``).
    """

    def __init__(self, datasets: Sequence[Dataset]) -> None:
        self.datasets = list(datasets)

    def __len__(self) -> int:
        return sum(len(d) for d in self.datasets)

    def __getitem__(self, key: SampleKey) -> dict[str, Any]:
        sample = self.datasets[key.dataset].get(key.index, seed=key.seed)
        sample["step"] = key.step
        return sample
