"""Atomic file writes: a reader sees the old file or the new one, never a partial one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write data to a temporary file beside `path` (same directory, so the rename is atomic),
    then rename it over `path`. Creates the parent directory; leaves no temporary file behind on
    error. The file gets ordinary permissions (0644; mkstemp alone gives 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """write_bytes of the UTF-8 encoding of text."""
    return write_bytes(path, text.encode("utf-8"))


def save_torch(path: str | os.PathLike, obj: object) -> Path:
    """torch.save(obj) to `path` atomically (serialised in memory, then write_bytes)."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return write_bytes(path, buffer.getvalue())
