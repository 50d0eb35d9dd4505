"""SHA-256 of a file, read in chunks: the model card's source hashes and the evaluation's data fingerprints."""

from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK_BYTES = 8 * 2**20


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of the file at ``path``."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()
