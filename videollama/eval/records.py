"""Append-only JSONL files that survive being killed mid-write.

Predictions and judge-cache entries are appended one JSON object per line and flushed (and
fsynced) after each batch, so a killed run loses at most the batch in flight. A run killed in the
middle of a write leaves a partial last line; :func:`repair` cuts it off before appending again,
and :func:`read_records` skips it (with a warning) when reading a file someone else is writing.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def read_records(path: Path) -> list[dict[str, Any]]:
    """All complete JSON-object lines of ``path`` ([] if absent); bad lines are skipped with a warning."""
    if not path.is_file():
        return []
    out: list[dict[str, Any]] = []
    with path.open("rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    for lineno, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            last = lineno == len(lines)  # no newline after it: a write that was cut off
            log.warning("%s: line %d is %s; ignoring it", path, lineno,
                        "an unfinished write" if last else "not valid JSON")
            continue
        if isinstance(record, dict):
            out.append(record)
        else:
            log.warning("%s: line %d is not a JSON object; ignoring it", path, lineno)
    return out


def repair(path: Path) -> int:
    """Cut a trailing partial line (a write interrupted by a crash). Returns the bytes removed."""
    if not path.is_file():
        return 0
    with path.open("rb+") as f:
        data = f.read()
        if not data or data.endswith(b"\n"):
            return 0
        keep = data.rfind(b"\n") + 1  # 0 when the only line is partial
        tail = data[keep:]
        try:
            json.loads(tail)
            f.write(b"\n")  # a complete record that only lacks its newline: keep it
            return 0
        except (json.JSONDecodeError, UnicodeDecodeError):
            f.truncate(keep)
    log.warning("%s: removed an unfinished last line (%d bytes) left by an interrupted run", path, len(tail))
    return len(tail)


class JsonlWriter:
    """Thread-safe appender: ``write(records)`` appends, flushes and fsyncs."""

    def __init__(self, path: Path, *, fsync: bool = True):
        self.path = path
        self.fsync = fsync
        path.parent.mkdir(parents=True, exist_ok=True)
        repair(path)
        self._file = path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def write(self, records: Iterable[dict[str, Any]]) -> None:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        if not text:
            return
        with self._lock:
            self._file.write(text)
            self._file.flush()
            if self.fsync:
                os.fsync(self._file.fileno())

    def close(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_atomic(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Replace ``path`` with ``records`` in one rename (never a half-written file)."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
