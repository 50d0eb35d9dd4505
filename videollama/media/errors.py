"""Exceptions raised by the media pipeline.

Every problem with an input file (missing, empty, truncated, not media, no video or audio
stream, over a size/duration limit, bad sampling arguments for that file) becomes a
:class:`MediaError` whose message is one line: ``"<path>: <problem>"``. Callers (CLI, server,
dataset loaders) can therefore catch one type, print ``str(err)`` and move on, and a
long-running job never dies on one bad file.

``MediaError`` subclasses ``ValueError`` so generic ``except ValueError`` handlers still work.
``NoAudioError`` lets the chat layer fall back to a video-only answer, as the official demo does
when its audio loader fails.
"""

from __future__ import annotations

import os
import stat

from ..errors import VideoLlamaError

__all__ = ["MediaError", "NoAudioError", "NoVideoError", "check_media_file"]


class MediaError(VideoLlamaError, ValueError):
    """A media file cannot be used. ``str(err)`` is ``"<path>: <problem>"`` on one line."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = os.fspath(path)
        # FFmpeg messages sometimes carry newlines; keep the message to one line.
        self.problem = " ".join(str(problem).split())
        super().__init__(f"{self.path}: {self.problem}")

    def __reduce__(self):  # keep the two-argument constructor picklable (DataLoader workers)
        return (type(self), (self.path, self.problem))


class NoAudioError(MediaError):
    """The media has no (usable) audio stream."""


class NoVideoError(MediaError):
    """Video frames were requested but the file has no video stream (e.g. an audio-only file)."""


def check_media_file(path: str | os.PathLike[str], max_bytes: int | None = None) -> int:
    """The checks every reader makes before decoding; returns the size in bytes.

    Raises :class:`MediaError` for a missing path, a directory or other non-regular file, an empty
    file, or one over ``max_bytes``.
    """
    if not os.path.exists(path):
        raise MediaError(path, "no such file")
    if os.path.isdir(path):
        raise MediaError(path, "is a directory, not a media file")
    if not os.path.isfile(path):
        raise MediaError(path, f"is not a regular file ({_special_kind(path)})")
    size = os.path.getsize(path)
    if size == 0:
        raise MediaError(path, "empty file (0 bytes)")
    if max_bytes is not None and size > max_bytes:
        raise MediaError(path, f"file is {size} bytes, over the limit of {max_bytes} bytes")
    return size


_SPECIAL_KINDS = ((stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
                  (stat.S_ISBLK, "block device"))


def _special_kind(path: str | os.PathLike[str]) -> str:
    """What a path that is neither a regular file nor a directory is, in words (never opened: a FIFO would block)."""
    mode = os.stat(path).st_mode
    return next((name for test, name in _SPECIAL_KINDS if test(mode)), "special file")
