"""Offline metrics, judge-reply parsing, rate limiting and cache keys (no I/O)."""

from __future__ import annotations

import pytest

from videollama.eval import metrics
from videollama.eval.judge import (MalformedReply, RateLimiter, aggregate_judgements, build_messages, cache_key,
                                   normalize_base_url, parse_judgement, Judgement, JudgeError)


def test_normalize_answer():
    assert metrics.normalize_answer("The Man's  guitar!") == "man s guitar"
    assert metrics.normalize_answer("Two dogs.") == "2 dogs"
    assert metrics.normalize_answer("an apple") == "apple"


@pytest.mark.parametrize("pred,answer,exact,contains", [
    ("Guitar.", "guitar", True, True),
    ("The man is playing a guitar.", "guitar", False, True),
    ("guitars", "guitar", False, False),          # whole words only
    ("There are two cars", "2", False, True),     # number words
    ("", "yes", False, False),
    ("anything", "", False, False),               # an empty reference never matches
    ("a dark red car", "dark red", False, True),  # multi-word answers
])
def test_exact_and_contains(pred, answer, exact, contains):
    assert metrics.exact_match(pred, answer) is exact
    assert metrics.contains_match(pred, answer) is contains


def test_choice_match_rejects_listing_every_candidate():
    choices = ["red", "dark red", "blue"]
    assert metrics.choice_match("It is red.", "red", choices)
    assert not metrics.choice_match("red or blue", "red", choices)
    assert metrics.choice_match("dark red", "dark red", choices)  # "red" is part of the answer itself
    assert not metrics.choice_match("blue", "red", choices)


def test_aggregate_per_type_in_known_order():
    scores = [metrics.score_item("1", "red", "red", "color"), metrics.score_item("2", "a cat", "dog", "object"),
              metrics.score_item("3", "it is blue", "blue", "color", ["blue", "red"])]
    summary = metrics.aggregate(scores, known_types=("object", "color"))
    assert summary["n"] == 3
    assert summary["exact_pct"] == pytest.approx(100 / 3)
    assert summary["contains_pct"] == pytest.approx(200 / 3)
    assert summary["choice_pct"] == 100.0  # only the item with choices counts
    assert list(summary["per_type"]) == ["object", "color"]
    assert summary["per_type"]["color"] == {"n": 2, "exact_pct": 50.0, "contains_pct": 100.0, "choice_pct": 100.0}


@pytest.mark.parametrize("reply,expected", [
    ("{'pred': 'yes', 'score': 4}", ("yes", 4.0)),
    ("{'pred': 'no', 'score': 0}", ("no", 0.0)),
    ('```python\n{"pred": "Yes", "score": "3"}\n```', ("yes", 3.0)),
    ("Here you go: {'pred': 'yes', 'score': 4.8}. Hope it helps", ("yes", 4.8)),
    ("{'Pred': 'NO', 'Score': 2}", ("no", 2.0)),
    ("pred: yes\nscore: 5", ("yes", 5.0)),
    ("{'pred': 'yes', 'score': 5", ("yes", 5.0)),  # unbalanced brace: the text fallback
])
def test_parse_judgement(reply, expected):
    assert parse_judgement(reply) == expected


@pytest.mark.parametrize("reply,match", [
    ("", "empty"), (None, "empty"), ("I think it is correct.", "no 'pred'"),
    ("{'pred': 'maybe', 'score': 3}", "not yes/no"), ("{'pred': 'yes', 'score': 7}", "outside"),
    ("{'pred': 'yes', 'score': 'high'}", "not a number"),
])
def test_parse_judgement_rejects(reply, match):
    with pytest.raises(MalformedReply, match=match):
        parse_judgement(reply)


def test_messages_are_the_video_chatgpt_prompt():
    system, user = build_messages("what is it?", "dog", "a dog")
    assert system["role"] == "system" and system["content"].startswith(
        "You are an intelligent chatbot designed for evaluating the correctness of generative outputs")
    assert "Question: what is it?\nCorrect Answer: dog\nPredicted Answer: a dog\n\n" in user["content"]
    assert user["content"].endswith("{'pred': 'yes', 'score': 4.8}.")


def test_rate_limiter_spaces_requests():
    now = [0.0]
    slept = []

    def sleep(seconds):
        slept.append(seconds)
        now[0] += seconds

    limiter = RateLimiter(4.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(5):
        limiter.acquire()
    assert now[0] == pytest.approx(1.0)  # 5 starts at 4/s: 0, .25, .5, .75, 1.0
    assert slept == pytest.approx([0.25] * 4)
    unlimited = RateLimiter(0, clock=lambda: 0.0, sleep=lambda s: pytest.fail("must not sleep"))
    unlimited.acquire()


def test_cache_key_and_url():
    assert cache_key("m", "q", "a", "p") == cache_key("m", "q", "a", "p")
    assert cache_key("m", "q", "a", "p") != cache_key("m2", "q", "a", "p")
    assert normalize_base_url("http://127.0.0.1:8000") == "http://127.0.0.1:8000/v1"
    assert normalize_base_url("http://h:1/openai/v1/") == "http://h:1/openai/v1"
    with pytest.raises(JudgeError, match="not an http"):
        normalize_base_url("127.0.0.1:8000")


def test_aggregate_judgements_matches_the_original_formulae():
    js = [Judgement("yes", 4.8), Judgement("no", 1), Judgement("yes", 5), Judgement(error="malformed reply: x")]
    out = aggregate_judgements(js, ["a", "a", "b", "b"], known_types=("b", "a"))
    assert out["judged"] == 3 and out["failures"] == 1 and out["yes"] == 2 and out["no"] == 1
    assert out["accuracy_pct"] == pytest.approx(200 / 3)
    assert out["score"] == pytest.approx((4 + 1 + 5) / 3)  # int(4.8) == 4, as the original script
    assert out["failure_reasons"] == {"malformed reply": 1}
    assert list(out["per_type"]) == ["b", "a"] and out["per_type"]["b"]["accuracy_pct"] == 100.0
