"""Warm ranks: a rank forked from a process that has imported torch already.

Every rank used to start as ``python -m stoker.train``: about 2 s of imports (torch, DTensor,
torch.distributed.checkpoint, torch._dynamo for FSDP2) after the launcher's own 2 s of
imports, one after the other, at every start and every restart. Now `stoker train` starts a
*zygote* first thing, ``python -m stoker.train.warm serve SOCKET``, which imports what a rank
needs while the launcher checks the config and imports elastic; each rank elastic starts is a
small client, ``python -m stoker.train.warm attach SOCKET -- ARGS``, that has the zygote fork
the rank for it:

- the client sends its argv, environment, working directory and standard streams (fds 0-2);
  the zygote forks a child that takes them and runs ``python -m stoker.train ARGS``'s code;
- the client passes every signal it gets (SIGTERM, SIGINT, SIGUSR1, ...) on to the child and
  ends as the child ends (its exit code, or killed by the same signal), so elastic, the
  launcher and the control plane see a rank as before;
- a child dies with the client (the zygote kills it when the client's connection closes) and
  with the zygote (``PR_SET_PDEATHSIG``), the zygote with the launcher.

The zygote forks from its one Python thread, having run no tensor operation (no intra-op
thread pool exists to break in the child; the BLAS library's own pool, where it starts one,
is fork-safe) and without the CUDA driver loaded (a child initialises CUDA itself); it refuses
to serve, and the clients fall back to ``python -m stoker.train``, if another Python thread
runs, if its imports loaded the CUDA driver or failed, or if ``STOKER_WARM_RANKS=0``. The child
shows as ``stoker-rank`` (its ``comm``) with the zygote's command line. Linux only.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import resource
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

MODULE = "stoker.train.warm"
DISABLE_ENV = "STOKER_WARM_RANKS"  # "0": each rank imports for itself
RANK_NAME = b"stoker-rank"
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
             signal.SIGUSR2)
_PR_SET_NAME, _PR_SET_PDEATHSIG = 15, 1
_MESSAGE = 1 << 20  # the largest request: argv and environment as JSON
_SOCKET_PATH_MAX = 100  # a Unix socket's path has at most 107 bytes on Linux


class Zygote:
    """The launcher's handle on its zygote: where ranks attach, and which rank a client runs."""

    def __init__(self, process: subprocess.Popen[bytes], directory: Path) -> None:
        self.process = process
        self.directory = directory

    @property
    def socket_path(self) -> Path:
        return self.directory / "socket"

    def rank_args(self, args: Sequence[str]) -> list[str]:
        """The interpreter arguments of a rank that attaches (``args``: ``-m stoker.train``'s)."""
        return ["-u", "-m", MODULE, "attach", str(self.socket_path), "--", *args]

    def rank_pid(self, client: int) -> int:
        """The pid of the rank a client runs (the client's own while it has none)."""
        return _read_pid(self.directory / f"rank-of-{client}") or client

    def close(self) -> None:
        """End it (its ranks have ended: the launch is over) and remove its socket."""
        self.process.kill()
        self.process.wait()
        with contextlib.suppress(OSError):
            self.process.stdin.close()  # type: ignore[union-attr]
        shutil.rmtree(self.directory, ignore_errors=True)


def start(run_dir: Path | None = None) -> Zygote | None:
    """Start the zygote (None when warm ranks are switched off or not possible here)."""
    if os.environ.get(DISABLE_ENV) == "0" or not sys.platform.startswith("linux"):
        return None
    directory = Path(tempfile.mkdtemp(prefix="stoker-warm-"))
    if len(str(directory / "socket")) > _SOCKET_PATH_MAX:  # a long $TMPDIR
        directory.rmdir()
        directory = Path(tempfile.mkdtemp(prefix="stoker-warm-", dir="/tmp"))
    argv = [sys.executable, "-u", "-m", MODULE, "serve", str(directory / "socket")]
    if run_dir is not None:  # on its command line (and its ranks'), for whoever looks for them
        argv += ["--run-dir", str(run_dir)]
    process = subprocess.Popen(argv, stdin=subprocess.PIPE, start_new_session=True)
    return Zygote(process, directory)


# --- the client: one per rank, started by elastic -------------------------------------------


def attach(socket_path: str, args: list[str]) -> NoReturn:
    """Run rank ``args`` in a child of the zygote and end as it ends; without a zygote that
    serves, become ``python -u -m stoker.train ARGS`` instead."""
    child = 0
    early: list[int] = []  # signals that came before the rank existed

    def forward(signum: int, frame: Any) -> None:
        if not child:
            early.append(signum)
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signum)

    for sig in FORWARDED:
        signal.signal(sig, forward)
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    request = json.dumps({"argv": args, "env": dict(os.environ), "cwd": os.getcwd()}).encode()
    try:
        conn.connect(socket_path)
        socket.send_fds(conn, [request], [0, 1, 2])
        reply = conn.recv(64)
    except OSError:
        reply = b""
    if not reply.startswith(b"pid "):
        conn.close()
        if early:  # it was told to stop before it started
            _end_as(-early[0])
        os.execv(sys.executable, [sys.executable, "-u", "-m", "stoker.train", *args])
    child = int(reply.split()[1])
    _write_pid(Path(socket_path).parent / f"rank-of-{os.getpid()}", child)
    for signum in early:
        forward(signum, None)
    ended = conn.recv(64)  # b"exit CODE"; nothing: the zygote died, and the rank with it
    _end_as(int(ended.split()[1]) if ended.startswith(b"exit ") else -int(signal.SIGKILL))


def _end_as(code: int) -> NoReturn:
    """Exit with ``code``; a negative one is death by that signal, re-enacted."""
    if code < 0:
        sig = -code
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # the rank dumped core, if any
        with contextlib.suppress(OSError, ValueError):  # SIGKILL's cannot be set: nor need be
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
        code = 128 + sig  # a signal that does not end a process
    os._exit(code)


# --- the zygote --------------------------------------------------------------------------------


def serve(socket_path: str) -> int:
    """Import a rank's modules, then fork a rank for each client until stdin closes (the
    launcher ended: `PR_SET_PDEATHSIG` ends the zygote then too, but only once it is set).

    A launcher that dies without closing (SIGKILL) cannot remove the socket's directory, so
    its zygote, told by SIGTERM, does, and exits at once: its ranks die with it.
    """
    signal.signal(signal.SIGTERM, _remove_and_exit(Path(socket_path).parent))
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)  # the launcher gone, so is its zygote
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(socket_path)  # at once: ranks that come early wait in the backlog
    listener.listen(256)
    try:
        import torch._dynamo  # noqa: F401  # FSDP2 imports it at its first call

        import stoker.train.__main__  # noqa: F401
    except Exception as e:  # any failure: the ranks import for themselves
        print(f"stoker: warm ranks off, their imports failed here: {e!r}", file=sys.stderr)
        return 0
    if threading.active_count() != 1:  # forking would copy locks held by the others
        print("stoker: warm ranks off: the imports started a Python thread", file=sys.stderr)
        return 0
    if _cuda_driver_loaded():  # a child could not use CUDA (the driver is not fork-safe)
        print("stoker: warm ranks off: the imports started CUDA", file=sys.stderr)
        return 0
    zygote = os.getpid()
    ranks: dict[int, socket.socket] = {}  # child pid -> its client's connection
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    sel.register(sys.stdin.fileno(), selectors.EVENT_READ)
    while True:
        for key, _ in sel.select(timeout=0.02):
            if key.fileobj is listener:
                with contextlib.suppress(OSError, ValueError):  # that client falls back
                    _fork_rank(listener.accept()[0], listener, sel, ranks, zygote)
            elif key.fileobj == sys.stdin.fileno():
                if not os.read(sys.stdin.fileno(), 4096):
                    for pid in ranks:  # the launcher is done: so are its ranks
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                    return 0
            else:  # a client's connection closed: it died, and its rank must too
                sel.unregister(key.fileobj)
                orphan = next((p for p, c in ranks.items() if c is key.fileobj), None)
                if orphan is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(orphan, signal.SIGKILL)
        _reap(ranks, sel)


def _remove_and_exit(directory: Path) -> Callable[[int, FrameType | None], None]:
    zygote = os.getpid()

    def handler(signum: int, frame: FrameType | None) -> None:
        if os.getpid() != zygote:  # a rank forked before it reset its handlers: as it would
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        shutil.rmtree(directory, ignore_errors=True)
        os._exit(128 + signum)
    return handler


def _fork_rank(conn: socket.socket, listener: socket.socket, sel: selectors.BaseSelector,
               ranks: dict[int, socket.socket], zygote: int) -> None:
    message, fds, _, _ = socket.recv_fds(conn, _MESSAGE, 3)
    request = json.loads(message)
    pid = os.fork()
    if pid == 0:
        try:
            sel.close()
            listener.close()
            for other in ranks.values():
                other.close()
            conn.close()
            _become_rank(request, fds, zygote)
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(1)  # only if becoming the rank itself failed
    for fd in fds:
        os.close(fd)
    ranks[pid] = conn
    sel.register(conn, selectors.EVENT_READ)
    conn.send(f"pid {pid}".encode())


def _become_rank(request: dict[str, Any], fds: list[int], zygote: int) -> NoReturn:
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != zygote:  # it died before the line above
        os._exit(1)
    _prctl(_PR_SET_NAME, RANK_NAME)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for sig in FORWARDED:
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.setpgid(0, 0)  # a group of its own, as elastic gives each rank
    from stoker.train import __main__ as rank

    sys.argv = [rank.__file__, *request["argv"]]  # as ``python -m stoker.train`` has it
    rank.run_process(request["argv"])


def _reap(ranks: dict[int, socket.socket], sel: selectors.BaseSelector) -> None:
    while ranks:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = ranks.pop(pid, None)
        if conn is not None:
            with contextlib.suppress(OSError, KeyError, ValueError):
                sel.unregister(conn)
            with contextlib.suppress(OSError):
                conn.send(f"exit {os.waitstatus_to_exitcode(status)}".encode())
            conn.close()


def is_rank(argv: Sequence[str] | None, name: str | None, run_dir: Path) -> bool:
    """Whether a process (its command line, its ``comm``) is a rank of the run in ``run_dir``:
    ``python -u -m stoker.train ... --run-dir RUN_DIR``, or a warm rank, which has its zygote's
    command line (``... stoker.train.warm serve SOCKET --run-dir RUN_DIR``) and its own name."""
    if not argv or "--run-dir" not in argv:
        return False
    where = list(argv).index("--run-dir") + 1
    if where >= len(argv) or Path(argv[where]) != run_dir:
        return False
    if MODULE in argv:  # the zygote's command line: its children are the ranks
        return name == RANK_NAME.decode()
    return "stoker.train" in argv and argv[list(argv).index("stoker.train") - 1] == "-m"


def _cuda_driver_loaded() -> bool:
    """Whether this process has loaded the CUDA driver (something called into CUDA: a child
    forked after that cannot initialise CUDA). A CPU build of torch never loads it."""
    try:
        return "libcuda.so" in Path("/proc/self/maps").read_text()
    except OSError:
        return True


def _prctl(option: int, value: int | bytes) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(option, value, 0, 0, 0)


def _write_pid(path: Path, pid: int) -> None:
    with contextlib.suppress(OSError):
        tmp = path.with_suffix(".tmp")
        tmp.write_text(str(pid))
        tmp.replace(path)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return None


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) >= 2 and args[0] == "serve":
        return serve(args[1])
    if len(args) >= 3 and args[0] == "attach" and args[2] == "--":
        attach(args[1], args[3:])
    print("usage: python -m stoker.train.warm serve SOCKET [--run-dir DIR] | "
          "attach SOCKET -- RANK_ARGS", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
