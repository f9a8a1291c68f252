"""What the reconciler does with a failed attempt's cause, with real job processes and a real
SQLite store: a user's error fails the job at once; an infrastructure failure makes its node
suspect (cordoned by the health system) and the job is retried on another node."""

from __future__ import annotations

import json
import os
import subprocess
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
from stoker.control.store import JobRecord, NewJob, NodeRecord
from stoker.spec import loading
from stoker.spec.api import JobState
from stoker.spec.cluster import ClusterConfig
from stoker.spec.loading import to_toml

pytestmark = pytest.mark.slow

FAILED, SUCCEEDED = JobState.FAILED, JobState.SUCCEEDED

# The first attempt's node is the bad one: a rank there is killed by SIGKILL, as by a dying
# machine; anywhere else it succeeds.
DIES_ON_FIRST_NODE = """
import os, pathlib, signal
bad, node = pathlib.Path('bad_node'), os.environ['STOKER_NODE']
if not bad.exists():
    bad.write_text(node)
if bad.read_text() == node:
    os.kill(os.getpid(), signal.SIGKILL)
print('done on', node)
"""

# Two gloo ranks on 127.0.0.1; the rank on the first attempt's first node is killed in the
# middle of the all-reduces, so its peer's collective fails ("Connection reset by peer").
GLOO_RANK_DIES = """
import os, pathlib, signal, time
import torch, torch.distributed as dist
dist.init_process_group('gloo')
rank, node = dist.get_rank(), os.environ['STOKER_NODE']
bad = pathlib.Path('bad_node')
if rank == 0 and not bad.exists():
    bad.write_text(node)
dist.barrier()
t = torch.ones(1000)
for step in range(20):
    if step == 5 and bad.read_text() == node:
        os.kill(os.getpid(), signal.SIGKILL)
    dist.all_reduce(t)
    time.sleep(0.02)
dist.destroy_process_group()
"""


def cluster_of(nodes: int, periodic: bool = True, faults: bool = False) -> ClusterConfig:
    # Periodic checks on (none falls due during a test): what lets a suspect node be cordoned.
    return loading.validate(ClusterConfig, {
        "isolation": {"fault_injection": faults},
        "flavors": {"cpu": {}},
        "nodes": [{"name": f"n{i}", "flavor": "cpu", "cpus": 1, "memory": "1GiB"}
                  for i in range(nodes)],
        "queues": {"a": {"quotas": {"cpu": {"cpus": 8}}}},
        "health": {"periodic": periodic, "periodic_interval": 3600, "light_interval": 3600},
    }, "test")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlStore]:
    s = SqlStore.open(f"sqlite:///{tmp_path / 'stoker.db'}")
    yield s
    s.close()


def reconciler(store: SqlStore, tmp_path: Path, nodes: int = 1,
               periodic: bool = True, faults: bool = False) -> Reconciler:
    cluster = cluster_of(nodes, periodic, faults)
    # PYTHONPATH: a job's `stoker train` runs the Stoker under test, as the reference does.
    executor = LocalExecutor(tmp_path / "jobs", pass_env=("PYTHONPATH",), allow_faults=faults)
    found = cluster_nodes(cluster, models=[])
    store.sync_nodes([node_record(cluster, n) for n in found])
    return Reconciler(store, executor, cluster, found, executor.jobs_dir,
                      ControlSettings(grace_period_s=2, backoff_base_s=0.1))


def submit(store: SqlStore, code: str, ranks: int = 1, **extra: Any) -> JobRecord:
    job = {"name": "t", "queue": "a", "ranks": ranks, "resources": {"cpus": 1},
           "command": [sys.executable, "-c", code], **extra}
    return store.submit(NewJob("alice", "t", "a", "", 0, {"job": job, "train": None}), "alice")


def run_until(r: Reconciler, job_id: int, states: set[JobState], seconds: float = 60
              ) -> JobRecord:
    deadline = time.monotonic() + seconds
    while True:
        r.step()
        job = r.store.get_job(job_id)
        assert job is not None
        if job.state in states:
            return job
        assert time.monotonic() < deadline, f"job {job_id} is {job.state}: {job.reason}"
        r.pause(0.05)


def node(store: SqlStore, name: str) -> NodeRecord:
    return next(n for n in store.nodes() if n.name == name)


def test_a_user_exception_fails_the_job_at_once(store: SqlStore, tmp_path: Path) -> None:
    r = reconciler(store, tmp_path)
    job = submit(store, "print('loading')\ndef step():\n    return 1 / 0\nstep()\n",
                 max_restarts=3)
    done = run_until(r, job.id, {FAILED, SUCCEEDED})
    assert (done.state, done.attempt, done.restarts, done.exit_code) == (FAILED, 1, 0, 1)
    assert done.reason.startswith("user failure (user_exception): process 0 on n0: "
                                  "ZeroDivisionError: division by zero")
    assert done.reason.endswith("| ZeroDivisionError: division by zero (a user error: "
                                "not retried)")
    (cause,) = store.causes(job.id)
    assert (cause.attempt, cause.category, cause.code, cause.exit_code) == (
        1, "user", "user_exception", 1)
    assert cause.lines[0] == "Traceback (most recent call last):" and cause.nodes == []
    assert cause.lines[-2:] == ['  File "<string>", line 3, in step',
                               "ZeroDivisionError: division by zero"]
    event = store.events(job.id)[-1]
    assert event.detail is not None and event.detail["cause"]["code"] == "user_exception"
    assert node(store, "n0").health == "healthy" and not node(store, "n0").cordoned


def test_a_bad_config_exit_fails_the_job_at_once(store: SqlStore, tmp_path: Path) -> None:
    r = reconciler(store, tmp_path)
    code = "import argparse; argparse.ArgumentParser(prog='train').parse_args(['--lr=x'])"
    job = submit(store, code, max_restarts=2)
    done = run_until(r, job.id, {FAILED, SUCCEEDED})
    assert (done.state, done.attempt, done.restarts, done.exit_code) == (FAILED, 1, 0, 2)
    assert "(bad_config)" in done.reason and "unrecognized arguments: --lr=x" in done.reason
    assert [c.code for c in store.causes(job.id)] == ["bad_config"]


def test_a_rank_killed_on_a_node_makes_it_suspect_and_the_job_runs_elsewhere(
        store: SqlStore, tmp_path: Path) -> None:
    r = reconciler(store, tmp_path, nodes=2)
    job = submit(store, DIES_ON_FIRST_NODE, max_restarts=1)
    done = run_until(r, job.id, {SUCCEEDED}, seconds=30)
    assert (done.attempt, done.restarts) == (2, 1)
    first, second = (store.processes(job.id, a)[0].node for a in (1, 2))
    assert first != second
    (cause,) = store.causes(job.id)
    assert (cause.attempt, cause.category, cause.code, cause.nodes, cause.exit_code) == (
        1, "infra", "signal", [first], -9)
    bad = node(store, first)
    assert (bad.health, bad.cordoned, bad.auto_cordon, bad.cordoned_by) == (
        "suspect", True, True, "health")
    assert bad.health_reason.startswith(f"job {job.id} attempt 1 failed there: ")
    assert node(store, second).health == "healthy"
    failed = next(e for e in store.events(job.id) if e.to_state == "FAILED")
    assert failed.reason.startswith(f"infra failure (signal): process 0 on {first}: "
                                    "killed by SIGKILL; restart 1/1 in 0.1s")


def test_without_periodic_checks_a_suspect_node_stays_schedulable(
        store: SqlStore, tmp_path: Path) -> None:
    # Nothing would ever clear a cordon the health system set: the node is only suspect.
    r = reconciler(store, tmp_path, nodes=1, periodic=False)
    job = submit(store, DIES_ON_FIRST_NODE, max_restarts=1)
    done = run_until(r, job.id, {FAILED, SUCCEEDED}, seconds=30)
    assert (done.state, done.attempt) == (FAILED, 2)  # the same node, the same death
    bad = node(store, "n0")
    assert (bad.health, bad.cordoned, bad.failures) == ("suspect", False, 2)


def test_without_periodic_checks_the_retry_avoids_the_suspect_node(
        store: SqlStore, tmp_path: Path) -> None:
    # No cordon (nothing would lift it), but the job's own retry goes elsewhere.
    r = reconciler(store, tmp_path, nodes=2, periodic=False)
    job = submit(store, DIES_ON_FIRST_NODE, max_restarts=1)
    done = run_until(r, job.id, {FAILED, SUCCEEDED}, seconds=30)
    assert (done.state, done.attempt) == (SUCCEEDED, 2)
    first, second = (store.processes(job.id, a)[0].node for a in (1, 2))
    assert first != second
    bad = node(store, first)
    assert (bad.health, bad.cordoned) == ("suspect", False)


def test_an_infra_failure_with_no_restarts_left_fails_and_still_suspects_the_node(
        store: SqlStore, tmp_path: Path) -> None:
    r = reconciler(store, tmp_path, nodes=2)
    job = submit(store, DIES_ON_FIRST_NODE)
    done = run_until(r, job.id, {FAILED, SUCCEEDED})
    assert (done.state, done.attempt) == (FAILED, 1) and "(signal)" in done.reason
    assert node(store, store.processes(job.id, 1)[0].node).health == "suspect"


def test_a_gloo_rank_killed_mid_collective_blames_its_node_not_its_peers(
        store: SqlStore, tmp_path: Path) -> None:
    r = reconciler(store, tmp_path, nodes=3)
    job = submit(store, GLOO_RANK_DIES, ranks=2, max_restarts=1)
    done = run_until(r, job.id, {SUCCEEDED, FAILED}, seconds=90)
    assert (done.state, done.attempt) == (SUCCEEDED, 2), done.reason
    first = {p.index: p.node for p in store.processes(job.id, 1)}
    (cause,) = store.causes(job.id)
    assert (cause.category, cause.code, cause.nodes) == ("infra", "signal", [first[0]])
    assert node(store, first[0]).health == "suspect"
    assert node(store, first[1]).health == "healthy"
    assert first[0] not in {p.node for p in store.processes(job.id, 2)}


STEPS = 12
TRAIN: dict[str, Any] = {
    "model": {"preset": "tiny", "dim": 32, "n_layers": 1, "n_heads": 2, "n_kv_heads": 2,
              "ffn_hidden": 64},
    "data": {"dataset": "stdlib", "tokenizer": "byte",
             "cache_dir": str(Path(".cache/stoker/data").absolute())},
    "parallel": {"strategy": "fsdp"},
    "optim": {"warmup_steps": 2},
    "train": {"name": "bad-node", "steps": STEPS, "global_batch_size": 4,
              "micro_batch_size": 4, "seq_len": 32, "eval_interval": 0},
    # Saved synchronously: step 4's checkpoint is committed before step 7 begins.
    "checkpoint": {"interval_steps": 4, "keep_last": 10, "async": False},
    "telemetry": {"live": False},
}


def losses(run_dir: Path) -> dict[int, float]:
    """Step -> loss, the last record of each step (a resumed run repeats a few)."""
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def run_events(run_dir: Path, kind: str) -> list[dict[str, Any]]:
    lines = (run_dir / "events.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e.get("event") == kind]


def test_a_rank_killed_on_a_bad_node_resumes_elsewhere_with_the_same_losses(
        store: SqlStore, tmp_path: Path) -> None:
    config = tmp_path / "train.toml"
    config.write_text(to_toml(TRAIN))
    reference = tmp_path / "reference"  # the command the control plane runs, uninterrupted
    subprocess.run([sys.executable, "-m", "stoker", "train", str(config), "--nproc", "1",
                    "--run-dir", str(reference), "--resume", "auto"], check=True,
                   capture_output=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
                   timeout=120)
    expected = losses(reference)
    assert sorted(expected) == list(range(1, STEPS + 1))

    r = reconciler(store, tmp_path, nodes=2, faults=True)
    # n0 is the bad node: its rank dies at step 7 (committed checkpoint: step 4), whichever
    # attempt runs there; the hook fires nowhere else.
    fault = {"STOKER_FAULT": "kill@step=7,node=n0", "STOKER_FAULT_OPT_IN": "1"}
    job = {"name": "t", "queue": "a", "ranks": 1, "resources": {"cpus": 1},
           "train_config": "train.toml", "max_restarts": 1, "env": fault}
    record = store.submit(NewJob("alice", "t", "a", "", 0, {"job": job, "train": TRAIN}),
                          "alice")
    done = run_until(r, record.id, {SUCCEEDED, FAILED}, seconds=120)
    assert (done.state, done.attempt, done.restarts) == (SUCCEEDED, 2, 1), done.reason
    first, second = (store.processes(record.id, a)[0].node for a in (1, 2))
    assert (first, second) == ("n0", "n1")
    (cause,) = store.causes(record.id)
    assert (cause.attempt, cause.category, cause.code, cause.nodes) == (
        1, "infra", "signal", ["n0"])
    bad = node(store, "n0")
    assert (bad.health, bad.cordoned, bad.cordoned_by) == ("suspect", True, "health")
    run_dir = tmp_path / "jobs" / str(record.id) / "run"
    committed = {e["step"] for e in run_events(run_dir, "checkpoint_committed")}
    (loaded,) = run_events(run_dir, "checkpoint_loaded")
    assert loaded["step"] == 4 and 4 in committed
    assert losses(run_dir) == expected


# Rank 0 fails at once; rank 1 ignores SIGTERM (as a rank blocked in a collective on a dead peer
# effectively does) and would run for ever.
ONE_FAILS_ONE_IGNORES_SIGTERM = """
import os, signal, sys, time
if os.environ['RANK'] == '0':
    time.sleep(0.5)
    sys.exit(1)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
while True:
    time.sleep(1)
"""


def test_a_failed_gangs_survivors_get_the_failure_grace_not_the_preemption_grace(
        store: SqlStore, tmp_path: Path) -> None:
    cluster = cluster_of(2)
    executor = LocalExecutor(tmp_path / "jobs")
    found = cluster_nodes(cluster, models=[])
    store.sync_nodes([node_record(cluster, n) for n in found])
    r = Reconciler(store, executor, cluster, found, executor.jobs_dir,
                   ControlSettings(grace_period_s=120, failure_grace_s=0.5))
    job = submit(store, ONE_FAILS_ONE_IGNORES_SIGTERM, ranks=2)
    done = run_until(r, job.id, {FAILED, SUCCEEDED}, seconds=30)  # far under the 120 s grace
    assert (done.state, done.exit_code) == (FAILED, 1)
    failed, survivor = store.processes(job.id, 1)
    assert (failed.exit_code, survivor.exit_code) == (1, -9)
    assert "SIGKILL after a grace period of 0.5s" in [e.reason for e in store.events(job.id)]
    event = next(e for e in store.events(job.id) if e.to_state == FAILED)
    assert event.detail is not None  # the rank that failed first, not the one we killed
    assert (event.detail["cause"]["index"], event.detail["cause"]["exit_code"]) == (0, 1)
