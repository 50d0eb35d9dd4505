"""``videollama train --resume`` the way users resume: a fresh process, dropout on, damaged checkpoints.

Every run here is a real ``python -m videollama train`` subprocess on the tiny official-format data with a
tiny model whose Q-Formers use dropout 0.1 (so the torch RNG matters), 6 steps, a checkpoint every 2 steps
(keep 2). The uninterrupted run is the reference: a run stopped at step 3 (gracefully, then killed with
SIGKILL in the middle of its next save) and resumed in a new process must log bit-identical losses from
step 3 on; a run whose newest checkpoint is damaged (same-size corruption, a malicious pickle with a
matching checksum) resumes from the older one with a one-line warning; with every checkpoint damaged,
``--resume`` refuses (exit 2) unless ``--restart`` is given.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from train_fixtures import make_model_dir, make_official_data, stage_config
from videollama.model import VideoLlama

ROOT = Path(__file__).resolve().parents[1]
STEPS = 6
SAVE_EVERY = 2
STOP_AT = 3
DROPOUT = 0.1
CKPT = "checkpoint-{:08d}"


def _env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path, **extra)


def _command(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "videollama", "train", str(config), *args]


def _train(config: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(_command(config, *args), capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=300)
    if ok:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _losses(run_dir: Path) -> dict[int, float]:
    """The loss of every step in ``metrics.jsonl`` (a later line of the same step, from a resumed run, wins)."""
    records = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    return {int(r["step"]): r["loss"] for r in records}


def _steps_logged(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("resume")
    data = make_official_data(root / "data", clips=2)
    model_dir = make_model_dir(root / "base", tiny_tokenizer, dropout=DROPOUT)
    return root, data, model_dir


def _config(setup, name: str) -> tuple[Path, Path]:
    root, data, model_dir = setup
    out = root / name
    cfg = stage_config(data, model_dir, out, steps=STEPS, save_every=SAVE_EVERY, tensorboard=False)
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path, out


@pytest.fixture(scope="module")
def full(setup):
    """The uninterrupted run: checkpoints at steps 4 and 6 remain, and its export."""
    config, out = _config(setup, "full")
    _train(config)
    assert _steps_logged(out) == list(range(STEPS))
    return out


def _copy_run(full: Path, setup, name: str) -> tuple[Path, Path]:
    config, out = _config(setup, name)
    shutil.copytree(full, out)
    return config, out


def _state(folder: Path) -> dict[str, torch.Tensor]:
    return VideoLlama.from_pretrained(folder).state_dict()


@pytest.mark.slow
def test_resume_in_a_fresh_process_with_dropout_is_exact_after_a_stop_and_a_sigkill(setup, full):
    config, out = _config(setup, "part")
    _train(config, f"run.stop_after={STOP_AT}")
    assert _steps_logged(out) == list(range(STOP_AT))
    # Resumed, then killed with SIGKILL in the middle of its first save (step 4): a temp folder stays behind.
    proc = subprocess.Popen(_command(config, "--resume"), env=_env(VIDEOLLAMA_CHECKPOINT_TEST_SLEEP="meta.json:120"),
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not list((out / "checkpoints").glob(f".tmp-{CKPT.format(4)}-*/meta.json")):
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the resumed run never reached its save"
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    leftovers = list((out / "checkpoints").glob(".tmp-*"))
    assert len(leftovers) == 1
    assert sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*")) == [CKPT.format(2), CKPT.format(STOP_AT)]
    # Resumed again in a new process: from step 3, the leftover removed, bit-identical to the uninterrupted run.
    done = _train(config, "--resume")
    assert f"removed {leftovers[0]} (left by an interrupted save)" in done.stdout
    assert f"resumed from {out / 'checkpoints' / CKPT.format(STOP_AT)} at step {STOP_AT}" in done.stdout
    assert not list((out / "checkpoints").glob(".tmp-*"))
    assert _losses(out) == _losses(full)  # bit-identical: dropout draws the same masks after the resume
    assert _steps_logged(out)[-(STEPS - STOP_AT):] == list(range(STOP_AT, STEPS))
    one, two = _state(full / "export"), _state(out / "export")
    assert all(torch.equal(two[k], v) for k, v in one.items())


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _damage_header(path: Path) -> None:
    """Overwrite 32 bytes of a safetensors header (after its 8-byte length) with other bytes of the same size."""
    raw = bytearray(path.read_bytes())
    raw[8:40] = bytes(255 - b for b in raw[8:40])
    path.write_bytes(bytes(raw))


def _garbage(path: Path) -> None:
    path.write_bytes(os.urandom(path.stat().st_size))


class _RunsCode:
    """Unpickling this object would create the marker file (what a crafted checkpoint part would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _malicious_pickle_with_matching_checksum(path: Path, marker: Path) -> None:
    """Replace ``path`` by a pickle that runs code when unpickled, and record its checksum and size in
    ``meta.json`` as the checkpoint's own (an attacker who can write the files can write that too)."""
    path.write_bytes(pickle.dumps(_RunsCode(marker), protocol=2))
    meta_file = path.parent / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta.setdefault("sha256", {})[path.name] = _sha256(path)
    meta["sizes"][path.name] = path.stat().st_size
    meta_file.write_text(json.dumps(meta))


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["model_header", "optimizer_garbage", "rng_pickle"])
def test_damaged_newest_checkpoint_falls_back_to_the_older_one(setup, full, damage):
    config, out = _copy_run(full, setup, f"damaged_{damage}")
    newest, older = out / "checkpoints" / CKPT.format(6), out / "checkpoints" / CKPT.format(4)
    marker = out.parent / f"{damage}.ran"
    if damage == "model_header":
        _damage_header(newest / "model.safetensors")
    elif damage == "optimizer_garbage":
        _garbage(newest / "optimizer.pt")
    else:
        _malicious_pickle_with_matching_checksum(newest / "rng.pt", marker)
    proc = _train(config, "--resume")
    warnings = [line for line in proc.stderr.splitlines() if "damaged checkpoint" in line]
    assert len(warnings) == 1 and str(newest) in warnings[0], proc.stderr
    assert f"resumed from {older} at step 4" in proc.stdout
    assert not marker.exists()  # the pickle's code never ran
    assert _steps_logged(out)[-2:] == [4, 5] and _losses(out) == _losses(full)


@pytest.mark.slow
def test_every_checkpoint_damaged_refuses_unless_restart(setup, full):
    config, out = _copy_run(full, setup, "all_damaged")
    for step in (4, 6):
        _garbage(out / "checkpoints" / CKPT.format(step) / "optimizer.pt")
    metrics = (out / "metrics.jsonl").read_text()
    proc = _train(config, "--resume", ok=False)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "no checkpoint" in errors[0] and "--restart" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert (out / "metrics.jsonl").read_text() == metrics  # nothing trained, nothing appended

    restarted = _train(config, "run.stop_after=1", "--restart")
    assert "starting over at step 0 (run.restart): removed checkpoints, metrics.jsonl" in restarted.stdout
    assert _steps_logged(out) == [0]  # a fresh history, not appended to the damaged run's
    assert _losses(out)[0] == _losses(full)[0]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [CKPT.format(1), "latest"]


def test_export_of_a_damaged_checkpoint_is_a_one_line_error(setup, full, tmp_path, capsys):
    from videollama import cli

    _, out = _copy_run(full, setup, "export_damaged")
    _damage_header(out / "checkpoints" / CKPT.format(6) / "model.safetensors")
    assert cli.main(["export", str(out), "--out", str(tmp_path / "x"), "--step", "6"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {out / 'checkpoints' / CKPT.format(6) / 'model.safetensors'}: checksum mismatch (the file " \
                  "changed after it was saved)\n"
    assert not (tmp_path / "x").exists()
