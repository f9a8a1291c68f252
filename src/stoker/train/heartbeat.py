"""Hang detection: every rank heartbeats each step; a watchdog thread ends a rank that stops.

The step loop calls ``Heartbeat.beat(step, started=True)`` as it begins a step and
``beat(step)`` when the step is done: two stores to memory. The watchdog thread wakes a few
times per ``timeout_s``; it copies the rank's progress to ``RUN_DIR/heartbeats/rank-NNNNN.json``
(step, progress, time, pid, host, attempt), so every rank and the launcher can see who is behind,
and once no beat came for ``timeout_s`` it dumps every thread's stack to ``RUN_DIR/hangs/``,
appends a "hang" event naming the rank furthest behind, and ends the process with `EXIT_HANG`:
the launcher sees a failed rank, tears the gang down and restarts it. A rank that sees a peer
further behind (it is only waiting for that peer in a collective) gives the peer's watchdog
``grace_s`` to act first, so the rank that hung is the one reported as the cause. (A rank
stuck in a collective is also ended by the process group timeout, which ``stoker train`` sets
to ``train.hang_timeout_s``.)

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
    """This rank's heartbeat and the watchdog that acts when it stops; ``clock`` gives the
    monotonic seconds that beats and silences are measured in."""

    def __init__(self, run_dir: str | Path, rank: int, timeout_s: float,
                 events: EventLog | None = None, on_hang: Callable[[], None] | None = None,
                 grace_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.run_dir = Path(run_dir)
        self.rank = rank
        self.timeout_s = timeout_s
        self.grace_s = min(timeout_s / 2, 10.0) if grace_s is None else grace_s
        self.events = events or EventLog(run_dir, rank)
        self.on_hang = on_hang or (lambda: os._exit(EXIT_HANG))
        self.clock = clock
        self.file = self.run_dir / HEARTBEATS / f"rank-{rank:05d}.json"
        self.step: int | None = None
        self.progress = -1  # 2*step - 1 while step runs, 2*step once it is done
        self._last = clock()
        self._written = -2
        self._paused = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Heartbeat:
        """Start the watchdog; it is armed by the first `beat`."""
        self._thread = threading.Thread(target=self._watch, name="stoker-watchdog", daemon=True)
        self._thread.start()
        return self

    def beat(self, step: int, started: bool = False) -> None:
        """Step ``step`` has begun (``started``) or is done."""
        self.step = step
        self.progress = 2 * step - int(started)
        self._last = self.clock()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Known long pauses (a synchronous checkpoint, a load) do not count as hangs."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1
            self._last = self.clock()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _write(self) -> None:
        record = {"rank": self.rank, "step": self.step, "progress": self.progress,
                  "time": time.time(), "pid": os.getpid(), "host": socket.gethostname(),
                  "attempt": attempt()}
        self.file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.file.with_name(self.file.name + ".tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, self.file)
        self._written = self.progress

    def _watch(self) -> None:
        poll = min(1.0, self.timeout_s / 10)
        while not self._stop.wait(poll):
            if self.check():
                return

    def check(self) -> bool:
        """One look by the watchdog (its thread calls this every ``poll``): publish this rank's
        progress, and once no beat came for ``timeout_s`` (plus ``grace_s`` while a peer is
        behind) report the hang and call ``on_hang``. Returns whether it fired."""
        if self.step is None:
            return False
        if self.progress != self._written:
            self._write()
        silent = self.clock() - self._last
        if self._paused or silent < self.timeout_s:
            return False
        if silent < self.timeout_s + self.grace_s and self._waiting_for_a_peer():
            return False
        self._fire(silent)
        return True

    def _waiting_for_a_peer(self) -> bool:
        return any(p.get("progress", self.progress) < self.progress
                   for p in read_heartbeats(self.run_dir).values()
                   if p.get("attempt") == attempt())

    def _fire(self, silent_s: float) -> None:
        peers = {r: p for r, p in read_heartbeats(self.run_dir).items()
                 if p.get("attempt") == attempt()}
        behind = min(peers.values(), key=lambda p: p.get("progress", 0), default=None)
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


def flight_recorder_env(run_dir: str | Path, torch_version: str) -> dict[str, str]:
    """NCCL flight recorder settings (read when an NCCL process group is made). PyTorch 2.7
    renamed them TORCH_FR_* and warns about the old names."""
    major, minor = (int(x) for x in torch_version.split(".")[:2])
    new = (major, minor) >= (2, 7)
    prefix = Path(run_dir).resolve() / NCCL_TRACE / "rank_"
    return {
        "TORCH_FR_BUFFER_SIZE" if new else "TORCH_NCCL_TRACE_BUFFER_SIZE": "2000",
        "TORCH_FR_DUMP_TEMP_FILE" if new else "TORCH_NCCL_DEBUG_INFO_TEMP_FILE": str(prefix),
        "TORCH_NCCL_DUMP_ON_TIMEOUT": "1",
        "TORCH_NCCL_ASYNC_ERROR_HANDLING": "3",
    }


def enable_flight_recorder(run_dir: str | Path) -> dict[str, str]:
    """On a CUDA machine, put `flight_recorder_env` in this process's environment (keeping
    values the user set), for the ranks it starts or the process group it makes next. Returns
    what it set."""
    import torch

    if not torch.cuda.is_available():
        return {}
    env = {k: v for k, v in flight_recorder_env(run_dir, torch.__version__).items()
           if k not in os.environ}
    os.environ.update(env)
    (Path(run_dir) / NCCL_TRACE).mkdir(parents=True, exist_ok=True)
    return env
