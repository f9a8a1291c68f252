"""What the control plane can read of how an attempt ended, for `stoker.control.failure`: the
last lines of each process's log for that attempt, and the kernel's count of OOM kills.

Logs are the job's files: they are opened without following links (`safe_fs`) and only their
last `TAIL_BYTES` are read. A log that cannot be read gives no lines.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from stoker.control.launch import log_relpath
from stoker.control.safe_fs import open_beneath

TAIL_BYTES = 256 * 1024
MAX_LINES = 400


def attempt_log(jobs_dir: Path, job_id: int, index: int, attempt: int) -> list[str]:
    """The last lines process ``index`` wrote in ``attempt`` (the executor starts each
    attempt's output with an "=== stoker: attempt N started" line)."""
    try:
        fd = open_beneath(jobs_dir, log_relpath(job_id, index))
    except OSError:
        return []
    try:
        size = os.fstat(fd).st_size
        data = os.pread(fd, TAIL_BYTES, max(0, size - TAIL_BYTES))
    except OSError:
        return []
    finally:
        os.close(fd)
    lines = data.decode("utf-8", errors="replace").splitlines()
    marker = f"=== stoker: attempt {attempt} started"
    starts = [i for i, line in enumerate(lines) if line.startswith(marker)]
    if starts:
        lines = lines[starts[-1] + 1:]
        later = [i for i, line in enumerate(lines) if line.startswith("=== stoker: attempt ")]
        lines = lines[:later[0]] if later else lines
    elif any(line.startswith("=== stoker: attempt ") for line in lines):
        return []  # only other attempts' output is left in the tail
    return lines[-MAX_LINES:]


def oom_kills() -> int:
    """Processes the OOM killer has killed in this process's memory cgroup (v2, or v1's
    ``memory.oom_control``), where the job processes run; 0 where it cannot be read."""
    for path, key in _oom_files():
        with contextlib.suppress(OSError, ValueError):
            for line in Path(path).read_text().splitlines():
                name, _, value = line.partition(" ")
                if name == key:
                    return int(value)
    return 0


def _oom_files() -> list[tuple[str, str]]:
    try:
        entries = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return []
    found = []
    for entry in entries:
        _, controllers, path = entry.split(":", 2)
        if controllers == "":
            found.append((f"/sys/fs/cgroup{path.rstrip('/')}/memory.events", "oom_kill"))
        elif "memory" in controllers.split(","):
            found.append((f"/sys/fs/cgroup/memory{path.rstrip('/')}/memory.oom_control",
                          "oom_kill"))
    return found
