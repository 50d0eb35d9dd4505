"""MSVD-QA (Xu et al., ACM MM 2017): 13,157 test questions on 520 clips of the MSVD corpus.

Two layouts are read, picked by which files exist under the data folder:

* ``xudejing`` (the authors' release, data.mendeley.com/datasets/h5j7cpwnvn)::

      test_qa.json         [{"answer", "id", "question", "video_id"}]   video_id is N of vid<N>
      youtube_mapping.txt  "<youtube_clip_name> vid<N>" per line
      video/  or  videos/  or  YouTubeClips/   vid<N>.avi  or  <youtube_clip_name>.avi

* ``video-chatgpt`` (the package the Video-ChatGPT / Video-LLaVA evaluations use)::

      test_q.json  [{"video_name", "question_id", "question"}]
      test_a.json  [{"answer", "question_id", ...}]
      videos/      <video_name>.avi   (YouTube clip names, e.g. -4wsuPCjDBc_5_15.avi)

Question type = the question's first word (what/who/how/when/where), as the benchmark reports.
"""

from __future__ import annotations

from pathlib import Path

from .base import (DataError, MissingVideo, Task, TaskData, first_existing, get_field, question_word_type,
                   read_json, read_mapping, read_split_qa, require_folder, unique_ids)

QUESTION_WORDS = ("what", "who", "how", "when", "where")
MAPPING_FILE = "youtube_mapping.txt"


class MSVDQA(Task):
    name = "msvd-qa"
    title = "MSVD-QA"
    qtypes = (*QUESTION_WORDS, "other")
    published = {"accuracy_pct": 51.6, "score": 2.5}
    default_dirs = ("video", "videos", "YouTubeClips", "youtube_clips")

    def load(self, data: Path, *, split: str = "test", video_dir: Path | None = None) -> TaskData:
        require_folder(data)
        videos = self.video_index(data, video_dir)
        mapping_path = first_existing(data, [MAPPING_FILE])
        mapping = read_mapping(mapping_path) if mapping_path else {}
        items, missing, files = [], [], []

        if (qa_path := data / f"{split}_qa.json").is_file():
            layout, files = "xudejing", [qa_path]
            for index, record in enumerate(read_json(qa_path, expect=list)):
                qid = str(get_field(record, "id", qa_path, index))
                vid = str(get_field(record, "video_id", qa_path, index))
                question = str(get_field(record, "question", qa_path, index))
                answer = str(get_field(record, "answer", qa_path, index))
                path = videos.find([f"vid{vid}", mapping.get(vid)])
                if path is None:
                    missing.append(MissingVideo(qid, f"vid{vid}" + (f" ({mapping[vid]})" if vid in mapping else "")))
                    continue
                items.append(self.make_item(id=qid, video_path=path, question=question, answer=answer,
                                            qtype=question_word_type(question, QUESTION_WORDS)))
        elif (q_path := data / f"{split}_q.json").is_file() and (a_path := data / f"{split}_a.json").is_file():
            layout, files = "video-chatgpt", [q_path, a_path]
            by_name = {name: f"vid{n}" for n, name in mapping.items()}
            for rec in read_split_qa(q_path, a_path):
                vid = rec.video_name[3:] if rec.video_name.startswith("vid") else None
                path = videos.find([rec.video_name, mapping.get(vid or ""), by_name.get(rec.video_name)])
                if path is None:
                    missing.append(MissingVideo(rec.question_id, rec.video_name))
                    continue
                items.append(self.make_item(id=rec.question_id, video_path=path, question=rec.question,
                                            answer=rec.answer, qtype=question_word_type(rec.question, QUESTION_WORDS)))
        else:
            raise DataError(f"{data}: no MSVD-QA annotations: expected {split}_qa.json (+ {MAPPING_FILE}) "
                            f"or {split}_q.json + {split}_a.json")
        unique_ids(items, missing, files[0])
        return TaskData(self.name, layout, items, missing, files + ([mapping_path] if mapping_path else []),
                        videos.searched)
