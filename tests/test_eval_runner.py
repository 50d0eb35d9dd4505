"""The evaluation loop end to end: every task with both scorers, resume, errors, torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from eval_fixtures import (EXPECTED_CONTAINS, LAYOUTS, N_ANSWERABLE, QUESTIONS, JudgeServer, color_answerer,
                           expected_judgement, free_port, make_synthav)

from videollama.eval import EvalError, JudgeOptions, main_eval
from videollama.eval.records import read_records

REPO = Path(__file__).resolve().parents[1]


def fast_judge(server, **kw):
    return JudgeOptions(url=server.url, concurrency=4, requests_per_second=0, max_attempts=3, backoff_s=0.01,
                        timeout_s=10, **kw)


def stable(summary):
    """The summary without what legitimately changes between runs (timings, cache hits)."""
    return {k: v for k, v in summary.items() if k != "run"}


@pytest.mark.parametrize("task,layout", list(LAYOUTS))
def test_every_task_end_to_end_with_both_scorers(tmp_path, task, layout):
    data = LAYOUTS[(task, layout)](tmp_path / "data")
    out = tmp_path / "out"
    with JudgeServer() as server:
        summary = main_eval(task, data, out, color_answerer, batch_size=3, progress=False,
                            model_fingerprint={"name": "colour-rule"}, judge_options=fast_judge(server))
    counts = summary["counts"]
    assert counts == {"selected": N_ANSWERABLE, "predicted": N_ANSWERABLE, "unanswered": 0,
                      "questions": len(QUESTIONS), "missing_videos": 1}
    answerable = [q for q in QUESTIONS if q.clip != 4]
    n_right = sum(q.qid in EXPECTED_CONTAINS for q in answerable)
    assert summary["offline"]["contains_pct"] == pytest.approx(100 * n_right / N_ANSWERABLE)
    assert summary["offline"]["exact_pct"] == 0.0  # "The object is red." is not exactly "red"

    # judge numbers recomputed from the rule, through the real HTTP round trips
    rows = read_records(out / "scores.jsonl")
    expected = [expected_judgement(next(q.question for q in answerable if q.answer == r["answer"]
                                        and r["pred"].endswith(".")), r["answer"], r["pred"]) for r in rows]
    judged = [e for e in expected if e is not None]
    judge = summary["judge"]
    assert judge["judged"] == len(judged) == N_ANSWERABLE - 1 and judge["failures"] == 1
    assert judge["accuracy_pct"] == pytest.approx(100 * sum(p == "yes" for p, _ in judged) / len(judged))
    assert judge["score"] == pytest.approx(sum(s for _, s in judged) / len(judged))
    assert judge["failure_reasons"] == {"malformed reply": 1}
    assert summary["headline"] == {"metric": "judge", "accuracy_pct": judge["accuracy_pct"], "score": judge["score"]}
    assert summary["model"] == {"name": "colour-rule"} and summary["data"]["layout"] == layout

    # outputs
    assert json.loads((out / "summary.json").read_text())["judge"]["judged"] == N_ANSWERABLE - 1
    md = (out / "summary.md").read_text()
    assert "| judge accuracy (%) |" in md and "## Per question type" in md
    assert (out / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((out / "missing_videos.txt").read_text().splitlines()) == 1
    assert len(read_records(out / "predictions.jsonl")) == N_ANSWERABLE
    if task == "synthav":
        assert summary["headline"]["metric"] == "judge" and "choice_pct" in summary["offline"]
        assert summary["chance_pct"]["static"] == 25.0
    if task == "activitynet-qa":
        assert summary["offline"]["per_type"]["color"]["contains_pct"] == 100.0
        assert summary["judge"]["per_type"]["yes_no"]["accuracy_pct"] == 0.0


class Interrupt:
    """Answers normally, then raises KeyboardInterrupt once it has answered ``after`` items."""

    def __init__(self, after):
        self.after, self.seen = after, 0

    def __call__(self, batch):
        if self.seen + len(batch) > self.after:
            raise KeyboardInterrupt
        self.seen += len(batch)
        return color_answerer(batch)


class Counting:
    def __init__(self):
        self.items = []

    def __call__(self, batch):
        self.items += [item.id for item in batch]
        return color_answerer(batch)


@pytest.mark.slow
def test_resume_after_interruption_gives_the_same_summary(tmp_path):
    data = make_synthav(tmp_path / "data")
    with JudgeServer() as server:
        reference = main_eval("synthav", data, tmp_path / "ref", color_answerer, batch_size=2, progress=False,
                              model_fingerprint="m", judge_options=fast_judge(server))

        out = tmp_path / "run"
        with pytest.raises(KeyboardInterrupt):  # killed after 4 items (two batches written)
            main_eval("synthav", data, out, Interrupt(after=5), batch_size=2, progress=False, model_fingerprint="m")
        assert len(read_records(out / "predictions.jsonl")) == 4
        # ... and the kill landed in the middle of writing the 4th record
        raw = (out / "predictions.jsonl").read_bytes()
        (out / "predictions.jsonl").write_bytes(raw[:-len(raw.splitlines()[-1]) // 2 - 1])
        assert len(read_records(out / "predictions.jsonl")) == 3

        counting = Counting()
        resumed = main_eval("synthav", data, out, counting, batch_size=2, progress=False, model_fingerprint="m",
                            judge_options=fast_judge(server))
    assert len(counting.items) == N_ANSWERABLE - 3  # only what was not done
    assert stable(resumed) == stable(reference)
    assert resumed["run"]["inference"]["skipped"] == 3
    preds = read_records(out / "predictions.jsonl")
    assert len(preds) == N_ANSWERABLE and len({p["id"] for p in preds}) == N_ANSWERABLE

    # a third run answers nothing, and the judge cache answers everything but the permanent failure
    again = Counting()
    with JudgeServer() as server2:
        third = main_eval("synthav", data, out, again, progress=False, model_fingerprint="m",
                          judge_options=fast_judge(server2))
        assert server2.requests == 3  # the malformed item, retried max_attempts times
    assert again.items == []
    assert {**third["judge"], "url": None} == {**reference["judge"], "url": None}  # another server's port


def test_failing_items_are_recorded_and_retried(tmp_path):
    data = make_synthav(tmp_path / "data")
    out = tmp_path / "out"

    def flaky(batch):
        if any("clip2" in str(i.video_path) for i in batch):
            raise RuntimeError("cannot decode clip2\nlong traceback")
        return color_answerer(batch)

    summary = main_eval("synthav", data, out, flaky, batch_size=4, progress=False)
    n_clip2 = sum(q.clip == 2 for q in QUESTIONS)
    assert summary["counts"]["predicted"] == N_ANSWERABLE - n_clip2
    assert summary["counts"]["unanswered"] == n_clip2
    errors = read_records(out / "errors.jsonl")
    assert len(errors) == n_clip2 and errors[0]["error"] == "RuntimeError: cannot decode clip2"

    summary = main_eval("synthav", data, out, color_answerer, progress=False)
    assert summary["counts"]["predicted"] == N_ANSWERABLE and read_records(out / "errors.jsonl") == []


def test_broken_answerer_stops_with_a_clear_error(tmp_path):
    data = make_synthav(tmp_path / "data")
    with pytest.raises(EvalError, match=r"failed on 4 items in a row; last error: EvalError: answerer returned "
                                        r"non-string predictions \(int\)"):
        import videollama.eval.runner as runner

        old = runner.MAX_CONSECUTIVE_FAILURES
        runner.MAX_CONSECUTIVE_FAILURES = 4
        try:
            main_eval("synthav", data, tmp_path / "out", lambda b: ["x"][:1] if len(b) > 1 else [1],
                      batch_size=2, progress=False)
        finally:
            runner.MAX_CONSECUTIVE_FAILURES = old


def test_resuming_with_another_model_is_refused_and_overwrite_restarts(tmp_path):
    data = make_synthav(tmp_path / "data")
    out = tmp_path / "out"
    main_eval("synthav", data, out, color_answerer, limit=2, progress=False, model_fingerprint="model-a")
    with pytest.raises(EvalError, match="different model"):
        main_eval("synthav", data, out, color_answerer, progress=False, model_fingerprint="model-b")
    summary = main_eval("synthav", data, out, lambda b: ["red"] * len(b), progress=False,
                        model_fingerprint="model-b", overwrite=True)
    assert summary["run"]["inference"]["skipped"] == 0 and summary["counts"]["predicted"] == N_ANSWERABLE


def test_score_only_and_missing_videos(tmp_path):
    data = make_synthav(tmp_path / "data")
    out = tmp_path / "out"
    first = main_eval("synthav", data, out, color_answerer, progress=False)
    rescored = main_eval("synthav", data, out, None, progress=False)  # no answerer: score what is there
    assert stable(rescored)["offline"] == stable(first)["offline"]
    with pytest.raises(EvalError, match="no question has its video on disk"):
        main_eval("synthav", data, tmp_path / "o2", color_answerer, video_dir=tmp_path, progress=False)


SHARD_SCRIPT = """
import json, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from eval_fixtures import color_answerer
from videollama.eval import main_eval

data, out = Path(sys.argv[1]), Path(sys.argv[2])
result = main_eval("synthav", data, out, color_answerer, batch_size=2, progress=False, model_fingerprint="m")
rank = result.get("rank", 0)
info = result["inference"] if "inference" in result and "rank" in result else result["run"]["inference"]
(out / f"rank{{rank}}.result.json").write_text(json.dumps(info))
"""


@pytest.mark.slow
def test_torchrun_shards_and_merges_like_a_single_process(tmp_path):
    data = make_synthav(tmp_path / "data")
    single = main_eval("synthav", data, tmp_path / "single", color_answerer, progress=False, model_fingerprint="m")

    script = tmp_path / "shard.py"
    script.write_text(SHARD_SCRIPT.format(tests=str(Path(__file__).parent)))
    out = tmp_path / "multi"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(script),
                           str(data), str(out)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]

    assert not list(out.glob("predictions.rank*.jsonl"))  # merged and removed
    multi_preds = [(r["id"], r["pred"]) for r in read_records(out / "predictions.jsonl")]
    single_preds = [(r["id"], r["pred"]) for r in read_records(tmp_path / "single" / "predictions.jsonl")]
    assert multi_preds == single_preds  # same records, same (item) order
    rank0 = json.loads((out / "rank0.result.json").read_text())
    rank1 = json.loads((out / "rank1.result.json").read_text())
    assert (rank0["world_size"], rank1["world_size"]) == (2, 2)
    assert (rank0["answered"], rank1["answered"]) == ((N_ANSWERABLE + 1) // 2, N_ANSWERABLE // 2)
    merged = json.loads((out / "summary.json").read_text())
    assert stable(merged) == stable(single)


def test_jsonl_repair_keeps_complete_records_and_cuts_partial_ones(tmp_path):
    from videollama.eval.records import JsonlWriter, repair

    path = tmp_path / "p.jsonl"
    path.write_text('{"id": "a"}\n{"id": "b"}')  # complete record, newline lost
    assert repair(path) == 0 and path.read_text() == '{"id": "a"}\n{"id": "b"}\n'
    path.write_text('{"id": "a"}\n{"id": "b", "pr')
    assert repair(path) == len('{"id": "b", "pr') and path.read_text() == '{"id": "a"}\n'
    with JsonlWriter(path) as writer:
        writer.write([{"id": "c"}])
    assert [r["id"] for r in read_records(path)] == ["a", "c"]


def test_cli_options_drive_main_eval(tmp_path):
    import argparse

    from videollama.eval import add_arguments, options_from_args

    data = make_synthav(tmp_path / "data")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with JudgeServer() as server:
        args = parser.parse_args(["synthav", "--data", str(data), "--out", str(tmp_path / "out"), "--limit", "3",
                                  "--judge-url", server.url.removesuffix("/v1"), "--judge-rps", "0",
                                  "--no-progress"])
        options = options_from_args(args)
        assert options["judge_options"].requests_per_second == 0 and options["limit"] == 3
        summary = main_eval(answerer=color_answerer, **options)
    assert summary["counts"]["predicted"] == 3 and summary["judge"]["judged"] == 3
    assert summary["judge"]["url"] == server.url  # /v1 added to the bare host:port
