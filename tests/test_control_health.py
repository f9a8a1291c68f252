"""Pre-start health checks in the control plane, with real probes and real job processes: a
node with an injected fault is caught before the gang starts there, cordoned with the check's
reason, and the job runs elsewhere."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stoker.control.local_executor import LocalExecutor
from stoker.control.nodes import cluster_nodes, node_record
from stoker.control.reconciler import ControlSettings, Reconciler
from stoker.control.sql_store import SqlStore
from stoker.control.store import JobRecord, NewJob
from stoker.health.faults import ENV
from stoker.spec import loading
from stoker.spec.api import JobState
from stoker.spec.cluster import ClusterConfig

pytestmark = pytest.mark.slow

DONE = {JobState.SUCCEEDED, JobState.FAILED}


def cluster_of(nodes: list[dict[str, Any]]) -> ClusterConfig:
    return loading.validate(ClusterConfig, {
        "flavors": {"cpu": {}},
        "nodes": [{"flavor": "cpu", "memory": "1GiB", **n} for n in nodes],
        "health": {"prestart": True},
        "queues": {"a": {"quotas": {"cpu": {"cpus": 8}}}},
    }, "test")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlStore]:
    s = SqlStore.open(f"sqlite:///{tmp_path / 'stoker.db'}")
    yield s
    s.close()


def run(store: SqlStore, cluster: ClusterConfig, tmp_path: Path, ranks: int) -> JobRecord:
    executor = LocalExecutor(tmp_path / "jobs")
    nodes = cluster_nodes(cluster, models=[])
    store.sync_nodes([node_record(cluster, n) for n in nodes])  # as the plane does
    reconciler = Reconciler(store, executor, cluster, nodes, executor.jobs_dir,
                            ControlSettings(grace_period_s=1))
    job = {"name": "t", "queue": "a", "ranks": ranks, "resources": {"cpus": 1},
           "command": [sys.executable, "-c", "pass"]}
    submitted = store.submit(NewJob("alice", "t", "a", "", 0, {"job": job, "train": None}),
                             "alice")
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline:
            reconciler.step()
            record = store.get_job(submitted.id)
            assert record is not None
            if record.state in DONE:
                return record
            time.sleep(0.1)
    finally:
        assert reconciler.prestart is not None
        reconciler.prestart.close()
    raise AssertionError(f"job {submitted.id} never finished: {record.reason}")


def messages(store: SqlStore, job: int) -> list[str]:
    return [e.reason for e in store.events(job)]


def test_slow_node_is_cordoned_and_the_job_runs_elsewhere(
        store: SqlStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Best fit puts a 1-cpu rank on the smaller node first: the one with the fault.
    cluster = cluster_of([{"name": "big", "cpus": 2}, {"name": "small", "cpus": 1}])
    monkeypatch.setenv(ENV, "small:slow_matmul=1000")
    job = run(store, cluster, tmp_path, ranks=1)
    assert job.state == JobState.SUCCEEDED, job.reason
    assert job.placement is not None and job.placement["nodes"] == ["big"]
    nodes = {n.name: n for n in store.nodes()}
    assert nodes["small"].cordoned and not nodes["big"].cordoned
    assert "matmul" in nodes["small"].cordon_reason
    assert "injected slowdown" in nodes["small"].cordon_reason
    log = messages(store, job.id)
    assert any(m.startswith("pre-start health check failed: small: matmul: FAIL") for m in log)
    assert any("pre-start health checks passed" in m for m in log)


def test_broken_link_blames_its_node(store: SqlStore, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # A 2-rank gang on 1-cpu nodes spans two of them, n0 among them whichever way ties are
    # broken; n0's link fails the gang's all-reduce, and only n0 is blamed.
    cluster = cluster_of([{"name": f"n{i}", "cpus": 1} for i in range(3)])
    monkeypatch.setenv(ENV, "n0:fail_collective")
    job = run(store, cluster, tmp_path, ranks=2)
    assert job.state == JobState.SUCCEEDED, job.reason
    assert job.placement is not None and sorted(job.placement["nodes"]) == ["n1", "n2"]
    cordoned = {n.name: n.cordon_reason for n in store.nodes() if n.cordoned}
    assert list(cordoned) == ["n0"] and "allreduce" in cordoned["n0"]
