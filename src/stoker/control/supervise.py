"""The parent of every job process.

``python -m stoker.control.supervise EXIT_FILE [--cpus C,..] [--uid U --gid G | --sandbox]
[--parent PID] -- ARGV``

It runs ARGV (an argument list, never a shell) as its child, forwards SIGTERM, SIGINT and SIGUSR1
to it once, and when the child ends writes its exit status to EXIT_FILE (write-then-rename), so a
control plane that was restarted meanwhile still learns how the rank ended. ``--cpus`` pins the
supervisor (and so its child) to those CPUs before the child starts. ``--uid/--gid`` start the
child as that user with no supplementary groups. ``--sandbox``: ARGV is a bubblewrap command
line; the signals go to the process inside the sandbox (bubblewrap would die of them and take
the job with it, with no chance to checkpoint). ``--parent``: when process PID (the Ray actor
that started it) is gone, the whole process group is killed and no exit status is written, as
if the node had died with it. Imports nothing heavy.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


def write_exit(path: str, code: int) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump({"exit_code": code, "ended_at": time.time()}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_exit(path: str) -> tuple[int, float] | None:
    """(exit code, end time) written by the supervisor, or None if it wrote none."""
    try:
        with open(path) as f:
            data = json.load(f)
        return int(data["exit_code"]), float(data["ended_at"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def main(args: list[str]) -> int:
    if "--" not in args:
        print("usage: supervise EXIT_FILE [--cpus 0,1] [--uid U --gid G | --sandbox] -- ARGV...",
              file=sys.stderr)
        return 2
    split = args.index("--")
    opts, argv = args[:split], args[split + 1:]
    exit_file = opts[0]
    if "--cpus" in opts:
        cpus = {int(c) for c in opts[opts.index("--cpus") + 1].split(",")}
        os.sched_setaffinity(0, cpus)
    user = _option(opts, "--uid")
    group = _option(opts, "--gid")
    sandbox = "--sandbox" in opts
    parent = _option(opts, "--parent")
    if parent is not None:
        threading.Thread(target=_die_with, args=(parent,), daemon=True).start()
    pending: list[int] = []
    child: subprocess.Popen[bytes] | None = None
    inner: list[int] = []  # the sandbox's init process, once bubblewrap has said its pid

    def forward(signum: int, _frame: object) -> None:
        if child is None or (sandbox and not inner):
            pending.append(signum)  # arrived before the child exists: deliver it once it does
        elif child.poll() is None:
            _send(child, inner, signum)

    for sig in FORWARDED:
        signal.signal(sig, forward)
    info_r, info_w = os.pipe() if sandbox else (-1, -1)
    if sandbox:
        argv = [argv[0], "--info-fd", str(info_w), *argv[1:]]
    try:
        # bubblewrap makes its mount points with the umask; the job's own directories are
        # 0700 whatever the umask.
        child = subprocess.Popen(argv, user=user, group=group,
                                 extra_groups=[] if user is not None else None,
                                 umask=0o022 if sandbox else 0o077,
                                 pass_fds=(info_w,) if sandbox else ())
    except (OSError, ValueError) as e:
        print(f"stoker: cannot start {argv[0]!r}: {e}", file=sys.stderr, flush=True)
        write_exit(exit_file, 127)
        return 127
    if sandbox:
        os.close(info_w)
        init = _read_child_pid(info_r)
        if init is not None:
            inner.append(init)
    for signum in pending[:1]:
        _send(child, inner, signum)
    code = child.wait()
    write_exit(exit_file, code)
    return code if code >= 0 else 128 - code


def _die_with(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os.killpg(0, signal.SIGKILL)


def _option(opts: list[str], name: str) -> int | None:
    return int(opts[opts.index(name) + 1]) if name in opts else None


def _read_child_pid(fd: int) -> int | None:
    """bubblewrap's --info-fd JSON (closed once written): the pid of the sandbox's init."""
    data = b""
    with os.fdopen(fd, "rb") as f:
        data = f.read()
    try:
        return int(json.loads(data)["child-pid"])
    except (ValueError, KeyError, TypeError):
        return None


def _send(child: subprocess.Popen[bytes], inner: list[int], signum: int) -> None:
    """To the child; in a sandbox, to the processes its init started (the job's top process:
    the init itself passes no signals on)."""
    if not inner:
        child.send_signal(signum)
        return
    deadline = time.monotonic() + 5.0
    pids = _children(inner[0])
    while not pids and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)  # the init has not started the job yet
        pids = _children(inner[0])
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        pass
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
