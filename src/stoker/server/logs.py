"""Reading a job's log files for the API: only files inside the job's directory, never through
a symbolic link (a job could replace its log with a link to another tenant's files)."""

from __future__ import annotations

import os
from pathlib import Path

MAX_CHUNK = 1 << 20


def read_chunk(path: Path, root: Path, offset: int, limit: int,
               line_prefix: str | None = None) -> tuple[str, int]:
    """Up to ``limit`` bytes of ``path`` from ``offset``: (text, next offset). With
    ``line_prefix``, only whole lines starting with it (the training launcher prefixes each
    rank's lines with ``[rankN]:``). A missing file reads as empty."""
    root, full = root.resolve(), path.absolute()
    if not full.is_relative_to(root) or full.resolve() != full:
        raise PermissionError(f"{path} is outside the job's directory")
    try:
        fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return "", offset
    with os.fdopen(fd, "rb") as f:
        f.seek(offset)
        data = f.read(min(limit, MAX_CHUNK))
    if line_prefix is None:
        return data.decode(errors="replace"), offset + len(data)
    end = data.rfind(b"\n") + 1  # whole lines only; a partial last line is read next time
    prefix = line_prefix.encode()
    lines = [line[len(prefix):].lstrip(b" ") for line in data[:end].splitlines(keepends=True)
             if line.startswith(prefix)]
    return b"".join(lines).decode(errors="replace"), offset + end
