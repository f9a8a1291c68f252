"""The parent of every job process.

``python -m stoker.control.supervise EXIT_FILE [--cpus 0,1] -- ARGV...``

It runs ARGV (an argument list, never a shell) as its child, forwards SIGTERM, SIGINT and SIGUSR1
to it once, and when the child ends writes its exit status to EXIT_FILE (write-then-rename), so a
control plane that was restarted meanwhile still learns how the rank ended. ``--cpus`` pins the
supervisor (and so its child) to those CPUs before the child starts. Imports nothing heavy.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
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
        print("usage: supervise EXIT_FILE [--cpus 0,1] -- ARGV...", file=sys.stderr)
        return 2
    split = args.index("--")
    opts, argv = args[:split], args[split + 1:]
    exit_file = opts[0]
    if "--cpus" in opts:
        cpus = {int(c) for c in opts[opts.index("--cpus") + 1].split(",")}
        os.sched_setaffinity(0, cpus)
    pending: list[int] = []
    child: subprocess.Popen[bytes] | None = None

    def forward(signum: int, _frame: object) -> None:
        if child is None:
            pending.append(signum)  # arrived before the child exists: deliver it once it does
        elif child.poll() is None:
            child.send_signal(signum)

    for sig in FORWARDED:
        signal.signal(sig, forward)
    try:
        child = subprocess.Popen(argv)
    except OSError as e:
        print(f"stoker: cannot start {argv[0]!r}: {e}", file=sys.stderr, flush=True)
        write_exit(exit_file, 127)
        return 127
    for signum in pending[:1]:
        child.send_signal(signum)
    code = child.wait()
    write_exit(exit_file, code)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
