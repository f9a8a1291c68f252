"""Hang detection: every rank heartbeats each step; a watchdog thread ends a rank that stops.

``Heartbeat.beat(step)`` is called after every step. It records the time in memory and, at
most every ``file_interval_s``, in ``RUN_DIR/heartbeats/rank-NNNNN.json`` (step, time, pid,
host) so the other ranks and the launcher can see who is behind. The watchdog wakes a few times
per ``timeout_s``; once no beat came for ``timeout_s`` it dumps every thread's stack to
``RUN_DIR/hangs/``, appends a "hang" event naming the rank that is furthest behind, and ends
the process with `EXIT_HANG`: the launcher sees a failed rank, tears the gang down and restarts
it. (A rank stuck in a collective instead hits the process group timeout, which ``stoker
train`` sets to ``train.hang_timeout_s``.)

On CUDA, `flight_recorder_env` turns on the NCCL flight recorder: NCCL keeps a ring of recent
collectives per rank and dumps it to ``RUN_DIR/nccl_trace/rank_N`` when a collective times out.
"""

from __future__ import annotations

import faulthandler
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from stoker.observe.events import EventLog
from stoker.train.exitcodes import EXIT_HANG
from stoker.train.restarts import attempt

HEARTBEATS = "heartbeats"
HANGS = "hangs"
NCCL_TRACE = "nccl_trace"


class Heartbeat:
    """This rank's heartbeat and the watchdog that acts when it stops."""

    def __init__(self, run_dir: str | Path, rank: int, timeout_s: float,
                 events: EventLog | None = None, on_hang: Callable[[], None] | None = None,
                 file_interval_s: float = 1.0) -> None:
        self.run_dir = Path(run_dir)
        self.rank = rank
        self.timeout_s = timeout_s
        self.events = events or EventLog(run_dir, rank)
        self.on_hang = on_hang or (lambda: os._exit(EXIT_HANG))
        self.file_interval_s = file_interval_s
        self.file = self.run_dir / HEARTBEATS / f"rank-{rank:05d}.json"
        self.step: int | None = None
        self._last = time.monotonic()
        self._last_write = 0.0
        self._paused = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Heartbeat:
        """Start the watchdog; it is armed by the first `beat`."""
        self.file.parent.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._watch, name="stoker-watchdog", daemon=True)
        self._thread.start()
        return self

    def beat(self, step: int) -> None:
        now = time.monotonic()
        self.step = step
        self._last = now
        if now - self._last_write >= self.file_interval_s:
            self._last_write = now
            self._write()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Known long pauses (a synchronous checkpoint, a load) do not count as hangs."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1
            self._last = time.monotonic()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _write(self) -> None:
        record = {"rank": self.rank, "step": self.step, "time": time.time(), "pid": os.getpid(),
                  "host": socket.gethostname(),
                  "attempt": attempt()}
        tmp = self.file.with_name(self.file.name + ".tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, self.file)

    def _watch(self) -> None:
        poll = min(1.0, self.timeout_s / 10)
        while not self._stop.wait(poll):
            silent = time.monotonic() - self._last
            if self.step is None or self._paused or silent < self.timeout_s:
                continue
            self._fire(silent)
            return

    def _fire(self, silent_s: float) -> None:
        peers = read_heartbeats(self.run_dir)
        behind = min(peers.values(), key=lambda p: p.get("step") or -1, default=None)
        stacks = self.run_dir / HANGS / f"rank-{self.rank:05d}-pid{os.getpid()}.txt"
        stacks.parent.mkdir(parents=True, exist_ok=True)
        with stacks.open("w") as f:
            faulthandler.dump_traceback(f, all_threads=True)
        self.events.emit("hang", step=self.step, silent_s=round(silent_s, 3),
                         timeout_s=self.timeout_s, stacks=str(stacks),
                         furthest_behind=None if behind is None else
                         {"rank": behind.get("rank"), "step": behind.get("step")},
                         peers={r: p.get("step") for r, p in sorted(peers.items())})
        self.on_hang()


def read_heartbeats(run_dir: str | Path) -> dict[int, dict[str, Any]]:
    """The last heartbeat file of every rank: {rank: {"step", "time", "pid", "host", ...}}."""
    found: dict[int, dict[str, Any]] = {}
    for path in sorted((Path(run_dir) / HEARTBEATS).glob("rank-*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        found[int(record["rank"])] = record
    return found


def flight_recorder_env(run_dir: str | Path) -> dict[str, str]:
    """NCCL flight recorder settings (they take effect when the NCCL process group is made)."""
    prefix = Path(run_dir).resolve() / NCCL_TRACE / "rank_"
    return {
        "TORCH_NCCL_TRACE_BUFFER_SIZE": "2000",
        "TORCH_FR_BUFFER_SIZE": "2000",
        "TORCH_NCCL_DUMP_ON_TIMEOUT": "1",
        "TORCH_NCCL_DEBUG_INFO_TEMP_FILE": str(prefix),
        "TORCH_NCCL_ASYNC_ERROR_HANDLING": "3",
    }


def enable_flight_recorder(run_dir: str | Path) -> dict[str, str]:
    """Put `flight_recorder_env` in this process's environment (keeping values the user set);
    call before the process group is created. Returns what it set."""
    env = {k: v for k, v in flight_recorder_env(run_dir).items() if k not in os.environ}
    os.environ.update(env)
    (Path(run_dir) / NCCL_TRACE).mkdir(parents=True, exist_ok=True)
    return env
