"""The simulator's `stoker-afs` policy: admission fair sharing between the users who share a
queue, against `stoker` on a small synthetic trace with one heavy user and three light ones."""

from __future__ import annotations

from collections import defaultdict

import pytest

from stoker.sim.cluster import from_node_list
from stoker.sim.engine import Simulator
from stoker.sim.metrics import RunResult
from stoker.sim.policies import resolve
from stoker.sim.trace import TraceJob, TraceNode

HOUR = 3600.0
WINDOW = 4 * HOUR  # every user has jobs waiting throughout


def trace() -> list[TraceJob]:
    """8 GPUs, one queue. User "heavy" submits 40 one-hour 1-GPU jobs in the first 40 s; each
    light user submits one every 20 minutes (3 GPUs of demand each, more than an equal share)."""
    jobs = [TraceJob(f"h{i}", float(i), HOUR, user="heavy") for i in range(40)]
    for u in range(3):
        jobs += [TraceJob(f"l{u}-{i}", 20 * 60.0 * i + u, HOUR, user=f"light{u}")
                 for i in range(int(WINDOW // (20 * 60)))]
    return jobs


def gpu_hours_in_window(result: RunResult, users: dict[str, str]) -> dict[str, float]:
    """GPU-hours each user held during the first WINDOW seconds (jobs run once, no preemption
    in one queue of equal priorities: start = finish - duration)."""
    out: dict[str, float] = defaultdict(float)
    for job in result.jobs:
        assert job.preemptions == 0 and job.failures == 0
        start = job.finish - job.duration
        out[users[job.id]] += job.gpus * max(0.0, min(job.finish, WINDOW) - min(start, WINDOW))
    return {u: v / HOUR for u, v in out.items()}


def unfairness(held: dict[str, float]) -> float:
    """1 - Jain's fairness index of the users' GPU-hours: 0 when equal, 1 - 1/n at worst."""
    values = list(held.values())
    return 1.0 - sum(values) ** 2 / (len(values) * sum(v * v for v in values))


def run(policy: str) -> tuple[dict[str, float], RunResult]:
    jobs = trace()
    cluster = from_node_list([TraceNode("n0", 8)], ["t0"], "test")
    result = Simulator(cluster, jobs, ["t0"] * len(jobs), resolve(policy, cluster)).run()
    return gpu_hours_in_window(result, {j.id: j.user for j in jobs}), result


def test_stoker_afs_lowers_unfairness_between_users_of_a_queue() -> None:
    plain, plain_run = run("stoker")
    afs, afs_run = run("stoker-afs")
    assert all(j.finish > 0 for j in plain_run.jobs + afs_run.jobs)  # everything ran
    # The same work is done in the window: admission fair sharing only reorders.
    assert sum(afs.values()) == pytest.approx(sum(plain.values()), rel=1e-3)
    print(f"\nGPU-hours in the first 4 h: stoker { {u: round(v, 2) for u, v in plain.items()} }, "
          f"stoker-afs { {u: round(v, 2) for u, v in afs.items()} }; "
          f"unfairness (1 - Jain) stoker {unfairness(plain):.3f}, "
          f"stoker-afs {unfairness(afs):.3f}")
    assert unfairness(afs) < unfairness(plain) / 2
    assert afs["heavy"] < plain["heavy"]
    assert min(afs[f"light{u}"] for u in range(3)) > max(plain[f"light{u}"] for u in range(3))
