"""What a weight conversion found: the report every converter returns, and the error it raises.

Conversions are driven by explicit key tables (official name -> our name). Every key of the source
ends up in exactly one place: converted, ``ignored`` (known and deliberately skipped, e.g. ImageBind's
text trunk), or ``unexpected`` (no table knows it). Every key a table expects but the source lacks is
``missing``; a key found with the wrong shape is a ``shape_mismatch``. A conversion is ``ok()`` only
when the last three lists are empty; otherwise ``check()`` raises :class:`ConversionError` whose
message is the readable report. ``check(allow_missing=True)`` tolerates missing keys only (the
``--allow-missing`` switch), never unknown or wrongly shaped ones. Nothing is ever dropped silently.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ..errors import VideoLlamaError

# How many keys of each kind the text report lists before summarising the rest.
MAX_LISTED = 40
# Ignored keys are summarised by their first dotted components ("modality_trunks.text").
IGNORED_GROUP_DEPTH = 2


class ConversionError(VideoLlamaError, ValueError):
    """A checkpoint does not match the key table; the message is the full, readable report."""

    def __init__(self, message: str, report: "ConversionReport | None" = None) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class ConversionReport:
    """Outcome of mapping a source state dict onto ours (see the module docstring)."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # (key, found, expected)
    ignored: list[str] = field(default_factory=list)
    source: str = "checkpoint"  # a file name or a description, used in the text
    converted: int = 0  # number of tensors converted
    notes: list[str] = field(default_factory=list)  # hints, e.g. "is this the right file?"

    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.shape_mismatch)

    def format(self, limit: int = MAX_LISTED) -> str:
        """A multi-line, human-readable report (keys listed up to ``limit`` per kind)."""
        status = "OK" if self.ok() else "FAILED"
        lines = [
            f"conversion of {self.source}: {status} ({self.converted} tensors converted, "
            f"{len(self.missing)} missing, {len(self.unexpected)} unexpected, "
            f"{len(self.shape_mismatch)} wrongly shaped, {len(self.ignored)} ignored)"
        ]
        lines += _listing("missing (expected but not in the source)", self.missing, limit)
        lines += _listing("unexpected (in the source, in no key table)", self.unexpected, limit)
        lines += _listing(
            "wrong shape (key: found -> expected)",
            [f"{key}: {tuple(found)} -> {tuple(expected)}" for key, found, expected in self.shape_mismatch],
            limit,
        )
        if self.ignored:
            groups = Counter(".".join(key.split(".")[:IGNORED_GROUP_DEPTH]) for key in self.ignored)
            lines.append(f"  ignored on purpose ({len(self.ignored)} keys):")
            lines += [f"    {group}.*: {count}" for group, count in sorted(groups.items())]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)

    def check(self, *, allow_missing: bool = False) -> None:
        """Raise :class:`ConversionError` unless ok (missing keys tolerated with ``allow_missing``)."""
        failed = self.unexpected or self.shape_mismatch or (self.missing and not allow_missing)
        if failed:
            raise ConversionError(self.format(), self)

    def __str__(self) -> str:
        return self.format()


def _listing(title: str, items: list[str], limit: int) -> list[str]:
    if not items:
        return []
    lines = [f"  {title}: {len(items)}"]
    lines += [f"    {item}" for item in items[:limit]]
    if len(items) > limit:
        lines.append(f"    ... and {len(items) - limit} more")
    return lines
