"""The GPT-judge client against a real local HTTP judge: parsing, retries, failures, cache."""

from __future__ import annotations

import pytest
from eval_fixtures import JudgeServer, expected_judgement, free_port

from videollama.eval import Judge, JudgeError, JudgeOptions
from videollama.eval.records import read_records

TRIPLES = [
    ("what color is the ball?", "red", "The object is red."),        # yes, 5
    ("what color is the ball?", "green", "The object is green."),    # HTTP 500 first, then yes
    ("what color is the car?", "blue", "The object is red."),        # chatty reply first, then no
    ("what is the color of the box?", "yellow", "It is yellow."),    # fenced dict, score 4.8
    ("how many cars are there?", "2", "The object is blue."),        # always malformed -> failure
]


def fast_options(server: JudgeServer, tmp_path, **kw) -> JudgeOptions:
    defaults = dict(url=server.url, model=None, concurrency=3, requests_per_second=0, max_attempts=3,
                    backoff_s=0.01, timeout_s=10, cache_path=tmp_path / "cache.jsonl")
    return JudgeOptions(**{**defaults, **kw})


def test_judge_retries_parses_counts_and_caches(tmp_path):
    with JudgeServer() as server:
        judge = Judge(fast_options(server, tmp_path))
        assert judge.model == "rule-judge"  # from GET /v1/models
        results = judge.judge_many(TRIPLES, progress=False)
        for triple, result in zip(TRIPLES, results):
            expected = expected_judgement(*triple)
            if expected is None:
                assert not result.ok and result.error.startswith("malformed reply") and result.attempts == 3
            else:
                assert result.ok and (result.pred, int(result.score)) == expected
        assert results[3].score == 4.8
        assert [r.attempts for r in results[:4]] == [1, 2, 2, 1]
        assert server.requests == 1 + 2 + 2 + 1 + 3
        assert judge.stats.reasons == {"malformed reply": 1}
        judge.close()
        assert len(read_records(tmp_path / "cache.jsonl")) == 4  # failures are not cached

        # a new judge on the same cache asks only about the failure
        before = server.requests
        again = Judge(fast_options(server, tmp_path))
        results2 = again.judge_many(TRIPLES, progress=False)
        assert server.requests - before == 3
        assert again.stats.cache_hits == 4 and all(r.cached for r in results2[:4])
        assert [(r.pred, r.score) for r in results2] == [(r.pred, r.score) for r in results]
        again.close()

        # a different judge model is a different cache key
        other = Judge(fast_options(server, tmp_path, model="another-judge"))
        other.judge_many(TRIPLES[:1], progress=False)
        assert other.stats.cache_hits == 0
        other.close()


def test_unreachable_judge_fails_items_not_the_run(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/v1"
    judge = Judge(JudgeOptions(url=url, model="m", max_attempts=2, backoff_s=0.01, timeout_s=2,
                               requests_per_second=0))
    results = judge.judge_many(TRIPLES[:2], progress=False)
    assert all(not r.ok and r.error.startswith("connection error") and r.attempts == 2 for r in results)
    with pytest.raises(JudgeError, match="listing models .* failed"):
        _ = Judge(JudgeOptions(url=url, timeout_s=2)).model


def test_non_retryable_status_is_not_retried(tmp_path):
    with JudgeServer() as server:
        # the server answers 404 for any other path: point the client at a wrong base path
        judge = Judge(JudgeOptions(url=server.url.replace("/v1", "/wrong"), model="m", max_attempts=4,
                                   backoff_s=0.01, requests_per_second=0))
        result = judge.judge(*TRIPLES[0])
        assert not result.ok and result.error.startswith("http 404") and result.attempts == 1
