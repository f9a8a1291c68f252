"""The content-addressed artifact store: a local directory or any fsspec URL.

    objects/<digest>      an artifact: a file, or a directory tree
    cache/<key>.json      what one step (one shard) produced from one cache key
    runs/<run>.json       a run's record (`stoker pipeline status`)

A file's digest is the sha256 of its bytes (``sha256sum`` gives the same); a tree's is the
sha256 of its listing, one ``sha256  relative/path`` line per file in path order, so equal
trees have equal digests wherever they were made. An object is written once and never changed:
a second artifact with the same bytes is the same object.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec  # type: ignore[import-untyped]
from fsspec.implementations.local import LocalFileSystem  # type: ignore[import-untyped]

CHUNK = 1 << 20
DEFAULT_STORE = ".stoker/pipelines"


@dataclass(frozen=True)
class Artifact:
    digest: str
    kind: str  # "file" or "tree"
    size: int  # bytes, all files of a tree together

    def to_json(self) -> dict[str, Any]:
        return {"digest": self.digest, "kind": self.kind, "size": self.size}

    @staticmethod
    def from_json(data: dict[str, Any]) -> Artifact:
        return Artifact(data["digest"], data["kind"], int(data["size"]))


def file_digest(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def digest_of(path: Path) -> Artifact:
    """The artifact ``path`` (a file or a directory) would be in the store."""
    if path.is_file():
        return Artifact(file_digest(path), "file", path.stat().st_size)
    if not path.is_dir():
        raise FileNotFoundError(path)
    lines, size = [], 0
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        lines.append(f"{file_digest(file)}  {file.relative_to(path).as_posix()}\n")
        size += file.stat().st_size
    return Artifact(hashlib.sha256("".join(lines).encode()).hexdigest(), "tree", size)


class Store:
    """Objects, cache entries and run records under ``url``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.fs, root = fsspec.core.url_to_fs(url)
        self.root = root.rstrip("/")
        self.local = isinstance(self.fs, LocalFileSystem)
        if self.local:
            Path(self.root).mkdir(parents=True, exist_ok=True)

    def _path(self, *parts: str) -> str:
        return "/".join((self.root, *parts))

    # ------------------------------------------------------------------ objects

    def object_path(self, digest: str) -> str:
        return self._path("objects", digest)

    def has(self, artifact: Artifact) -> bool:
        return bool(self.fs.exists(self.object_path(artifact.digest)))

    def put(self, path: Path) -> Artifact:
        """Store the file or tree at ``path`` (moved into a local store when it can be, the
        work directory being the store's own) and return it as an artifact."""
        artifact = digest_of(path)
        if self.has(artifact):
            return artifact
        final = self.object_path(artifact.digest)
        if self.local:
            tmp = Path(self._path("objects", f".tmp-{uuid.uuid4().hex}"))
            tmp.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(path, tmp)
            except OSError:  # another filesystem
                if path.is_dir():
                    shutil.copytree(path, tmp)
                else:
                    shutil.copy2(path, tmp)
            _read_only(tmp)
            with contextlib.suppress(OSError):  # OSError: the same object was stored meanwhile
                os.rename(tmp, final)
            if tmp.exists():
                shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
        else:
            tmp_remote = self._path("objects", f".tmp-{uuid.uuid4().hex}")
            self.fs.put(str(path), tmp_remote, recursive=path.is_dir())
            self.fs.mv(tmp_remote, final, recursive=path.is_dir())
        return artifact

    def local_path(self, artifact: Artifact, cache_dir: Path) -> Path:
        """A local path to read the artifact from: the object itself in a local store, else
        a copy fetched once into ``cache_dir``."""
        if self.local:
            return Path(self.object_path(artifact.digest))
        target = cache_dir / artifact.digest
        if not target.exists():
            tmp = cache_dir / f".tmp-{uuid.uuid4().hex}"
            cache_dir.mkdir(parents=True, exist_ok=True)
            self.fs.get(self.object_path(artifact.digest), str(tmp),
                        recursive=artifact.kind == "tree")
            os.replace(tmp, target)
        return target

    # ------------------------------------------------------------------ records

    def read_json(self, *parts: str) -> Any:
        try:
            with self.fs.open(self._path(*parts), "r") as f:
                return json.load(f)
        except FileNotFoundError:
            return None

    def write_json(self, data: Any, *parts: str) -> None:
        """Write a record whole: a reader sees the old one or the new one, never a part."""
        text = json.dumps(data, indent=1)
        path = self._path(*parts)
        if self.local:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            tmp = f"{path}.tmp-{uuid.uuid4().hex}"
            Path(tmp).write_text(text)
            os.replace(tmp, path)
        else:
            with self.fs.open(path, "w") as f:
                f.write(text)

    def names(self, *parts: str) -> list[str]:
        """The ``.json`` records in a folder, by name without the suffix."""
        folder = self._path(*parts)
        if not self.fs.exists(folder):
            return []
        return sorted(p.rsplit("/", 1)[-1][: -len(".json")] for p in self.fs.ls(folder,
                      detail=False) if p.endswith(".json"))

    def work_dir(self) -> Path | None:
        """Where steps write their outputs: inside a local store, so storing them is a
        rename; None for a remote store (a temporary directory then)."""
        return Path(self._path("work")) if self.local else None


def _read_only(path: Path) -> None:
    """Files of an object are read-only: a step that writes into its input fails at once
    instead of changing every run that shares the object."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for file in files:
        file.chmod(file.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
