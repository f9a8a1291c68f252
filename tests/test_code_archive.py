"""A [task] job's code archive (`stoker.control.code_archive`): packed, checked, unpacked."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from pathlib import Path

import pytest

from stoker.control.code_archive import MARKER, BadArchive, check, pack, unpack


def _task_dir(root: Path) -> Path:
    code = root / "task"
    (code / "pkg" / "__pycache__").mkdir(parents=True)
    (code / ".git").mkdir()
    (code / "model.py").write_text("def build(cfg):\n    return None\n")
    (code / "pkg" / "__init__.py").write_text("")
    (code / "pkg" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    (code / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (code / "run.sh").write_text("#!/bin/sh\n")
    (code / "run.sh").chmod(0o755)
    (root / "secret").write_text("not the task's")
    os.symlink(root / "secret", code / "outside")  # a link out of the directory
    os.symlink(code / "model.py", code / "alias.py")  # a link inside it
    return code


def _names(archive: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        return tar.getnames()


def test_pack_takes_the_code_and_leaves_out_caches_vcs_and_links_out(tmp_path: Path) -> None:
    code = _task_dir(tmp_path)
    packed = pack(code)
    assert sorted(_names(packed.archive)) == ["alias.py", "model.py", "pkg/__init__.py", "run.sh"]
    assert packed.files == 4
    assert check(packed.archive) == (4, packed.unpacked)
    os.utime(code / "model.py", (0, 0))  # times are not packed: the same files, the same bytes
    assert pack(code).archive == packed.archive


def test_unpack_gives_the_files_and_replaces_an_older_copy(tmp_path: Path) -> None:
    code = _task_dir(tmp_path)
    dest = tmp_path / "job" / "code"
    dest.mkdir(parents=True)
    (dest / "stale.py").write_text("from an older archive")
    unpack(pack(code).archive, dest)
    assert (dest / "model.py").read_text() == (code / "model.py").read_text()
    assert not (dest / "stale.py").exists() and not (dest / "alias.py").is_symlink()
    assert os.access(dest / "run.sh", os.X_OK)
    (dest / "model.py").write_text("changed")  # the same archive again: left as it is
    unpack(pack(code).archive, dest)
    assert (dest / "model.py").read_text() == "changed"
    assert (dest / MARKER).is_file()


def _archive(add: callable) -> bytes:  # type: ignore[valid-type]
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        add(tar)
    return gzip.compress(raw.getvalue())


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> bytes:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, link
        tar.addfile(info, io.BytesIO(b"") if kind == tarfile.REGTYPE else None)
    return _archive(add)


@pytest.mark.parametrize(("archive", "reason"), [
    (b"plain bytes", "not a gzipped tar archive"),
    (gzip.compress(b"not a tar"), "not a gzipped tar archive"),
    (_member("link", tarfile.SYMTYPE, "/etc/passwd"), "'link' is not a plain file or directory"),
    (_member("hard", tarfile.LNKTYPE, "x"), "'hard' is not a plain file or directory"),
    (_member("/etc/cron.d/x"), "'/etc/cron.d/x' is not a path inside the archive"),
    (_member("a/../../x"), "'a/../../x' is not a path inside the archive"),
    (_member("dev", tarfile.CHRTYPE), "'dev' is not a plain file or directory"),
])
def test_a_bad_archive_is_refused_and_nothing_unpacked(tmp_path: Path, archive: bytes,
                                                       reason: str) -> None:
    with pytest.raises(BadArchive, match=reason):
        check(archive)
    with pytest.raises(BadArchive, match=reason):
        unpack(archive, tmp_path / "code")
    assert not (tmp_path / "code").exists()
