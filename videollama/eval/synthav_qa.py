"""SynthAV held-out QA: questions about generated audio-visual clips whose truth is known.

Layout (written by ``videollama synthav generate``)::

    qa/test.json  [{"id", "video", "question", "answer", "family", "choices", "chance"}]
    <video>       path relative to the data folder (or to qa/), e.g. videos/000123.mp4

``family`` (static / temporal / audio / audio-visual) is the question type; ``choices`` are the
candidate answers and ``chance`` the accuracy of guessing, both reported next to the results.
"""

from __future__ import annotations

from pathlib import Path

from .base import DataError, MissingVideo, Task, TaskData, get_field, read_json, require_folder, unique_ids

FAMILIES = ("static", "temporal", "audio", "audio-visual")


class SynthAVQA(Task):
    name = "synthav"
    title = "SynthAV"
    qtypes = FAMILIES

    def load(self, data: Path, *, split: str = "test", video_dir: Path | None = None) -> TaskData:
        require_folder(data)
        qa_path = next((p for p in (data / "qa" / f"{split}.json", data / f"{split}.json") if p.is_file()), None)
        if qa_path is None:
            raise DataError(f"{data}: no SynthAV questions: expected qa/{split}.json")
        bases = [video_dir] if video_dir is not None else [data, qa_path.parent]
        items, missing = [], []
        for index, record in enumerate(read_json(qa_path, expect=list)):
            qid = str(get_field(record, "id", qa_path, index))
            video = str(get_field(record, "video", qa_path, index))
            question = str(get_field(record, "question", qa_path, index))
            answer = str(get_field(record, "answer", qa_path, index))
            choices = record.get("choices") or []
            chance = record.get("chance")
            if not isinstance(choices, list) or not all(isinstance(c, (str, int)) for c in choices):
                raise DataError(f"{qa_path}: record {index} field 'choices' must be a list of strings")
            if chance is not None and (not isinstance(chance, (int, float)) or not 0 <= chance <= 1):
                raise DataError(f"{qa_path}: record {index} field 'chance' must be a number in [0, 1], got {chance!r}")
            path = Path(video) if Path(video).is_absolute() else next(
                (b / video for b in bases if (b / video).is_file()), None)
            if path is None or not path.is_file():
                missing.append(MissingVideo(qid, video))
                continue
            family = record.get("family")
            items.append(self.make_item(id=qid, video_path=path, question=question, answer=answer,
                                        qtype=str(family) if family is not None else None,
                                        choices=[str(c) for c in choices],
                                        chance=float(chance) if chance is not None else None))
        unique_ids(items, missing, qa_path)
        return TaskData(self.name, "synthav", items, missing, [qa_path], [b for b in bases if b.is_dir()])
