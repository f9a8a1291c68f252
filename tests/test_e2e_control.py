"""End to end on CPU: a real `stoker server`, real job processes, two tenants sharing a cohort.

Jobs are small Python programs (`WORKER`) that record each start and each SIGTERM in their job
directory, so the tests see what the processes saw, not only what the server says.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from stoker.control.local_executor import LocalExecutor
from stoker.server.client import Client
from stoker.server.process import ServerProcess, kill_jobs
from stoker.train.exitcodes import EXIT_PREEMPTED

pytestmark = pytest.mark.slow

TOKENS = {"STOKER_ADMIN_TOKEN": "admin-t", "STOKER_TOKEN_ALICE": "alice-t",
          "STOKER_TOKEN_BOB": "bob-t"}
CLUSTER = """
default_priority_class = "normal"
[scheduler]
interval = 0.2
[priority_classes]
low = 0
normal = 100
high = 1000
[flavors.cpu]
[autodetect]
cpu_slots = 4
cpu_flavor = "cpu"
[admin]
token_env = "STOKER_ADMIN_TOKEN"
[tenants.alice]
token_env = "STOKER_TOKEN_ALICE"
queues = ["alice"]
[tenants.bob]
token_env = "STOKER_TOKEN_BOB"
queues = ["bob"]
[cohorts.lab]
[queues.alice]
cohort = "lab"
preemption = { within_queue = "LowerPriority", reclaim_within_cohort = "Any" }
[queues.alice.quotas.cpu]
cpus = 2
borrowing_limit = { cpus = 2 }
[queues.bob]
cohort = "lab"
preemption = { within_queue = "LowerPriority", reclaim_within_cohort = "Any" }
[queues.bob.quotas.cpu]
cpus = 2
borrowing_limit = { cpus = 2 }
"""

# argv: SECONDS [ON_SIGTERM: exit | ignore] [FAIL_CODE FAIL_ATTEMPTS] [FAIL_RANK]
# (with FAIL_RANK, that rank fails only once every rank of the attempt has started)
# A restarted attempt runs at most one second, so a test can preempt a long first attempt. A
# file named "release" in the job's working directory ends the wait early (`release`).
WORKER = r"""
import os, signal, sys, time
attempt, rank = int(os.environ["STOKER_ATTEMPT"]), os.environ["RANK"]
seconds = float(sys.argv[1]) if attempt == 1 else min(1.0, float(sys.argv[1]))
on_term = sys.argv[2] if len(sys.argv) > 2 else "exit"
fail_code = int(sys.argv[3]) if len(sys.argv) > 3 else 0
fail_attempts = int(sys.argv[4]) if len(sys.argv) > 4 else 0
fail_rank = sys.argv[5] if len(sys.argv) > 5 else None

def note(name, text):
    with open(name, "a") as f:
        f.write(text + "\n")

def on_sigterm(signum, frame):
    note("sigterm.txt", f"attempt={attempt} rank={rank}")
    if on_term == "exit":
        sys.exit(0)

signal.signal(signal.SIGTERM, on_sigterm)
note("started.txt", f"attempt={attempt} rank={rank} pid={os.getpid()}")
print(f"rank {rank} attempt {attempt} running", flush=True)
if fail_code and attempt <= fail_attempts and fail_rank in (None, rank):
    # A failing rank of a gang waits for every rank to have started (its SIGTERM handler in
    # place): else the stop it causes could reach a rank still starting up, unhandled.
    world = int(os.environ["WORLD_SIZE"])
    while fail_rank is not None and sum(
            line.startswith(f"attempt={attempt} ") for line in open("started.txt")) < world:
        time.sleep(0.05)
    sys.exit(fail_code)
end = time.time() + seconds
while time.time() < end and not os.path.exists("release"):
    time.sleep(0.05)
"""


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ServerProcess]:
    config = tmp_path / "cluster.toml"
    config.write_text(CLUSTER)
    server = ServerProcess(tmp_path / "state", config, env=TOKENS,
                           args=["--grace-period", "2", "--backoff", "0.5"])
    try:
        yield server.start()
    finally:
        server.stop()
        kill_jobs(tmp_path / "state")


def job(server: ServerProcess, name: str, queue: str, seconds: float, *args: Any,
        ranks: int = 1, **spec: Any) -> dict[str, Any]:
    # The program is given inline: a file under the test's temporary directory is out of
    # reach of the tenant's user and outside the job's sandbox.
    command = [sys.executable, "-c", WORKER, str(seconds), *map(str, args)]
    return {"name": name, "queue": queue, "ranks": ranks, "resources": {"cpus": 1},
            "command": command, **spec}


def submit(server: ServerProcess, token: str, spec: dict[str, Any]) -> int:
    with server.client(token) as c:
        job_id: int = c.submit(spec)["id"]
        return job_id


def get(server: ServerProcess, job_id: int) -> dict[str, Any]:
    with server.client("admin-t") as c:
        return c.job(job_id)


def wait(server: ServerProcess, job_id: int, states: set[str],
         timeout: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        j = get(server, job_id)
        if j["state"] in states:
            return j
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} is {j['state']} ({j['reason']}), not {states}")


def job_path(server: ServerProcess, job_id: int, name: str) -> Path:
    return server.state_dir / "jobs" / str(job_id) / name if name.startswith("attempt-") \
        else server.state_dir / "jobs" / str(job_id) / "work" / name  # the job's working dir


def lines(server: ServerProcess, job_id: int, name: str) -> list[str]:
    path = job_path(server, job_id, name)
    return path.read_text().splitlines() if path.exists() else []


def release(server: ServerProcess, job_id: int) -> None:
    """End the waits of the job's workers (those still running)."""
    job_path(server, job_id, "release").touch()


def wait_for(what: str, condition: Callable[[], bool], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def transitions(j: dict[str, Any]) -> list[str]:
    return [e["to_state"] for e in j["events"] if e["kind"] == "transition"]


def queue_row(server: ServerProcess, queue: str) -> dict[str, Any]:
    with server.client("admin-t") as c:
        return next(q for q in c.queues() if q["queue"] == queue and q["resource"] == "cpu")


def test_two_tenants_one_borrowing_then_reclaimed(cluster: ServerProcess) -> None:
    # alice borrows bob's idle quota: 4 ranks on a queue whose nominal quota is 2.
    a = submit(cluster, "alice-t", job(cluster, "borrower", "alice", 600, ranks=4))
    wait(cluster, a, {"RUNNING"})
    assert get(cluster, a)["placement"]["borrowing"] is True
    row = queue_row(cluster, "alice")
    assert (row["used"], row["nominal"], row["borrowed"]) == (4, 2, 2)

    # bob wants his quota back: alice's job is preempted (SIGTERM), requeued, and re-admitted
    # once bob's job is done.
    b = submit(cluster, "bob-t", job(cluster, "owner", "bob", 1, ranks=2))
    b_done = wait(cluster, b, {"SUCCEEDED", "FAILED"})
    assert b_done["state"] == "SUCCEEDED", b_done["reason"]
    a_done = wait(cluster, a, {"SUCCEEDED", "FAILED"})
    assert a_done["state"] == "SUCCEEDED", a_done["reason"]
    seen = transitions(a_done)  # RUNNING is seen only if a cycle finds the processes alive
    assert [s for s in seen if s != "RUNNING"] == ["QUEUED", "ADMITTED", "STARTING", "PREEMPTED",
                                                  "QUEUED", "ADMITTED", "STARTING", "SUCCEEDED"]
    assert seen[3] == "RUNNING"
    preempt = next(e for e in a_done["events"] if e["kind"] == "preempt")
    assert "reclaim" in preempt["reason"] and f"job {b}" in preempt["reason"]
    assert sorted(lines(cluster, a, "sigterm.txt")) == [f"attempt=1 rank={r}" for r in range(4)]
    assert len(lines(cluster, a, "started.txt")) == 8 and a_done["attempt"] == 2
    readmitted = [e["at"] for e in a_done["events"] if e["to_state"] == "ADMITTED"][1]
    assert readmitted >= b_done["started_at"]


def test_high_priority_preempts_a_job_that_ignores_sigterm(cluster: ServerProcess) -> None:
    bob = submit(cluster, "bob-t", job(cluster, "bob", "bob", 600, ranks=2))
    low = submit(cluster, "alice-t", job(cluster, "low", "alice", 600, "ignore", ranks=2,
                                         priority_class="low"))
    wait(cluster, low, {"RUNNING"})
    wait(cluster, bob, {"RUNNING"})
    high = submit(cluster, "alice-t", job(cluster, "high", "alice", 1, ranks=2,
                                          priority_class="high"))
    high_done = wait(cluster, high, {"SUCCEEDED", "FAILED"})
    assert high_done["state"] == "SUCCEEDED"
    low_done = wait(cluster, low, {"SUCCEEDED", "FAILED"})
    assert low_done["state"] == "SUCCEEDED", low_done["reason"]
    reasons = [e["reason"] for e in low_done["events"]]
    assert any("within queue" in r and f"job {high}" in r for r in reasons), reasons
    assert any(r.startswith("SIGKILL after a grace period") for r in reasons), reasons
    assert "PREEMPTED" in transitions(low_done)
    assert len(lines(cluster, low, "sigterm.txt")) == 2  # delivered once to each rank
    assert get(cluster, bob)["state"] == "RUNNING"  # bob's job, within its quota, untouched
    with cluster.client("bob-t") as c:
        c.cancel(bob)
    assert wait(cluster, bob, {"CANCELLED"})["exit_code"] == 0


def test_failures_restarts_timeouts_and_gangs(cluster: ServerProcess) -> None:
    flaky = submit(cluster, "alice-t", job(cluster, "flaky", "alice", 0, "exit", 3, 1,
                                           max_restarts=2))
    broken = submit(cluster, "alice-t", job(cluster, "broken", "alice", 0, "exit", 3, 99,
                                            max_restarts=1))
    slow = submit(cluster, "bob-t", job(cluster, "slow", "bob", 600, max_run_time=1))
    resumable = submit(cluster, "bob-t", job(cluster, "resumable", "bob", 0, "exit",
                                             EXIT_PREEMPTED, 1))

    j = wait(cluster, flaky, {"SUCCEEDED", "FAILED"})
    assert j["state"] == "SUCCEEDED" and j["restarts"] == 1 and j["attempt"] == 2
    failed = next(e for e in j["events"] if e["to_state"] == "FAILED")
    assert failed["reason"] == "process 0 exited with code 3; restart 1/2 in 0.5s"

    j = wait(cluster, broken, {"FAILED"}, timeout=60)
    assert (j["exit_code"], j["restarts"], j["attempt"]) == (3, 1, 2)
    assert j["reason"].endswith("(no restarts left of 1)")

    j = wait(cluster, slow, {"FAILED"})
    assert j["reason"] == "max run time of 1s exceeded"

    j = wait(cluster, resumable, {"SUCCEEDED", "FAILED"})
    assert j["state"] == "SUCCEEDED" and (j["attempt"], j["restarts"]) == (2, 0)
    assert "PREEMPTED" in transitions(j)  # the runtime's "preempted, resumable" exit code

    # Only now: with the jobs above, bob's gang would borrow alice's idle quota, and alice's
    # restarts reclaim it, so the gang could be preempted before its rank 1 fails.
    gang = submit(cluster, "bob-t", job(cluster, "gang", "bob", 600, "exit", 4, 1, 1, ranks=2))
    j = wait(cluster, gang, {"FAILED"})
    assert j["exit_code"] == 4
    assert any("process 1 exited with code 4; stopping the other ranks" in e["reason"]
               for e in j["events"])
    assert lines(cluster, gang, "sigterm.txt") == ["attempt=1 rank=0"]


def test_server_killed_and_restarted_loses_and_duplicates_nothing(
        cluster: ServerProcess) -> None:
    keeps = submit(cluster, "alice-t", job(cluster, "keeps", "alice", 600))
    ends = submit(cluster, "alice-t", job(cluster, "ends", "alice", 600))
    dies = submit(cluster, "bob-t", job(cluster, "dies", "bob", 600))
    for job_id in (keeps, ends, dies):
        wait(cluster, job_id, {"RUNNING"})
    waits = submit(cluster, "bob-t", job(cluster, "waits", "bob", 1, ranks=2))
    before = {j["id"]: j for j in Client(cluster.url, "admin-t").jobs()}
    assert before[waits]["state"] == "QUEUED"

    cluster.kill()  # kill -9: no shutdown of any kind
    # While the server is down, one job ends by itself and another vanishes with its
    # supervisor (no exit status is left behind).
    release(cluster, ends)
    # Its supervisor leads the process group (the job's own pid is the sandbox's).
    pid = next(o.pid for o in LocalExecutor(cluster.state_dir / "jobs").orphans()
               if o.job_id == dies)
    os.killpg(pid, signal.SIGKILL)
    wait_for("job 'ends' to exit", job_path(cluster, ends, "attempt-1/rank-0.exit").is_file)
    wait_for("job 'dies' to vanish", lambda: gone(pid))
    cluster.start()

    after = {j["id"]: j for j in Client(cluster.url, "admin-t").jobs(states=[
        "QUEUED", "ADMITTED", "STARTING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"])}
    assert set(after) == set(before)
    assert wait(cluster, ends, {"SUCCEEDED", "FAILED"})["state"] == "SUCCEEDED"
    died = wait(cluster, dies, {"SUCCEEDED", "FAILED"})
    assert died["state"] == "FAILED" and "vanished" in died["reason"]
    kept = get(cluster, keeps)
    assert kept["state"] == "RUNNING"
    assert any(e["kind"] == "adopt" for e in kept["events"])
    assert wait(cluster, waits, {"SUCCEEDED", "FAILED"})["state"] == "SUCCEEDED"
    with cluster.client("alice-t") as c:  # the adopted process is still ours to signal
        c.cancel(keeps)
    assert wait(cluster, keeps, {"CANCELLED"})["exit_code"] == 0
    assert lines(cluster, keeps, "sigterm.txt") == ["attempt=1 rank=0"]
    for job_id in (keeps, ends, dies):  # started once each: nothing ran twice
        assert len(lines(cluster, job_id, "started.txt")) == 1, job_id
