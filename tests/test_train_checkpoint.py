"""Checkpoints: round trip, keep-last-K, fallbacks, and SIGKILL in the middle of a save."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from videollama.train.checkpoint import (
    capture_rng_state,
    list_checkpoints,
    load_checkpoint,
    load_latest,
    restore_rng_state,
    save_checkpoint,
)


def make_state(step: int) -> dict:
    torch.manual_seed(step)
    model = {"video_projection.weight": torch.randn(4, 3), "video_query_tokens": torch.randn(1, 2, 3)}
    param = torch.nn.Parameter(model["video_projection.weight"].clone())
    opt = torch.optim.AdamW([param], lr=1e-3)
    param.grad = torch.ones_like(param)
    opt.step()
    return {
        "model": model,
        "optimizer": opt.state_dict(),
        "scheduler": {"last_step": step},
        "data": {"sampler": {"next_step": step + 1}, "datasets": {"webvid": {"failed": 1}}},
        "config": "run:\n  seed: 42\n",
        "rng": [capture_rng_state(), capture_rng_state()],
        "extra": {"samples": step * 4},
    }


def test_round_trip_keep_last_k_and_latest(tmp_path):
    for step in (10, 20, 30):
        path = save_checkpoint(tmp_path, step, make_state(step), keep_last_k=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [20, 30]
    assert (tmp_path / "latest").read_text().strip() == path.name == "checkpoint-00000030"
    loaded = load_latest(tmp_path)
    expected = make_state(30)
    assert loaded.step == 30
    assert all(torch.equal(loaded.model[k], v) for k, v in expected["model"].items())
    assert torch.equal(loaded.optimizer["state"][0]["exp_avg"], expected["optimizer"]["state"][0]["exp_avg"])
    assert loaded.scheduler == {"last_step": 30} and loaded.extra == {"samples": 120}
    assert loaded.data["sampler"]["next_step"] == 31 and loaded.config.startswith("run:")
    assert len(loaded.rng) == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_rng_state_restores_all_generators():
    state = capture_rng_state()
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    restore_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


def test_stale_pointer_and_damaged_checkpoint_fall_back(tmp_path):
    save_checkpoint(tmp_path, 1, make_state(1), keep_last_k=3)
    save_checkpoint(tmp_path, 2, make_state(2), keep_last_k=3)
    (tmp_path / "latest").write_text("checkpoint-00000099\n")  # names nothing
    assert load_latest(tmp_path).step == 2
    with open(tmp_path / "checkpoint-00000002" / "optimizer.pt", "ab") as f:
        f.write(b"garbage")  # size no longer matches meta.json
    assert load_latest(tmp_path).step == 1
    (tmp_path / ".tmp-checkpoint-00000003-1").mkdir()  # leftover of a crash: ignored
    assert load_latest(tmp_path).step == 1
    assert load_latest(tmp_path / "nothing") is None
    with pytest.raises(Exception, match="not a complete checkpoint"):
        load_checkpoint(tmp_path / ".tmp-checkpoint-00000003-1")


SAVER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {test_dir!r})
    from test_train_checkpoint import make_state
    from videollama.train.checkpoint import save_checkpoint
    save_checkpoint({directory!r}, 2, make_state(2), keep_last_k=1)
    print("finished", flush=True)
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("kill_after", ["model.safetensors", "rng.pt"])
def test_sigkill_while_saving_keeps_previous_checkpoint(tmp_path, kill_after):
    save_checkpoint(tmp_path, 1, make_state(1), keep_last_k=1)
    before = {p.name: p.read_bytes() for p in (tmp_path / "checkpoint-00000001").iterdir()}
    script = SAVER.format(test_dir=os.path.dirname(__file__), directory=str(tmp_path))
    env = dict(os.environ, VIDEOLLAMA_CHECKPOINT_TEST_SLEEP=f"{kill_after}:60")  # pause right after that file
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            temps = [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-checkpoint-00000002")]
            if temps and (temps[0] / kill_after).exists():
                break
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.05)
        else:
            pytest.fail("the saver never reached the file")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    loaded = load_latest(tmp_path)
    assert loaded.step == 1
    assert {p.name: p.read_bytes() for p in (tmp_path / "checkpoint-00000001").iterdir()} == before
    assert all(torch.equal(loaded.model[k], v) for k, v in make_state(1)["model"].items())
    # The next save in a fresh process completes and prunes step 1 (keep_last_k=1).
    save_checkpoint(tmp_path, 3, make_state(3), keep_last_k=1)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [3] and load_latest(tmp_path).step == 3
