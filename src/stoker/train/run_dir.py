"""What keeps a run directory's records trustworthy: one run at a time, no silent reuse.

    lock_run_dir(): an exclusive ``flock`` on RUN_DIR/.lock, held for the life of the process
                    that took it (the kernel drops it when that process dies, however it dies);
                    the holder's PID and host are written in the file. The launcher
                    (``stoker train``) takes it before it writes anything; its ranks inherit
                    ``STOKER_RUN_LOCK`` (the launcher's PID) and do not take it again. A rank
                    started without a launcher (torchrun, the control plane's per-rank
                    processes) takes it on rank 0.
    check_reuse():  a run dir that already holds checkpoints or metrics is not started over
                    without ``--resume``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from pathlib import Path

from stoker.spec.errors import StokerError

LOCK_FILE = ".lock"
LOCK_ENV = "STOKER_RUN_LOCK"  # the PID of the process holding the run dir's lock, for its children

_held: dict[str, int] = {}  # run dir (resolved) -> the open, locked file: kept for the process


class RunDirBusy(StokerError):
    """Another process holds the run dir's lock."""


def lock_run_dir(run_dir: Path, record: bool = True) -> bool:
    """Lock ``run_dir`` for this process's life, or raise `RunDirBusy` naming the holder.
    Returns False (and takes nothing) when the launcher that started this process holds it.
    ``record=False``: leave the file as it is until `record_holder` (a run refused after
    taking the lock then changes nothing in the run dir)."""
    key = str(run_dir.resolve())
    if key in _held:
        return True
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_holder(fd)
        os.close(fd)
        if holder and holder.split()[0] == os.environ.get(LOCK_ENV):
            return False  # our launcher holds it for us
        raise RunDirBusy(f"{run_dir} is in use by another run ({describe_holder(holder)}): "
                         f"wait for it to end, or train into another --run-dir") from None
    _held[key] = fd
    if record:
        record_holder(run_dir)
    return True


def record_holder(run_dir: Path) -> None:
    """Write this process's PID and host in the lock it holds; its children inherit
    ``STOKER_RUN_LOCK``, so that they know the lock is held for them."""
    fd = _held[str(run_dir.resolve())]
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
    os.environ[LOCK_ENV] = str(os.getpid())


def unlock_run_dir(run_dir: Path) -> None:
    """Release a lock this process took (a run refused after taking it; a process's lock
    otherwise ends with it)."""
    fd = _held.pop(str(run_dir.resolve()), None)
    if fd is not None:
        os.close(fd)
        if os.environ.get(LOCK_ENV) == str(os.getpid()) and not _held:
            del os.environ[LOCK_ENV]


def lock_holder(run_dir: Path) -> str:
    """"PID HOST" of the lock's holder, "" when it is free."""
    try:
        fd = os.open(run_dir / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return ""
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(fd) or "?"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return ""
    finally:
        os.close(fd)


def describe_holder(holder: str) -> str:
    """"pid 123 on host" from the lock file's "PID HOST"."""
    pid, _, host = holder.partition(" ")
    return f"pid {pid}" + (f" on {host}" if host else "") if pid else "holder unknown"


def _read_holder(fd: int) -> str:
    with contextlib.suppress(OSError):
        return os.pread(fd, 200, 0).decode(errors="replace").strip()
    return ""


def check_reuse(run_dir: Path, metrics_file: str, resume: str | None) -> None:
    """Refuse to start a fresh run in a run dir that holds one (checkpoints or metrics)."""
    if resume:
        return
    from stoker.train.ckpt_layout import list_steps

    found = ["checkpoints"] if list_steps(run_dir) else []
    metrics = run_dir / metrics_file
    if metrics.is_file() and metrics.stat().st_size > 0:
        found.append(metrics_file)
    if found:
        raise StokerError(f"{run_dir} already holds a run ({' and '.join(found)}): continue it "
                          f"with --resume auto, or train into a new --run-dir")
