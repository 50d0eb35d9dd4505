"""Audio-text training data for the audio branch: real audio through ImageBind's audio encoder.

The paper trains the audio branch on visual data only (frames through ImageBind's vision encoder).
These readers feed it real sound instead: each sample carries the clip's features exactly as
inference computes them (:func:`videollama.media.load_audio`: 8 windows x 2 s, 128-bin fbank,
``(8, 1, 128, 204)``), under the sample key ``audio``; :func:`videollama.train.text.collate` batches
them as ``audio_values`` for :meth:`VideoLlama.forward`. Captions are used as written (whitespace
collapsed), like ``cc_sbu_align``.

=================  ================================================================================
``audiocaps``       CSV ``audiocap_id,youtube_id,start_time,caption`` (``annotations``) + a folder of
                    clips (``media_root``). A row's clip is the first of these file stems that exists:
                    ``{audiocap_id}``, ``{youtube_id}_{start_time}`` (the cell as written, and as an
                    integer when it is a whole number: ``30.0`` -> ``30``), ``Y{youtube_id}``,
                    ``{youtube_id}``. Caption mode.
``clotho``          CSV ``file_name,caption_1..caption_5`` + the folder holding ``file_name``.
                    ``captions: each`` (default): every caption is a record (5 per clip);
                    ``captions: sample``: one record per clip, one of its non-empty captions drawn per
                    draw with the sample's seed (a new draw every epoch). Caption mode.
``wavcaps``         JSON ``{"data": [{"id", "caption", ...}]}`` + audio folder; the file is ``id`` with
                    an audio extension (an extension already in ``id``, as AudioSet-SL's
                    ``"Y...wav"``, is replaced: the JSON says ``.wav``, the release ships ``.flac``).
                    Caption mode.
``audio_instruct``  JSON list, LLaVA shape ``{"audio", "conversations": [{"from", "value"}]}`` or
                    VideoChat shape ``{"audio", "QA": [{"q", "a"}]}``; the file is
                    ``media_root/{audio}``. The first human message opens with the official audio
                    message (``templates.AUDIO_SENTENCE`` with N ``<AudioHere>``, joined with one
                    space as the demo's ``ask()``); an ``<audio>`` tag in it is removed. Conversation
                    mode.
=================  ================================================================================

Clip folders are indexed once (top level only, not recursive): a file stem maps to its file, and
when several files share a stem the extension order of :data:`AUDIO_EXTENSIONS` decides.

Bad records (missing file, empty caption, malformed row, undecodable or silent-length audio) are
skipped and counted like every other reader's (:class:`~videollama.train.data.TrainDataset`).
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from videollama.templates import AUDIO_SENTENCE, join_question
from videollama.tokenizer import AUDIO_PLACEHOLDER

from .data import (
    DatasetError,
    RecordError,
    TextOptions,
    TrainDataset,
    _one_line,
    _read_json,
    _read_json_list,
    _require,
    one_exchange,
)
from .text import AUDIO_SAMPLE_KEY, Turn

__all__ = [
    "AUDIO_EXTENSIONS",
    "AUDIO_TAG",
    "AudioFolder",
    "AudioTrainDataset",
    "AudioCapsDataset",
    "ClothoDataset",
    "WavCapsDataset",
    "AudioInstructDataset",
    "AUDIO_DATASET_CLASSES",
    "audio_message",
]

# Extensions a clip folder is indexed by, in order of preference when several files share a stem.
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".m4a", ".opus")
AUDIO_TAG = "<audio>"  # LLaVA-style media tag an instruction record may carry in its first message
AUDIOCAPS_COLUMNS = ("audiocap_id", "youtube_id", "start_time", "caption")
CLOTHO_FILE_COLUMN = "file_name"
_CLOTHO_CAPTION_COLUMN = re.compile(r"^caption_\d+$")
AUDIOSET_PREFIX = "Y"  # AudioSet / AudioCaps downloads often name clips Y{youtube_id}
_SPACES = re.compile(r"\s+")


def audio_message(num_tokens: int) -> str:
    """The official audio message with ``num_tokens`` placeholders (inference expands its one marker)."""
    return AUDIO_SENTENCE.replace(AUDIO_PLACEHOLDER, AUDIO_PLACEHOLDER * num_tokens)


def _clean_caption(text: str) -> str:
    return _SPACES.sub(" ", text).strip()


class AudioFolder:
    """A folder of clips indexed by file stem (top level only), for O(1) lookups per record."""

    def __init__(self, root: str | os.PathLike[str], dataset: str) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"dataset {dataset!r}: audio folder {self.root} does not exist")
        rank = {ext: i for i, ext in enumerate(AUDIO_EXTENSIONS)}
        best: dict[str, tuple[int, str]] = {}
        with os.scandir(self.root) as entries:
            for entry in entries:
                stem, ext = os.path.splitext(entry.name)
                order = rank.get(ext.lower())
                if order is not None and entry.is_file() and (stem not in best or order < best[stem][0]):
                    best[stem] = (order, entry.name)
        self._files = {stem: name for stem, (_, name) in best.items()}

    def __len__(self) -> int:
        return len(self._files)

    def find(self, stems: Sequence[str]) -> Path:
        """The file of the first stem that exists; RecordError naming the stems tried otherwise."""
        for stem in stems:
            if stem in self._files:
                return self.root / self._files[stem]
        tried = ", ".join(f"{s}.*" for s in stems)
        raise RecordError(f"no audio file {tried} in {self.root}")


class AudioTrainDataset(TrainDataset):
    """Base of the audio readers: samples carry ``audio`` (8, 1, 128, 204) instead of ``frames``."""

    media_field = AUDIO_SAMPLE_KEY

    def _audio(self, path: str | os.PathLike[str]) -> torch.Tensor:
        """Inference's audio features of a file (problems raise MediaError / NoAudioError)."""
        from videollama.media.audio import load_audio

        return load_audio(path)


def _read_csv(path: Path, dataset: str, required: Sequence[str]) -> tuple[list[str], list[dict[str, Any]]]:
    """Header and rows of a CSV (rows keep ``None`` for missing cells and a ``None`` key for extra ones)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            missing = [c for c in required if c not in header]
            if missing:
                raise DatasetError(f"dataset {dataset!r}: {path} lacks the column(s) {missing} (has {header})")
            return header, list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DatasetError(f"dataset {dataset!r}: cannot read {path} ({_one_line(err)})") from None


def _check_row(row: dict[str, Any], columns: Sequence[str]) -> None:
    if None in row:
        raise RecordError(f"malformed row: {len(row[None])} cell(s) more than the header")
    short = [c for c in columns if row.get(c) is None]
    if short:
        raise RecordError(f"malformed row: no cell for {short}")


# ---------------------------------------------------------------------------------------------- formats
class AudioCapsDataset(AudioTrainDataset):
    """AudioCaps CSV + clip folder (caption mode); see the module docstring for the file names tried."""

    def __init__(self, name: str, text: TextOptions, *, annotations: str, media_root: str, **kwargs) -> None:
        super().__init__(name, text, **kwargs)
        _, self.records = _read_csv(Path(annotations), name, AUDIOCAPS_COLUMNS)
        self.folder = AudioFolder(media_root, name)

    def _describe(self, index: int) -> str:
        row = self.records[index]
        return f"audiocap_id {row.get('audiocap_id')}, youtube_id {row.get('youtube_id')}"

    @staticmethod
    def stems(audiocap_id: str, youtube_id: str, start_time: str) -> list[str]:
        """File stems a clip may be stored under, in the order they are tried."""
        starts = [start_time]
        try:
            seconds = float(start_time)
        except ValueError:
            seconds = None
        if seconds is not None and seconds.is_integer() and str(int(seconds)) != start_time:
            starts.append(str(int(seconds)))
        return [audiocap_id] + [f"{youtube_id}_{s}" for s in starts] + [f"{AUDIOSET_PREFIX}{youtube_id}", youtube_id]

    def _load(self, index: int, generator: torch.Generator) -> dict[str, Any]:
        row = self.records[index]
        _check_row(row, AUDIOCAPS_COLUMNS)
        audiocap_id, youtube_id, start = (row[c].strip() for c in AUDIOCAPS_COLUMNS[:3])
        if not youtube_id and not audiocap_id:
            raise RecordError("empty audiocap_id and youtube_id")
        caption = _clean_caption(row["caption"])
        if not caption:
            raise RecordError("empty caption")
        audio = self._audio(self.folder.find([s for s in self.stems(audiocap_id, youtube_id, start) if s]))
        return self._caption_sample(caption, audio, generator)


class ClothoDataset(AudioTrainDataset):
    """Clotho CSV (``file_name,caption_1..caption_5``) + audio folder (caption mode)."""

    def __init__(self, name: str, text: TextOptions, *, annotations: str, media_root: str,
                 captions: Literal["each", "sample"] = "each", **kwargs) -> None:
        super().__init__(name, text, **kwargs)
        header, rows = _read_csv(Path(annotations), name, (CLOTHO_FILE_COLUMN,))
        self.caption_columns = [c for c in header if _CLOTHO_CAPTION_COLUMN.match(c)]
        if not self.caption_columns:
            raise DatasetError(f"dataset {name!r}: {annotations} has no caption_N column (has {header})")
        self.media_root = Path(media_root)
        if not self.media_root.is_dir():
            raise DatasetError(f"dataset {name!r}: audio folder {self.media_root} does not exist")
        self.captions = captions
        if captions == "each":  # (row, caption column) pairs
            self.records = [(row, column) for row in rows for column in self.caption_columns]
        elif captions == "sample":
            self.records = [(row, None) for row in rows]
        else:
            raise DatasetError(f"dataset {name!r}: captions must be 'each' or 'sample', got {captions!r}")

    def _describe(self, index: int) -> str:
        row, column = self.records[index]
        return f"{row.get(CLOTHO_FILE_COLUMN)}" + (f" {column}" if column else "")

    def _load(self, index: int, generator: torch.Generator) -> dict[str, Any]:
        row, column = self.records[index]
        _check_row(row, [CLOTHO_FILE_COLUMN] + self.caption_columns)
        file_name = row[CLOTHO_FILE_COLUMN].strip()
        if not file_name:
            raise RecordError("empty file_name")
        if column is not None:
            caption = _clean_caption(row[column])
            if not caption:
                raise RecordError(f"empty {column}")
        else:
            choices = [c for c in (_clean_caption(row[col]) for col in self.caption_columns) if c]
            if not choices:
                raise RecordError("every caption cell is empty")
            caption = choices[int(torch.randint(len(choices), (1,), generator=generator))]
        audio = self._audio(self.media_root / file_name)
        return self._caption_sample(caption, audio, generator)


class WavCapsDataset(AudioTrainDataset):
    """WavCaps JSON (``{"data": [{"id", "caption", ...}]}``) + audio folder (caption mode)."""

    def __init__(self, name: str, text: TextOptions, *, annotations: str, media_root: str, **kwargs) -> None:
        super().__init__(name, text, **kwargs)
        data = _read_json(Path(annotations), name)
        if not isinstance(data, dict) or not isinstance(data.get("data"), list):
            raise DatasetError(f"dataset {name!r}: {annotations} has no 'data' list")
        self.records = data["data"]
        self.folder = AudioFolder(media_root, name)

    def _describe(self, index: int) -> str:
        record = self.records[index]
        return f"id {record.get('id')}" if isinstance(record, dict) else super()._describe(index)

    def _load(self, index: int, generator: torch.Generator) -> dict[str, Any]:
        record = self.records[index]
        clip_id = str(_require(record, "id", (str, int))).strip()
        caption = _clean_caption(_require(record, "caption"))
        if not clip_id:
            raise RecordError("empty id")
        if not caption:
            raise RecordError("empty caption")
        stem, ext = os.path.splitext(clip_id)
        audio = self._audio(self.folder.find([stem if ext.lower() in AUDIO_EXTENSIONS else clip_id]))
        return self._caption_sample(caption, audio, generator)


class AudioInstructDataset(AudioTrainDataset):
    """Audio instruction chats: LLaVA ``conversations`` or VideoChat ``QA`` records with an ``audio`` file."""

    def __init__(self, name: str, text: TextOptions, *, annotations: str, media_root: str, turns: str = "all",
                 **kwargs) -> None:
        super().__init__(name, text, **kwargs)
        self.records = _read_json_list(Path(annotations), name)
        self.media_root = Path(media_root)
        self.message = audio_message(text.num_media_tokens)
        self.one_turn = turns == "one"  # DatasetSpec.turns: one question-answer pair per draw

    def _describe(self, index: int) -> str:
        record = self.records[index]
        return str(record.get("audio")) if isinstance(record, dict) else super()._describe(index)

    def turns(self, record: Any, pick: torch.Generator | None = None) -> list[Turn]:
        """The record's messages, the audio message opening the first human one (as the demo asks);
        with ``pick``, one question-answer pair of them drawn with it (:func:`~.data.one_exchange`)."""
        if isinstance(record, dict) and "conversations" in record:
            turns = [Turn(_require(m, "from"), _require(m, "value")) for m in _require(record, "conversations", list)]
        elif isinstance(record, dict) and "QA" in record:
            turns = []
            for item in _require(record, "QA", list):
                turns += [Turn("human", _require(item, "q")), Turn("gpt", _require(item, "a"))]
        else:
            raise RecordError("record has neither 'conversations' (LLaVA) nor 'QA' (VideoChat)")
        first = next((i for i, t in enumerate(turns) if t.role == "human"), None)
        if first is None:
            raise RecordError("no human message")
        if any(AUDIO_TAG in t.text for i, t in enumerate(turns) if i != first):
            raise RecordError(f"{AUDIO_TAG} outside the first human message (one audio per conversation)")
        question = turns[first].text.replace(AUDIO_TAG, "").strip()
        if not question:
            raise RecordError("the first human message has no text besides the audio tag")
        turns[first] = Turn("human", question)
        if pick is not None:
            turns, first = one_exchange(turns, pick), 0
        turns[first] = Turn("human", join_question(self.message, turns[first].text))
        return turns

    def _load(self, index: int, generator: torch.Generator) -> dict[str, Any]:
        record = self.records[index]
        path = _require(record, "audio")
        turns = self.turns(record, generator if self.one_turn else None)
        return self._conversation_sample(turns, self._audio(self.media_root / path))


AUDIO_DATASET_CLASSES: dict[str, type[AudioTrainDataset]] = {
    "audiocaps": AudioCapsDataset,
    "clotho": ClothoDataset,
    "wavcaps": WavCapsDataset,
    "audio_instruct": AudioInstructDataset,
}
