"""Accuracy on the held-out long-video questions (``qa/long_test.json``), per question type, with chance.

Settings (how each question's clip reaches the model; both with the clip's sound when the model hears):

============  ==========================================================================
``windows``   sampled at ``fps`` and read in time-labelled windows of the model's ``max_frames``
              (:mod:`videollama.long_video`, at most ``max_windows``: frames spread uniformly past it)
``uniform8``  today's reading: 8 frames spread uniformly over the whole clip, one window
============  ==========================================================================

Replies are greedy. A closed question is right when the reply names its answer first among its
choices (:func:`~videollama.synthav.evaluate.match_choice`); ``first_time`` is right when the first
number in the reply lies within the item's ``tolerance`` seconds of the truth (half a window).

    results = evaluate_long("output/synthav/model", "data/synthav_long", limit=50)
    print(format_long_table(results))
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UsageError
from .evaluate import MAX_NEW_TOKENS, NUM_FRAMES, match_choice
from .long import DEFAULT_LONG, LONG_TYPES, TIME_LOCATED, LongSettings

LONG_SETTINGS: tuple[str, ...] = ("windows", "uniform8")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


@dataclass(frozen=True)
class LongTestItem:
    id: str
    video: Path
    qtype: str
    question: str
    answer: str
    choices: tuple[str, ...]
    chance: float
    truth_seconds: float | None = None
    tolerance: float | None = None


def load_long_items(data_dir: str | Path, limit: int | None = None) -> list[LongTestItem]:
    """The held-out long questions of ``data_dir`` (``qa/long_test.json``), in file order."""
    path = Path(data_dir) / "qa" / "long_test.json"
    if not path.is_file():
        raise UsageError(f"{data_dir}: no qa/long_test.json (write one with `videollama synthav generate-long`)")
    items = []
    for index, rec in enumerate(json.loads(path.read_text(encoding="utf-8"))):
        try:
            items.append(LongTestItem(str(rec["id"]), path.parent / rec["video"], rec["type"], rec["question"],
                                      rec["answer"], tuple(rec["choices"]), float(rec["chance"]),
                                      rec.get("truth_seconds"), rec.get("tolerance")))
        except KeyError as err:
            raise UsageError(f"{path}: record {index} lacks the field {err}") from None
        if items[-1].qtype not in LONG_TYPES:
            raise UsageError(f"{path}: record {index} has unknown type {items[-1].qtype!r}")
        if items[-1].qtype == "first_time" and (items[-1].truth_seconds is None or items[-1].tolerance is None):
            raise UsageError(f"{path}: record {index} (first_time) lacks truth_seconds or tolerance")
    return items[:limit] if limit else items


def reply_seconds(reply: str) -> float | None:
    """The first number in a reply (seconds), or None."""
    match = _NUMBER.search(reply)
    return None if match is None else float(match.group())


def is_right(item: LongTestItem, reply: str) -> bool:
    """Closed questions: the reply names the answer first; ``first_time``: within ``tolerance`` seconds."""
    if item.qtype == "first_time":
        seconds = reply_seconds(reply)
        return seconds is not None and abs(seconds - item.truth_seconds) <= item.tolerance  # type: ignore[operator]
    return match_choice(reply, item.choices) == item.answer


def reading(setting: str, settings: LongSettings):
    """The :class:`~videollama.inference.MediaOptions` of a setting."""
    from ..inference import MediaOptions

    if setting == "windows":
        return MediaOptions(fps=settings.fps, max_frames=settings.max_windows * settings.window_frames,
                            max_windows=settings.max_windows, window_frames=settings.window_frames)
    if setting == "uniform8":
        return MediaOptions(num_frames=NUM_FRAMES)
    raise UsageError(f"unknown long-video setting {setting!r}; choose from {LONG_SETTINGS}")


def answer_long(pipe, items: Sequence[LongTestItem], setting: str, settings: LongSettings) -> tuple[list[str], float]:
    """Greedy replies to ``items`` under ``setting``; also the mean seconds per question (reading included)."""
    from ..engine import GenerationConfig

    options = reading(setting, settings)
    gen = GenerationConfig(do_sample=False, max_new_tokens=MAX_NEW_TOKENS)
    replies = []
    started = time.perf_counter()
    for item in items:  # one at a time: windowed prompts differ in length; the features are cached per clip
        features = pipe.encode_media(item.video, options)
        with torch.inference_mode():
            ids = pipe.engine.generate_all([pipe.request(features, [(item.question, None)], gen)])[0]
        replies.append(pipe.decode_answer(ids))
    return replies, (time.perf_counter() - started) / max(1, len(items))


def score_long(items: Sequence[LongTestItem], replies: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per question type, the time-located ones together, and 'all': items, accuracy, chance."""
    groups = {**{t: [t] for t in LONG_TYPES}, "time_located": list(TIME_LOCATED), "all": list(LONG_TYPES)}
    out: dict[str, dict[str, float]] = {}
    for name, types in groups.items():
        rows = [(it, r) for it, r in zip(items, replies) if it.qtype in types]
        if rows:
            out[name] = {"items": len(rows), "accuracy": float(np.mean([is_right(it, r) for it, r in rows])),
                         "chance": float(np.mean([it.chance for it, _ in rows]))}
    return out


def evaluate_long(model_dir: str | Path, data_dir: str | Path, *, limit: int | None = None,
                  settings: LongSettings = DEFAULT_LONG, which: Sequence[str] = LONG_SETTINGS,
                  examples: int = 5, window_frames: int | None = None) -> dict[str, Any]:
    """Every held-out long question under each setting of ``which``; ``settings`` says how windows read,
    in windows of ``window_frames`` (None: the model's own, as inference reads it; its ``window_frames`` is replaced).
    The questions keep the tolerance they were written with (``first_time``), whatever the reading."""
    from dataclasses import replace

    from ..inference import Pipeline
    from ..media.windows import resolve_window_frames

    pipe = Pipeline.from_pretrained(model_dir)
    config = pipe.model.config
    settings = replace(settings, window_frames=resolve_window_frames(window_frames, config.max_frames, config.window_frames))
    items = load_long_items(data_dir, limit)
    results: dict[str, Any] = {}
    for setting in which:
        replies, seconds = answer_long(pipe, items, setting, settings)
        results[setting] = {"types": score_long(items, replies), "seconds_per_question": round(seconds, 3),
                            "examples": [{"question": it.question, "answer": it.answer, "reply": r}
                                         for it, r in list(zip(items, replies))[:examples]]}
    return {"model_dir": str(model_dir), "data_dir": str(data_dir), "questions": len(items),
            "reading": {"fps": settings.fps, "window_frames": settings.window_frames,
                        "max_windows": settings.max_windows}, "settings": results}


def format_long_table(results: dict[str, Any]) -> str:
    """Markdown: one row per setting, one column per question type (chance in the header)."""
    settings = results["settings"]
    names = [n for n in (*LONG_TYPES, "time_located", "all") if any(n in s["types"] for s in settings.values())]
    chance = {n: next(s["types"][n]["chance"] for s in settings.values() if n in s["types"]) for n in names}
    lines = ["| setting | " + " | ".join(f"{n} (chance {chance[n]:.2f})" for n in names) + " |",
             "|---" * (len(names) + 1) + "|"]
    for setting, row in settings.items():
        cells = [f"{row['types'][n]['accuracy']:.3f}" if n in row["types"] else "-" for n in names]
        lines.append(f"| {setting} | " + " | ".join(cells) + " |")
    lines.append(f"\n{results['questions']} questions, greedy; {results['model_dir']}")
    return "\n".join(lines)


__all__ = ["LONG_SETTINGS", "LongTestItem", "answer_long", "evaluate_long", "format_long_table", "is_right",
           "load_long_items", "reply_seconds", "score_long"]
