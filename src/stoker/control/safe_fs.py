"""Opening files under a directory without following any link a job could have planted.

A job owns the files in its directory and can swap any of them for a symbolic link between a
check and an open. These helpers walk the path one component at a time from a directory
handle, each step opened with ``O_NOFOLLOW``, so checking and opening are the same step: a
link anywhere on the way is an error, never a way out of ``root``.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafePath(PermissionError):
    """The path leaves its root, or a component of it is a symbolic link."""


def _parts(relative: str | PurePosixPath) -> list[str]:
    parts = PurePosixPath(relative).parts
    if not parts or parts[0] == "/" or any(p in ("..", ".") for p in parts):
        raise UnsafePath(f"{relative} is not a plain path inside its directory")
    return list(parts)


@contextlib.contextmanager
def _walk(root: Path, dirs: list[str]) -> Iterator[int]:
    """A handle on ``root/dirs...``, each step taken without following a link."""
    fd = os.open(root, _DIR_FLAGS)
    try:
        for name in dirs:
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise UnsafePath(f"{name} under {root} is not a directory") from None
                raise
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def open_beneath(root: Path, relative: str | PurePosixPath, flags: int = os.O_RDONLY,
                 mode: int = 0o600) -> int:
    """A file descriptor for ``root/relative``; no component may be a link."""
    *dirs, name = _parts(relative)
    with _walk(root, dirs) as parent:
        try:
            return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=parent)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise UnsafePath(f"{relative} under {root} is a symbolic link") from None
            raise
