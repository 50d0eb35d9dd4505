"""Offline scoring: answer matching that needs no judge model.

Open-ended answers are compared after :func:`normalize_answer` (lowercase, punctuation and the
articles a/an/the removed, number words zero..twenty written as digits, whitespace collapsed):

* ``exact``    — the normalised prediction equals the normalised answer;
* ``contains`` — the normalised answer occurs in the normalised prediction as whole words
                 (a chat model says "The man is playing a guitar." for the answer "guitar");
* ``choice``   — only where items list candidate answers (SynthAV): the prediction mentions the
                 right candidate and no other one (so listing every candidate does not score).

Accuracies are reported in percent, overall and per question type.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

ARTICLES = frozenset({"a", "an", "the"})
NUMBER_WORDS = {word: str(value) for value, word in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty".split())}
_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")
PERCENT = 100.0


def normalize_tokens(text: str) -> list[str]:
    words = _PUNCT.sub(" ", str(text).lower()).split()
    return [NUMBER_WORDS.get(w, w) for w in words if w not in ARTICLES]


def normalize_answer(text: str) -> str:
    """``"The Man's  guitar!"`` -> ``"man s guitar"``; ``"Two"`` -> ``"2"``."""
    return " ".join(normalize_tokens(text))


def _contains_tokens(haystack: Sequence[str], needle: Sequence[str]) -> bool:
    if not needle:
        return False
    width = len(needle)
    return any(list(haystack[i:i + width]) == list(needle) for i in range(len(haystack) - width + 1))


def exact_match(pred: str, answer: str) -> bool:
    norm = normalize_answer(answer)
    return bool(norm) and normalize_answer(pred) == norm


def contains_match(pred: str, answer: str) -> bool:
    return _contains_tokens(normalize_tokens(pred), normalize_tokens(answer))


def choice_match(pred: str, answer: str, choices: Sequence[str]) -> bool:
    """Right candidate mentioned, and every other mentioned candidate is part of the answer itself."""
    pred_tokens = normalize_tokens(pred)
    answer_tokens = normalize_tokens(answer)
    if not _contains_tokens(pred_tokens, answer_tokens):
        return False
    for choice in choices:
        tokens = normalize_tokens(choice)
        if tokens == answer_tokens or _contains_tokens(answer_tokens, tokens):
            continue
        if _contains_tokens(pred_tokens, tokens):
            return False
    return True


@dataclass(frozen=True)
class ItemScore:
    """Offline scores of one prediction."""

    id: str
    qtype: str | None
    exact: bool
    contains: bool
    choice: bool | None  # None where the item has no candidate answers


def score_item(item_id: str, pred: str, answer: str, qtype: str | None = None,
               choices: Sequence[str] = ()) -> ItemScore:
    return ItemScore(item_id, qtype, exact_match(pred, answer), contains_match(pred, answer),
                     choice_match(pred, answer, choices) if choices else None)


def _pct(hits: int, n: int) -> float | None:
    return PERCENT * hits / n if n else None


def _bucket(scores: Sequence[ItemScore]) -> dict[str, Any]:
    with_choices = [s for s in scores if s.choice is not None]
    out: dict[str, Any] = {
        "n": len(scores),
        "exact_pct": _pct(sum(s.exact for s in scores), len(scores)),
        "contains_pct": _pct(sum(s.contains for s in scores), len(scores)),
    }
    if with_choices:
        out["choice_pct"] = _pct(sum(bool(s.choice) for s in with_choices), len(with_choices))
    return out


def ordered_types(found: Iterable[str | None], known: Sequence[str] = ()) -> list[str]:
    """Known types first (in their order, if present), then the others sorted."""
    present = {t for t in found if t is not None}
    return [t for t in known if t in present] + sorted(present - set(known))


def aggregate(scores: Sequence[ItemScore], known_types: Sequence[str] = ()) -> dict[str, Any]:
    """Overall and per-type accuracies (percent) of a list of item scores."""
    summary = _bucket(scores)
    types = ordered_types((s.qtype for s in scores), known_types)
    if types:
        summary["per_type"] = {t: _bucket([s for s in scores if s.qtype == t]) for t in types}
    return summary


def as_record(score: ItemScore) -> dict[str, Any]:
    return {k: v for k, v in asdict(score).items() if v is not None or k == "qtype"}
