"""``videollama demo``, the README's main job, as a user runs it: a subprocess on the default model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from pathlib import Path

from videollama.synthav.evaluate import match_choice

ASSETS = Path(__file__).resolve().parents[1] / "videollama" / "assets"


def _run_demo(tmp_path: Path) -> str:
    env = dict(os.environ, VIDEOLLAMA_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-m", "videollama", "demo"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def _field(output: str, name: str) -> list[str]:
    return [line.split(":", 1)[1].strip() for line in output.splitlines() if line.startswith(f"{name:<6}:")]


@pytest.mark.slow
def test_demo_answers_the_shipped_example_right(tmp_path):
    manifest = ASSETS / "examples" / "examples.json"
    assert (ASSETS / "synthav-model" / "config.json").is_file(), "the SynthAV default model is not shipped"
    example = json.loads(manifest.read_text())["examples"][0]
    output = _run_demo(tmp_path)
    models = _field(output, "model")
    assert models[0] == "SynthAV default model (shipped)"
    assert _field(output, "clip")[0].endswith(example["file"])
    assert _field(output, "you")[0] == example["question"]
    answer = models[1]
    assert match_choice(answer, example["choices"]) == example["answer"], answer
    assert _field(output, "truth")[0].startswith(example["answer"])
