"""``videollama eval synthav --model DIR`` end to end with a real (tiny, random) model through the CLI.

The runner tests drive ``main_eval`` with a rule-based answerer; this one goes through the command
line, loads the model folder, decodes the clips and generates the answers with the model.
"""

from __future__ import annotations

import json

import eval_fixtures
import pytest
from eval_fixtures import QUESTIONS, make_synthav

from videollama import cli
from videollama.eval import metrics
from videollama.eval.cli import model_fingerprint
from videollama.eval.records import read_records

LIMIT = 3


@pytest.fixture()
def run(tiny_model_dir, tmp_path, capsys):
    data = make_synthav(tmp_path / "data")
    out = tmp_path / "out"
    argv = ["eval", "synthav", "--model", str(tiny_model_dir), "--data", str(data), "--limit", str(LIMIT),
            "--out", str(out), "--max-new-tokens", "8", "--batch-size", "2", "--no-progress"]
    status = cli.main(argv)
    return status, out, capsys.readouterr()


@pytest.mark.slow
def test_eval_synthav_with_a_model_folder(run, tiny_model_dir):
    status, out, captured = run
    assert status == 0, captured.err

    predictions = read_records(out / "predictions.jsonl")
    assert len(predictions) == LIMIT
    expected = {f"syn-{q.qid}": q for q in QUESTIONS[:LIMIT]}
    assert {row["id"] for row in predictions} == set(expected)
    for row in predictions:
        assert isinstance(row["pred"], str) and row["pred"].strip(), row

    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "synthav"
    assert summary["counts"] == {"selected": LIMIT, "predicted": LIMIT, "unanswered": 0,
                                 "questions": len(QUESTIONS), "missing_videos": 1}
    assert summary["model"] == model_fingerprint(tiny_model_dir)
    assert summary["protocol"]["decoding"] == "greedy"
    assert summary["judge"] is None and summary["headline"]["metric"] == "choice"  # SynthAV lists choices
    # The scores are the offline metrics of exactly these predictions.
    scores = read_records(out / "scores.jsonl")
    assert sorted(r["pred"] for r in scores) == sorted(r["pred"] for r in predictions)
    assert [r["answer"] for r in sorted(scores, key=lambda r: r["id"])] == [expected[i].answer for i in sorted(expected)]
    contains = [metrics.contains_match(r["pred"], expected[r["id"]].answer) for r in predictions]
    assert [r["contains"] for r in sorted(scores, key=lambda r: r["id"])] == [
        metrics.contains_match(p["pred"], expected[p["id"]].answer) for p in sorted(predictions, key=lambda r: r["id"])]
    assert summary["offline"]["contains_pct"] == pytest.approx(100 * sum(contains) / LIMIT)
    chosen = [metrics.choice_match(r["pred"], expected[r["id"]].answer, list(eval_fixtures.COLORS)) for r in predictions]
    assert summary["offline"]["choice_pct"] == pytest.approx(100 * sum(chosen) / LIMIT)
    assert summary["headline"]["accuracy_pct"] == summary["offline"]["choice_pct"]
    assert (out / "summary.md").is_file()

    # The CLI prints the summary's scalar fields as JSON on stdout.
    printed = json.loads(captured.out[captured.out.index("{"):])
    assert printed["task"] == "synthav"
