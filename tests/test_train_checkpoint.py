"""Checkpoints: round trip, keep-last-K, checksums and fallbacks, refused pickles, SIGKILL in the middle of a save."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
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
    TrainingCheckpointError,
    NoUsableCheckpoint,
    capture_rng_state,
    list_checkpoints,
    load_checkpoint,
    load_latest,
    remove_leftovers,
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


def test_rng_state_restores_all_generators_after_a_pickle_free_round_trip(tmp_path):
    np.random.randn()  # numpy now holds a cached gaussian: part of its state
    torch.save(capture_rng_state(), tmp_path / "rng.pt")
    first = (random.random(), random.gauss(0, 1), np.random.rand(), np.random.randn(), torch.rand(1).item())
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))  # tensors and plain values only
    assert (random.random(), random.gauss(0, 1), np.random.rand(), np.random.randn(), torch.rand(1).item()) == first


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


def _two_checkpoints(directory) -> tuple:
    save_checkpoint(directory, 1, make_state(1), keep_last_k=3)
    return directory / "checkpoint-00000001", save_checkpoint(directory, 2, make_state(2), keep_last_k=3)


def _flip_bytes(path, start: int, count: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[start:start + count] = bytes(255 - b for b in raw[start:start + count])
    path.write_bytes(bytes(raw))


SAME_SIZE_DAMAGE = {
    "model.safetensors": lambda p: _flip_bytes(p, 8, 32),  # 32 bytes of the JSON header
    "optimizer.pt": lambda p: p.write_bytes(os.urandom(p.stat().st_size)),
    "rng.pt": lambda p: _flip_bytes(p, p.stat().st_size // 2, 1),
    "scheduler.json": lambda p: p.write_text(p.read_text().replace("2", "3")),
}


@pytest.mark.parametrize("name", sorted(SAME_SIZE_DAMAGE))
def test_same_size_damage_fails_the_checksum_and_falls_back(tmp_path, caplog, name):
    older, newest = _two_checkpoints(tmp_path)
    size = (newest / name).stat().st_size
    SAME_SIZE_DAMAGE[name](newest / name)
    assert (newest / name).stat().st_size == size
    with pytest.raises(TrainingCheckpointError, match=f"{newest / name}: checksum mismatch"):
        load_checkpoint(newest)
    with caplog.at_level(logging.WARNING, logger="videollama.train.checkpoint"):
        loaded = load_latest(tmp_path)
    assert loaded.step == 1 and loaded.path == older
    assert [r.getMessage() for r in caplog.records] == [
        f"skipping damaged checkpoint: {newest / name}: checksum mismatch (the file changed after it was saved)"]


class RunsCode:
    """Unpickling this object creates the marker file: what a crafted checkpoint part would do."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


@pytest.mark.parametrize("name", ["rng.pt", "optimizer.pt"])
def test_a_malicious_pickle_is_refused_not_run_even_with_a_matching_checksum(tmp_path, name):
    older, newest = _two_checkpoints(tmp_path)
    marker = tmp_path / "code-ran"
    (newest / name).write_bytes(pickle.dumps({"state": RunsCode(marker)}, protocol=2))
    meta = json.loads((newest / "meta.json").read_text())  # whoever can write the file can write its checksum
    meta["sha256"][name] = hashlib.sha256((newest / name).read_bytes()).hexdigest()
    meta["sizes"][name] = (newest / name).stat().st_size
    (newest / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(TrainingCheckpointError, match=f"{newest / name}: refused: .*would need to run code"):
        load_checkpoint(newest)
    assert load_latest(tmp_path).path == older
    assert not marker.exists()


def test_every_checkpoint_damaged_raises_instead_of_returning_none(tmp_path):
    older, newest = _two_checkpoints(tmp_path)
    SAME_SIZE_DAMAGE["optimizer.pt"](newest / "optimizer.pt")
    (older / "meta.json").unlink()  # a checkpoint directory is renamed into place whole: no meta.json is damage
    with pytest.raises(NoUsableCheckpoint, match=rf"no checkpoint verifies \(2 damaged; newest: {newest}/optimizer.pt"):
        load_latest(tmp_path)


def test_a_checkpoint_of_the_pickling_format_is_refused(tmp_path):
    _, newest = _two_checkpoints(tmp_path)
    meta = json.loads((newest / "meta.json").read_text())
    meta["format"] = 1  # format 1 pickled numpy RNG objects, readable only with code execution
    (newest / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(TrainingCheckpointError, match="checkpoint format 1, this version reads format 2"):
        load_checkpoint(newest)


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
    leftover = tmp_path / f".tmp-checkpoint-00000002-{proc.pid}"
    assert leftover.is_dir()
    loaded = load_latest(tmp_path)
    assert loaded.step == 1
    assert {p.name: p.read_bytes() for p in (tmp_path / "checkpoint-00000001").iterdir()} == before
    assert all(torch.equal(loaded.model[k], v) for k, v in make_state(1)["model"].items())
    assert remove_leftovers(tmp_path) == [leftover] and not leftover.exists()  # its writer is dead
    # The next save in a fresh process completes and prunes step 1 (keep_last_k=1).
    save_checkpoint(tmp_path, 3, make_state(3), keep_last_k=1)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [3] and load_latest(tmp_path).step == 3


def test_remove_leftovers_keeps_those_of_a_running_writer(tmp_path):
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f".tmp-checkpoint-00000004-{writer.pid}"
        live.mkdir()
        pointer = tmp_path / f".tmp-latest-{writer.pid}"
        pointer.write_text("checkpoint-00000004\n")
        assert remove_leftovers(tmp_path) == [] and live.is_dir() and pointer.is_file()
    finally:
        writer.kill()
        writer.wait()
    assert remove_leftovers(tmp_path) == [live, pointer]
    assert list(tmp_path.iterdir()) == []
