"""A user task's code, sent with its job: packed by `stoker submit`, checked by the server,
stored once by content, unpacked into the job's directory at launch.

A ``[task]`` training job imports user code (`stoker.train.task`). A control-plane job runs as
its tenant's user in a sandbox that shows it only the runtime and its own directory, so code
left on the submitter's disk is out of its reach (and may not exist on the node at all).
As Ray's ``working_dir`` does, `stoker submit` packs the task's directory (``task.path``) into a
gzipped tar archive that travels in the submission (`stoker.spec.api.JobSubmission.code`); the
server refuses an archive that is not one or holds anything but plain files and directories
under relative paths, stores it under its SHA-256 (array jobs share one copy), and points the
job's ``task.path`` at ``code/`` beside its ``train.toml``. The launch unpacks it there.

The archive is deterministic (sorted names, no times or owners): the same code gives the same
bytes, so a retried submit has the same digest.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

CODE_DIR = "code"  # in the job's directory, beside train.toml
MAX_FILES = 10_000
MAX_UNPACKED = 256 << 20  # bytes, all files together: a small archive may not expand past it
SKIPPED_DIRS = {"__pycache__", ".git", ".hg", ".svn", ".venv", ".mypy_cache",
                ".pytest_cache", ".ruff_cache", ".ipynb_checkpoints"}
SKIPPED_SUFFIXES = (".pyc", ".pyo")
MARKER = ".stoker-code-sha256"  # in an unpacked directory: which archive it holds


class BadArchive(ValueError):
    """The archive cannot be used: the message says why, for the ``code`` field."""


@dataclass(frozen=True)
class Packed:
    archive: bytes
    files: int
    unpacked: int  # bytes

    @property
    def sha256(self) -> str:
        return sha256(self.archive)


def sha256(archive: bytes) -> str:
    return hashlib.sha256(archive).hexdigest()


def pack(directory: Path) -> Packed:
    """The files under ``directory`` (caches, version control and virtual environments left
    out; symlinks followed only when they stay inside it) as a deterministic ``.tar.gz``."""
    top = directory.resolve()
    paths = _files(top)
    raw = io.BytesIO()
    total = 0
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in paths:
            data = path.read_bytes()
            total += len(data)
            if total > MAX_UNPACKED:
                raise BadArchive(f"{directory} holds more than {MAX_UNPACKED >> 20} MiB of "
                                 "files: point task.path at the code's own directory")
            info = tarfile.TarInfo(path.relative_to(top).as_posix())
            info.size, info.mode = len(data), 0o755 if os.access(path, os.X_OK) else 0o644
            tar.addfile(info, io.BytesIO(data))
    # mtime=0: the same files give the same bytes.
    return Packed(gzip.compress(raw.getvalue(), mtime=0), len(paths), total)


def _files(top: Path) -> list[Path]:
    found: list[Path] = []
    for parent, dirs, files in os.walk(top, followlinks=False):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS)
        for name in sorted(files):
            path = Path(parent) / name
            if name.endswith(SKIPPED_SUFFIXES) or not path.is_file():
                continue
            if path.is_symlink() and not path.resolve().is_relative_to(top):
                continue  # a link out of the directory: not the task's code
            found.append(path)
            if len(found) > MAX_FILES:
                raise BadArchive(f"{top} holds more than {MAX_FILES} files: point task.path "
                                 "at the code's own directory")
    return found


def check(archive: bytes) -> tuple[int, int]:
    """(files, unpacked bytes) of a usable archive; BadArchive says what is wrong."""
    files = total = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
            for member in tar:
                _check_member(member)
                if member.isfile():
                    files, total = files + 1, total + member.size
                if files > MAX_FILES or total > MAX_UNPACKED:
                    raise BadArchive(f"more than {MAX_FILES} files or {MAX_UNPACKED >> 20} "
                                     "MiB unpacked")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise BadArchive(f"not a gzipped tar archive ({e})") from None
    return files, total


def _check_member(member: tarfile.TarInfo) -> None:
    name = member.name
    if not (member.isfile() or member.isdir()):
        raise BadArchive(f"{name!r} is not a plain file or directory")
    parts = Path(name).parts
    if name.startswith("/") or ".." in parts or not parts:
        raise BadArchive(f"{name!r} is not a path inside the archive")


def unpack(archive: bytes, dest: Path) -> None:
    """``dest`` holds the archive's files (and nothing else) once this returns; a ``dest``
    already holding this archive is left as it is (a restarted attempt's)."""
    digest = sha256(archive)
    marker = dest / MARKER
    if marker.is_file() and marker.read_text() == digest:
        return
    check(archive)
    staging = dest.with_name(dest.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        tar.extractall(staging, filter="data")
    (staging / MARKER).write_text(digest)
    if dest.is_symlink() or dest.is_file():
        dest.unlink()
    shutil.rmtree(dest, ignore_errors=True)
    staging.rename(dest)
