"""Reading a job's log files for the API: only files inside the job's directory, and never
through a symbolic link (a job could swap its log, or a directory above it, for a link to
another tenant's files): the file is opened component by component from the jobs directory."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from stoker.control.safe_fs import open_beneath

MAX_CHUNK = 1 << 20


def read_chunk(root: Path, relative: PurePosixPath, offset: int, limit: int,
               line_prefix: str | None = None) -> tuple[str, int]:
    """Up to ``limit`` bytes of ``root/relative`` from ``offset``: (text, next offset). With
    ``line_prefix``, only whole lines starting with it (the training launcher prefixes each
    rank's lines with ``[rankN]:``). A missing file reads as empty; a link raises UnsafePath."""
    try:
        fd = open_beneath(root, relative)
    except FileNotFoundError:
        return "", offset
    with os.fdopen(fd, "rb") as f:
        data = os.pread(f.fileno(), min(limit, MAX_CHUNK), offset)
    if line_prefix is None:
        return data.decode(errors="replace"), offset + len(data)
    end = data.rfind(b"\n") + 1  # whole lines only; a partial last line is read next time
    prefix = line_prefix.encode()
    lines = [line[len(prefix):].lstrip(b" ") for line in data[:end].splitlines(keepends=True)
             if line.startswith(prefix)]
    return b"".join(lines).decode(errors="replace"), offset + end


def read_tail(root: Path, relative: PurePosixPath, limit: int) -> tuple[str, int]:
    """The last ``limit`` bytes of ``root/relative`` from a line's start: (text, the offset
    after it, where a reader of what follows starts). A missing or unsafe file reads as empty."""
    try:
        fd = open_beneath(root, relative)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return "", 0
    with os.fdopen(fd, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        start = max(0, size - limit)
        data = os.pread(f.fileno(), size - start, start)
    end = start + len(data)
    if start > 0:
        data = data[data.find(b"\n") + 1:]  # from the first whole line
    return data.decode(errors="replace"), end
