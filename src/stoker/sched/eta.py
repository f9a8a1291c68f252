"""When will a pending job start? Replay the running jobs' expected ends through the scheduler.

The estimate runs the real scheduling cycle on the current snapshot, then jumps to the next
time a running job is expected to end, takes it out, and runs the cycle again, until every
pending job has started or nothing more is known to end. A job admitted at a replayed time
starts then and is expected to run for its ``expected_duration`` (the control plane uses the
job's ``max_run_time``, as Slurm's start estimates use its time limit); a job with none never
ends within the replay, so the jobs that would need its room get no estimate.

What the estimate leaves out, on purpose: jobs not submitted yet (a later higher-priority job
delays the estimate), jobs ending before their expected end (which brings it forward), and
preemption (the replay never starts a job by stopping another: no victim is lost in an
estimate, and a job that needs victims gets its start once room frees up by itself). Jobs being
preempted now are expected to stop at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from stoker.sched.cache import SchedulerCache
from stoker.sched.cycle import schedule
from stoker.sched.types import JobId, PendingJob, Policy, Resources, RunningJob, Snapshot

INF = float("inf")
MAX_CYCLES = 200


def estimate_starts(snapshot: Snapshot, policy: Policy, ends: Mapping[JobId, float],
                    max_cycles: int = MAX_CYCLES) -> dict[JobId, float]:
    """The expected start time of each pending job that gets one within ``max_cycles``
    replayed cycles. ``ends``: each running job's expected end (missing: unknown)."""
    policy = replace(policy, preemption=False, explain=False)
    now = snapshot.now
    end_of = {r.id: now if r.preempting else max(now, ends.get(r.id, INF))
              for r in snapshot.running}
    running = list(snapshot.running)
    pending = list(snapshot.pending)
    starts: dict[JobId, float] = {}
    cache = SchedulerCache()
    for _ in range(max_cycles):
        decisions = schedule(replace(snapshot, now=now, running=running, pending=pending),
                             policy, cache)
        if decisions.admit:
            by_id = {job.id: job for job in pending}
            for a in decisions.admit:
                job = by_id[a.job]
                starts[a.job] = now
                running.append(_started(job, a.flavor, a.nodes, job.per_rank, now))
                running.extend(_started(job, r.flavor, r.nodes, role.per_rank, now)
                               for r, role in zip(a.roles, job.roles, strict=True))
                end_of[a.job] = INF if job.expected_duration is None \
                    else now + job.expected_duration
            pending = [job for job in pending if job.id not in starts]
        if not pending:
            break
        nxt = min((end_of[r.id] for r in running), default=INF)
        if nxt == INF:
            break
        now = max(now, nxt)
        running = [r for r in running if end_of[r.id] > now]
    return starts


def _started(job: PendingJob, flavor: str, nodes: tuple[str, ...], per_rank: Resources,
             now: float) -> RunningJob:
    """One role of ``job`` (a multi-role job runs as one entry per role, as in a snapshot)."""
    return RunningJob(job.id, job.queue, job.priority, flavor, nodes, per_rank,
                      created_at=job.created_at, started_at=now,
                      attained_service=job.attained_service)
