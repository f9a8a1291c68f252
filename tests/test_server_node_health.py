"""Node health through a real server and the CLI as the admin runs it: `stoker node`, the
repair gauge on /metrics, `stoker drain --requeue`, and clear errors for bad input."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from stoker.health.faults import ENV
from stoker.server.process import ServerProcess, kill_jobs

pytestmark = pytest.mark.slow

TOKENS = {"STOKER_ADMIN_TOKEN": "admin-t", "STOKER_TOKEN": "tenant-t"}
CLUSTER = """
[flavors.cpu]
[[nodes]]
name = "n0"
flavor = "cpu"
cpus = 1
memory = "1GiB"
[[nodes]]
name = "n1"
flavor = "cpu"
cpus = 1
memory = "1GiB"
[health]
periodic = true
periodic_interval = "0.3s"
light_interval = "0.3s"
failures_to_flag = 1
min_matmul_tflops = 0.002  # far under a loaded machine's, over n0's with its x100 slowdown
min_write_mbps = 1
[admin]
token_env = "STOKER_ADMIN_TOKEN"
[tenants.t]
token_env = "STOKER_TOKEN"
queues = ["q"]
[queues.q.quotas.cpu]
cpus = 2
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("node-health")
    config = root / "cluster.toml"
    config.write_text(CLUSTER)
    proc = ServerProcess(root / "state", config, env={**TOKENS, ENV: "n0:slow_matmul=100"},
                         args=["--interval", "0.2"])
    with proc:
        yield proc
    kill_jobs(root / "state")


def stoker(server: ServerProcess, *args: str, token: str = "admin-t"
           ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STOKER_TOKEN": token, "COLUMNS": "250", "STOKER_SERVER": server.url}
    env.pop(ENV, None)
    return subprocess.run([sys.executable, "-m", "stoker", *args], capture_output=True,
                          text=True, env=env, timeout=120)


def wait_for(check: Callable[[], bool], what: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"never {what}"
        time.sleep(0.2)


def test_a_faulty_node_is_unhealthy_and_flagged(server: ServerProcess) -> None:
    admin = server.client("admin-t")
    wait_for(lambda: admin.node("n0")["repair_needed"], "flagged for repair")
    shown = stoker(server, "node", "n0")
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert "unhealthy,cordoned,repair" in out and "cordon" in out and "yes by health" in out
    assert "last periodic checks: FAIL" in out and "TFLOP/s" in out  # figures and seconds
    assert "healthy -> unhealthy" in out and "flagged for repair: 1 failed checks" in out
    listed = stoker(server, "nodes")
    assert listed.returncode == 0 and "unhealthy" in listed.stdout
    assert "cordoned by health: periodic check failed" in listed.stdout
    metrics = httpx.get(f"{server.url}/metrics", headers={"Authorization": "Bearer admin-t"},
                        timeout=10).text
    assert 'stoker_node_repair_needed{node="n0"} 1.0' in metrics
    assert 'stoker_node_repair_needed{node="n1"} 0.0' in metrics
    assert 'stoker_node_state{node="n0",state="unhealthy"} 1.0' in metrics


def test_bad_input_is_one_line_exit_2(server: ServerProcess) -> None:
    unknown = stoker(server, "node", "nope")
    assert unknown.returncode == 2 and "no node 'nope'" in unknown.stderr
    tenant = stoker(server, "node", "n0", token="tenant-t")
    assert tenant.returncode == 2 and "403" in tenant.stderr
    drain = stoker(server, "drain", "nope")
    assert drain.returncode == 2 and "no node 'nope'" in drain.stderr
    for out in (unknown, tenant, drain):
        assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


def test_drain_requeue_stops_the_job_and_the_node_is_drained(
        server: ServerProcess, tmp_path: Path) -> None:
    wait_for(lambda: server.client("admin-t").node("n0")["cordoned"], "n0 cordoned")
    job_file = tmp_path / "job.toml"
    job_file.write_text(f'name = "long"\nqueue = "q"\nresources = {{cpus = 1}}\n'
                        f'command = ["{sys.executable}", "-c", "import time; time.sleep(60)"]\n')
    assert stoker(server, "submit", str(job_file), token="tenant-t").returncode == 0
    tenant = server.client("tenant-t")
    job = tenant.jobs()[-1]
    wait_for(lambda: tenant.job(job["id"])["state"] == "RUNNING", "running")
    assert tenant.job(job["id"])["placement"]["nodes"] == ["n1"]
    drained = stoker(server, "drain", "n1", "--requeue", "--reason", "kernel")
    assert drained.returncode == 0 and "node n1: draining" in drained.stdout
    wait_for(lambda: tenant.job(job["id"])["state"] == "QUEUED", "requeued")
    reasons = [e["reason"] for e in tenant.job(job["id"])["events"]]
    assert "requeued: node n1 is drained by admin (kernel)" in reasons
    wait_for(lambda: server.client("admin-t").node("n1")["state"] == "drained", "drained")
    detail = stoker(server, "node", "n1").stdout
    assert "draining -> drained" in detail and "drained by admin: kernel" in detail
    audit = server.client("admin-t").audit()
    assert ("drain", "n1") in [(a["action"], a["target"]) for a in audit]
    undrained = stoker(server, "drain", "n1", "--off")
    assert undrained.returncode == 0 and "node n1: healthy" in undrained.stdout
    wait_for(lambda: tenant.job(job["id"])["state"] == "RUNNING", "placed again")
    tenant.cancel(job["id"])
