"""A job with two roles end to end: a real `stoker server` on the local executor, a cluster of
two 2-CPU nodes, the job submitted and shown with the CLI as a user would. Every process
prints the environment it was given, so the test sees each role's ranks ran where and as the
server says; and a job whose second role cannot fit yet starts nothing until it can."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from stoker.server.process import ServerProcess, kill_jobs

pytestmark = pytest.mark.slow

TOKENS = {"STOKER_ADMIN_TOKEN": "admin-t", "STOKER_TOKEN": "tenant-t"}
CLUSTER = """
[scheduler]
interval = 0.2
[flavors.cpu]
[[nodes]]
name = "n0"
flavor = "cpu"
cpus = 2
[[nodes]]
name = "n1"
flavor = "cpu"
cpus = 2
[admin]
token_env = "STOKER_ADMIN_TOKEN"
[tenants.t]
token_env = "STOKER_TOKEN"
queues = ["q"]
[queues.q.quotas.cpu]
cpus = 6  # more than the nodes have: they decide
"""

# Prints what the process was told; with an argument, waits for a file "release" in the
# job's working directory first.
WORKER = r"""
import os, sys, time
keys = ("RANK", "WORLD_SIZE", "STOKER_ROLE", "STOKER_ROLE_RANK", "STOKER_ROLE_WORLD_SIZE",
        "STOKER_NODE", "STOKER_ROLES")
print(" ".join(f"{k}={os.environ[k]}" for k in keys), flush=True)
while len(sys.argv) > 1 and not os.path.exists("release"):
    time.sleep(0.05)
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("roles")
    config = root / "cluster.toml"
    config.write_text(CLUSTER)
    proc = ServerProcess(root / "state", config, env=TOKENS)
    with proc:
        yield proc
    kill_jobs(root / "state")


def stoker(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STOKER_TOKEN": "tenant-t", "COLUMNS": "250",
           "STOKER_SERVER": server.url}
    return subprocess.run([sys.executable, "-m", "stoker", *args], capture_output=True,
                          text=True, env=env, timeout=120)


def role(name: str, ranks: int, cpus: int, *args: str) -> dict[str, Any]:
    return {"name": name, "ranks": ranks, "resources": {"cpus": cpus},
            "command": [sys.executable, "-c", WORKER, *args]}


def get(server: ServerProcess, job_id: int) -> dict[str, Any]:
    with server.client("tenant-t") as c:
        return c.job(job_id)


def wait_for(what: str, condition: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def finished(server: ServerProcess, job_id: int) -> dict[str, Any]:
    wait_for(f"job {job_id} to end",
             lambda: get(server, job_id)["state"] in ("SUCCEEDED", "FAILED", "CANCELLED"))
    return get(server, job_id)


def logged(server: ServerProcess, job_id: int, rank: int) -> str:
    with server.client("tenant-t") as c:
        text: str = c.logs(job_id, rank)["text"]
        return text


def test_a_job_with_two_roles_runs_every_rank_and_shows_each_role(
        server: ServerProcess, tmp_path: Path) -> None:
    job_file = tmp_path / "rl.toml"
    # 2 trainer ranks of 1 CPU and a worker of 2 CPUs: both nodes, the worker alone on one.
    roles = [role("trainer", 2, 1), role("worker", 1, 2)]
    job_file.write_text('name = "rl"\nqueue = "q"\n' + "".join(
        f"[[roles]]\nname = \"{r['name']}\"\nranks = {r['ranks']}\n"
        f"command = {json.dumps(r['command'])}\nresources = {{ cpus = {r['resources']['cpus']} }}\n"
        for r in roles))
    out = stoker(server, "submit", str(job_file))
    assert out.returncode == 0, out.stderr
    job_id = int(out.stdout.split("submitted job ")[1].split()[0])
    j = finished(server, job_id)
    assert j["state"] == "SUCCEEDED", j["reason"]
    assert j["ranks"] == 3 and [(r["name"], r["ranks"], r["first_rank"], r["flavor"])
                                for r in j["roles"]] == [("trainer", 2, 0, "cpu"),
                                                         ("worker", 1, 2, "cpu")]
    trainer, worker = (r["nodes"] for r in j["roles"])
    assert len(set(trainer)) == 1 and worker != trainer and {*trainer, *worker} == {"n0", "n1"}
    assert j["placement"]["nodes"] == [*trainer, *worker]
    assert [r["name"] for r in j["placement"]["roles"]] == ["trainer", "worker"]

    nodes = [*trainer, *worker]
    expected = [("0", "trainer", "0", "2"), ("1", "trainer", "1", "2"), ("2", "worker", "0", "1")]
    for rank, (global_rank, name, role_rank, role_size) in enumerate(expected):
        text = logged(server, job_id, rank)
        assert (f"RANK={global_rank} WORLD_SIZE=3 STOKER_ROLE={name} "
                f"STOKER_ROLE_RANK={role_rank} STOKER_ROLE_WORLD_SIZE={role_size} "
                f"STOKER_NODE={nodes[rank]} STOKER_ROLES=trainer=0-1,worker=2-2") in text, text

    shown = stoker(server, "job", str(job_id))
    assert shown.returncode == 0, shown.stderr
    assert "3 in 2 roles" in shown.stdout
    assert f"admitted to queue q: trainer on cpu ({trainer[0]}, {trainer[1]}); worker on cpu " \
        f"({worker[0]})" in shown.stdout
    assert f"ranks 0-1: 2 x cpu=1; cpu on {trainer[0]}, {trainer[1]}" in shown.stdout, \
        shown.stdout
    assert f"ranks 2-2: 1 x cpu=2; cpu on {worker[0]}" in shown.stdout
    auth = {"Authorization": "Bearer tenant-t"}
    page = httpx.get(f"{server.url}/jobs/{job_id}", headers=auth, timeout=30).text
    assert "ranks 0-1: 2 × cpu 1" in page and "ranks 2-2: 1 × cpu 2" in page, page
    assert f"cpu on {trainer[0]}, {trainer[1]}" in page and f"cpu on {worker[0]}" in page
    listing = httpx.get(f"{server.url}/", headers=auth, timeout=30).text
    assert "trainer: 2 × cpu 1; worker: 1 × cpu 2" in listing, listing
    listed = stoker(server, "jobs", "--all")
    row = next(line for line in listed.stdout.splitlines() if line.split()[:2] == [
        str(job_id), "rl"])
    assert " 3 " in row  # RANKS: every role's


def test_a_job_waits_whole_until_its_last_role_fits(server: ServerProcess) -> None:
    """A 2-CPU job holds one node. Its first role could start on the other; its second
    cannot: nothing of the job starts until the first job ends, then all of it does."""
    with server.client("tenant-t") as c:
        blocker = c.submit({"name": "blocker", "queue": "q", "resources": {"cpus": 2},
                            "command": [sys.executable, "-c", WORKER, "wait"]})["id"]
        wait_for("the blocker to run", lambda: get(server, blocker)["state"] == "RUNNING")
        both = c.submit({"name": "both", "queue": "q",
                         "roles": [role("a", 1, 2), role("b", 1, 2)]})["id"]
    time.sleep(2.0)  # ten scheduling cycles
    j = get(server, both)
    assert j["state"] == "QUEUED" and j["attempt"] == 0 and j["placement"] is None, j["reason"]
    assert [e["to_state"] for e in j["events"] if e["kind"] == "transition"] == ["QUEUED"]
    assert not (server.state_dir / "jobs" / str(both) / "logs").exists()
    assert all(r["nodes"] == [] for r in j["roles"])
    assert j["waiting"]["code"] == "WaitingForNodes" and "role 2 of 2" in j["waiting"]["message"]

    (server.state_dir / "jobs" / str(blocker) / "work" / "release").touch()
    assert finished(server, blocker)["state"] == "SUCCEEDED"
    j = finished(server, both)
    assert j["state"] == "SUCCEEDED", j["reason"]
    assert sorted(n for r in j["roles"] for n in r["nodes"]) == ["n0", "n1"]
    assert "STOKER_ROLE=b" in logged(server, both, 1)
