"""Watching a run: progress bar, TensorBoard scalars, metrics file, final loss curve and summary.

``RunLogger`` is created on every rank but only rank 0 writes anything:

* a tqdm bar ``loss``, ``lr``, ``samples/s`` and tqdm's own ETA;
* TensorBoard scalars ``train/loss``, ``train/lr``, ``train/samples_per_s`` (+ any extras) in
  ``output_dir/tensorboard`` when the ``tensorboard`` package is installed (otherwise a single
  warning and the run goes on);
* ``output_dir/metrics.jsonl``: one JSON line per logged step (appended, so a resumed run keeps
  the history of the interrupted one);
* on :meth:`finish`: ``loss_curve.png`` (matplotlib, Agg backend, the whole history from
  ``metrics.jsonl``) and ``summary.json`` (steps, wall time, samples/s, final loss, skipped
  records per dataset with the first reasons).

    log = RunLogger("output/run", total_steps=12500, rank=0)
    log.log_step(step, loss=0.93, lr=1e-4, samples=32)   # after every optimizer step
    log.add_skip_reports(batch["skip_reports"])          # per batch
    log.finish()
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .data import SkipStats, merge_skip_reports

__all__ = ["RunLogger"]

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CURVE_FILE = "loss_curve.png"
TENSORBOARD_DIR = "tensorboard"
_RATE_WINDOW = 20  # steps in the moving window of the samples/s estimate
_CURVE_DPI = 120


class RunLogger:
    """Progress and metrics of one training run (a no-op on ranks other than 0)."""

    def __init__(
        self,
        output_dir: str | Path,
        total_steps: int,
        rank: int = 0,
        *,
        start_step: int = 0,
        log_every: int = 1,
        tensorboard: bool = True,
        progress_bar: bool = True,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.total_steps = int(total_steps)
        self.rank = rank
        self.active = rank == 0
        self.start_step = int(start_step)
        self.log_every = max(1, int(log_every))
        self.skipped: dict[str, SkipStats] = {}
        self.samples = 0
        self.last_step = start_step - 1
        self.last_loss: float | None = None
        self._t0 = time.perf_counter()
        self._recent: list[tuple[float, int]] = []  # (time, samples) of the last steps
        self._writer = None
        self._bar = None
        if not self.active:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._metrics = open(self.output_dir / METRICS_FILE, "a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(log_dir=str(self.output_dir / TENSORBOARD_DIR), purge_step=start_step)
            except ImportError as err:
                logger.warning("TensorBoard logging disabled (%s); install 'tensorboard' to enable it", err)
        if progress_bar:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total_steps, initial=self.start_step, desc="train", dynamic_ncols=True,
                             unit="step", smoothing=0.1)

    # ------------------------------------------------------------------------------------------ per step
    def log_step(self, step: int, *, loss: float, lr: float, samples: int, extra: dict[str, float] | None = None) -> None:
        """Record optimizer step ``step`` (0-based) with its mean loss, lr and global sample count."""
        now = time.perf_counter()
        self.samples += int(samples)
        self.last_step, self.last_loss = step, float(loss)
        self._recent.append((now, int(samples)))
        self._recent = self._recent[-_RATE_WINDOW:]
        if not self.active:
            return
        rate = self._rate(now)
        if not math.isfinite(loss):
            logger.warning("step %d: loss is %s", step, loss)
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", samples_s=f"{rate:.1f}", refresh=False)
        if step % self.log_every == 0 or step == self.total_steps - 1:
            record = {"step": step, "loss": float(loss), "lr": float(lr), "samples_per_s": rate,
                      "time": round(now - self._t0, 3), **(extra or {})}
            self._metrics.write(json.dumps(record) + "\n")
            self._metrics.flush()
            if self._writer is not None:
                self._writer.add_scalar("train/loss", loss, step)
                self._writer.add_scalar("train/lr", lr, step)
                self._writer.add_scalar("train/samples_per_s", rate, step)
                for key, value in (extra or {}).items():
                    self._writer.add_scalar(f"train/{key}", value, step)

    def add_skip_reports(self, reports: Sequence[dict[str, Any]]) -> None:
        """Add a batch's ``skip_reports`` (they are produced in DataLoader workers)."""
        merge_skip_reports(self.skipped, reports)

    def _rate(self, now: float) -> float:
        if len(self._recent) >= 2:
            span = now - self._recent[0][0]
            count = sum(n for _, n in self._recent[1:])
        else:
            span = now - self._t0
            count = sum(n for _, n in self._recent)
        return count / span if span > 0 else 0.0

    # ------------------------------------------------------------------------------------------ end
    def summary(self) -> dict[str, Any]:
        elapsed = time.perf_counter() - self._t0
        steps = self.last_step - self.start_step + 1
        return {
            "steps": max(0, steps),
            "start_step": self.start_step,
            "last_step": self.last_step,
            "total_steps": self.total_steps,
            "time_s": round(elapsed, 3),
            "samples": self.samples,
            "samples_per_s": round(self.samples / elapsed, 4) if elapsed > 0 else 0.0,
            "final_loss": self.last_loss,
            "skipped": {name: stats.to_dict() for name, stats in sorted(self.skipped.items())},
        }

    def finish(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Close the bar and writers; write ``summary.json`` and ``loss_curve.png`` (rank 0)."""
        summary = {**self.summary(), **(extra or {})}
        if not self.active:
            return summary
        if self._bar is not None:
            self._bar.close()
        if self._writer is not None:
            self._writer.close()
        self._metrics.close()
        (self.output_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
        history = self._history()
        if history:
            self._plot(history)
        for name, stats in summary["skipped"].items():
            if stats["failed"]:
                logger.warning("dataset %s: skipped %d of %d records; first reasons: %s", name, stats["failed"],
                               stats["attempted"], " | ".join(stats["first_reasons"]))
        return summary

    def _history(self) -> list[dict[str, Any]]:
        """Every logged step of this output folder; a resumed run's later record wins."""
        by_step: dict[int, dict[str, Any]] = {}
        path = self.output_dir / METRICS_FILE
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
            by_step[int(record["step"])] = record
        return [by_step[s] for s in sorted(by_step)]

    def _plot(self, history: list[dict[str, Any]]) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps = [r["step"] for r in history]
        fig, (ax_loss, ax_lr) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, height_ratios=(3, 1))
        ax_loss.plot(steps, [r["loss"] for r in history], linewidth=1)
        ax_loss.set_ylabel("loss")
        ax_loss.set_title(f"training loss ({self.output_dir.name})")
        ax_loss.grid(alpha=0.3)
        ax_lr.plot(steps, [r["lr"] for r in history], color="tab:orange", linewidth=1)
        ax_lr.set_ylabel("lr")
        ax_lr.set_xlabel("step")
        ax_lr.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(self.output_dir / CURVE_FILE, dpi=_CURVE_DPI)
        plt.close(fig)
