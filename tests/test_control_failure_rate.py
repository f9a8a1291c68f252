"""The cluster's observed failure rate for ``checkpoint.interval = "auto"``: the pure function,
the same on a store (SQLite) holding hand-made attempt causes and processes, and the job
variables a training job's attempt starts with."""

from __future__ import annotations

from pathlib import Path

import pytest

from sched_helpers import res
from stoker.control.failure_rate import FailureRate, failure_rate, rate_env
from stoker.control.launch import assign_devices, plan_launch
from stoker.control.snapshot import job_spec
from stoker.control.sql_store import SqlStore
from stoker.control.store import CauseRecord, NewJob, ProcessRecord
from stoker.sched import Node
from stoker.spec.api import JobState
from stoker.train.ckpt_interval import NODES_ENV, RATE_ENV

Q, A, S, R, F = (JobState.QUEUED, JobState.ADMITTED, JobState.STARTING, JobState.RUNNING,
                 JobState.FAILED)
NOW = 1_000_000.0
HOUR = 3600.0


def cause(job: int, attempt: int, at: float, category: str = "infra") -> CauseRecord:
    return CauseRecord(job, attempt, at, category, "rank_killed", "process 0: killed")


def proc(job: int, attempt: int, index: int, node: str, start: float,
         end: float | None) -> ProcessRecord:
    return ProcessRecord(job, attempt, index, 100 + index, start, node, {}, "log",
                         None if end is None else 0, end)


# Job 1, attempt 1: two nodes for an hour, ended by an infra failure; attempt 2 still running
# on one node for half an hour. Job 2: one node for an hour, a user error. Job 3 ended before
# the window (a day), with an infra failure then: neither counts.
CAUSES = [cause(1, 1, NOW - HOUR), cause(2, 1, NOW - 0.5 * HOUR, "user"),
          cause(3, 1, NOW - 30 * HOUR)]
PROCESSES = [proc(1, 1, 0, "a", NOW - 2 * HOUR, NOW - HOUR),
             proc(1, 1, 1, "b", NOW - 2 * HOUR, NOW - HOUR),
             proc(1, 2, 0, "a", NOW - 0.5 * HOUR, None),
             proc(2, 1, 0, "c", NOW - 1.5 * HOUR, NOW - 0.5 * HOUR),
             proc(3, 1, 0, "a", NOW - 40 * HOUR, NOW - 30 * HOUR)]


def test_infra_failures_per_node_hour_in_the_window() -> None:
    rate = failure_rate(CAUSES, PROCESSES, NOW, window_s=24 * HOUR)
    assert rate.failures == 1 and rate.node_hours == pytest.approx(2 + 0.5 + 1)
    assert rate.per_node_hour == pytest.approx(1 / 3.5)
    # A window that cuts attempts counts only their time inside it.
    rate = failure_rate(CAUSES, PROCESSES, NOW, window_s=1.5 * HOUR)
    assert rate.node_hours == pytest.approx(2 * 0.5 + 0.5 + 1) and rate.failures == 1
    # A wider window takes in job 3: 2 failures over 13.5 node-hours.
    rate = failure_rate(CAUSES, PROCESSES, NOW, window_s=48 * HOUR)
    assert rate.failures == 2 and rate.per_node_hour == pytest.approx(2 / 13.5)


def test_no_infra_failure_or_no_run_time_is_no_rate() -> None:
    assert failure_rate([c for c in CAUSES if c.category == "user"], PROCESSES, NOW,
                        24 * HOUR).per_node_hour is None
    assert failure_rate(CAUSES, [], NOW, 24 * HOUR) == FailureRate(1, 0.0, None)
    assert rate_env(FailureRate(0, 5.0, None), 4) == {}
    assert rate_env(FailureRate(1, 4.0, 0.25), 4) == {RATE_ENV: "0.25", NODES_ENV: "4"}


class Clock:
    def __init__(self) -> None:
        self.now = NOW - 40 * HOUR

    def __call__(self) -> float:
        return self.now


def test_the_same_rate_from_a_store(tmp_path: Path) -> None:
    clock = Clock()
    opened = SqlStore.open(f"sqlite:///{tmp_path / 'stoker.db'}")
    store = SqlStore(opened.engine, clock)
    jobs = [store.submit(NewJob("alice", "t", "a", "", 0, {"job": {"name": "t"}}), "alice")
            for _ in range(3)]
    by_number = {n + 1: job.id for n, job in enumerate(jobs)}
    store.add_processes([p.__class__(**{**p.__dict__, "job_id": by_number[p.job_id],
                                        "exit_code": None, "ended_at": None})
                         for p in PROCESSES])
    for p in PROCESSES:
        if p.ended_at is not None:
            store.end_process(by_number[p.job_id], p.attempt, p.index, 0, p.ended_at)
    for c in CAUSES:
        clock.now = c.at  # the store stamps a cause with its own clock
        job_id = by_number[c.job_id]
        store.transition(job_id, (Q,), (A, S, R), "running", "x", {"attempt": 1})
        store.transition(job_id, (R,), (F,), "failed", "x",
                         cause=CauseRecord(**{**c.__dict__, "job_id": job_id}))
    since = NOW - 24 * HOUR
    causes, processes = store.causes_since(since), store.processes_since(since)
    assert [c.job_id for c in causes] == [by_number[1], by_number[2]]
    assert {(p.job_id, p.attempt) for p in processes} == {
        (by_number[1], 1), (by_number[1], 2), (by_number[2], 1)}
    assert failure_rate(causes, processes, NOW, 24 * HOUR) == failure_rate(
        CAUSES, PROCESSES, NOW, 24 * HOUR)
    opened.close()


def test_a_training_attempt_starts_with_the_rate(tmp_path: Path) -> None:
    store = SqlStore.open(f"sqlite:///{tmp_path / 'stoker.db'}")
    job = store.submit(NewJob("alice", "t", "a", "", 0, {
        "job": {"name": "t", "queue": "a", "ranks": 2, "train_config": "x.toml"},
        "train": {"model": {"preset": "tiny"}}}), "alice")
    nodes = {"n": Node("n", "cpu", res(0, 4, 1e9))}
    ranks = assign_devices(nodes, ["n", "n"], res(0, 1, 0), {})
    env = rate_env(failure_rate(CAUSES, PROCESSES, NOW, 24 * HOUR), 2)
    (launcher,) = plan_launch(job, job_spec(job), 1, tmp_path, ranks,
                              stoker_env=env).processes
    assert launcher.env[RATE_ENV] == repr(1 / 3.5) and launcher.env[NODES_ENV] == "2"
    per_rank = plan_launch(job, job_spec(job), 1, tmp_path, ranks, per_rank=True,
                           stoker_env=env).processes
    assert all(p.env[RATE_ENV] == repr(1 / 3.5) for p in per_rank)
    store.close()


def test_the_reconciler_gives_training_jobs_the_rate(tmp_path: Path) -> None:
    from stoker.control.local_executor import LocalExecutor
    from stoker.control.nodes import cluster_nodes
    from stoker.control.reconciler import Reconciler
    from stoker.spec import loading
    from stoker.spec.cluster import ClusterConfig
    from test_control_reconciler import CLUSTER

    cluster = loading.validate(ClusterConfig, CLUSTER, "test")
    store = SqlStore.open(f"sqlite:///{tmp_path / 'stoker.db'}")
    executor = LocalExecutor(tmp_path / "jobs")
    reconciler = Reconciler(store, executor, cluster, cluster_nodes(cluster, models=[]),
                            executor.jobs_dir)
    train = store.submit(NewJob("alice", "t", "a", "", 0, {
        "job": {"name": "t", "queue": "a", "ranks": 1, "train_config": "x.toml"},
        "train": {"model": {"preset": "tiny"}}}), "alice")
    assert reconciler._failure_env(job_spec(train), ["n1", "n2"], NOW) == {}  # no history
    store.add_processes([proc(train.id, 1, 0, "n1", NOW - 2 * HOUR, None)])
    store.transition(train.id, (Q,), (A, S, R), "running", "x", {"attempt": 1})
    store.transition(train.id, (R,), (F,), "failed", "x", cause=cause(train.id, 1, 0.0))
    now = store.causes(train.id)[0].at + 1  # the store stamps the cause with its own clock
    env = reconciler._failure_env(job_spec(train), ["n1", "n2", "n1"], now)
    assert env[NODES_ENV] == "2" and float(env[RATE_ENV]) > 0
    store.close()
