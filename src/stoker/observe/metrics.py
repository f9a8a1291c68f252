"""Per-step telemetry: the step timer, peak memory, the metrics.jsonl writer and the run summary.

The timer splits an optimizer step into data wait (host time blocked on the loader),
forward+backward and optimizer, and keeps the host time between one step's end and the next
one's start (the loop's own work: logging, checkpoints, eval, faults; not the log step's
gather, `StepTimer.gathering`, where a rank waits for the others and, on CUDA, for the device).
On CUDA the step and its two compute phases are timed with CUDA events (device time), read at
the next log step rather than waited for; on CPU everything is perf_counter.

On CPU the timer also splits forward+backward and optimizer into compute and exposed
communication: the main thread's CPU time over them (`time.thread_time`) is compute; the rest
of their wall time, and the log step's gather before the step, is exposed communication
(gloo runs a collective on its own threads while the caller blocks on a condition variable,
using no CPU; autograd runs a CPU backward on the calling thread). On CUDA the host thread runs
ahead of the device, so its CPU time says nothing of the device's work, and the compute
stream's time includes its waits for NCCL's stream: both are NaN there, "not measured".
"""

from __future__ import annotations

import json
import math
import resource
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch

PHASES = ("data_wait", "fwd_bwd", "optim")


@dataclass
class StepTimes:
    step_time_s: float
    data_wait_s: float
    fwd_bwd_s: float
    optim_s: float
    host_s: float = 0.0  # from the previous step's stop to this step's start (host clock)
    compute_s: float = math.nan  # of fwd_bwd + optim, the main thread's CPU time (CPU only)
    comm_s: float = math.nan  # the rest of them, and the log step's gather before (CPU only)


class StepTimer:
    """Times one step at a time: ``start()``, ``with phase(name): ...`` (any number), ``stop()``.

    ``stop()`` never waits for the device: on CUDA it returns times still held in CUDA events,
    which `PendingTimes.resolve` reads once the device has passed them (after the log step's
    collective), so the host can run ahead of the device as it does without telemetry.
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._t0 = 0.0
        self._host: dict[str, float] = {}
        self._cpu = 0.0  # the main thread's CPU time in fwd_bwd and optim (CPU runs)
        self.cpu_clock = time.thread_time  # (benchmarks/train_overhead.py swaps it, to cost it)
        self._events: dict[str, list[tuple[torch.cuda.Event, torch.cuda.Event]]] = {}
        self._begin: torch.cuda.Event | None = None
        self._stopped: float | None = None
        self._between = 0.0
        self._gathering = 0.0  # since the last stop, in the log step's collective
        self._gathered = 0.0  # the same, for the step under way

    def start(self) -> None:
        self._host = dict.fromkeys(PHASES, 0.0)
        self._events = {name: [] for name in PHASES}
        self._cpu = 0.0
        self._t0 = time.perf_counter()
        self._gathered, self._gathering = self._gathering, 0.0
        self._between = (0.0 if self._stopped is None
                         else max(0.0, self._t0 - self._stopped - self._gathered))
        self._begin = self._record() if self.cuda else None

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if self.cuda and name != "data_wait":
            begin = self._record()
            yield
            self._events[name].append((begin, self._record()))
        else:
            t, cpu = time.perf_counter(), self.cpu_clock()
            yield
            self._host[name] += time.perf_counter() - t
            if name != "data_wait":
                self._cpu += self.cpu_clock() - cpu

    @contextmanager
    def gathering(self) -> Iterator[None]:
        """A collective between two steps (the log step's): its time counts as the next step's
        communication, not as its host time, since there a rank waits for the others."""
        t = time.perf_counter()
        yield
        self._gathering += time.perf_counter() - t

    def stop(self) -> PendingTimes:
        self._stopped = time.perf_counter()
        host = StepTimes(self._stopped - self._t0, self._host["data_wait"],
                         self._host["fwd_bwd"], self._host["optim"], self._between)
        if not self.cuda:
            busy = host.fwd_bwd_s + host.optim_s
            host.compute_s = min(self._cpu, busy)
            host.comm_s = busy - host.compute_s + self._gathered
            return PendingTimes(host)
        return PendingTimes(host, self._events, (self._begin, self._record()))

    @staticmethod
    def _record() -> torch.cuda.Event:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event


class PendingTimes:
    """A step's times; on CUDA read from its events by `resolve`, once they have completed.
    The step time is then device time, from the step's start to its end."""

    def __init__(self, host: StepTimes,
                 events: dict[str, list[tuple[torch.cuda.Event, torch.cuda.Event]]] | None = None,
                 span: tuple[torch.cuda.Event | None, torch.cuda.Event] | None = None) -> None:
        self.host = host
        self.events = events
        self.span = span

    def resolve(self) -> StepTimes:
        if self.events is None or self.span is None or self.span[0] is None:
            return self.host
        self.span[1].synchronize()
        device = {name: sum(b.elapsed_time(e) for b, e in pairs) / 1000.0
                  for name, pairs in self.events.items()}
        return StepTimes(self.span[0].elapsed_time(self.span[1]) / 1000.0, self.host.data_wait_s,
                         device["fwd_bwd"], device["optim"], self.host.host_s)


def peak_memory_bytes(device: torch.device) -> int:
    """Peak since the process started: the caching allocator's on GPU, the process RSS on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(maxrss if sys.platform == "darwin" else maxrss * 1024)  # Linux reports KiB


ATTEMPT_KEY = "attempt"  # every record's attempt number: 1 for a run's first start, +1 a restart
TAIL_BYTES = 1 << 16


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Every record of a metrics.jsonl in the order written; a torn or foreign line is skipped
    (a killed writer can leave half a line)."""
    try:
        lines = path.read_bytes().splitlines()
    except OSError:
        return []
    return [r for r in map(_parse, lines) if r is not None and "step" in r]


def latest_per_step(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per step, by step: the one of the latest attempt (a restart or resume redoes
    the steps after its checkpoint), the later line among equals (a loss-guard rollback redoes
    steps within an attempt). Records without an attempt number count as attempt 0."""
    best: dict[int, tuple[int, int, dict[str, Any]]] = {}
    for i, r in enumerate(records):
        key = (int(r.get(ATTEMPT_KEY, 0)), i)
        if r["step"] not in best or key > best[r["step"]][:2]:
            best[r["step"]] = (*key, r)
    return [best[step][2] for step in sorted(best)]


def last_attempt(path: Path) -> int:
    """The highest attempt number among a metrics file's last records (0: none). Attempts only
    grow down the file, so its tail is enough however long the run."""
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, 2) - TAIL_BYTES))
            tail = f.read().splitlines()
    except OSError:
        return 0
    attempts = [int(r.get(ATTEMPT_KEY, 0)) for r in map(_parse, tail) if r is not None]
    return max(attempts, default=0)


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


class MetricsWriter:
    """Appends one JSON object per line and flushes it, so a crash loses at most one record."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file: IO[str] = path.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


@dataclass
class RunStats:
    """What the summary needs from every step record, kept as plain lists."""

    records: list[dict[str, Any]] = field(default_factory=list)
    evals: list[tuple[int, float]] = field(default_factory=list)

    @classmethod
    def of(cls, records: list[dict[str, Any]]) -> RunStats:
        stats = cls()
        for record in records:
            stats.add(record)
        return stats

    def add(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        if "eval_loss" in record:
            self.evals.append((record["step"], record["eval_loss"]))

    def summary(self) -> dict[str, Any]:
        """Medians and shares over the steps after the first (it pays for warm-up)."""
        recs = self.records
        if not recs:
            return {"steps_completed": 0}
        steady = recs[1:] if len(recs) > 1 else recs

        def median(key: str) -> float:
            return float(statistics.median(r[key] for r in steady))

        def share(key: str) -> float:
            total = sum(r["step_time_s"] for r in steady)
            return sum(r[key] for r in steady) / total if total > 0 else 0.0

        out: dict[str, Any] = {
            "steps_completed": recs[-1]["step"],
            "loss_first": recs[0]["loss"],
            "loss_last": recs[-1]["loss"],
            "tokens_trained": sum(r["tokens"] for r in recs),
            "step_time_median_s": median("step_time_s"),
            "tokens_per_s_median": median("tokens_per_s"),
            "tokens_per_s_per_device_median": median("tokens_per_s_per_device"),
            "mfu_median": median("mfu"),
            "data_wait_fraction": share("data_wait_s"),
            "fwd_bwd_fraction": share("fwd_bwd_s"),
            "optim_fraction": share("optim_s"),
            "peak_mem_bytes": max(r["peak_mem_bytes"] for r in recs),
            "max_rank_step_time_spread_s": max(
                max(r["rank_step_times"]) - min(r["rank_step_times"]) for r in recs),
        }
        if self.evals:
            out["eval_loss_last"] = self.evals[-1][1]
            out["eval_loss_best"] = min(v for _, v in self.evals)
        return out


def attempt_history(records: list[dict[str, Any]], known: list[dict[str, Any]],
                    current: dict[str, Any]) -> list[dict[str, Any]]:
    """Every attempt of a run, oldest first: ``known`` (from the previous summary.json), then
    those only the metrics know of (killed before writing a summary: their wall time is the
    span of their records), then ``current``. Each is {"attempt", "status", "wall_time_s",
    "first_step", "last_step"}."""
    seen = {int(a["attempt"]) for a in known} | {int(current["attempt"])}
    spans: dict[int, list[dict[str, Any]]] = {}
    for r in records:
        a = int(r.get(ATTEMPT_KEY, 0))
        if a not in seen:
            spans.setdefault(a, []).append(r)
    lost = [{"attempt": a, "status": "ended without a summary",
             "wall_time_s": max(r["time"] for r in rs) - min(r["time"] - r["step_time_s"]
                                                             for r in rs),
             "first_step": rs[0]["step"], "last_step": rs[-1]["step"]}
            for a, rs in sorted(spans.items())]
    return sorted([*known, *lost, current], key=lambda a: int(a["attempt"]))
