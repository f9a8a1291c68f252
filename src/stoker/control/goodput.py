"""Goodput: how much of the time a job held its resources was productive, and where the rest
went. Pure functions of a job's stored events (and, for a training job, its run's telemetry):
no I/O, no clock. docs/architecture.md, "Goodput", defines every term.

A *hold* is one allocation: from the job's admission (QUEUED -> ADMITTED) to the transition
that takes it out of ADMITTED/STARTING/RUNNING. Every figure of the breakdown is in
rank-seconds (wall seconds x the job's ranks); ``queued_s`` is wall seconds, not allocated.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from stoker.control.states import ACTIVE
from stoker.control.store import EventRecord
from stoker.spec.api import JobState

# Where allocated time that was not productive went, in the order they are charged.
LOSSES = ("startup", "restart", "recomputed", "data_wait", "checkpoint_stall", "straggler",
          "failed", "preempted", "other")


@dataclass(frozen=True)
class Hold:
    """One allocation of the job: ``admitted`` -> ``ended`` (now, for a hold still going).
    ``started``: when its processes were launched (None: never); ``outcome``: the state it
    ended in (SUCCEEDED, FAILED, PREEMPTED, CANCELLED, QUEUED: requeued before or at start;
    RUNNING: still going)."""

    index: int  # 1 for the job's first
    admitted: float
    started: float | None
    ended: float
    outcome: JobState


@dataclass(frozen=True)
class Step:
    """One metrics.jsonl record: the step ended at ``end`` (wall clock) after ``step_time_s``
    of which ``data_wait_s`` waited for input."""

    step: int
    end: float
    step_time_s: float
    data_wait_s: float


@dataclass(frozen=True)
class Telemetry:
    """A training run's records in the order written (attempts append to the same files), its
    checkpoint stalls, each (wall time it was recorded, seconds the loop was blocked), and the
    wall-time intervals in which some rank was flagged as a straggler."""

    steps: Sequence[Step] = ()
    stalls: Sequence[tuple[float, float]] = ()
    straggling: Sequence[tuple[float, float]] = ()


@dataclass
class Goodput:
    """A breakdown: ``allocated_s`` = ``productive_s`` + sum(``lost``), rank-seconds."""

    allocated_s: float = 0.0
    productive_s: float = 0.0
    lost: dict[str, float] = field(default_factory=lambda: dict.fromkeys(LOSSES, 0.0))
    queued_s: float = 0.0  # wall seconds waiting in the queue (not allocated)
    gpu_s: float = 0.0  # allocated GPU-seconds (rank-seconds x GPUs per rank)
    holds: int = 0
    telemetry: bool = False  # the training run's telemetry was used

    @property
    def ratio(self) -> float | None:
        return self.productive_s / self.allocated_s if self.allocated_s > 0 else None

    def add(self, other: Goodput) -> None:
        self.allocated_s += other.allocated_s
        self.productive_s += other.productive_s
        for reason, seconds in other.lost.items():
            self.lost[reason] = self.lost.get(reason, 0.0) + seconds
        self.queued_s += other.queued_s
        self.gpu_s += other.gpu_s
        self.holds += other.holds
        self.telemetry = self.telemetry or other.telemetry


def total(parts: Iterable[Goodput]) -> Goodput:
    out = Goodput()
    for part in parts:
        out.add(part)
    return out


def holds(events: Sequence[EventRecord], now: float
          ) -> tuple[list[Hold], list[tuple[float, float]]]:
    """The job's holds and its queued intervals, from its events in order (a hold or a wait
    still going ends at ``now``)."""
    found: list[Hold] = []
    queued: list[tuple[float, float]] = []
    admitted: float | None = None
    started: float | None = None
    waiting_since: float | None = None
    for e in events:
        if e.kind != "transition" or e.to_state is None or e.from_state == e.to_state:
            continue  # an annotation (a stop asked, a failure seen): no change of state
        to = e.to_state
        if to == JobState.QUEUED:
            waiting_since = e.at
        elif waiting_since is not None:
            queued.append((waiting_since, e.at))
            waiting_since = None
        if to == JobState.ADMITTED:
            admitted, started = e.at, None
        elif to == JobState.STARTING:
            started = e.at
        elif to not in ACTIVE and admitted is not None and e.from_state in ACTIVE:
            found.append(Hold(len(found) + 1, admitted, started, e.at, to))
            admitted = started = None
    if admitted is not None:
        found.append(Hold(len(found) + 1, admitted, started, now, JobState.RUNNING))
    if waiting_since is not None:
        queued.append((waiting_since, now))
    return found, queued


def account(events: Sequence[EventRecord], ranks: int, gpus_per_rank: float = 0.0,
            telemetry: Telemetry | None = None, now: float = 0.0,
            since: float | None = None) -> Goodput:
    """A job's goodput from its events (and a training run's ``telemetry``), counting only
    what falls after ``since`` (an interval by its overlap, a step or stall by its end)."""
    found, waits = holds(events, now)
    lo = float("-inf") if since is None else since
    out = Goodput(telemetry=telemetry is not None and bool(telemetry.steps))
    out.queued_s = sum(max(0.0, b - max(a, lo)) for a, b in waits)
    kept = _kept(telemetry.steps) if out.telemetry and telemetry else []
    for hold in found:
        if hold.ended <= lo:
            continue
        part = (_by_telemetry(hold, kept, telemetry.stalls, lo, telemetry.straggling)
                if out.telemetry and telemetry
                else _by_events(hold, lo))
        out.holds += 1
        for reason, seconds in part.items():
            seconds *= ranks
            if reason == "productive":
                out.productive_s += seconds
            else:
                out.lost[reason] += seconds
            out.allocated_s += seconds
    out.gpu_s = out.allocated_s * gpus_per_rank
    return out


def _kept(steps: Sequence[Step]) -> list[tuple[Step, bool]]:
    """Each record with whether its work was kept: a record is redone (not kept) when a later
    record has the same or an earlier step (a restart or rollback went back past it)."""
    out: list[tuple[Step, bool]] = []
    lowest_after = float("inf")
    for s in reversed(steps):
        out.append((s, s.step < lowest_after))
        lowest_after = min(lowest_after, s.step)
    out.reverse()
    return out


def _startup(hold: Hold) -> str:
    return "startup" if hold.index == 1 else "restart"


def _residual(hold: Hold) -> str:
    return {JobState.FAILED: "failed", JobState.PREEMPTED: "preempted"}.get(hold.outcome,
                                                                          "other")


def _by_events(hold: Hold, lo: float) -> dict[str, float]:
    """A hold without telemetry: admission to launch is start-up (restart after the first
    hold); the run is productive if it succeeded (or still runs), else lost by its outcome."""
    start = max(hold.admitted, lo)
    launched = hold.ended if hold.started is None else max(hold.started, start)
    run = max(0.0, hold.ended - launched)
    running = hold.outcome in (JobState.SUCCEEDED, JobState.RUNNING)
    return {_startup(hold): max(0.0, launched - start),
            "productive" if running else _residual(hold): run}


def _straggler_excess(steps: Sequence[Step], straggling: Sequence[tuple[float, float]]
                      ) -> float:
    """What the steps that ended while a rank was flagged took beyond the median step of the
    others (data wait aside): the time the gang waited for its straggler. 0 when every step
    was flagged (no even step to measure against)."""
    def flagged(s: Step) -> bool:
        return any(a <= s.end < b for a, b in straggling)

    slow = [s.step_time_s - s.data_wait_s for s in steps if flagged(s)]
    even = [s.step_time_s - s.data_wait_s for s in steps if not flagged(s)]
    if not slow or not even:
        return 0.0
    usual = statistics.median(even)
    return sum(max(0.0, t - usual) for t in slow)


def _by_telemetry(hold: Hold, kept: Sequence[tuple[Step, bool]],
                  stalls: Sequence[tuple[float, float]], lo: float,
                  straggling: Sequence[tuple[float, float]] = ()) -> dict[str, float]:
    """A training hold: start-up until its first step began, then its steps (kept: productive
    less their data wait and less what a flagged straggler added; redone: recomputed), its
    checkpoint stalls, and the rest (shutdown,
    evaluation, a failure's detection) by its outcome. Each is charged in that order out of
    what the hold has left, so the parts sum to the hold exactly."""
    start = max(hold.admitted, lo)
    mine = [(s, k) for s, k in kept if hold.admitted < s.end <= hold.ended and s.end > lo]
    first = min((s.end - s.step_time_s for s, _ in mine), default=None)
    if first is None:
        first = hold.ended if hold.started is None else hold.started
    work = sum(s.step_time_s - s.data_wait_s for s, k in mine if k)
    slowed = _straggler_excess([s for s, k in mine if k], straggling)
    wanted = [
        (_startup(hold), max(0.0, min(first, hold.ended) - start)),
        ("recomputed", sum(s.step_time_s for s, k in mine if not k)),
        ("data_wait", sum(s.data_wait_s for s, k in mine if k)),
        ("straggler", slowed),
        ("productive", work - slowed),
        ("checkpoint_stall", sum(d for at, d in stalls
                                 if hold.admitted < at <= hold.ended and at > lo)),
    ]
    left = max(0.0, hold.ended - start)
    out: dict[str, float] = {}
    for reason, seconds in wanted:
        charged = min(max(0.0, seconds), left)
        out[reason] = out.get(reason, 0.0) + charged
        left -= charged
    out[_residual(hold)] = out.get(_residual(hold), 0.0) + left
    return out
