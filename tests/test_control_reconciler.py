"""The reconciler's parts with a real store and real processes, stepped by hand (no server).

Every test taking ``store`` runs on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from sqlalchemy import Connection, event

from sched_helpers import res
from stoker.control import tables as t
from stoker.control.launch import assign_devices, devices_in_use, plan_launch
from stoker.control.local_executor import LocalExecutor
from stoker.control.nodes import cluster_nodes
from stoker.control.plane import ControlPlane
from stoker.control.quotas import usage, with_overrides
from stoker.control.reconciler import ControlSettings, Reconciler
from stoker.control.snapshot import build_snapshot, job_spec
from stoker.control.sql_store import SqlStore
from stoker.control.store import (
    JobRecord,
    NewJob,
    NodeRecord,
    ProcessRecord,
    QuotaRecord,
    SchedulerChanges,
    UsageRecord,
)
from stoker.sched import Node
from stoker.server.process import kill_jobs
from stoker.spec import loading
from stoker.spec.api import JobState, ServerSettings
from stoker.spec.cluster import ClusterConfig
from stoker.spec.errors import ConfigError

Q, A, S, R = JobState.QUEUED, JobState.ADMITTED, JobState.STARTING, JobState.RUNNING

CLUSTER = {
    "flavors": {"cpu": {}},
    "autodetect": {"cpu_slots": 2, "cpu_flavor": "cpu"},
    "cohorts": {"lab": {}},
    "queues": {"a": {"cohort": "lab", "quotas": {"cpu": {"cpus": 2,
                                                          "borrowing_limit": {"cpus": 1}}}},
               "b": {"cohort": "lab", "quotas": {"cpu": {"cpus": 1}}}},
}


@pytest.fixture
def cluster() -> ClusterConfig:
    return loading.validate(ClusterConfig, CLUSTER, "test")


@pytest.fixture
def store(db_url: str) -> Iterator[SqlStore]:
    s = SqlStore.open(db_url)
    yield s
    s.close()


def command_spec(code: str, ranks: int = 1, cpus: float = 1, **extra: object) -> dict:
    job = {"name": "t", "queue": "a", "ranks": ranks, "resources": {"cpus": cpus},
           "command": [sys.executable, "-c", code], **extra}
    return {"job": job, "train": None}


def submit(store: SqlStore, spec: dict, queue: str = "a") -> JobRecord:
    return store.submit(NewJob("alice", "t", queue, "", 0, spec), "alice")


def run_until(reconciler: Reconciler, job_id: int, states: set[JobState],
              timeout: float = 120) -> JobRecord:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reconciler.step()
        job = reconciler.store.get_job(job_id)
        assert job is not None
        if job.state in states:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} is {job.state}: {job.reason}")


def test_snapshot_splits_running_pending_and_backoff(store: SqlStore,
                                                     cluster: ClusterConfig) -> None:
    spec = command_spec("pass", ranks=2)
    running = submit(store, spec)
    store.transition(running.id, (Q,), (A,), "x", "t",
                     {"placement": {"flavor": "cpu", "nodes": ["local", "local"]},
                      "admitted_at": 10.0, "stop_reason": "preempt", "started_at": 40.0,
                      "attained_s": 500.0})
    ready = submit(store, spec)
    backing_off = submit(store, spec)
    store.annotate(backing_off.id, (Q,), "x", "x", "t", {"not_before": 1e12})
    nodes = [Node("local", "cpu", res(0, 2, 1e9))]
    snap = build_snapshot(100.0, cluster, nodes, store.list_jobs(), {running.id: 7.0})
    assert [p.id for p in snap.pending] == [ready.id]
    assert not snap.pending[0].nominated
    again = build_snapshot(100.0, cluster, nodes, store.list_jobs(), nominated={ready.id})
    assert again.pending[0].nominated  # the last cycle nominated it: it goes first
    (r,) = snap.running
    assert (r.id, r.nodes, r.progress, r.preempting) == (running.id, ("local", "local"), 7.0,
                                                         True)
    assert r.per_rank == res(0, 1, 0)
    assert r.attained_service == 500.0 + 60.0 * 2  # earlier attempts, and 60 s of this one
    rows = usage(snap)
    assert [(u.queue, u.resource, u.used, u.borrowed) for u in rows] == [
        ("a", "cpu", 2.0, 0.0), ("b", "cpu", 0.0, 0.0)]


def test_quota_overrides_apply_or_fail_whole(cluster: ClusterConfig) -> None:
    changed = with_overrides(cluster, [QuotaRecord("b", "cpu", {"cpus": 3}, 0, "admin")])
    assert changed.queues["b"].quotas["cpu"].cpus == 3
    with pytest.raises(ConfigError, match="lending_limit"):
        with_overrides(cluster, [QuotaRecord("b", "cpu", {"cpus": 1,
                                                          "lending_limit": {"cpus": 2}}, 0, "x")])
    with pytest.raises(ConfigError, match="flavor"):
        with_overrides(cluster, [QuotaRecord("b", "gpu", {"gpus": 1}, 0, "admin")])


def test_devices_are_not_shared_between_jobs() -> None:
    nodes = {"n": Node("n", "g", res(4, 8, 1e9))}
    first = assign_devices(nodes, ["n", "n"], res(1, 2, 0), {})
    assert [(r.gpus, r.cpu_slots) for r in first] == [((0,), (0, 1)), ((1,), (2, 3))]
    in_use = {"n": {"gpus": [0, 1], "cpus": [0, 1, 2, 3]}}
    second = assign_devices(nodes, ["n"], res(2, 1, 0), in_use)
    assert [(r.gpus, r.cpu_slots) for r in second] == [((2, 3), (4,))]
    records = [ProcessRecord(1, 1, 0, 1, 0.0, "n", {"n": {"gpus": [3], "cpus": [5]}}, "")]
    assert devices_in_use(records) == {"n": {"gpus": [3], "cpus": [5]}}


def test_plans_for_command_and_training_jobs(store: SqlStore, tmp_path: Path) -> None:
    nodes = {"n": Node("n", "cpu", res(0, 4, 1e9))}
    ranks = assign_devices(nodes, ["n", "n"], res(0, 1, 0), {})
    cmd = submit(store, command_spec("pass", ranks=2, env={"FOO": "1"}))
    plan = plan_launch(cmd, job_spec(cmd), 1, tmp_path, ranks)
    assert [p.env["RANK"] for p in plan.processes] == ["0", "1"]
    assert {p.env["WORLD_SIZE"] for p in plan.processes} == {"2"}
    assert plan.processes[1].env["FOO"] == "1" and plan.processes[1].env["LOCAL_RANK"] == "1"
    assert plan.processes[0].exit_path == tmp_path / str(cmd.id) / "attempt-1" / "rank-0.exit"

    train = {"model": {"preset": "tiny"}, "train": {"steps": 3}}
    job = store.submit(NewJob("alice", "t", "a", "", 0, {
        "job": {"name": "t", "queue": "a", "ranks": 2, "train_config": "x.toml"},
        "train": train}), "alice")
    plan = plan_launch(job, job_spec(job), 3, tmp_path, ranks, resume=True)
    (launcher,) = plan.processes
    workdir = tmp_path / str(job.id)
    assert launcher.argv[1:] == ("-m", "stoker", "train", str(workdir / "train.toml"),
                                 "--nproc", "2", "--run-dir", str(workdir / "run"),
                                 "--resume", "auto")
    assert loading.read_toml(workdir / "train.toml") == train


def test_processes_are_pinned_and_get_no_tokens(store: SqlStore, tmp_path: Path) -> None:
    executor = LocalExecutor(tmp_path / "jobs", hidden_env={"SECRET_TOKEN"})
    os.environ["SECRET_TOKEN"] = "x"
    try:
        code = ("import os; print(sorted(os.sched_getaffinity(0)), "
                "os.environ.get('SECRET_TOKEN'), repr(os.environ['CUDA_VISIBLE_DEVICES']))")
        job = submit(store, command_spec(code))
        nodes = {"n": Node("n", "cpu", res(0, 2, 1e9))}
        ranks = assign_devices(nodes, ["n"], res(0, 1, 0), {"n": {"cpus": [0]}})
        plan = plan_launch(job, job_spec(job), 1, executor.jobs_dir, ranks)
        (record,) = executor.launch(plan)
        exit_path = plan.processes[0].exit_path
        deadline = time.monotonic() + 120
        while executor.status(record, exit_path).state == "alive":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        cpu = sorted(os.sched_getaffinity(0))[1 % len(os.sched_getaffinity(0))]
        assert f"[{cpu}] None ''" in Path(record.log_path).read_text()
    finally:
        del os.environ["SECRET_TOKEN"]


def test_reconciler_runs_a_gang_to_success(store: SqlStore, cluster: ClusterConfig,
                                           tmp_path: Path) -> None:
    executor = LocalExecutor(tmp_path / "jobs")
    reconciler = Reconciler(store, executor, cluster, cluster_nodes(cluster, models=[]),
                            executor.jobs_dir, ControlSettings(grace_period_s=1))
    job = submit(store, command_spec("import os; print('rank', os.environ['RANK'])", ranks=2))
    done = run_until(reconciler, job.id, {JobState.SUCCEEDED, JobState.FAILED})
    assert done.state == JobState.SUCCEEDED and done.attempt == 1
    logs = sorted(p.name for p in (executor.jobs_dir / str(job.id) / "logs").iterdir())
    assert logs == ["rank-0.log", "rank-1.log"]


def test_a_queued_job_whose_resource_left_the_config_fails(store: SqlStore,
                                                           cluster: ClusterConfig,
                                                           tmp_path: Path) -> None:
    """Submitted when the cluster had example.com/accel; the config no longer names it: the
    job fails with the reason instead of breaking the cycle, and the others still run."""
    executor = LocalExecutor(tmp_path / "jobs")
    reconciler = Reconciler(store, executor, cluster, cluster_nodes(cluster, models=[]),
                            executor.jobs_dir, ControlSettings(grace_period_s=1))
    gone = submit(store, command_spec("pass", **{"resources": {"cpu": "500m",
                                                               "example.com/accel": 1}}))
    fine = submit(store, command_spec("pass", **{"resources": {"cpu": "500m"}}))
    assert build_snapshot(0.0, cluster, reconciler.nodes, store.list_jobs()).pending[0].id == \
        fine.id  # the view skips it meanwhile
    failed = run_until(reconciler, gone.id, {JobState.FAILED, JobState.SUCCEEDED})
    assert failed.state == JobState.FAILED and "example.com/accel" in failed.reason
    assert run_until(reconciler, fine.id, {JobState.SUCCEEDED}).state == JobState.SUCCEEDED


def test_admission_fair_sharing_admits_the_tenant_with_less_usage(
        store: SqlStore, tmp_path: Path) -> None:
    afs = {"enabled": True, "half_life": "1h", "sampling_interval": "1m",
           "resource_weights": {"gpus": 0, "cpus": 1}}
    cluster = loading.validate(ClusterConfig, {**CLUSTER, "admission_fair_sharing": afs}, "t")
    executor = LocalExecutor(tmp_path / "jobs")
    reconciler = Reconciler(store, executor, cluster, cluster_nodes(cluster, models=[]),
                            executor.jobs_dir, ControlSettings(grace_period_s=1))
    # Alice held queue a's 2 CPUs (2000m) lately, as a previous server stored it.
    store.save_scheduler(SchedulerChanges(usage=[UsageRecord("a", "alice", (0.0, 2000.0, 0.0),
                                                             (0.0, 0.0, 0.0), None)]))
    tracker = reconciler.tenant_usage
    assert tracker is not None
    spec = command_spec("pass", ranks=2)  # each needs queue a's whole nominal quota
    older = store.submit(NewJob("alice", "t", "a", "", 0, spec), "alice")
    newer = store.submit(NewJob("bob", "t", "a", "", 0, spec), "bob")
    decisions = reconciler.step()
    assert [a.job for a in decisions.admit] == [newer.id]  # bob has used less
    assert tracker.penalties[("a", "bob")][1] > 0  # bob's entry penalty, until the next sample
    for job in (newer, older):
        assert run_until(reconciler, job.id, {JobState.SUCCEEDED}).state == JobState.SUCCEEDED


def test_recover_requeues_an_interrupted_launch_and_kills_strays(
        store: SqlStore, cluster: ClusterConfig, tmp_path: Path) -> None:
    executor = LocalExecutor(tmp_path / "jobs")
    nodes = cluster_nodes(cluster, models=[])
    first = Reconciler(store, executor, cluster, nodes, executor.jobs_dir)
    job = submit(store, command_spec("import time; time.sleep(600)"))
    first.step()  # admitted, STARTING, processes recorded
    job = store.get_job(job.id)
    assert job is not None and job.state == S
    # As if the server died after starting the processes but before recording them.
    with store.engine.begin() as conn:
        conn.execute(t.RankProcess.__table__.delete())
    (orphan,) = executor.orphans()
    assert orphan.job_id == job.id and orphan.attempt == 1

    second = Reconciler(store, LocalExecutor(tmp_path / "jobs"), cluster, nodes,
                        executor.jobs_dir)
    second.recover()
    assert store.get_job(job.id).state == Q  # type: ignore[union-attr]
    assert "interrupted" in store.get_job(job.id).reason  # type: ignore[union-attr]
    deadline = time.monotonic() + 120
    while psutil.pid_exists(orphan.pid) and psutil.Process(orphan.pid).status() != "zombie":
        assert time.monotonic() < deadline, "the orphan was not killed"
        time.sleep(0.05)
    executor.status(ProcessRecord(job.id, 1, 0, orphan.pid, orphan.create_time, "local", {},
                                  ""), orphan.exit_path)  # reap it
    assert executor.orphans() == []


PREEMPTING = {
    "priority_classes": {"low": 1, "high": 10},
    "flavors": {"cpu": {}},
    "autodetect": {"cpu_slots": 2, "cpu_flavor": "cpu"},
    "queues": {"a": {"quotas": {"cpu": {"cpus": 2}},
                     "preemption": {"within_queue": "LowerPriority"}}},
}


@pytest.fixture
def reaped(tmp_path: Path) -> Iterator[Path]:
    """``tmp_path``; the processes of jobs under its ``jobs/`` are killed at the end."""
    yield tmp_path
    kill_jobs(tmp_path)


def submit_class(store: SqlStore, code: str, ranks: int, priority_class: str) -> JobRecord:
    spec = command_spec(code, ranks=ranks, priority_class=priority_class)
    priority = PREEMPTING["priority_classes"][priority_class]  # type: ignore[index]
    return store.submit(NewJob("alice", "t", "a", priority_class, priority, spec), "alice")


def test_a_restarted_reconciler_keeps_its_nominations_and_another_plane_says_why_jobs_wait(
        store: SqlStore, db_url: str, reaped: Path) -> None:
    """A high-priority job preempts a running low one and is nominated; a new reconciler over
    the same database (a restarted server) still has the nomination, and a plane whose
    reconciler never ran (a standby's API) serves each queued job's reason with its numbers."""
    cluster = loading.validate(ClusterConfig, PREEMPTING, "test")
    nodes = cluster_nodes(cluster, models=[])
    executor = LocalExecutor(reaped / "jobs")
    first = Reconciler(store, executor, cluster, nodes, executor.jobs_dir,
                       ControlSettings(grace_period_s=1))
    low = submit_class(store, "import time; time.sleep(600)", 2, "low")
    run_until(first, low.id, {R})
    high = submit_class(store, "pass", 2, "high")
    behind = submit_class(store, "pass", 1, "low")
    decisions = first.step()
    assert dict(decisions.nominated) == {high.id: (low.id,)}

    restarted_store = SqlStore.open(db_url)
    standby_store = SqlStore.open(db_url)
    try:
        second = Reconciler(restarted_store, LocalExecutor(reaped / "jobs"), cluster, nodes,
                            executor.jobs_dir, ControlSettings(grace_period_s=1))
        second.recover()
        assert second.nominated == {high.id}
        assert second.waiting == first.waiting

        idle = Reconciler(standby_store, LocalExecutor(reaped / "jobs"), cluster, nodes,
                          executor.jobs_dir)
        standby = ControlPlane(ServerSettings(), cluster, standby_store, idle)
        views = {v.id: v for v in standby.job_views(standby_store.list_jobs())}
        assert idle.cycles == 0 and views[low.id].waiting is None
        victims = views[high.id].waiting
        assert victims is not None and victims.code == "WaitingForVictims", victims
        quota = views[behind.id].waiting
        assert quota is not None and quota.code == "WaitingForQuota", quota
        assert (quota.flavor, quota.requested, quota.available) == (
                "cpu", {"gpu": 0.0, "cpu": 1.0, "memory": 0.0}, {"cpu": 0.0})
        assert views[high.id].queue_position == 1  # nominated: first, as the cycle orders it

        done = run_until(second, high.id, {R, JobState.SUCCEEDED})
        assert done.attempt == 1
        assert restarted_store.nominations() == {}
        view = standby.job_views([standby_store.get_job(low.id)])[0]  # type: ignore[list-item]
        assert view.state == Q and view.waiting is not None  # requeued, waiting again
        for job in (low, behind):
            standby.cancel(job.id, "alice")
        run_until(second, behind.id, {JobState.CANCELLED})
        assert standby_store.waiting() == {}  # written away as the jobs stopped waiting
    finally:
        restarted_store.close()
        standby_store.close()


def test_a_restarted_reconciler_keeps_the_tenant_usage_and_decays_it_from_the_last_sample(
        store: SqlStore, db_url: str, reaped: Path) -> None:
    afs = {"enabled": True, "half_life": "1h", "sampling_interval": "1m",
           "resource_weights": {"gpus": 0, "cpus": 1}}
    cluster = loading.validate(ClusterConfig, {**CLUSTER, "admission_fair_sharing": afs}, "t")
    nodes = cluster_nodes(cluster, models=[])
    executor = LocalExecutor(reaped / "jobs")
    now = [1000.0]
    first = Reconciler(store, executor, cluster, nodes, executor.jobs_dir,
                       ControlSettings(grace_period_s=1), clock=lambda: now[0])
    job = submit(store, command_spec("import time; time.sleep(600)", ranks=2))
    run_until(first, job.id, {R})  # admitted: an entry penalty; the clock starts
    now[0] += 60
    first.step()  # a sample: alice's 2 CPUs for a minute, the penalty folded in
    tracker = first.tenant_usage
    assert tracker is not None and tracker.last_sample == 1060.0
    before = dict(tracker.consumed)
    assert before[("a", "alice")][1] > 0 and tracker.penalties == {}
    store.annotate(job.id, (R,), "cancel", "cancel", "alice", {"stop_reason": "cancel"})
    run_until(first, job.id, {JobState.CANCELLED})  # at the same instant: no new sample
    assert tracker.consumed == before

    again = SqlStore.open(db_url)
    try:
        now[0] = 1060.0 + 3600  # restarted one half-life after the last sample
        second = Reconciler(again, LocalExecutor(reaped / "jobs"), cluster, nodes,
                            executor.jobs_dir, clock=lambda: now[0])
        second.recover()
        restored = second.tenant_usage
        assert restored is not None
        assert (restored.consumed, restored.last_sample) == (before, 1060.0)
        second.step()  # nothing runs: the usage halves over the hour since the last sample
        usage = restored.consumed[("a", "alice")][1]
        assert usage == pytest.approx(before[("a", "alice")][1] / 2)
        (stored,) = again.tenant_usage()
        assert (stored.usage[1], stored.sampled_at) == (pytest.approx(usage), 4660.0)
    finally:
        again.close()


def test_a_cycle_that_changes_nothing_writes_nothing(store: SqlStore, cluster: ClusterConfig,
                                                     tmp_path: Path) -> None:
    """The waiting reasons are written when they change, not every cycle."""
    writes: list[int] = []

    def begin(conn: Connection) -> None:
        if conn.get_execution_options().get("stoker_write"):
            writes.append(1)

    executor = LocalExecutor(tmp_path / "jobs")
    reconciler = Reconciler(store, executor, cluster, cluster_nodes(cluster, models=[]),
                            executor.jobs_dir)
    store.sync_nodes([NodeRecord("local", "cpu")])
    store.set_cordon("local", True, "test", "admin")
    job = submit(store, command_spec("pass"))
    event.listen(store.engine, "begin", begin)
    try:
        reconciler.step()
        assert len(writes) == 1 and store.waiting()[job.id].code == "NodeUnhealthy"
        for _ in range(3):
            reconciler.step()
        assert len(writes) == 1
        store.set_cordon("local", False, "", "admin")
        run_until(reconciler, job.id, {JobState.SUCCEEDED})
        assert store.waiting() == {}
    finally:
        event.remove(store.engine, "begin", begin)
