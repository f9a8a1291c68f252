"""The cluster's observed rate of infrastructure failures, per node-hour, for
``checkpoint.interval = "auto"`` (`stoker.train.ckpt_interval`).

Over a window ending now: the failures are the attempt causes (`attempt_causes`) classified
``infra`` (`stoker.control.failure`); the exposure is every attempt's run time inside the window
times the number of distinct nodes its processes ran on (a running attempt counts up to now).
The rate is failures / node-hours, or None when the window holds no infrastructure failure or no
run time: then a job keeps its own ``checkpoint.mtbf_hours`` (no failure seen is no evidence of a
rate, and a near-empty history must not make every job save at its floor).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from stoker.control.store import CauseRecord, ProcessRecord
from stoker.train.ckpt_interval import NODES_ENV, RATE_ENV

WINDOW_S = 7 * 24 * 3600.0  # a week of history


@dataclass(frozen=True)
class FailureRate:
    failures: int  # infra-classified attempt failures in the window
    node_hours: float  # attempts' run time × nodes, inside the window
    per_node_hour: float | None  # None: no failure or no run time in the window


def failure_rate(causes: Iterable[CauseRecord], processes: Iterable[ProcessRecord], now: float,
                 window_s: float = WINDOW_S) -> FailureRate:
    since = now - window_s
    failures = sum(1 for c in causes if c.category == "infra" and since <= c.at <= now)
    attempts: dict[tuple[int, int], list[ProcessRecord]] = {}
    for p in processes:
        attempts.setdefault((p.job_id, p.attempt), []).append(p)
    node_seconds = 0.0
    for procs in attempts.values():
        start = max(since, min(p.create_time for p in procs))
        end = min(now, max(now if p.ended_at is None else p.ended_at for p in procs))
        node_seconds += max(0.0, end - start) * len({p.node for p in procs})
    node_hours = node_seconds / 3600
    rate = failures / node_hours if failures and node_hours > 0 else None
    return FailureRate(failures, node_hours, rate)


def rate_env(rate: FailureRate, nodes: int) -> Mapping[str, str]:
    """The job's variables that carry the rate to the training runtime (none without a rate)."""
    if rate.per_node_hour is None:
        return {}
    return {RATE_ENV: repr(rate.per_node_hour), NODES_ENV: str(max(1, nodes))}
