"""The ``webdataset`` training format: tar shards read as a map-style dataset (caption mode).

Each record is ``<key>.mp4|jpg`` (or another video/image extension) + ``<key>.txt|json`` (json: the
first of ``caption``/``text``/``name``). Shards are indexed once from their tar headers, so order, DDP
slicing and resume work as for the other formats of :mod:`videollama.train.data`.
"""

from __future__ import annotations

import glob
import json
import re
import tarfile
import tempfile
from collections.abc import Sequence
from typing import Any

import torch

from .data import DatasetError, RecordError, TextOptions, TrainDataset, _one_line
from .text import blip_caption

WDS_VIDEO_EXTS = ("mp4", "avi", "mov", "mkv", "webm")
WDS_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
WDS_TEXT_KEYS = ("caption", "text", "name")
_WDS_KEY_RE = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # webdataset: key = path up to the first dot


class WebDatasetShards(TrainDataset):
    """WebDataset tar shards read as a map-style dataset (caption mode).

    The shards are indexed once (tar headers only; member data is not read), then records are
    read by seeking to their members, so order, DDP slicing and resume work as for the other
    formats. Video members are written to a temporary file for decoding. An unreadable or
    truncated shard contributes the records indexed before the damage and counts as one failure.
    """

    def __init__(self, name: str, text: TextOptions, *, shards: Sequence[str], num_frames: int = 8,
                 sampling: str = "uniform", **kwargs) -> None:
        super().__init__(name, text, **kwargs)
        self.num_frames, self.sampling = num_frames, sampling
        self.shards = _expand_shards(shards)
        if not self.shards:
            raise DatasetError(f"dataset {name!r}: no shard matches {list(shards)}")
        records: list[tuple[int, str, dict[str, tuple[int, int]]]] = []
        for shard_index, shard in enumerate(self.shards):
            try:
                records += _index_shard(shard_index, shard)
            except _ShardError as err:
                records += err.partial
                self.skipped.attempted += 1
                self.skipped.add_failure(f"shard {shard}: {err}")
        if not records:
            raise DatasetError(f"dataset {name!r}: no records in {len(self.shards)} shard(s); "
                               f"first reasons: {' | '.join(self.skipped.reasons) or 'empty shards'}")
        self.records = records

    def _describe(self, index: int) -> str:
        shard, key, _ = self.records[index]
        return f"{self.shards[shard]}:{key}"

    def _member(self, shard: int, location: tuple[int, int]) -> bytes:
        offset, size = location
        with open(self.shards[shard], "rb") as f:
            f.seek(offset)
            data = f.read(size)
        if len(data) != size:
            raise RecordError(f"member truncated ({len(data)} of {size} bytes)")
        return data

    def _load(self, index: int, generator: torch.Generator) -> dict[str, Any]:
        shard, key, members = self.records[index]
        caption = self._caption(shard, members)
        video_ext = next((e for e in WDS_VIDEO_EXTS if e in members), None)
        image_ext = next((e for e in WDS_IMAGE_EXTS if e in members), None)
        if video_ext is None and image_ext is None:
            raise RecordError(f"no media member (have {sorted(members)})")
        ext = video_ext or image_ext
        data = self._member(shard, members[ext])
        with tempfile.NamedTemporaryFile(suffix=f".{ext}") as tmp:
            tmp.write(data)
            tmp.flush()
            if video_ext:
                frames, _ = self._video(tmp.name, self.num_frames, self.sampling, generator)
            else:
                frames = self._image(tmp.name, generator)
        return self._caption_sample(blip_caption(caption), frames, generator)

    def _caption(self, shard: int, members: dict[str, tuple[int, int]]) -> str:
        if "txt" in members:
            return self._member(shard, members["txt"]).decode("utf-8").strip()
        if "json" in members:
            meta = json.loads(self._member(shard, members["json"]).decode("utf-8"))
            for key in WDS_TEXT_KEYS:
                if isinstance(meta, dict) and isinstance(meta.get(key), str):
                    return meta[key].strip()
            raise RecordError(f"json member has none of the keys {WDS_TEXT_KEYS}")
        raise RecordError(f"no txt/json member (have {sorted(members)})")


class _ShardError(Exception):
    def __init__(self, message: str, partial: list) -> None:
        super().__init__(message)
        self.partial = partial


def _expand_shards(patterns: Sequence[str]) -> list[str]:
    """Brace ranges (``{000..009}``) and globs -> sorted existing paths (missing plain paths kept)."""
    try:
        from braceexpand import braceexpand
    except ImportError:  # webdataset's dependency; without it, no brace ranges
        braceexpand = lambda pattern: [pattern]  # noqa: E731
    paths: list[str] = []
    for pattern in patterns:
        for expanded in braceexpand(pattern):
            matches = sorted(glob.glob(expanded)) if glob.has_magic(expanded) else [expanded]
            paths += matches
    return paths


def _index_shard(shard_index: int, path: str) -> list[tuple[int, str, dict[str, tuple[int, int]]]]:
    """Group a shard's members by key: [(shard, key, {ext: (data offset, size)})]."""
    grouped: dict[str, dict[str, tuple[int, int]]] = {}
    order: list[str] = []

    def records() -> list:
        return [(shard_index, key, grouped[key]) for key in order]

    try:
        with tarfile.open(path, mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                match = _WDS_KEY_RE.match(member.name)
                if match is None:
                    continue
                key, ext = match.group(1), match.group(2).lower()
                if key not in grouped:
                    grouped[key] = {}
                    order.append(key)
                grouped[key][ext] = (member.offset_data, member.size)
    except (OSError, tarfile.TarError, EOFError) as err:
        raise _ShardError(_one_line(err), records()) from None
    return records()
