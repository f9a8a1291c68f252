"""The control plane on a real PostgreSQL: a server end to end, the leader lease, a standby
that takes over from a leader killed with SIGKILL, and the refusals (bad URL, SQLite shared).

Jobs are small Python programs that note each start in their working directory, so the tests
see what the processes did, not only what the servers say.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from stoker.control.leader import AdvisoryLease, Leadership, LeadershipLost, announce
from stoker.control.local_executor import LocalExecutor
from stoker.control.nodes import cluster_nodes
from stoker.control.pg_local import LocalPostgres
from stoker.control.reconciler import Reconciler
from stoker.control.sql_store import SqlStore
from stoker.control.store import NewJob
from stoker.ports import free_port
from stoker.server.process import ServerProcess, kill_jobs
from stoker.spec import loading
from stoker.spec.cluster import ClusterConfig

pytestmark = pytest.mark.slow

TOKENS = {"STOKER_ADMIN_TOKEN": "admin-t", "STOKER_TOKEN": "alice-t"}
CLUSTER = """
[scheduler]
interval = 0.2
[flavors.cpu]
[autodetect]
cpu_slots = 2
cpu_flavor = "cpu"
[admin]
token_env = "STOKER_ADMIN_TOKEN"
[tenants.alice]
token_env = "STOKER_TOKEN"
queues = ["alice"]
[queues.alice.quotas.cpu]
cpus = 2
"""
# Notes its start, then waits for a file named "release" in its working directory.
WORKER = r"""
import os, time
with open("started.txt", "a") as f:
    f.write(f"attempt={os.environ['STOKER_ATTEMPT']} pid={os.getpid()}\n")
while not os.path.exists("release"):
    time.sleep(0.05)
print("done", flush=True)
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "cluster.toml"
    path.write_text(CLUSTER)
    return path


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[ServerProcess]]:
    """Servers a test starts; all stopped (and their jobs killed) at the end, before the
    test's database is dropped (so ``pg_url`` comes first in a test's arguments)."""
    started: list[ServerProcess] = []
    yield started
    for server in started:
        server.stop()
    kill_jobs(tmp_path / "state")


def server(servers: list[ServerProcess], tmp_path: Path, config: Path, db: str,
           name: str) -> ServerProcess:
    s = ServerProcess(tmp_path / "state", config, env=TOKENS, log=tmp_path / f"{name}.log",
                      args=["--db", db, "--grace-period", "1"])
    servers.append(s)
    return s.start()


def job(name: str, code: str = WORKER) -> dict[str, Any]:
    return {"name": name, "queue": "alice", "resources": {"cpus": 1},
            "command": [sys.executable, "-c", code]}


def wait_for(what: str, condition: Callable[[], Any], timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def state(s: ServerProcess, job_id: int) -> dict[str, Any]:
    with s.client("admin-t") as c:
        return c.job(job_id)


def wait_state(s: ServerProcess, job_id: int, states: set[str]) -> dict[str, Any]:
    found: dict[str, Any] = wait_for(f"job {job_id} in {states}",
                                     lambda: (j := state(s, job_id))["state"] in states and j)
    return found


def work_file(tmp_path: Path, job_id: int, name: str) -> Path:
    return tmp_path / "state" / "jobs" / str(job_id) / "work" / name


def started(tmp_path: Path, job_id: int) -> list[str]:
    path = work_file(tmp_path, job_id, "started.txt")
    return path.read_text().splitlines() if path.exists() else []


def transitions(j: dict[str, Any]) -> list[str]:
    return [e["to_state"] for e in j["events"] if e["kind"] == "transition"]


def test_a_server_on_postgresql_keeps_its_state_across_a_restart(
        pg_url: str, servers: list[ServerProcess], tmp_path: Path, config: Path) -> None:
    s = server(servers, tmp_path, config, pg_url, "one")
    health = s.health()
    assert (health["store"], health["role"]) == ("postgresql", "leader")
    with s.client("alice-t") as c:
        first = c.submit(job("hello", "print('hello from postgres')"))["id"]
    done = wait_state(s, first, {"SUCCEEDED", "FAILED"})
    assert done["state"] == "SUCCEEDED" and done["exit_code"] == 0, done["reason"]
    log = tmp_path / "state" / "jobs" / str(first) / "logs" / "rank-0.log"
    assert "hello from postgres" in log.read_text()

    s.stop()
    s.start()
    again = state(s, first)
    assert again["state"] == "SUCCEEDED" and again["events"] == done["events"]
    with s.client("alice-t") as c:
        second = c.submit(job("again", "pass"))["id"]
    assert second > first
    assert wait_state(s, second, {"SUCCEEDED", "FAILED"})["state"] == "SUCCEEDED"
    assert s.health()["leader"]["term"] == 2  # one term per start


def test_a_standby_takes_over_from_a_killed_leader_and_adopts_its_job(
        pg_url: str, servers: list[ServerProcess], tmp_path: Path, config: Path) -> None:
    leader = server(servers, tmp_path, config, pg_url, "a")
    wait_for("the first server to lead", lambda: leader.health()["role"] == "leader")
    standby = server(servers, tmp_path, config, pg_url, "b")
    health = wait_for("the standby to see the leader",
                      lambda: (h := standby.health())["leader"] and h)
    assert health["role"] == "standby" and health["leader"]["url"] == leader.url

    # Writes through the standby's API are rows the leader acts on.
    with standby.client("alice-t") as c:
        running = c.submit(job("running"))["id"]
        quick = c.submit(job("quick", "print('quick')"))["id"]
    wait_state(standby, running, {"RUNNING"})
    assert wait_state(standby, quick, {"SUCCEEDED", "FAILED"})["state"] == "SUCCEEDED"
    with standby.client("alice-t") as c:
        cancelled = c.submit(job("cancelled"))["id"]
        wait_state(standby, cancelled, {"RUNNING"})
        c.cancel(cancelled)  # a cancel row: the leader stops the job
    assert wait_state(standby, cancelled, {"CANCELLED"})["exit_code"] is not None
    wait_for("the job's process to start", lambda: started(tmp_path, running))
    with standby.client("admin-t") as c:
        before = {j["id"] for j in c.jobs(states=["RUNNING", "SUCCEEDED"])}

    leader.kill()  # kill -9: the leader's lock session ends with its process
    health = wait_for("the standby to lead", lambda: (h := standby.health())["role"] ==
                      "leader" and h["first_cycle_at"] and h)
    assert health["leader"]["url"] == standby.url and health["leader"]["term"] == 2

    adopted = wait_state(standby, running, {"RUNNING"})
    assert any(e["kind"] == "adopt" for e in adopted["events"]), adopted["events"]
    with standby.client("alice-t") as c:  # a job submitted after the takeover runs too
        after = c.submit(job("after", "pass"))["id"]
    work_file(tmp_path, running, "release").touch()
    done = wait_state(standby, running, {"SUCCEEDED", "FAILED"})
    assert done["state"] == "SUCCEEDED" and done["exit_code"] == 0, done["reason"]
    assert wait_state(standby, after, {"SUCCEEDED", "FAILED"})["state"] == "SUCCEEDED"

    with standby.client("admin-t") as c:
        jobs = {j["id"]: j for j in c.jobs(states=["SUCCEEDED"])}
        everything = c.jobs(states=["QUEUED", "ADMITTED", "STARTING", "RUNNING", "SUCCEEDED",
                                    "FAILED", "CANCELLED"])
    assert set(jobs) == before | {after}  # nothing lost, nothing made twice
    assert len(everything) == 4
    assert len(started(tmp_path, running)) == 1  # started once, adopted, never restarted
    assert transitions(done) == ["QUEUED", "ADMITTED", "STARTING", "RUNNING", "SUCCEEDED"]
    assert done["attempt"] == 1


def test_a_standby_serves_why_a_job_waits(pg_url: str, servers: list[ServerProcess],
                                         tmp_path: Path, config: Path) -> None:
    """Why a job waits is in the store, so the standby's API says it (code and numbers),
    though its reconciler never ran a cycle; a takeover keeps it until the job starts."""
    leader = server(servers, tmp_path, config, pg_url, "a")
    wait_for("the first server to lead", lambda: leader.health()["role"] == "leader")
    standby = server(servers, tmp_path, config, pg_url, "b")
    wait_for("the standby to see the leader", lambda: standby.health()["leader"])
    with leader.client("alice-t") as c:
        holders = [c.submit(job(f"holder-{i}"))["id"] for i in range(2)]  # queue alice's 2 CPUs
    for holder in holders:
        wait_state(leader, holder, {"RUNNING"})
    with standby.client("alice-t") as c:
        waiter = c.submit(job("waiter", "pass"))["id"]
    why = wait_for("the standby to say why the job waits",
                   lambda: state(standby, waiter)["waiting"])
    assert standby.health()["role"] == "standby"
    assert why["code"] == "WaitingForQuota" and why["flavor"] == "cpu", why
    # The queue is full: the cycle did not reach it, and gave its numbers (no request).
    assert why["available"] == {"cpu": 0.0} and why["borrowable"]["cpu"] == 0, why
    assert state(standby, waiter)["queue_position"] == 1

    leader.kill()
    wait_for("the standby to lead", lambda: (h := standby.health())["role"] == "leader" and
             h["first_cycle_at"])
    assert state(standby, waiter)["waiting"] == why
    for holder in holders:
        work_file(tmp_path, holder, "release").touch()
    assert wait_state(standby, waiter, {"SUCCEEDED", "FAILED"})["state"] == "SUCCEEDED"
    assert state(standby, waiter)["waiting"] is None


def test_a_leader_that_loses_its_lock_stops_and_its_writes_are_fenced(
        pg_url: str, tmp_path: Path) -> None:
    store = SqlStore.open(pg_url)
    cluster = loading.validate(ClusterConfig, {
        "flavors": {"cpu": {}}, "autodetect": {"cpu_slots": 1, "cpu_flavor": "cpu"},
        "queues": {"q": {"quotas": {"cpu": {}}}}}, "test")
    executor = LocalExecutor(tmp_path / "jobs")
    lease = AdvisoryLease(store.engine, "first")
    reconciler = Reconciler(store.fenced(lease.fence), executor, cluster,
                            cluster_nodes(cluster, models=[]), executor.jobs_dir)
    first = Leadership(lease, store, reconciler, "first", "http://first")
    stop = threading.Event()
    thread = threading.Thread(target=first.run, args=(stop, 0.05))
    thread.start()
    try:
        wait_for("the first server to lead", lambda: first.leading and first.cycles > 2)
        other = AdvisoryLease(store.engine, "second")
        assert not other.acquire(wait_s=0.2)  # held: the second waits
        # The first's lock session is cut (as by a network failure): it stops leading...
        with store.engine.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE application_name = 'stoker-lease first'"))
        assert other.acquire(wait_s=30)
        wait_for("the first to stand by", lambda: not first.leading)
        cycles = first.cycles
        info = announce(store, "second", "http://second", time.time())
        other.term = info.term
        time.sleep(0.5)
        assert not first.leading and first.cycles == cycles  # ...and stays a standby
        stale = AdvisoryLease(store.engine, "stale")
        stale.term = info.term - 1  # the first server's term
        with pytest.raises(LeadershipLost):  # a write under an old term is refused
            store.fenced(stale.fence).submit(NewJob("alice", "x", "q", "", 0, {}), "alice")
        stale.dispose()
        assert store.list_jobs() == []
        other.release()
        wait_for("the first to lead again", lambda: first.leading and first.cycles > 0)
        assert first.leader is not None and first.leader.term == info.term + 1
    finally:
        stop.set()
        reconciler.wake()
        thread.join(30)
        store.close()


def run_server(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stoker", "server", "--port", str(free_port()),
                           *args], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **TOKENS})


def test_a_bad_or_unreachable_database_is_one_line_exit_2(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    port = free_port()
    for db, why in [(f"postgresql+psycopg://bob:s3cret@127.0.0.1:{port}/stoker",
                     f"cannot open the database postgresql+psycopg://bob:***@127.0.0.1:{port}"),
                    ("oracle://bob:s3cret@db/x", "unsupported database 'oracle'")]:
        done = run_server(["--db", db, "--state-dir", str(state_dir)], tmp_path)
        assert done.returncode == 2, done.stderr
        assert why in done.stderr and "s3cret" not in done.stderr + done.stdout
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    config = tmp_path / "cluster.toml"
    config.write_text(CLUSTER + '[store]\nurl = "mysql://bob:s3cret@db/x"\n')
    done = run_server(["--config", str(config), "--state-dir", str(state_dir)], tmp_path)
    assert done.returncode == 2 and "store.url" in done.stderr and "s3cret" not in done.stderr
    assert not state_dir.exists()  # nothing changed


def test_sqlite_refuses_a_second_server(servers: list[ServerProcess], tmp_path: Path,
                                        config: Path) -> None:
    first = ServerProcess(tmp_path / "state", config, env=TOKENS)
    servers.append(first.start())
    done = run_server(["--config", str(config), "--state-dir", str(tmp_path / "state")],
                      tmp_path)
    assert done.returncode == 2
    assert "a SQLite store allows one server" in done.stderr, done.stderr
    db = f"sqlite:///{tmp_path / 'state' / 'stoker.db'}"  # the same file, another state dir
    done = run_server(["--config", str(config), "--state-dir", str(tmp_path / "other"),
                       "--db", db], tmp_path)
    assert done.returncode == 2 and "the database" in done.stderr, done.stderr
    assert first.health()["role"] == "leader"


def test_the_test_server_is_postgresql_15_on_loopback(pg_server: LocalPostgres) -> None:
    store = SqlStore.open(pg_server.database())
    try:
        with store.engine.connect() as conn:
            version = conn.execute(text("SHOW server_version")).scalar()
            listen = conn.execute(text("SHOW listen_addresses")).scalar()
        assert str(version).startswith("15.") and listen == "127.0.0.1"
    finally:
        store.close()
