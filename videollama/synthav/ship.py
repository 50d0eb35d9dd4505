"""Ship a trained SynthAV chain as the package's default model and example clips.

    videollama synthav ship --run runs/synthav/seed0

copies ``RUN/model`` to ``videollama/assets/synthav-model`` (the default of ``videollama chat`` and
``make demo``) and writes ``videollama/assets/examples``: a few held-out clips with a question each
and ``examples.json`` (file, question, choices, answer, family, how it was chosen).

How examples are chosen, stated plainly because it is a selection: for each family in
:data:`EXAMPLE_FAMILIES`, the held-out questions are tried in file order through the very path a
user takes (``Pipeline.chat(clip).ask(question)``, greedy, audio on) and the first one the model
answers right is kept. ``examples.json`` records how many were tried before it, so the selection is
visible; the model's unselected accuracy is the results table of ``docs/synthav.md``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..errors import UsageError

ASSETS = Path(__file__).resolve().parents[1] / "assets"
MODEL_DIR = ASSETS / "synthav-model"
EXAMPLES_DIR = ASSETS / "examples"
EXAMPLE_FAMILIES = ("audio_visual", "static")
MAX_TRIES = 40  # per family
MAX_NEW_TOKENS = 24


def ship(run_dir: str | Path, model_dir: Path = MODEL_DIR, examples_dir: Path = EXAMPLES_DIR) -> dict:
    """Copy ``run_dir/model`` to ``model_dir`` and pick the example clips; returns the manifest."""
    from ..engine import GenerationConfig
    from ..inference import Pipeline
    from .chain import MAX_MODEL_BYTES
    from .evaluate import load_test_items, match_choice

    run = Path(run_dir)
    source = run / "model"
    if not (source / "config.json").is_file():
        raise FileNotFoundError(f"{source}: no model folder (run `videollama synthav train-all --out {run}` first)")
    size = sum(p.stat().st_size for p in source.iterdir() if p.is_file())
    if size > MAX_MODEL_BYTES:
        raise UsageError(f"{source}: {size / 2**20:.1f} MiB, over the {MAX_MODEL_BYTES / 2**20:.0f} MiB shipping limit")

    chain = json.loads((run / "chain.json").read_text()) if (run / "chain.json").is_file() else {}
    data = Path(chain.get("data_dir") or run / "data")
    items = load_test_items(data)
    pipe = Pipeline.from_pretrained(source)
    gen = GenerationConfig(do_sample=False, max_new_tokens=MAX_NEW_TOKENS)
    chosen = []
    for family in EXAMPLE_FAMILIES:
        candidates = [it for it in items if it.family == family][:MAX_TRIES]
        for tried, item in enumerate(candidates, start=1):
            reply = pipe.chat(item.video).ask(item.question, gen)
            if match_choice(reply, item.choices) == item.answer:
                chosen.append((family, item, reply, tried, len([it for it in items if it.family == family])))
                break

    if model_dir.exists():
        shutil.rmtree(model_dir)
    shutil.copytree(source, model_dir)
    if examples_dir.exists():
        shutil.rmtree(examples_dir)
    examples_dir.mkdir(parents=True)
    manifest = {"source": str(run.name), "examples": []}
    for family, item, reply, tried, total in chosen:
        name = f"synthav_{item.video.stem}.mp4"  # one file per clip, though two questions may share it
        if not (examples_dir / name).exists():
            shutil.copyfile(item.video, examples_dir / name)
        manifest["examples"].append({
            "file": name, "question": item.question, "choices": list(item.choices), "answer": item.answer,
            "family": family, "reply": reply,
            "chosen": f"first of the {family} held-out questions answered right: tried {tried} of {total}",
        })
    (examples_dir / "examples.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest
