"""The Video-ChatGPT GPT-judge protocol against any OpenAI-compatible chat endpoint.

Video-ChatGPT (Maaz et al. 2023, ``quantitative_evaluation/evaluate_activitynet_qa.py``) scores
open-ended video QA by asking GPT-3.5 whether a prediction matches the reference answer. The
prompts below are that script's, word for word; the judge replies with a Python-dict string
``{'pred': 'yes', 'score': 4}``. As in the script, accuracy = yes / (yes + no) and the score is
the mean of ``int(score)`` over judged items. Differences, all for robustness: replies are parsed
with :func:`ast.literal_eval` plus fallbacks (code fences, JSON, ``pred: yes`` text); a malformed
reply or a transient HTTP error is retried with exponential backoff, and an item still failing
after ``max_attempts`` is counted as a judge failure instead of being retried forever; requests
are rate limited and run concurrently; judgements are cached on disk, keyed by
(protocol, judge model, question, answer, prediction), so a rerun asks only what is new.

    judge = Judge(JudgeOptions(url="http://127.0.0.1:8000/v1", model="my-judge"))
    judge.judge_many([("what is he doing?", "cook", "He is cooking.")])
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import math
import os
import random
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import VideoLlamaError
from .records import JsonlWriter, read_records

log = logging.getLogger(__name__)

PROTOCOL = "video-chatgpt-zero-shot-qa"

SYSTEM_PROMPT = (
    "You are an intelligent chatbot designed for evaluating the correctness of generative outputs for "
    "question-answer pairs. "
    "Your task is to compare the predicted answer with the correct answer and determine if they match "
    "meaningfully. Here's how you can accomplish the task:"
    "------"
    "##INSTRUCTIONS: "
    "- Focus on the meaningful match between the predicted answer and the correct answer.\n"
    "- Consider synonyms or paraphrases as valid matches.\n"
    "- Evaluate the correctness of the prediction compared to the answer."
)

USER_TEMPLATE = (
    "Please evaluate the following video-based question-answer pair:\n\n"
    "Question: {question}\n"
    "Correct Answer: {answer}\n"
    "Predicted Answer: {pred}\n\n"
    "Provide your evaluation only as a yes/no and score where the score is an integer value between 0 and 5, "
    "with 5 indicating the highest meaningful match. "
    "Please generate the response in the form of a Python dictionary string with keys 'pred' and 'score', "
    "where value of 'pred' is  a string of 'yes' or 'no' and value of 'score' is in INTEGER, not STRING."
    "DO NOT PROVIDE ANY OTHER OUTPUT TEXT OR EXPLANATION. Only provide the Python dictionary string. "
    "For example, your response should look like this: {{'pred': 'yes', 'score': 4.8}}."
)

SCORE_MIN, SCORE_MAX = 0.0, 5.0
RETRYABLE_STATUS = frozenset({408, 409, 429})  # plus every 5xx
API_KEY_ENV = "OPENAI_API_KEY"
NO_API_KEY = "EMPTY"  # what local OpenAI-compatible servers accept


class JudgeError(VideoLlamaError, RuntimeError):
    """The judge cannot be used at all (bad URL, no model); raised before any item is judged."""


class MalformedReply(ValueError):
    """A judge reply without a usable yes/no and 0-5 score."""


@dataclass
class JudgeOptions:
    """Where the judge is and how hard to push it."""

    url: str  # OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1 (/v1 is added if the path is empty)
    model: str | None = None  # None: the first model the endpoint lists at GET /models
    api_key: str | None = None  # None: $OPENAI_API_KEY, else "EMPTY"
    concurrency: int = 4  # requests in flight
    requests_per_second: float = 5.0  # request starts per second; 0 = unlimited
    max_attempts: int = 4  # per item, counting malformed replies and retryable HTTP errors
    backoff_s: float = 1.0  # first retry delay; doubles per attempt (with 10% jitter)
    max_backoff_s: float = 30.0
    timeout_s: float = 60.0  # per request
    temperature: float | None = None  # None: the endpoint's default, as the original script
    max_tokens: int | None = None
    cache_path: Path | None = None  # JSONL cache of judgements; None: no cache


@dataclass
class Judgement:
    """The judge's verdict on one prediction, or why there is none."""

    pred: str | None = None  # "yes" | "no"
    score: float | None = None  # 0..5 as replied (aggregated as int(score), like the original)
    error: str | None = None  # failure reason when ok is False
    raw: str | None = None  # the last reply text
    attempts: int = 0
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None and self.pred in ("yes", "no") and self.score is not None


# ------------------------------------------------------------------------------- parsing
_FENCE = re.compile(r"^```[a-zA-Z]*\s*|\s*```$")
_DICT = re.compile(r"\{[^{}]*\}")
_PRED = re.compile(r"""['"]?pred['"]?\s*[:=]\s*['"]?\s*(yes|no)\b""", re.IGNORECASE)
_SCORE = re.compile(r"""['"]?score['"]?\s*[:=]\s*['"]?\s*(-?\d+(?:\.\d+)?)""", re.IGNORECASE)


def _from_mapping(value: Any) -> tuple[Any, Any] | None:
    if not isinstance(value, dict):
        return None
    lowered = {str(k).strip().lower(): v for k, v in value.items()}
    if "pred" not in lowered or "score" not in lowered:
        return None
    return lowered["pred"], lowered["score"]


def parse_judgement(text: str | None) -> tuple[str, float]:
    """``"{'pred': 'yes', 'score': 4}"`` -> ``("yes", 4.0)``; raises :class:`MalformedReply`."""
    if not text or not text.strip():
        raise MalformedReply("empty reply")
    body = _FENCE.sub("", text.strip())
    found: tuple[Any, Any] | None = None
    for candidate in [body, *_DICT.findall(body)]:
        for parse in (ast.literal_eval, json.loads):
            try:
                found = _from_mapping(parse(candidate))
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                found = None
            if found:
                break
        if found:
            break
    if found is None:
        pred_m, score_m = _PRED.search(body), _SCORE.search(body)
        if not (pred_m and score_m):
            raise MalformedReply(f"no 'pred'/'score' in reply: {text[:120]!r}")
        found = (pred_m.group(1), score_m.group(1))
    pred_value, score_value = found
    verdict = str(pred_value).strip().lower()
    # the original counts any pred containing "yes" as yes, else containing "no" as no
    pred = "yes" if "yes" in verdict else "no" if "no" in verdict else None
    if pred is None:
        raise MalformedReply(f"'pred' is {pred_value!r}, not yes/no")
    try:
        score = float(str(score_value).strip())
    except ValueError:
        raise MalformedReply(f"'score' is {score_value!r}, not a number") from None
    if not math.isfinite(score) or not SCORE_MIN <= score <= SCORE_MAX:
        raise MalformedReply(f"'score' {score} is outside {SCORE_MIN:g}..{SCORE_MAX:g}")
    return pred, score


def build_messages(question: str, answer: str, pred: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": USER_TEMPLATE.format(question=question, answer=answer, pred=pred)}]


# ------------------------------------------------------------------------- rate and cache
class RateLimiter:
    """At most ``rate`` request starts per second across threads (0 = no limit)."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self._clock, self._sleep = clock, sleep
        self._next = 0.0
        self._lock = threading.Lock()

    def acquire(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = self._clock()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            self._sleep(start - now)


def cache_key(model: str, question: str, answer: str, pred: str) -> str:
    return hashlib.sha256(json.dumps([PROTOCOL, model, question, answer, pred]).encode()).hexdigest()


class JudgeCache:
    """Successful judgements on disk (JSONL). Failures are not cached, so a rerun retries them."""

    def __init__(self, path: Path | None):
        self.path = path
        self._entries: dict[str, dict[str, Any]] = {}
        self._writer: JsonlWriter | None = None
        if path is not None:
            for record in read_records(path):
                if isinstance(record.get("key"), str):
                    self._entries[record["key"]] = record
            self._writer = JsonlWriter(path, fsync=False)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> Judgement | None:
        record = self._entries.get(key)
        if record is None:
            return None
        return Judgement(pred=record["pred"], score=float(record["score"]), raw=record.get("raw"), cached=True)

    def put(self, key: str, model: str, judgement: Judgement) -> None:
        record = {"key": key, "model": model, "pred": judgement.pred, "score": judgement.score, "raw": judgement.raw}
        self._entries[key] = record
        if self._writer is not None:
            self._writer.write([record])

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


# ---------------------------------------------------------------------------------- judge
def normalize_base_url(url: str) -> str:
    """Add ``/v1`` to a bare ``http://host:port``; keep any explicit path."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise JudgeError(f"judge URL {url!r} is not an http(s) URL")
    return url.rstrip("/") + "/v1" if parts.path in ("", "/") else url.rstrip("/")


def _classify(err: Exception) -> tuple[str, bool]:
    """(reason, retryable) for an exception raised by the openai client."""
    import openai

    if isinstance(err, MalformedReply):
        return "malformed reply", True
    if isinstance(err, openai.APITimeoutError):
        return "timeout", True
    if isinstance(err, openai.APIConnectionError):
        return "connection error", True
    if isinstance(err, openai.APIStatusError):
        status = err.status_code
        return f"http {status}", status >= 500 or status in RETRYABLE_STATUS
    return f"error: {type(err).__name__}", False


@dataclass
class JudgeStats:
    requests: int = 0
    cache_hits: int = 0
    reasons: dict[str, int] = field(default_factory=dict)  # failures of the final attempt, by reason


class Judge:
    """Judges (question, answer, prediction) triples; never raises for a single bad item."""

    def __init__(self, options: JudgeOptions, *, client: Any = None):
        import openai

        self.options = options
        self.base_url = normalize_base_url(options.url)
        key = options.api_key or os.environ.get(API_KEY_ENV) or NO_API_KEY
        self.client = client or openai.OpenAI(base_url=self.base_url, api_key=key, max_retries=0,
                                              timeout=options.timeout_s)
        self.limiter = RateLimiter(options.requests_per_second)
        self.cache = JudgeCache(options.cache_path)
        self.stats = JudgeStats()
        self._stats_lock = threading.Lock()
        self._model = options.model

    @property
    def model(self) -> str:
        """The judge model; resolved from GET /models when not given (raises :class:`JudgeError`)."""
        if self._model is None:
            try:
                listed = [m.id for m in self.client.models.list().data]
            except Exception as err:  # noqa: BLE001 - any failure here means the judge is unusable
                raise JudgeError(f"no --judge-model given and listing models at {self.base_url} failed: "
                                 f"{type(err).__name__}: {err}") from None
            if not listed:
                raise JudgeError(f"no --judge-model given and {self.base_url}/models lists no model")
            self._model = listed[0]
            log.info("judge model: %s (first listed at %s)", self._model, self.base_url)
        return self._model

    def _ask(self, question: str, answer: str, pred: str) -> str | None:
        extra: dict[str, Any] = {}
        if self.options.temperature is not None:
            extra["temperature"] = self.options.temperature
        if self.options.max_tokens is not None:
            extra["max_tokens"] = self.options.max_tokens
        with self._stats_lock:
            self.stats.requests += 1
        reply = self.client.chat.completions.create(model=self.model, messages=build_messages(question, answer, pred),
                                                    **extra)
        return reply.choices[0].message.content if reply.choices else None

    def judge(self, question: str, answer: str, pred: str) -> Judgement:
        key = cache_key(self.model, question, answer, pred)
        if (hit := self.cache.get(key)) is not None:
            with self._stats_lock:
                self.stats.cache_hits += 1
            return hit
        result = Judgement()
        for attempt in range(1, self.options.max_attempts + 1):
            result.attempts = attempt
            self.limiter.acquire()
            try:
                result.raw = self._ask(question, answer, pred)
                result.pred, result.score = parse_judgement(result.raw)
                result.error = None
                self.cache.put(key, self.model, result)
                return result
            except Exception as err:  # noqa: BLE001 - classified below; one item never stops the run
                reason, retryable = _classify(err)
                result.error = f"{reason}: {err}"[:300]
                if not retryable or attempt == self.options.max_attempts:
                    break
                delay = min(self.options.max_backoff_s, self.options.backoff_s * 2 ** (attempt - 1))
                log.debug("judge attempt %d failed (%s); retrying in %.2fs", attempt, reason, delay)
                time.sleep(delay * (1 + 0.1 * random.random()))
        with self._stats_lock:
            reason = result.error.split(":", 1)[0] if result.error else "unknown"
            self.stats.reasons[reason] = self.stats.reasons.get(reason, 0) + 1
        return result

    def judge_many(self, triples: Sequence[tuple[str, str, str]], *, progress: bool = True) -> list[Judgement]:
        """Judge many (question, answer, prediction) triples concurrently; results in input order."""
        from tqdm.auto import tqdm

        _ = self.model  # resolve before spawning threads, so a bad endpoint fails once, clearly
        results: list[Judgement | None] = [None] * len(triples)

        def work(index: int) -> None:
            try:
                results[index] = self.judge(*triples[index])
            except Exception as err:  # noqa: BLE001 - belt and braces: never lose the run to one item
                results[index] = Judgement(error=f"error: {type(err).__name__}: {err}"[:300])

        with tqdm(total=len(triples), desc="judging", unit="q", disable=not progress) as bar, \
                ThreadPoolExecutor(max_workers=max(1, self.options.concurrency)) as pool:
            for _ in pool.map(work, range(len(triples))):
                bar.update(1)
        return [r if r is not None else Judgement(error="error: not judged") for r in results]

    def close(self) -> None:
        self.cache.close()


def aggregate_judgements(judgements: Sequence[Judgement], qtypes: Sequence[str | None],
                         known_types: Sequence[str] = ()) -> dict[str, Any]:
    """Accuracy (percent of yes among judged), mean int(score), counts; overall and per type."""
    from .metrics import PERCENT, ordered_types

    def bucket(pairs: list[Judgement]) -> dict[str, Any]:
        judged = [j for j in pairs if j.ok]
        yes = sum(j.pred == "yes" for j in judged)
        return {
            "n": len(pairs), "judged": len(judged), "failures": len(pairs) - len(judged), "yes": yes,
            "no": len(judged) - yes,
            "accuracy_pct": PERCENT * yes / len(judged) if judged else None,
            "score": sum(int(j.score) for j in judged) / len(judged) if judged else None,
        }

    summary = bucket(list(judgements))
    reasons: dict[str, int] = {}
    for j in judgements:
        if not j.ok:
            reason = (j.error or "unknown").split(":", 1)[0]
            reasons[reason] = reasons.get(reason, 0) + 1
    summary["failure_reasons"] = reasons
    types = ordered_types(qtypes, known_types)
    if types:
        summary["per_type"] = {t: bucket([j for j, q in zip(judgements, qtypes) if q == t]) for t in types}
    return summary
