"""What one simulated run produced, and the summary metrics computed from it.

JCT = finish - arrival. Queueing delay = the time a job spent waiting (first wait and every wait
after a preemption or failure). Load = the trace's GPU-hours / (cluster GPUs x hours from the
first arrival to the last): above 1, queues grow for as long as jobs keep arriving.

Idle while waiting = GPU-seconds free on up nodes while some job was pending, and fragmentation =
the part of them on nodes with fewer free GPUs than the smallest rank of any pending job allowed
there (no waiting job could use them), both as a share of capacity x makespan. The rest of the
idle-while-waiting capacity was held back by quotas, gang or topology constraints.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

GPU_BUCKETS = ((1.0, "1"), (4.0, "2-4"), (8.0, "5-8"), (float("inf"), ">8"))


@dataclass(slots=True)
class JobOutcome:
    id: str
    queue: str
    gpus: float
    arrival: float
    duration: float
    finish: float = -1.0
    waited: float = 0.0
    preemptions: int = 0
    failures: int = 0
    lost_gpu_seconds: float = 0.0
    used_gpu_seconds: float = 0.0

    @property
    def jct(self) -> float:
        return self.finish - self.arrival


@dataclass
class Usage:
    """Change points of the cluster's busy GPUs and up GPUs, plus fragmentation integrals."""

    times: list[float] = field(default_factory=list)
    busy: list[float] = field(default_factory=list)
    up: list[float] = field(default_factory=list)
    fragmented_gpu_seconds: float = 0.0
    free_gpu_seconds_while_pending: float = 0.0

    def record(self, now: float, busy: float, up: float) -> None:
        if self.times and self.times[-1] == now:
            self.busy[-1], self.up[-1] = busy, up
        else:
            self.times.append(now)
            self.busy.append(busy)
            self.up.append(up)

    def busy_gpu_seconds(self, end: float) -> float:
        t = np.append(np.asarray(self.times), end)
        return float(np.sum(np.diff(t) * np.asarray(self.busy)))

    def series(self, bins: int = 200) -> dict[str, list[float]]:
        """Time-weighted mean busy and up GPUs over `bins` equal intervals."""
        if len(self.times) < 2:
            return {"t": list(self.times), "busy": list(self.busy), "up": list(self.up)}
        t = np.asarray(self.times)
        edges = np.linspace(t[0], t[-1], bins + 1)
        out: dict[str, list[float]] = {"t": edges[:-1].tolist()}
        for name in ("busy", "up"):
            values = np.asarray(getattr(self, name))
            cum = np.concatenate([[0.0], np.cumsum(np.diff(t) * values[:-1])])
            at_edges = np.interp(edges, t, cum)
            out[name] = (np.diff(at_edges) / np.diff(edges)).tolist()
        return out


@dataclass
class RunResult:
    policy: str
    trace: str
    gpus: float
    nodes: int
    jobs: list[JobOutcome]
    usage: Usage
    entitlement: dict[str, float]
    skipped: dict[str, int] = field(default_factory=dict)
    sched_calls: int = 0
    sched_seconds: float = 0.0
    wall_seconds: float = 0.0
    node_failures: int = 0

    def summary(self) -> dict[str, Any]:
        return summarize(self)


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"mean": 0.0, "median": 0.0, "p95": 0.0, "p99": 0.0}
    a = np.asarray(values, dtype=float)
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {"mean": float(a.mean()), "median": float(p50), "p95": float(p95), "p99": float(p99)}


def offered_load(jobs: list[JobOutcome], gpus: float) -> float:
    """GPU-hours asked for / (GPUs x hours between the first and the last arrival)."""
    if not jobs or gpus <= 0:
        return 0.0
    span = max(j.arrival for j in jobs) - min(j.arrival for j in jobs)
    work = sum(j.gpus * j.duration for j in jobs)
    return work / (gpus * span) if span > 0 else float("inf")


def bucket(gpus: float) -> str:
    """The GPU-count bucket of a job ("1" includes fractional GPUs)."""
    return next(name for high, name in GPU_BUCKETS if gpus <= high)


def summarize(run: RunResult) -> dict[str, Any]:
    done = [j for j in run.jobs if j.finish >= 0]
    start = min((j.arrival for j in run.jobs), default=0.0)
    end = max((j.finish for j in done), default=start)
    makespan = end - start
    busy = run.usage.busy_gpu_seconds(end) if run.usage.times else 0.0
    pending_free = run.usage.free_gpu_seconds_while_pending
    capacity_seconds = run.gpus * makespan
    return {
        "policy": run.policy,
        "trace": run.trace,
        "jobs": len(run.jobs),
        "finished": len(done),
        "nodes": run.nodes,
        "gpus": run.gpus,
        "load": offered_load(run.jobs, run.gpus),
        "makespan_h": makespan / 3600,
        "jct_h": _hours(percentiles([j.jct for j in done])),
        "wait_h": _hours(percentiles([j.waited for j in done])),
        "by_gpus": _grouped(done, lambda j: bucket(j.gpus)),
        "by_tenant": _grouped(done, lambda j: j.queue),
        "utilization": busy / (run.gpus * makespan) if makespan > 0 and run.gpus else 0.0,
        "idle_while_waiting": pending_free / capacity_seconds if capacity_seconds else 0.0,
        "fragmentation": (run.usage.fragmented_gpu_seconds / capacity_seconds
                          if capacity_seconds else 0.0),
        "preemptions": sum(j.preemptions for j in run.jobs),
        "restarts_after_failure": sum(j.failures for j in run.jobs),
        "node_failures": run.node_failures,
        "gpu_hours_lost": sum(j.lost_gpu_seconds for j in run.jobs) / 3600,
        "gpu_hours_used": sum(j.used_gpu_seconds for j in run.jobs) / 3600,
        "fair_share": fair_share(run),
        "utilization_over_time": _utilization_series(run, bins=48),
        "skipped": run.skipped,
        "sched_calls": run.sched_calls,
        "sched_seconds": run.sched_seconds,
        "wall_seconds": run.wall_seconds,
    }


def fair_share(run: RunResult) -> dict[str, dict[str, float]]:
    """Per queue: its share of the GPU-hours used vs its share of the nominal quota."""
    used: dict[str, float] = defaultdict(float)
    for j in run.jobs:
        used[j.queue] += j.used_gpu_seconds
    total_used = sum(used.values()) or 1.0
    total_quota = sum(run.entitlement.values()) or 1.0
    queues = sorted(set(used) | set(run.entitlement))
    return {q: {"used": used[q] / total_used,
                "entitled": run.entitlement.get(q, 0.0) / total_quota} for q in queues}


def _utilization_series(run: RunResult, bins: int) -> dict[str, list[float]]:
    """Busy GPUs / capacity in `bins` equal intervals of the run (t in hours)."""
    series = run.usage.series(bins)
    if not run.gpus:
        return {"t_h": [], "busy": []}
    return {"t_h": [round(t / 3600, 3) for t in series["t"]],
            "busy": [round(b / run.gpus, 4) for b in series["busy"]]}


def _grouped(jobs: list[JobOutcome], key: Any) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[JobOutcome]] = defaultdict(list)
    for j in jobs:
        groups[key(j)].append(j)
    return {name: {"jobs": len(g), "jct_h": _hours(percentiles([j.jct for j in g])),
                   "wait_h": _hours(percentiles([j.waited for j in g]))}
            for name, g in sorted(groups.items())}


def _hours(stats: dict[str, float]) -> dict[str, float]:
    return {k: v / 3600 for k, v in stats.items()}
