"""Reading a job's log files for the API: only files inside the job's directory, and never
through a symbolic link (a job could swap its log, or a directory above it, for a link to
another tenant's files): the file is opened component by component from the jobs directory."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from stoker.control.safe_fs import open_beneath

if TYPE_CHECKING:
    from stoker.control.plane import ControlPlane
    from stoker.control.store import JobRecord

MAX_CHUNK = 1 << 20


def log_source(plane: ControlPlane, job: JobRecord, kind: str,
               rank: int | None) -> tuple[PurePosixPath, str | None]:
    """Where rank ``rank``'s log is (None: the job's first log, whole): (file, the prefix of
    its lines there, or None). A training job on one machine has one log, its launcher's, each
    line prefixed by its rank; elsewhere (Ray, command jobs) each rank has its own."""
    combined = kind == "train" and not plane.reconciler.executor.per_rank
    index = 0 if combined or rank is None else rank
    prefix = f"[rank{rank}]:" if combined and rank is not None else None
    return plane.log_file(job, index), prefix


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


def read_tail(root: Path, relative: PurePosixPath, limit: int,
              line_prefix: str | None = None) -> tuple[str, int]:
    """The last ``limit`` bytes of ``root/relative`` from a line's start: (text, the offset
    after it, where a reader of what follows starts). With ``line_prefix``, only the whole
    lines among them that start with it, as `read_chunk` reads them. A missing or unsafe file
    reads as empty."""
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
    if line_prefix is not None:
        whole = data.rfind(b"\n") + 1
        end -= len(data) - whole  # a partial last line is read next time
        prefix = line_prefix.encode()
        data = b"".join(line[len(prefix):].lstrip(b" ")
                        for line in data[:whole].splitlines(keepends=True)
                        if line.startswith(prefix))
    return data.decode(errors="replace"), end
