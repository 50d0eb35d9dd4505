"""AdamW parameter groups and the official linear-warmup cosine learning-rate schedule.

Reproduces ``video_llama/common/optims.py`` and the optimizer of ``runners/runner_base.py``:

* **No weight decay** for a trainable parameter when ``ndim < 2`` or its name contains
  ``"bias"``, ``"ln"`` or ``"bn"``. These are plain *substring* tests, as in the original: any
  name containing the letters "ln" (``"kiln.weight"``, a ``"ln_vision"`` matrix) or "bn" is
  exempt too. With our module names no 2-D trainable weight of the official stages contains them,
  so the groups match the official ones; the quirk is kept so custom trainable sets behave the same.
* **Schedule** (``LinearWarmupCosineLRScheduler.step(cur_epoch, cur_step)``), called once per
  *iteration* (every micro-batch, before its forward) with the within-epoch step ``cur_step``::

      t = cur_epoch * iters_per_epoch + cur_step
      if t < warmup_steps:   lr = min(init_lr, warmup_lr + (init_lr - warmup_lr) * cur_step / max(warmup_steps, 1))
      else:                  lr = min_lr + (init_lr - min_lr) * 0.5 * (1 + cos(pi * t / (max_epoch * iters_per_epoch)))

  The warmup branch is chosen by the global step ``t`` but interpolates with the *within-epoch*
  ``cur_step``; the two agree whenever ``warmup_steps <= iters_per_epoch`` (all official stages).
  The cosine starts from ``t = warmup_steps`` (not from 0 after warmup), so the first cosine value
  is already a little below ``init_lr``; this is reproduced.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch

from .config import ConfigError

__all__ = ["NO_DECAY_NAME_PARTS", "no_weight_decay", "param_groups", "build_optimizer", "LinearWarmupCosineLR"]

NO_DECAY_NAME_PARTS = ("bias", "ln", "bn")  # official substring rule


def no_weight_decay(name: str, param: torch.Tensor) -> bool:
    """The official rule: vectors/scalars and names containing bias/ln/bn get no weight decay."""
    return param.ndim < 2 or any(part in name for part in NO_DECAY_NAME_PARTS)


def param_groups(named_params: Iterable[tuple[str, torch.nn.Parameter]], weight_decay: float) -> list[dict]:
    """Split trainable parameters into a decayed and a non-decayed AdamW group.

    Frozen parameters (``requires_grad=False``) are skipped. Each group carries the parameter
    names under ``"names"`` (ignored by torch, useful for logs and tests).
    """
    decay, no_decay = ([], []), ([], [])
    for name, param in named_params:
        if not param.requires_grad:
            continue
        names, params = no_decay if no_weight_decay(name, param) else decay
        names.append(name)
        params.append(param)
    return [
        {"params": decay[1], "names": decay[0], "weight_decay": float(weight_decay)},
        {"params": no_decay[1], "names": no_decay[0], "weight_decay": 0.0},
    ]


def build_optimizer(
    named_params: Iterable[tuple[str, torch.nn.Parameter]],
    *,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.999),
) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` (the official optimizer). Raises if nothing is trainable."""
    groups = param_groups(named_params, weight_decay)
    if not any(g["params"] for g in groups):
        raise ConfigError("no trainable parameters: check run.trainable")
    groups = [g for g in groups if g["params"]]
    return torch.optim.AdamW(groups, lr=float(lr), weight_decay=float(weight_decay), betas=tuple(betas))


@dataclass
class _Schedule:
    init_lr: float
    min_lr: float
    warmup_lr: float
    warmup_steps: int
    max_epoch: int
    iters_per_epoch: int


class LinearWarmupCosineLR:
    """The official per-iteration schedule; sets ``lr`` on every param group of ``optimizer``.

    Use ``step(cur_epoch, cur_step)`` before each iteration (as the official loop does) or
    ``step_global(t)`` with the global iteration index ``t`` (``divmod(t, iters_per_epoch)``).
    ``lr_at`` is the pure formula.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer | None,
        *,
        init_lr: float,
        min_lr: float,
        warmup_lr: float,
        warmup_steps: int,
        max_epoch: int,
        iters_per_epoch: int,
    ) -> None:
        if iters_per_epoch < 1 or max_epoch < 1:
            raise ConfigError("max_epoch and iters_per_epoch must be >= 1")
        self.optimizer = optimizer
        # warmup_lr < 0 means "start at init_lr" in the original (warmup_start_lr default -1).
        start = float(warmup_lr) if warmup_lr >= 0 else float(init_lr)
        self.schedule = _Schedule(float(init_lr), float(min_lr), start, int(warmup_steps), int(max_epoch), int(iters_per_epoch))
        self.last_epoch = 0
        self.last_step = -1  # nothing applied yet
        self.last_lr = start

    @property
    def total_steps(self) -> int:
        return self.schedule.max_epoch * self.schedule.iters_per_epoch

    def lr_at(self, cur_epoch: int, cur_step: int) -> float:
        s = self.schedule
        total_cur_step = cur_epoch * s.iters_per_epoch + cur_step
        if total_cur_step < s.warmup_steps:
            return min(s.init_lr, s.warmup_lr + (s.init_lr - s.warmup_lr) * cur_step / max(s.warmup_steps, 1))
        progress = total_cur_step / self.total_steps
        return (s.init_lr - s.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress)) + s.min_lr

    def step(self, cur_epoch: int, cur_step: int) -> float:
        """Set the lr for iteration ``cur_step`` of epoch ``cur_epoch``; returns it."""
        lr = self.lr_at(cur_epoch, cur_step)
        if self.optimizer is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        self.last_epoch, self.last_step, self.last_lr = cur_epoch, cur_step, lr
        return lr

    def step_global(self, global_step: int) -> float:
        epoch, step = divmod(global_step, self.schedule.iters_per_epoch)
        return self.step(epoch, step)

    def state_dict(self) -> dict:
        return {**asdict(self.schedule), "last_epoch": self.last_epoch, "last_step": self.last_step, "last_lr": self.last_lr}

    def load_state_dict(self, state: dict) -> None:
        """Restore position; the schedule numbers must match the current config."""
        saved = _Schedule(**{k: state[k] for k in asdict(self.schedule)})
        if saved != self.schedule:
            raise ConfigError(f"checkpoint schedule {saved} differs from the configured {self.schedule}")
        self.last_epoch, self.last_step, self.last_lr = state["last_epoch"], state["last_step"], state["last_lr"]
        if self.optimizer is not None and self.last_step >= 0:
            for group in self.optimizer.param_groups:
                group["lr"] = self.last_lr
