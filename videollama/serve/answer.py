"""Token ids -> answer text, incrementally, cut at stop strings: one code path for streamed and plain answers.

:class:`AnswerText` turns the growing list of generated ids into text deltas. Text that could still
become a stop string (the template's, e.g. ``###`` / ``</s>``, or the request's ``stop``), trailing
whitespace and an unfinished multi-byte character are held back until the next token decides them;
the answer never shows a stop string. A non-streamed answer is the concatenation of the same deltas,
so greedy answers are identical streamed and not.

:func:`make_stop_check` is the engine-side half: a predicate over generated ids that ends a row as soon
as a stop string appears in the decoded tail.
"""

from __future__ import annotations

from collections.abc import Callable

REPLACEMENT_CHAR = "\ufffd"  # what decode() shows for an incomplete UTF-8 sequence
MIN_TAIL_TOKENS = 8
TOKENS_PER_CHAR_WORST = 4  # byte-fallback tokens: up to 4 per character


class AnswerText:
    def __init__(self, tokenizer, stops: tuple[str, ...]) -> None:
        self.tokenizer = tokenizer
        self.stops = tuple(s for s in stops if s)
        self.ids: list[int] = []
        self.shown = ""
        self.stopped = False

    def _cut(self) -> str:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        first = min((text.index(s) for s in self.stops if s in text), default=None)
        if first is not None:
            self.stopped = True
            text = text[:first]
        return text.lstrip()

    def push(self, token_id: int) -> str:
        """Add one generated id; the text that can be shown now (maybe empty)."""
        if self.stopped:
            return ""
        self.ids.append(token_id)
        text = self._cut()
        if not self.stopped:
            text = text[: len(text) - len(_held_stop_prefix(text, self.stops))]
            text = text.rstrip()
            if text.endswith(REPLACEMENT_CHAR):
                text = text.rstrip(REPLACEMENT_CHAR)
        return self._advance(text)

    def finish(self) -> str:
        """The rest of the answer once generation has ended."""
        return self._advance(self._cut().rstrip())

    def _advance(self, text: str) -> str:
        if text.startswith(self.shown) and len(text) > len(self.shown):
            delta = text[len(self.shown):]
            self.shown = text
            return delta
        return ""

    @property
    def text(self) -> str:
        return self.shown


def _held_stop_prefix(text: str, stops: tuple[str, ...]) -> str:
    """The longest suffix of ``text`` that is the beginning of some stop string."""
    best = ""
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), len(best), -1):
            if text.endswith(stop[:n]):
                best = stop[:n]
                break
    return best


def make_stop_check(tokenizer, stops: tuple[str, ...]) -> Callable[[list[int]], bool] | None:
    """Predicate for ``Request.stop``: True once any stop string appears in the decoded tail."""
    stops = tuple(s for s in stops if s)
    if not stops:
        return None
    window = max(MIN_TAIL_TOKENS, TOKENS_PER_CHAR_WORST * max(len(s) for s in stops))

    def stop(generated: list[int]) -> bool:
        tail = tokenizer.decode(generated[-window:], skip_special_tokens=False)
        return any(s in tail for s in stops)

    return stop
