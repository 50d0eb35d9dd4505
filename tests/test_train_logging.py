"""RunLogger: metrics history across a resume, TensorBoard events, loss curve and summary."""

from __future__ import annotations

import json

from videollama.train.logging import RunLogger


def test_run_logger_outputs_and_resume(tmp_path):
    first = RunLogger(tmp_path, total_steps=10, rank=0, progress_bar=True)
    for step in range(4):
        first.log_step(step, loss=2.0 - 0.1 * step, lr=1e-4, samples=8)
    first.add_skip_reports([{"dataset": "webvid", "attempted": 3, "reasons": ["record 1 (a.mp4): no such file",
                                                                              "record 2 (b.mp4): truncated"]},
                            {"dataset": "webvid", "attempted": 1, "reasons": []}])
    summary = first.finish()
    assert summary["steps"] == 4 and summary["samples"] == 32 and summary["final_loss"] == 2.0 - 0.3
    assert summary["skipped"]["webvid"] == {"attempted": 4, "failed": 2, "fraction": 0.5,
                                            "first_reasons": ["record 1 (a.mp4): no such file",
                                                              "record 2 (b.mp4): truncated"]}

    # Resume from step 4: the history keeps the first run's steps; re-logged steps replace them.
    second = RunLogger(tmp_path, total_steps=10, rank=0, start_step=3, progress_bar=False)
    for step in range(3, 10):
        second.log_step(step, loss=1.0, lr=5e-5, samples=8, extra={"grad_norm": 0.5})
    summary = second.finish()
    assert summary["steps"] == 7 and summary["start_step"] == 3 and summary["samples_per_s"] > 0
    history = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in history] == [0, 1, 2, 3, 3, 4, 5, 6, 7, 8, 9]
    assert json.loads((tmp_path / "summary.json").read_text())["final_loss"] == 1.0
    png = (tmp_path / "loss_curve.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_other_ranks_write_nothing(tmp_path):
    log = RunLogger(tmp_path / "rank1", total_steps=3, rank=1)
    log.log_step(0, loss=1.0, lr=1e-4, samples=4)
    assert log.finish()["steps"] == 1
    assert not (tmp_path / "rank1").exists()
