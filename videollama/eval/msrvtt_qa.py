"""MSRVTT-QA (Xu et al., ACM MM 2017): 72,821 test questions on 2,990 clips of MSR-VTT.

Two layouts are read, picked by which files exist under the data folder:

* ``xudejing`` (the authors' release, data.mendeley.com/datasets/bvxhs33bw6)::

      test_qa.json   [{"answer", "category_id", "id", "question", "video_id"}]  video_id is N of video<N>
      video/  or  videos/all/  or  TestVideo/  ...   video<N>.mp4

* ``video-chatgpt`` (the package the Video-ChatGPT / Video-LLaVA evaluations use)::

      test_q.json  [{"video_name", "question_id", "question"}]   video_name is video<N>
      test_a.json  [{"answer", "question_id", ...}]
      videos/all/  video<N>.mp4

Question type = the question's first word (what/who/how/when/where), as the benchmark reports.
"""

from __future__ import annotations

from pathlib import Path

from .base import (DataError, MissingVideo, Task, TaskData, get_field, question_word_type, read_json,
                   read_split_qa, require_folder, unique_ids)
from .msvd_qa import QUESTION_WORDS


class MSRVTTQA(Task):
    name = "msrvtt-qa"
    title = "MSRVTT-QA"
    qtypes = (*QUESTION_WORDS, "other")
    published = {"accuracy_pct": 29.6, "score": 1.8}
    default_dirs = ("video", "videos/all", "videos", "TestVideo", "test_videos", "TrainValVideo", "all")

    def load(self, data: Path, *, split: str = "test", video_dir: Path | None = None) -> TaskData:
        require_folder(data)
        videos = self.video_index(data, video_dir)
        items, missing = [], []
        if (qa_path := data / f"{split}_qa.json").is_file():
            layout, files = "xudejing", [qa_path]
            records = []
            for index, record in enumerate(read_json(qa_path, expect=list)):
                vid = str(get_field(record, "video_id", qa_path, index))
                records.append((str(get_field(record, "id", qa_path, index)),
                                vid if vid.startswith("video") else f"video{vid}",
                                str(get_field(record, "question", qa_path, index)),
                                str(get_field(record, "answer", qa_path, index))))
        elif (q_path := data / f"{split}_q.json").is_file() and (a_path := data / f"{split}_a.json").is_file():
            layout, files = "video-chatgpt", [q_path, a_path]
            records = [(r.question_id, r.video_name, r.question, r.answer) for r in read_split_qa(q_path, a_path)]
        else:
            raise DataError(f"{data}: no MSRVTT-QA annotations: expected {split}_qa.json or "
                            f"{split}_q.json + {split}_a.json")
        for qid, video, question, answer in records:
            path = videos.find([video])
            if path is None:
                missing.append(MissingVideo(qid, video))
                continue
            items.append(self.make_item(id=qid, video_path=path, question=question, answer=answer,
                                        qtype=question_word_type(question, QUESTION_WORDS)))
        unique_ids(items, missing, files[0])
        return TaskData(self.name, layout, items, missing, files, videos.searched)
