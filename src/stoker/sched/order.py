"""The order of each queue's pending jobs: one function, used by the scheduling cycle itself
and by everyone who shows a queue (the control plane's positions, the simulator).

A job's key, smallest first: nominated by the last cycle (it waits for its victims), then
starving (pending at least ``starvation_age``), then higher priority, then the policy's order
value (expected duration under "sjf" and "srtf", the attained-service level under "las"), then
creation time, then its place in the snapshot.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from typing import Final

from stoker.sched.types import JobId, PendingJob, Policy, Snapshot

INF = float("inf")
# (urgency, -priority, order value, created, seq); under admission fair sharing the cycle makes
# the second item (tenant usage, -priority): `stoker.sched.tenant_order`.
QueueKey = tuple[int, int | tuple[float, int], float, float, int]
SEQ: Final = 4  # the field of a QueueKey that is its job's index in the snapshot's pending list


def queue_keys(pending: Sequence[PendingJob], policy: Policy, now: float) -> list[QueueKey]:
    """Each pending job's key in its queue, in snapshot order (the last field is the index)."""
    age = policy.starvation_age
    cutoff = now - age if age is not None else -INF
    values: list[float]
    if policy.order in ("sjf", "srtf"):
        values = [INF if j.expected_duration is None else j.expected_duration for j in pending]
    elif policy.order == "las":
        levels = policy.las_thresholds
        values = [float(bisect_right(levels, j.attained_service)) for j in pending]
    else:
        values = [0.0] * len(pending)
    return [(0 if job.nominated else 1 if job.created_at <= cutoff else 2, -job.priority,
             values[seq], job.created_at, seq) for seq, job in enumerate(pending)]


def queue_positions(snapshot: Snapshot, policy: Policy) -> dict[JobId, int]:
    """1-based position of each pending job in its queue, in the order the scheduler takes
    them (a job behind an earlier one that cannot start may still start first: BestEffortFIFO
    lets it go ahead). Under admission fair sharing, tenants' usage as the cycle starts: the
    entry penalties of the cycle's own admissions are left out."""
    pending = snapshot.pending
    keys = queue_keys(pending, policy, snapshot.now)
    if policy.admission_fair_sharing is not None:  # usage before priority, as the cycle keys it
        usage = snapshot.tenant_usage or {}
        keys = [(u, (usage.get((job.queue, job.tenant), 0.0), -job.priority), v, c, seq)
                for (u, _, v, c, seq), job in zip(keys, pending, strict=True)]
    by_queue: dict[str, list[QueueKey]] = {}
    for key in keys:
        by_queue.setdefault(pending[key[SEQ]].queue, []).append(key)
    positions: dict[JobId, int] = {}
    for keys in by_queue.values():
        keys.sort()
        for n, key in enumerate(keys, 1):
            positions[pending[key[SEQ]].id] = n
    return positions
