"""Node health state in the control plane, with real probes, a real SQLite store and real job
processes: periodic checks cordon a node with an injected fault, flag it for repair and return
it once it passes again; an admin's uncordon returns it at once; a drained node takes no new
job and is drained when its job ends."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from stoker.control import node_health
from stoker.control.local_executor import LocalExecutor
from stoker.control.nodes import cluster_nodes, node_record
from stoker.control.reconciler import ControlSettings, Reconciler
from stoker.control.sql_store import SqlStore
from stoker.control.store import NewJob, NodeRecord
from stoker.health.faults import ENV
from stoker.server.metrics import node_metrics
from stoker.spec import loading
from stoker.spec.api import JobState
from stoker.spec.cluster import ClusterConfig

pytestmark = pytest.mark.slow

# Floors far under a loaded 2-core machine's figures (no false positives while other tests
# run), far over a node's with an injected x100 slowdown (about 0.0005 TFLOP/s).
HEALTH = {"periodic": True, "periodic_interval": 0.2, "light_interval": 0.2, "passes_to_return": 2,
          "failures_to_flag": 2, "min_matmul_tflops": 0.002, "min_write_mbps": 1}


def cluster_of(nodes: list[dict[str, Any]], **health: Any) -> ClusterConfig:
    return loading.validate(ClusterConfig, {
        "flavors": {"cpu": {}},
        "nodes": [{"flavor": "cpu", "memory": "1GiB", **n} for n in nodes],
        "health": {**HEALTH, **health},
        "queues": {"a": {"quotas": {"cpu": {"cpus": 8}}}},
    }, "test")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlStore]:
    s = SqlStore.open(f"sqlite:///{tmp_path / 'stoker.db'}")
    yield s
    s.close()


@pytest.fixture
def make(store: SqlStore, tmp_path: Path) -> Iterator[Callable[[ClusterConfig], Reconciler]]:
    made: list[Reconciler] = []

    def reconciler(cluster: ClusterConfig) -> Reconciler:
        executor = LocalExecutor(tmp_path / "jobs")
        nodes = cluster_nodes(cluster, models=[])
        store.sync_nodes([node_record(cluster, n) for n in nodes])  # as the plane does
        made.append(Reconciler(store, executor, cluster, nodes, executor.jobs_dir,
                               ControlSettings(grace_period_s=1)))
        return made[-1]

    yield reconciler
    for r in made:
        r.close()


def node(store: SqlStore, name: str) -> NodeRecord:
    return next(n for n in store.nodes() if n.name == name)


def step_until(reconciler: Reconciler, done: Callable[[], bool], what: str,
               seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, f"never {what}"
        reconciler.step()
        reconciler.pause(0.05)


def submit(store: SqlStore, seconds: float, cpus: int = 1) -> int:
    job = {"name": "t", "queue": "a", "ranks": 1, "resources": {"cpus": cpus},
           "command": [sys.executable, "-c", f"import time; time.sleep({seconds})"]}
    return store.submit(NewJob("alice", "t", "a", "", 0, {"job": job, "train": None}),
                        "alice").id


def state(store: SqlStore, job: int) -> JobState:
    record = store.get_job(job)
    assert record is not None
    return record.state


def test_periodic_checks_cordon_flag_and_return_a_node(
        store: SqlStore, make: Callable[[ClusterConfig], Reconciler],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "small:slow_matmul=100")
    reconciler = make(cluster_of([{"name": "big", "cpus": 2}, {"name": "small", "cpus": 1}]))
    step_until(reconciler, lambda: node(store, "small").repair, "flagged for repair")
    small = node(store, "small")
    assert small.health == "unhealthy" and small.cordoned and small.auto_cordon
    assert small.cordoned_by == "health" and small.failures >= 2
    assert "matmul: FAIL" in small.cordon_reason and "injected slowdown" in small.health_reason
    assert small.last_checks is not None and not small.last_checks["periodic"]["passed"]
    big = node(store, "big")
    assert big.health == "healthy" and not big.cordoned
    assert big.last_checks is not None and big.last_checks["periodic"]["passed"]
    history = store.node_events("small")
    assert [e.kind for e in history][:3] == ["health", "check-failed", "repair"]
    assert (history[0].from_state, history[0].to_state) == ("healthy", "unhealthy")
    figures = {r["name"]: r for r in history[0].detail["results"]}  # type: ignore[index]
    assert not figures["matmul"]["passed"] and figures["matmul"]["value"] < 0.002
    gauges = {(m.name, tuple(s.labels.values())): s.value
              for m in node_metrics(store.nodes()) for s in m.samples}
    assert gauges[("stoker_node_repair_needed", ("small",))] == 1.0
    assert gauges[("stoker_node_repair_needed", ("big",))] == 0.0
    assert gauges[("stoker_node_state", ("small", "unhealthy"))] == 1.0

    # An admin's uncordon returns it at once; the fault is still there: cordoned again.
    store.set_cordon("small", False, "replaced the fan", "admin")
    back = node(store, "small")
    assert (back.health, back.cordoned, back.repair, back.failures) == ("healthy", False,
                                                                        False, 0)
    step_until(reconciler, lambda: node(store, "small").cordoned, "cordoned again")

    # Fixed: it returns by itself after passes_to_return (2) passes of the periodic set.
    monkeypatch.delenv(ENV)
    step_until(reconciler, lambda: not node(store, "small").cordoned, "returned")
    small = node(store, "small")
    assert small.health == "healthy" and not small.auto_cordon and small.failures == 0
    last = store.node_events("small")[-1]
    assert (last.kind, last.from_state, last.to_state) == ("health", "unhealthy", "healthy")
    assert last.reason == "2 consecutive passes of the periodic checks; uncordoned"


def test_checks_never_lift_an_admins_cordon(
        store: SqlStore, make: Callable[[ClusterConfig], Reconciler],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "n0:fill_disk")
    reconciler = make(cluster_of([{"name": "n0", "cpus": 1}], passes_to_return=1))
    store.set_cordon("n0", True, "maintenance", "root")
    step_until(reconciler, lambda: node(store, "n0").health == "unhealthy", "unhealthy")
    n0 = node(store, "n0")
    assert n0.cordoned_by == "root" and n0.cordon_reason == "maintenance"  # the admin's stays
    monkeypatch.delenv(ENV)
    step_until(reconciler, lambda: node(store, "n0").health == "healthy", "healthy")
    n0 = node(store, "n0")
    assert n0.cordoned and n0.cordoned_by == "root" and not n0.auto_cordon


def test_a_drained_node_takes_no_new_job_and_is_drained_when_its_job_ends(
        store: SqlStore, make: Callable[[ClusterConfig], Reconciler]) -> None:
    reconciler = make(cluster_of([{"name": "n0", "cpus": 2}], periodic_interval=3600,
                                 light_interval=3600))
    first = submit(store, 2)
    step_until(reconciler, lambda: state(store, first) == JobState.RUNNING, "running")
    store.set_drain("n0", True, "kernel upgrade", "admin")
    assert node_health.state(node(store, "n0")) == "draining"
    second = submit(store, 0)
    step_until(reconciler, lambda: state(store, first) == JobState.SUCCEEDED, "finished")
    reconciler.step()
    n0 = node(store, "n0")
    assert node_health.state(n0) == "drained" and n0.drained_at is not None
    assert state(store, second) == JobState.QUEUED  # room for it, but n0 is drained
    assert [(e.kind, e.to_state) for e in store.node_events("n0")] == [
        ("drain", "draining"), ("drained", "drained")]
    store.set_drain("n0", False, "", "admin")
    step_until(reconciler, lambda: state(store, second) == JobState.SUCCEEDED, "placed")
    assert node_health.state(node(store, "n0")) == "healthy"


def test_a_failed_light_check_makes_a_busy_node_suspect_and_its_job_goes_on(
        store: SqlStore, make: Callable[[ClusterConfig], Reconciler],
        monkeypatch: pytest.MonkeyPatch) -> None:
    reconciler = make(cluster_of([{"name": "n0", "cpus": 2}], periodic_interval=3600))
    job = submit(store, 2)
    step_until(reconciler, lambda: state(store, job) == JobState.RUNNING, "running")
    monkeypatch.setenv(ENV, "n0:hot_device")
    step_until(reconciler, lambda: node(store, "n0").health == "suspect", "suspect")
    n0 = node(store, "n0")
    assert n0.cordoned and n0.auto_cordon and n0.health_reason.startswith("light check failed")
    assert n0.last_checks is not None and list(n0.last_checks) == ["light"]
    step_until(reconciler, lambda: state(store, job) == JobState.SUCCEEDED, "finished")
