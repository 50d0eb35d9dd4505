"""ActivityNet-QA (Yu et al., AAAI 2019): 8,000 test questions on 800 long web videos.

The official release (github.com/MILVLG/activitynet-qa, ``dataset/``) and the Video-ChatGPT
package use the same two files, found in the data folder or its ``dataset/`` subfolder::

    test_q.json  [{"video_name", "question", "question_id"}]   video_name is the YouTube id
    test_a.json  [{"answer", "type", "question_id"}]           type 0..8, see QTYPES

Videos are ActivityNet files named ``v_<video_name>.mp4`` (or .mkv/.webm) — the Video-ChatGPT
package puts them in ``all_test/`` — and bare ``<video_name>.<ext>`` is accepted too.
"""

from __future__ import annotations

from pathlib import Path

from .base import DataError, MissingVideo, Task, TaskData, read_split_qa, require_folder, unique_ids

QTYPES = ("motion", "spatial", "temporal", "yes_no", "color", "object", "location", "number", "other")
"""The ``type`` codes 0..8: question types 0-2, then free questions typed by their answer (3-8)."""


def qtype_name(code: int | str | None) -> str | None:
    if code is None:
        return None
    text = str(code).strip()
    if text.isdigit() and int(text) < len(QTYPES):
        return QTYPES[int(text)]
    return text or None


class ActivityNetQA(Task):
    name = "activitynet-qa"
    title = "ActivityNet-QA"
    qtypes = QTYPES
    published = {"accuracy_pct": 12.4, "score": 1.1}
    default_dirs = ("all_test", "videos", "test", "v1-3/test", "v1-2/test", "v1-3/train_val", "v1-2/val")

    def load(self, data: Path, *, split: str = "test", video_dir: Path | None = None) -> TaskData:
        require_folder(data)
        root = next((d for d in (data, data / "dataset") if (d / f"{split}_q.json").is_file()), None)
        if root is None or not (root / f"{split}_a.json").is_file():
            raise DataError(f"{data}: no ActivityNet-QA annotations: expected {split}_q.json + {split}_a.json "
                            f"here or in dataset/")
        q_path, a_path = root / f"{split}_q.json", root / f"{split}_a.json"
        videos = self.video_index(data, video_dir)
        items, missing = [], []
        for rec in read_split_qa(q_path, a_path):
            name = rec.video_name
            path = videos.find([f"v_{name}", name, name[2:] if name.startswith("v_") else None])
            if path is None:
                missing.append(MissingVideo(rec.question_id, f"v_{name}"))
                continue
            items.append(self.make_item(id=rec.question_id, video_path=path, question=rec.question,
                                        answer=rec.answer, qtype=qtype_name(rec.type)))
        unique_ids(items, missing, q_path)
        return TaskData(self.name, "activitynet-qa", items, missing, [q_path, a_path], videos.searched)
