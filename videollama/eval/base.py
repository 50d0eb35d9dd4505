"""Common ground of the benchmark readers: the QA item, the task interface, and video lookup.

Each benchmark lives in its own file (``msvd_qa.py``, ``msrvtt_qa.py``, ``activitynet_qa.py``,
``synthav_qa.py``) as a :class:`Task` subclass whose :meth:`Task.load` reads the layouts that
benchmark is distributed in and returns a :class:`TaskData`: the questions whose video is on disk
as :class:`QAItem` s, and the ones whose video is not, reported and counted (never an exception).
Problems with the annotation files themselves (not JSON, a record without a question, ...) raise
:class:`DataError` with one line naming the file, the record and the problem.

    >>> from videollama.eval.tasks import get_task                       # doctest: +SKIP
    >>> data = get_task("msvd-qa").load(Path("MSVD-QA"))                  # doctest: +SKIP
    >>> data.items[0].video_path, data.items[0].question                  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..errors import VideoLlamaError
from ..hashing import file_sha256

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v")
"""Suffixes tried when a benchmark names a video without one (the Video-ChatGPT scripts try
.mp4/.avi/.mov/.mkv; ActivityNet downloads also come as .webm)."""



class DataError(VideoLlamaError, ValueError):
    """A benchmark file is missing or malformed; the message names the file and record."""


@dataclass(frozen=True)
class QAItem:
    """One open-ended question about one video.

    ``prompt`` is what the model is asked (the task's fixed template applied to ``question``);
    answerers should send ``prompt``, not ``question``.
    """

    id: str
    video_path: Path
    question: str
    answer: str
    qtype: str | None = None  # question type for per-type accuracy, None where the benchmark has none
    prompt: str = ""  # filled from the task template; defaults to the question as is
    choices: tuple[str, ...] = ()  # candidate answers where the benchmark has them (SynthAV)
    chance: float | None = None  # accuracy of guessing, where the benchmark states it (SynthAV)

    def __post_init__(self) -> None:
        if not self.prompt:
            object.__setattr__(self, "prompt", self.question)


@dataclass(frozen=True)
class MissingVideo:
    """A question dropped because none of its candidate video files exists."""

    id: str
    video: str  # the video reference as the annotation file gives it


@dataclass
class TaskData:
    """What a task's reader found: the answerable items, the missing ones, and the files read."""

    task: str
    layout: str  # which distribution layout was recognised, e.g. "xudejing" or "video-chatgpt"
    items: list[QAItem]
    missing: list[MissingVideo]
    files: list[Path]  # annotation files read, hashed for the data fingerprint
    video_dirs: list[Path] = field(default_factory=list)  # folders searched for videos

    def fingerprint(self) -> dict[str, Any]:
        """sha256 of each annotation file, one combined digest, and the item counts."""
        digests = {path.name: file_sha256(path) for path in self.files}
        combined = hashlib.sha256(json.dumps(sorted(digests.items())).encode()).hexdigest()
        return {"sha256": combined, "files": digests, "layout": self.layout,
                "questions": len(self.items) + len(self.missing), "missing_videos": len(self.missing)}


class Task:
    """A benchmark: its name, the fixed prompt, its question types and its reader."""

    name: ClassVar[str]
    title: ClassVar[str]
    prompt_template: ClassVar[str] = "{question}"
    """The fixed prompt. All benchmarks ask the question as is (the Video-ChatGPT protocol)."""
    qtypes: ClassVar[tuple[str, ...]] = ()
    """Known question types in display order (others found in the data are appended)."""
    published: ClassVar[dict[str, float] | None] = None
    """Video-LLaMA's published zero-shot numbers (Video-ChatGPT paper, GPT-3.5 judge)."""
    default_dirs: ClassVar[tuple[str, ...]] = ()
    """Video folders tried under the data folder, in order (the data folder itself is tried last)."""

    def load(self, data: Path, *, split: str = "test", video_dir: Path | None = None) -> TaskData:
        raise NotImplementedError

    def prompt(self, question: str) -> str:
        return self.prompt_template.format(question=question)

    # ---------------------------------------------------------------- helpers for subclasses
    def video_index(self, data: Path, video_dir: Path | None) -> VideoIndex:
        dirs = [video_dir] if video_dir is not None else [data / d for d in self.default_dirs] + [data]
        return VideoIndex(dirs)

    def make_item(self, *, id: str, video_path: Path, question: str, answer: str, qtype: str | None = None,
                  choices: Sequence[str] = (), chance: float | None = None) -> QAItem:
        return QAItem(id=id, video_path=video_path, question=question, answer=answer, qtype=qtype,
                      prompt=self.prompt(question), choices=tuple(choices), chance=chance)


class VideoIndex:
    """Finds a video by name (without suffix) in a list of folders, scanning each folder once."""

    def __init__(self, dirs: Iterable[Path]):
        self.dirs = [Path(d) for d in dirs]
        self._by_stem: dict[str, Path] = {}
        for folder in self.dirs:
            if not folder.is_dir():
                continue
            with os.scandir(folder) as entries:
                for entry in sorted(entries, key=lambda e: e.name):
                    stem, suffix = os.path.splitext(entry.name)
                    if suffix.lower() in VIDEO_EXTENSIONS and entry.is_file():
                        self._by_stem.setdefault(stem, Path(entry.path))

    @property
    def searched(self) -> list[Path]:
        return [d for d in self.dirs if d.is_dir()]

    def __len__(self) -> int:
        return len(self._by_stem)

    def find(self, names: Iterable[str | None]) -> Path | None:
        """The first existing video among candidate names (each with or without a suffix)."""
        for name in names:
            if not name:
                continue
            stem, suffix = os.path.splitext(name)
            if suffix.lower() in VIDEO_EXTENSIONS and stem in self._by_stem:
                return self._by_stem[stem]
            if name in self._by_stem:
                return self._by_stem[name]
        return None


# --------------------------------------------------------------------------- file reading
def read_json(path: Path, *, expect: type = list) -> Any:
    """Parse a JSON file, raising :class:`DataError` naming the file on any problem."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with path.open(encoding="utf-8") as f:
            value = json.load(f)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})") from None
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    if not isinstance(value, expect):
        raise DataError(f"{path}: expected a JSON {expect.__name__}, got {type(value).__name__}")
    return value


def get_field(record: Any, key: str, path: Path, index: int, *, kind: type | tuple[type, ...] = (str, int)) -> Any:
    """``record[key]``, or :class:`DataError` naming the file, record number and missing field."""
    if not isinstance(record, dict):
        raise DataError(f"{path}: record {index} is a {type(record).__name__}, expected an object")
    if key not in record or record[key] is None:
        raise DataError(f"{path}: record {index} has no field {key!r} (fields: {', '.join(sorted(record))})")
    value = record[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DataError(f"{path}: record {index} field {key!r} is {type(value).__name__}: {value!r}")
    return value


def first_existing(data: Path, names: Sequence[str]) -> Path | None:
    for name in names:
        if (data / name).is_file():
            return data / name
    return None


def require_folder(data: Path) -> None:
    if not data.is_dir():
        raise DataError(f"{data}: data folder not found")


def unique_ids(items: list[QAItem], missing: list[MissingVideo], source: Path) -> None:
    """Resumption keys on ids, so they must be unique: a repeated id is an error in the file."""
    seen: set[str] = set()
    for item_id in [it.id for it in items] + [m.id for m in missing]:
        if item_id in seen:
            raise DataError(f"{source}: question id {item_id!r} occurs more than once")
        seen.add(item_id)



def question_word_type(question: str, words: Sequence[str]) -> str:
    """MSVD-QA/MSRVTT-QA type a question by its first word (what/who/how/when/where)."""
    first = question.strip().split(maxsplit=1)[0].lower() if question.strip() else ""
    return first if first in words else "other"


@dataclass(frozen=True)
class SplitRecord:
    """One question of a ``*_q.json`` + ``*_a.json`` pair (ActivityNet-QA, Video-ChatGPT packages)."""

    question_id: str
    video_name: str
    question: str
    answer: str
    type: int | str | None


def read_split_qa(q_path: Path, a_path: Path) -> list[SplitRecord]:
    """Join ``[{question, question_id, video_name}]`` with ``[{answer, question_id, type}]``.

    The join is by ``question_id``; answer files without ids are joined by position (as the
    Video-ChatGPT scripts do), which requires both files to have the same length.
    """
    questions = read_json(q_path, expect=list)
    answers = read_json(a_path, expect=list)
    by_id: dict[str, dict] = {}
    positional = bool(answers) and all(isinstance(a, dict) and "question_id" not in a for a in answers)
    if positional and len(answers) != len(questions):
        raise DataError(f"{a_path}: {len(answers)} answers without question ids for {len(questions)} questions "
                        f"in {q_path.name}; cannot join them")
    if not positional:
        for index, record in enumerate(answers):
            by_id[str(get_field(record, "question_id", a_path, index))] = record
    out = []
    for index, record in enumerate(questions):
        qid = str(get_field(record, "question_id", q_path, index))
        video = str(get_field(record, "video_name", q_path, index))
        question = str(get_field(record, "question", q_path, index))
        answer_record = answers[index] if positional else by_id.get(qid)
        if answer_record is None:
            raise DataError(f"{a_path}: no answer for question_id {qid!r} (record {index} of {q_path.name})")
        answer = str(get_field(answer_record, "answer", a_path, index))
        qtype = answer_record.get("type") if isinstance(answer_record, dict) else None
        out.append(SplitRecord(qid, video, question, answer, qtype))
    return out


def read_mapping(path: Path) -> dict[str, str]:
    """MSVD-QA ``youtube_mapping.txt``: lines ``<youtube_clip_name> vid<N>`` -> {"<N>": name}."""
    mapping: dict[str, str] = {}
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or not parts[1].startswith("vid") or not parts[1][3:].isdigit():
                raise DataError(f"{path}: line {lineno}: expected '<youtube_name> vid<N>', got {line.strip()!r}")
            mapping[parts[1][3:]] = parts[0]
    return mapping
