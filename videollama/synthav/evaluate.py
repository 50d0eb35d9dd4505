"""Measure the paper's claims on SynthAV: held-out accuracy per question family, per input setting.

Settings (what the model is given for each held-out question of ``qa/test.json``):

==================  =======================================================================
``audio+video``     8 uniform frames and the soundtrack (the official audio-visual prompt)
``video``           8 uniform frames, no audio
``audio``           the soundtrack only (the official audio prompt; the video is hidden)
``one_frame``       the first frame only (single-frame baseline), no audio
``no_frame_pos``    8 frames, no audio, asked of the ablation model trained without frame positions
``other_audio``     another held-out clip's soundtrack only: the control for ``audio``. What the
                    question alone gets right; ``audio`` above it is what the sound adds
``video+other_      the clip's 8 frames with another held-out clip's soundtrack: the control for
audio``             ``audio+video``. ``audio+video`` above it is what the clip's own sound adds
==================  =======================================================================

Answers are decoded greedily. A reply is matched to the question's closed choice set: the choice
mentioned first in the reply (whole words; the longer choice wins at the same position, so
"circle disappears" is not read as "circle appears"); no choice mentioned counts as wrong.
``exact`` additionally requires the whole reply (lowercased, trailing period removed) to equal the
answer. Chance is the mean of 1 / len(choices) over the family's items.

    results = evaluate_synthav("videollama/assets/synthav-model", "data/synthav")
    save_results(results, "results/")            # results.json + results.png

Several training seeds: pass ``{seed: model_dir}`` as ``model_dir`` (and ``ablation_dirs``); the
summary then reports the mean and the standard deviation over seeds.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UsageError
from .annotate import FAMILIES

SETTINGS: tuple[str, ...] = ("audio+video", "video", "audio", "one_frame", "no_frame_pos", "other_audio",
                             "video+other_audio")
OTHER_SOUND = {"other_audio": "audio", "video+other_audio": "audio+video"}
"""The controls that play another clip's soundtrack -> the setting they control."""
NUM_FRAMES = 8
MAX_NEW_TOKENS = 24
BATCH_SIZE = 16


@dataclass(frozen=True)
class TestItem:
    id: str
    video: Path
    question: str
    answer: str
    family: str
    qtype: str
    choices: tuple[str, ...]


def load_test_items(data_dir: str | Path, limit: int | None = None) -> list[TestItem]:
    """The held-out questions of a SynthAV folder (``qa/test.json``), in file order."""
    data_dir = Path(data_dir)
    path = data_dir / "qa" / "test.json"
    if not path.is_file():
        raise FileNotFoundError(f"{data_dir}: no qa/test.json (not a SynthAV folder?)")
    items = []
    for index, rec in enumerate(json.loads(path.read_text(encoding="utf-8"))):
        try:
            items.append(TestItem(str(rec["id"]), data_dir / "qa" / rec["video"], rec["question"], rec["answer"],
                                  rec["family"], rec.get("type", ""), tuple(rec["choices"])))
        except KeyError as err:
            raise UsageError(f"{path}: record {index} lacks the field {err}") from None
        if items[-1].family not in FAMILIES:
            raise UsageError(f"{path}: record {index} has unknown family {items[-1].family!r}")
    return items[:limit] if limit else items


def match_choice(reply: str, choices: Sequence[str]) -> str | None:
    """The choice the reply mentions first (whole words; longest wins on a tie); None if none."""
    text = reply.lower()
    best: tuple[int, int, str] | None = None
    for choice in choices:
        m = re.search(rf"(?<![a-z]){re.escape(choice.lower())}(?![a-z])", text)
        if m and (best is None or (m.start(), -len(choice)) < (best[0], best[1])):
            best = (m.start(), -len(choice), choice)
    return None if best is None else best[2]


def is_exact(reply: str, answer: str) -> bool:
    return reply.strip().lower().rstrip(".").strip() == answer.lower()


# ------------------------------------------------------------------------------------------------ features
def media_features(pipe, path: Path, setting: str, sound: Path | None = None):
    """MediaFeatures of ``path`` as the setting shows it to the model; ``sound``: whose soundtrack it hears
    (default ``path``)."""
    from ..inference import MediaFeatures
    from ..media import load_audio
    from ..media.video import load_video

    model = pipe.model
    device, dtype = model.device, model.dtype
    sound = sound or path
    with torch.inference_mode():
        if setting == "audio":
            audio = load_audio(sound)[None]  # (1, 8, 1, 128, 204)
            return MediaFeatures("audio", audio=model.encode_audio(audio.to(device, dtype)))
        frames = NUM_FRAMES if setting != "one_frame" else 1
        clip = load_video(path, frames, image_size=pipe.image_size)
        features = MediaFeatures("video", video=model.encode_video(clip.frames[None].to(device, dtype)),
                                 timestamps=clip.timestamp_message())
        if setting == "audio+video":
            features.audio = model.encode_audio(load_audio(sound)[None].to(device, dtype))
        return features


def other_clips(videos: Sequence[Path]) -> dict[Path, Path]:
    """Each held-out clip -> the next distinct one (in first-seen order, wrapping): whose sound ``other_audio`` plays."""
    unique = list(dict.fromkeys(videos))
    if len(unique) < 2:
        raise UsageError("the other_audio setting needs at least two held-out clips")
    return {v: unique[(i + 1) % len(unique)] for i, v in enumerate(unique)}


def answer_items(pipe, items: Sequence[TestItem], setting: str, batch_size: int = BATCH_SIZE,
                 clips: Sequence[Path] | None = None) -> list[str]:
    """Greedy replies of ``pipe`` to ``items`` under ``setting``; the :data:`OTHER_SOUND` controls take the other
    clip's sound from ``clips`` (default: the items' own clips), e.g. every held-out clip when ``items`` is a subset."""
    from ..engine import GenerationConfig

    gen = GenerationConfig(do_sample=False, max_new_tokens=MAX_NEW_TOKENS)
    cache: dict[Path, Any] = {}
    other = other_clips([it.video for it in items] if clips is None else clips) if setting in OTHER_SOUND else None
    replies: list[str] = []
    for start in range(0, len(items), batch_size):
        chunk = items[start: start + batch_size]
        requests = []
        for item in chunk:
            if item.video not in cache:
                cache[item.video] = (media_features(pipe, item.video, OTHER_SOUND[setting], sound=other[item.video])
                                     if other else media_features(pipe, item.video, setting))
            requests.append(pipe.request(cache[item.video], [(item.question, None)], gen))
        with torch.inference_mode():
            replies += [pipe.decode_answer(ids) for ids in pipe.engine.generate_all(requests)]
    return replies


def score(items: Sequence[TestItem], replies: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per family (and 'all'): items, accuracy (choice matched), exact match, chance, and ``no_choice``: the
    share of replies that name none of their question's choices (an answer of the wrong type, or none)."""
    out: dict[str, dict[str, float]] = {}
    for family in (*FAMILIES, "all"):
        rows = [(it, r) for it, r in zip(items, replies) if family == "all" or it.family == family]
        if not rows:
            continue
        out[family] = {
            "items": len(rows),
            "accuracy": float(np.mean([match_choice(r, it.choices) == it.answer for it, r in rows])),
            "exact": float(np.mean([is_exact(r, it.answer) for it, r in rows])),
            "chance": float(np.mean([1.0 / len(it.choices) for it, _ in rows])),
            "no_choice": float(np.mean([match_choice(r, it.choices) is None for it, r in rows])),
        }
    return out


# ------------------------------------------------------------------------------------------------ driver
def evaluate_synthav(
    model_dir: str | Path | Mapping[int, str | Path],
    data_dir: str | Path,
    settings: Sequence[str] = SETTINGS,
    seeds: Sequence[int] | None = None,
    *,
    ablation_dirs: str | Path | Mapping[int, str | Path] | None = None,
    limit: int | None = None,
    examples: int = 3,
) -> dict[str, Any]:
    """Accuracy per family for every setting and training seed, plus mean/std over seeds.

    Args:
        model_dir: a model folder, or ``{seed: folder}`` for several training seeds.
        data_dir: a SynthAV folder (its ``qa/test.json`` is held out from training).
        settings: names from :data:`SETTINGS`; ``no_frame_pos`` needs ``ablation_dirs``.
        seeds: seed labels for a single ``model_dir`` (default ``[0]``) or a subset of the mapping.
        ablation_dirs: the model(s) trained with ``use_frame_position=False``, same keys.
        limit: evaluate only the first ``limit`` questions (quick runs).
        examples: replies kept per (seed, setting) for the report.
    """
    from ..inference import Pipeline

    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        raise UsageError(f"unknown SynthAV settings {unknown}; choose from {SETTINGS}")
    models = dict(model_dir) if isinstance(model_dir, Mapping) else {(seeds or [0])[0]: model_dir}
    ablations = (dict(ablation_dirs) if isinstance(ablation_dirs, Mapping)
                 else {k: ablation_dirs for k in models} if ablation_dirs is not None else {})
    if seeds is not None:
        models = {s: models[s] for s in seeds if s in models}
    if "no_frame_pos" in settings and not ablations:
        settings = [s for s in settings if s != "no_frame_pos"]
    every_item = load_test_items(data_dir)
    items = every_item[:limit] if limit else every_item
    clips = [it.video for it in every_item]  # whose sound the OTHER_SOUND controls play
    per_seed: dict[str, Any] = {}
    started = time.perf_counter()
    for seed, folder in models.items():
        per_seed[str(seed)] = {}
        pipes = {"main": Pipeline.from_pretrained(folder)}
        for setting in settings:
            key = "main"
            if setting == "no_frame_pos":
                if seed not in ablations:
                    continue
                key = "ablation"
                pipes.setdefault(key, Pipeline.from_pretrained(ablations[seed]))
            replies = answer_items(pipes[key], items, setting, clips=clips)
            per_seed[str(seed)][setting] = {
                "families": score(items, replies),
                "examples": [{"question": it.question, "answer": it.answer, "reply": r}
                             for it, r in list(zip(items, replies))[:examples]],
            }
    return {
        "data_dir": str(data_dir),
        "models": {str(k): str(v) for k, v in models.items()},
        "ablations": {str(k): str(v) for k, v in ablations.items()},
        "settings": list(settings),
        "questions": len(items),
        "per_seed": per_seed,
        "summary": summarize(per_seed),
        "seconds": round(time.perf_counter() - started, 1),
    }


def summarize(per_seed: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """{setting: {family: {accuracy_mean, accuracy_std, exact_mean, no_choice_mean, chance, seeds}}}."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    settings = {s for runs in per_seed.values() for s in runs}
    for setting in [s for s in SETTINGS if s in settings]:
        out[setting] = {}
        for family in (*FAMILIES, "all"):
            rows = [runs[setting]["families"][family] for runs in per_seed.values()
                    if setting in runs and family in runs[setting]["families"]]
            if not rows:
                continue
            acc = [r["accuracy"] for r in rows]
            out[setting][family] = {
                "accuracy_mean": round(float(np.mean(acc)), 4),
                "accuracy_std": round(float(np.std(acc)), 4),
                "exact_mean": round(float(np.mean([r["exact"] for r in rows])), 4),
                **({"no_choice_mean": round(float(np.mean([r["no_choice"] for r in rows])), 4)}
                   if all("no_choice" in r for r in rows) else {}),  # absent from results saved before it was
                "chance": round(rows[0]["chance"], 4),
                "items": rows[0]["items"],
                "seeds": len(rows),
            }
    return out


# The paper's claims as accuracy gaps between two settings on one family (issue 21's targets): what the input
# adds over its control. name -> (family, setting, control setting, target gap).
CLAIMS: dict[str, tuple[str, str, str, float]] = {
    "hears: audio - other_audio": ("audio", "audio", "other_audio", 0.25),
    "hearing helps: audio+video - video+other_audio": ("audio_visual", "audio+video", "video+other_audio", 0.15),
    "reads order: video - one_frame": ("temporal", "video", "one_frame", 0.15),
    "frame positions: video - no_frame_pos": ("temporal", "video", "no_frame_pos", 0.10),
}
STATIC_TARGET = 0.58  # static accuracy with audio+video must stay at least this


def claims(results: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Each :data:`CLAIMS` gap, paired by training seed: {name: {gap_mean, gap_std, target, seeds, met}}; plus
    ``static`` (audio+video accuracy on the static family against :data:`STATIC_TARGET`). A claim whose
    settings a run lacks is left out."""
    out: dict[str, dict[str, float]] = {}
    per_seed = results["per_seed"]
    for name, (family, setting, control, target) in CLAIMS.items():
        gaps = [runs[setting]["families"][family]["accuracy"] - runs[control]["families"][family]["accuracy"]
                for runs in per_seed.values() if setting in runs and control in runs
                and family in runs[setting]["families"]]
        if gaps:
            mean = float(np.mean(gaps))
            out[name] = {"gap_mean": round(mean, 4), "gap_std": round(float(np.std(gaps)), 4), "target": target,
                         "seeds": len(gaps), "met": bool(mean >= target)}
    static = [runs["audio+video"]["families"]["static"]["accuracy"] for runs in per_seed.values()
              if "audio+video" in runs and "static" in runs["audio+video"]["families"]]
    if static:
        mean = float(np.mean(static))
        out["static: audio+video"] = {"gap_mean": round(mean, 4), "gap_std": round(float(np.std(static)), 4),
                                      "target": STATIC_TARGET, "seeds": len(static), "met": bool(mean >= STATIC_TARGET)}
    return out


def format_claims(results: Mapping[str, Any]) -> str:
    """Markdown table of :func:`claims`: gap (mean ± std over seeds), target, met or short by how much."""
    lines = ["| claim | measured | target | |", "|---|---|---|---|"]
    for name, c in claims(results).items():
        verdict = "met" if c["met"] else f"short by {c['target'] - c['gap_mean']:.3f}"
        sign = "" if name.startswith("static") else "+"
        lines.append(f"| {name} | {c['gap_mean']:{sign}.3f} ± {c['gap_std']:.3f} | "
                     f"{'>= ' + sign}{c['target']:.2f} | {verdict} |")
    return "\n".join(lines)


def format_table(results: Mapping[str, Any]) -> str:
    """Markdown table: one row per setting, one column per family (mean ± std, chance in the header)."""
    summary = results["summary"]
    families = [f for f in FAMILIES if any(f in row for row in summary.values())]
    chance = {f: next(row[f]["chance"] for row in summary.values() if f in row) for f in families}
    head = "| setting | " + " | ".join(f"{f} (chance {chance[f]:.2f})" for f in families) + " |"
    lines = [head, "|---" * (len(families) + 1) + "|"]
    for setting, row in summary.items():
        cells = []
        for f in families:
            if f not in row:
                cells.append("-")
                continue
            std = f" ± {row[f]['accuracy_std']:.3f}" if row[f]["seeds"] > 1 else ""
            cells.append(f"{row[f]['accuracy_mean']:.3f}{std}")
        lines.append(f"| {setting} | " + " | ".join(cells) + " |")
    seeds = max((r["seeds"] for row in summary.values() for r in row.values()), default=0)
    lines.append(f"\naccuracy = choice matched, greedy decoding; {results['questions']} questions; {seeds} training seed(s)")
    return "\n".join(lines)


def plot_results(results: Mapping[str, Any], path: str | Path) -> None:
    """Grouped bar chart: families on x, one bar per setting, chance as a black tick, std as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = results["summary"]
    families = [f for f in FAMILIES if any(f in row for row in summary.values())]
    settings = list(summary)
    width = 0.8 / max(1, len(settings))
    fig, ax = plt.subplots(figsize=(8, 4))
    for i, setting in enumerate(settings):
        xs = [k + (i - (len(settings) - 1) / 2) * width for k in range(len(families))]
        means = [summary[setting].get(f, {}).get("accuracy_mean", 0.0) for f in families]
        stds = [summary[setting].get(f, {}).get("accuracy_std", 0.0) for f in families]
        ax.bar(xs, means, width, yerr=stds, capsize=2, label=setting)
    for k, f in enumerate(families):
        chance = next(row[f]["chance"] for row in summary.values() if f in row)
        ax.hlines(chance, k - 0.45, k + 0.45, colors="black", linestyles="dashed", linewidth=1)
    ax.set_xticks(range(len(families)), families)
    ax.set_ylim(0, 1)
    ax.set_ylabel("held-out accuracy")
    ax.set_title("SynthAV: accuracy per question family (dashed: chance)")
    ax.legend(fontsize=8, ncol=3, loc="upper right")
    fig.tight_layout()
    fig.savefig(str(path), dpi=100)
    plt.close(fig)


def save_results(results: Mapping[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``results.json`` and ``results.png`` into ``out_dir``; returns both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out / "results.json", out / "results.png"
    json_path.write_text(json.dumps(results, indent=1) + "\n")
    plot_results(results, png_path)
    return json_path, png_path


def combine_runs(run_dirs: Sequence[str | Path], limit: int | None = None) -> dict[str, Any]:
    """Results over several chain runs (``train-all --out RUN --seed S``), one training seed each.

    A run's own ``results/results.json`` is reused when it covers every question; otherwise its
    ``model/`` (and ``ablation/vl_stage2/export``) are evaluated on the run's ``data/``. Settings that
    the saved results lack (added to :data:`SETTINGS` after the run) are evaluated and saved into them.
    """
    per_seed: dict[str, Any] = {}
    models, ablations, questions, data_dirs = {}, {}, set(), set()
    for run in map(Path, run_dirs):
        chain = json.loads((run / "chain.json").read_text())
        seed = str(chain["seed"])
        if seed in per_seed:
            raise UsageError(f"{run}: training seed {seed} appears twice; runs must use different seeds")
        data = Path(chain.get("data_dir") or run / "data")
        saved = run / "results" / "results.json"
        results = json.loads(saved.read_text()) if saved.is_file() else None
        ablation = run / "ablation" / "vl_stage2" / "export"
        ablation_dirs = {int(seed): ablation} if (ablation / "config.json").is_file() else None
        if results is None or (limit is None and results["questions"] < len(load_test_items(data))):
            results = evaluate_synthav({int(seed): run / "model"}, data, ablation_dirs=ablation_dirs, limit=limit)
        else:
            missing = [s for s in SETTINGS if s not in results["settings"] and (s != "no_frame_pos" or ablation_dirs)]
            if missing:  # on the same questions: the first ``questions`` of the file
                extra = evaluate_synthav({int(seed): run / "model"}, data, ablation_dirs=ablation_dirs,
                                         settings=missing, limit=results["questions"])
                results["per_seed"][seed].update(extra["per_seed"][seed])
                results["settings"] = [s for s in SETTINGS if s in results["per_seed"][seed]]
                results["summary"] = summarize(results["per_seed"])
                save_results(results, run / "results")
        per_seed.update(results["per_seed"])
        models.update(results["models"])
        ablations.update(results["ablations"])
        questions.add(results["questions"])
        data_dirs.add(results["data_dir"])
    if len(questions) != 1:
        raise UsageError(f"the runs were evaluated on different question sets ({sorted(questions)} questions)")
    return {"data_dir": sorted(data_dirs)[0], "models": models, "ablations": ablations,
            "settings": [s for s in SETTINGS if any(s in r for r in per_seed.values())],
            "questions": questions.pop(), "per_seed": per_seed, "summary": summarize(per_seed)}


__all__ = ["CLAIMS", "SETTINGS", "claims", "combine_runs", "format_claims", "evaluate_synthav", "format_table", "load_test_items", "match_choice", "plot_results",
           "save_results", "score", "summarize"]
