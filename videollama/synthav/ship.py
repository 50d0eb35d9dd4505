"""Ship a trained SynthAV chain as the package's default model and example clips.

    videollama synthav ship --run runs/synthav/seed0

copies ``RUN/model`` to ``videollama/assets/synthav-model`` (the default of ``videollama chat`` and
``make demo``) and writes ``videollama/assets/examples``: a few held-out clips with a question each
and ``examples.json`` (file, question, choices, answer, family, how it was chosen).

How examples are chosen, stated plainly because it is a selection: for each family in
:data:`EXAMPLE_FAMILIES`, the held-out questions are tried in file order through the very path a
user takes (``Pipeline.chat(clip).ask(question)``, greedy, audio on) and the first one the model
answers right is kept. An ``audio`` example must also be answered *from the sound*: with another
held-out clip's soundtrack in its place (the evaluation's ``video+other_audio`` control) the model must
not give the right answer. ``examples.json`` records how many were tried before it (and, for audio, the
control's reply), so the selection is visible; the model's unselected accuracy is the results table of
``docs/synthav.md``. The first example is the one ``make demo`` asks.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..errors import UsageError

ASSETS = Path(__file__).resolve().parents[1] / "assets"
MODEL_DIR = ASSETS / "synthav-model"
EXAMPLES_DIR = ASSETS / "examples"
EXAMPLE_FAMILIES = ("audio", "audio_visual", "static")  # the first found is make demo's question
MAX_TRIES = 40  # per family
MAX_NEW_TOKENS = 24


def ship(run_dir: str | Path, model_dir: Path = MODEL_DIR, examples_dir: Path = EXAMPLES_DIR) -> dict:
    """Copy ``run_dir/model`` to ``model_dir`` and pick the example clips; returns the manifest."""
    from ..engine import GenerationConfig
    from ..inference import Pipeline
    from .chain import MAX_MODEL_BYTES
    from .evaluate import answer_items, load_test_items, match_choice

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
    clips = [it.video for it in items]
    chosen = []
    for family in EXAMPLE_FAMILIES:
        candidates = [it for it in items if it.family == family][:MAX_TRIES]
        # audio: the reply with another clip's soundtrack, which must not be right (so the sound is what answers)
        controls = answer_items(pipe, candidates, "video+other_audio", clips=clips) if family == "audio" else None
        for tried, item in enumerate(candidates, start=1):
            if controls is not None and match_choice(controls[tried - 1], item.choices) == item.answer:
                continue
            reply = pipe.chat(item.video).ask(item.question, gen)
            if match_choice(reply, item.choices) == item.answer:
                control = None if controls is None else controls[tried - 1]
                chosen.append((family, item, reply, tried, len([it for it in items if it.family == family]), control))
                break

    if model_dir.exists():
        shutil.rmtree(model_dir)
    shutil.copytree(source, model_dir)
    if examples_dir.exists():
        shutil.rmtree(examples_dir)
    examples_dir.mkdir(parents=True)
    manifest = {"source": str(run.name), "examples": []}
    for family, item, reply, tried, total, control in chosen:
        name = f"synthav_{item.video.stem}.mp4"  # one file per clip, though two questions may share it
        if not (examples_dir / name).exists():
            shutil.copyfile(item.video, examples_dir / name)
        manifest["examples"].append({
            "file": name, "question": item.question, "choices": list(item.choices), "answer": item.answer,
            "family": family, "reply": reply,
            "chosen": (f"first of the {family} held-out questions answered right"
                       + (" from the sound (with another clip's soundtrack it is not)" if control is not None else "")
                       + f": tried {tried} of {total}"),
            **({"reply_with_other_sound": control} if control is not None else {}),
        })
    (examples_dir / "examples.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest
