"""Benchmark readers on tiny fixtures in each benchmark's real file layout (real video files)."""

from __future__ import annotations

import json

import pytest
from eval_fixtures import (CLIPS, LAYOUTS, MISSING_CLIP, N_ANSWERABLE, QUESTIONS, color_of, make_activitynet,
                           make_synthav)

from videollama.eval import DataError, get_task
from videollama.eval.activitynet_qa import QTYPES


@pytest.mark.parametrize("task,layout", list(LAYOUTS))
def test_reader_resolves_every_video_and_reports_missing(tmp_path, task, layout):
    root = LAYOUTS[(task, layout)](tmp_path / "data")
    data = get_task(task).load(root)
    assert data.layout == layout
    assert len(data.items) == N_ANSWERABLE
    assert len(data.missing) == 1 and len(data.missing) + len(data.items) == len(QUESTIONS)
    by_question = {(q.question, q.answer): q for q in QUESTIONS}
    for item in data.items:
        q = by_question[(item.question, item.answer)]
        assert item.video_path.is_file()
        # the file the reader chose really is this question's clip (decoded colour matches)
        assert color_of(item.video_path) == CLIPS[q.clip]
        assert item.prompt == item.question  # the fixed prompt: the question as is
    assert len({item.id for item in data.items}) == N_ANSWERABLE
    fp = data.fingerprint()
    assert fp["questions"] == len(QUESTIONS) and fp["missing_videos"] == 1 and len(fp["sha256"]) == 64


def test_question_types(tmp_path):
    msvd = get_task("msvd-qa").load(LAYOUTS[("msvd-qa", "xudejing")](tmp_path / "msvd"))
    assert {i.question.split()[0]: i.qtype for i in msvd.items} == {"what": "what", "who": "who", "is": "other",
                                                                    "how": "how"}
    anet = get_task("activitynet-qa").load(make_activitynet(tmp_path / "anet"))
    expected = {q.question: QTYPES[q.anet_type] for q in QUESTIONS if q.clip != MISSING_CLIP}
    assert {i.question: i.qtype for i in anet.items} == expected
    syn = get_task("synthav").load(make_synthav(tmp_path / "syn"))
    item = next(i for i in syn.items if i.answer == "red")
    assert item.qtype == "static" and item.choices == ("red", "green", "blue", "yellow") and item.chance == 0.25


def test_activitynet_official_layout_joins_answers_by_id(tmp_path):
    """dataset/test_*.json with answers in another order, videos v_<name>.mkv in videos/."""
    data = get_task("activitynet-qa").load(make_activitynet(tmp_path / "anet", official=True))
    assert len(data.items) == N_ANSWERABLE
    for item in data.items:
        q = next(q for q in QUESTIONS if q.question == item.question and q.clip != MISSING_CLIP and
                 item.id.endswith(f"_{QUESTIONS.index(q)}"))
        assert item.answer == q.answer and item.video_path.suffix == ".mkv"


def test_video_dir_override(tmp_path):
    root = make_synthav(tmp_path / "syn")
    (tmp_path / "elsewhere").mkdir()
    data = get_task("synthav").load(root, video_dir=tmp_path / "elsewhere")
    assert not data.items and len(data.missing) == len(QUESTIONS)


def test_bad_annotation_files_raise_one_clear_error(tmp_path):
    root = make_synthav(tmp_path / "syn")
    qa = root / "qa" / "test.json"
    records = json.loads(qa.read_text())

    qa.write_text('[{"id": "a",')
    with pytest.raises(DataError, match=r"test\.json: not valid JSON \(line 1"):
        get_task("synthav").load(root)

    del records[2]["question"]
    qa.write_text(json.dumps(records))
    with pytest.raises(DataError, match=r"test\.json: record 2 has no field 'question'"):
        get_task("synthav").load(root)

    records[2]["question"] = "q?"
    records[3]["id"] = records[0]["id"]
    qa.write_text(json.dumps(records))
    with pytest.raises(DataError, match="occurs more than once"):
        get_task("synthav").load(root)

    qa.write_text(json.dumps({"not": "a list"}))
    with pytest.raises(DataError, match="expected a JSON list, got dict"):
        get_task("synthav").load(root)

    with pytest.raises(DataError, match="no MSVD-QA annotations"):
        get_task("msvd-qa").load(root)
    with pytest.raises(DataError, match="data folder not found"):
        get_task("msrvtt-qa").load(tmp_path / "nope")
    with pytest.raises(ValueError, match="unknown eval task 'tgif'"):
        get_task("tgif")


def test_unanswered_question_id_is_named(tmp_path):
    root = make_activitynet(tmp_path / "anet")
    answers = json.loads((root / "test_a.json").read_text())
    missing_id = answers.pop(3)["question_id"]
    (root / "test_a.json").write_text(json.dumps(answers))
    with pytest.raises(DataError, match=f"no answer for question_id '{missing_id}'"):
        get_task("activitynet-qa").load(root)


def test_mapping_file_errors_name_the_line(tmp_path):
    root = LAYOUTS[("msvd-qa", "xudejing")](tmp_path / "msvd")
    (root / "youtube_mapping.txt").write_text("abc vid1\nbroken line here\n")
    with pytest.raises(DataError, match="youtube_mapping.txt: line 2"):
        get_task("msvd-qa").load(root)
