"""One scheduler, two clocks: the simulator's snapshot and the live control plane's snapshot of
the same state (a real SQLite store read by the real reconciler) give the same decisions."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from stoker.control.db import make_engine, migrate
from stoker.control.local_executor import LocalExecutor
from stoker.control.reconciler import Reconciler
from stoker.control.sql_store import SqlStore
from stoker.control.store import NewJob
from stoker.sched import Decisions, Snapshot, schedule
from stoker.sim.cluster import SimCluster, from_toml
from stoker.sim.engine import SimOptions, Simulator
from stoker.sim.policies import resolve
from stoker.sim.tenancy import assign
from stoker.sim.trace import TraceJob
from stoker.spec.api import JobState
from stoker.spec.job import JobSpec

CLUSTER = """
topology = ["rack"]
default_priority_class = "normal"

[priority_classes]
low = 0
normal = 100

[flavors.a100]
gpu_model = "A100"

[[nodes]]
name = "gpu"
count = 3
flavor = "a100"
gpus = 4
labels = { rack = "r1" }

[cohorts.lab]

[queues.alice]
cohort = "lab"
preemption = { within_queue = "LowerPriority", reclaim_within_cohort = "Any" }
[queues.alice.quotas.a100]
gpus = 6

[queues.bob]
cohort = "lab"
preemption = { within_queue = "LowerPriority", reclaim_within_cohort = "Any" }
[queues.bob.quotas.a100]
gpus = 6
"""

CLASSES = {0: "low", 100: "normal"}
# bob fills the cluster (borrowing 6 GPUs of alice's quota); at NOW alice wants hers back, and a
# high-priority bob job arrives while bob's low-priority ones run.
JOBS = [
    TraceJob("b1", 1, 1000, gpus_per_rank=4, vc="bob", priority=0),
    TraceJob("b2", 2, 1000, gpus_per_rank=4, vc="bob", priority=0),
    TraceJob("b3", 3, 1000, gpus_per_rank=4, vc="bob", priority=100),
    TraceJob("a1", 70, 500, gpus_per_rank=4, vc="alice", priority=100),
    TraceJob("a2", 70, 500, ranks=2, gpus_per_rank=1, vc="alice", priority=0),
    TraceJob("b4", 70, 300, gpus_per_rank=2, vc="bob", priority=100),
]
NOW = 70.0


def spec_of(job: TraceJob) -> JobSpec:
    return JobSpec(name=job.id, queue=job.vc, priority_class=CLASSES[job.priority],
                   ranks=job.ranks, resources={"gpus": job.gpus_per_rank, "cpus": 0, "memory": 0},
                   command=("sleep", "1000"))


def live_store(tmp_path: Path, sim: Simulator, cluster: SimCluster) -> SqlStore:
    """Submit every job that has arrived by NOW, in the order the simulator saw them, and
    record the simulator's running jobs as running with the same placement and service."""
    clock = [0.0]
    engine = make_engine(f"sqlite:///{tmp_path / 'stoker.db'}")
    migrate(engine)
    store = SqlStore(engine, clock=lambda: clock[0])
    arrived = sorted(list(sim.running.values()) + list(sim.pending.values()),
                     key=lambda j: j.idx)
    for job in arrived:
        trace_job = JOBS[job.idx]
        spec = spec_of(trace_job)
        clock[0] = job.created_at
        store.submit(NewJob(tenant=trace_job.vc, name=spec.name, queue=spec.queue,
                            priority_class=spec.priority_class or "",
                            priority=cluster.config.priority(spec.priority_class),
                            spec={"job": spec.model_dump(mode="json"), "train": None}), "test")
    for job in sim.running.values():
        placement = {"flavor": job.flavor, "nodes": [sim.node_list[i].name for i in job.nodes],
                     "borrowing": False}
        store.transition(job.idx + 1, (JobState.QUEUED,),
                         (JobState.ADMITTED, JobState.STARTING, JobState.RUNNING), "admitted",
                         "test", {"placement": placement, "admitted_at": job.start,
                                  "started_at": job.start,
                                  # earlier attempts' service; the snapshot adds this one's
                                  "attained_s": job.attained})
    return store


def normalized(snapshot: Snapshot, job_id: Any) -> dict[str, Any]:
    """The snapshot with job ids mapped to trace names; the SJF oracle (simulator only) left
    out."""
    return {
        "now": snapshot.now, "queues": tuple(snapshot.queues), "cohorts": tuple(snapshot.cohorts),
        "nodes": tuple(snapshot.nodes), "topology": snapshot.topology,
        "running": sorted((job_id(r.id), r.queue, r.priority, r.flavor, r.nodes, r.per_rank,
                           r.created_at, r.started_at, r.progress, r.attained_service,
                           r.preempting) for r in snapshot.running),
        "pending": sorted((job_id(p.id), p.queue, p.priority, p.created_at, p.ranks, p.per_rank,
                           p.flavors, p.topology, p.topology_required, p.attained_service)
                          for p in snapshot.pending),
    }


def named(decisions: Decisions, job_id: Any) -> dict[str, Any]:
    return {
        "admit": [(job_id(a.job), a.queue, a.flavor, a.nodes, a.borrowing)
                  for a in decisions.admit],
        "preempt": [(job_id(p.job), job_id(p.by), p.reason) for p in decisions.preempt],
    }


def test_same_snapshot_same_decisions(tmp_path: Path) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text(CLUSTER)
    cluster = from_toml(path)
    policy = resolve("stoker", cluster)
    sim = Simulator(cluster, JOBS, assign(JOBS, ["alice", "bob"], "vc"), policy,
                    SimOptions(checkpoint_interval=math.inf))
    sim.run_until(NOW)
    assert [JOBS[i].id for i in sim.running] == ["b1", "b2", "b3"]
    assert sorted(JOBS[i].id for i in sim.pending) == ["a1", "a2", "b4"]

    store = live_store(tmp_path, sim, cluster)
    reconciler = Reconciler(store, LocalExecutor(tmp_path / "jobs"), cluster.config,
                            cluster.nodes, tmp_path / "jobs", clock=lambda: NOW)
    live = reconciler.snapshot(NOW)
    simulated = sim.snapshot(NOW)

    def sim_name(i: Any) -> str:
        return JOBS[int(i)].id

    def live_name(i: Any) -> str:
        return JOBS[int(i) - 1].id

    assert normalized(simulated, sim_name) == normalized(live, live_name)
    assert reconciler.policy == policy.policy
    decisions = schedule(simulated, policy.policy)
    from_sim = named(decisions, sim_name)
    assert from_sim == named(schedule(live, reconciler.policy), live_name)
    # Not a trivial case: alice reclaims her quota from bob.
    assert "reclaim" in {reason for _, _, reason in from_sim["preempt"]}
    # The simulator applies these decisions: the victims are requeued, the admitted start.
    sim.apply(decisions, NOW)
    assert {JOBS[j.idx].id for j in sim.pending.values() if j.outcome.preemptions} == {
        victim for victim, _, _ in from_sim["preempt"]}
    assert {JOBS[i].id for i in sim.running} >= {job for job, *_ in from_sim["admit"]}
