"""Failover time: leader kill -9 -> a standby leads -> its first reconcile cycle.

    python benchmarks/pg_failover.py [--repeats 5] [--interval 1.0]

Two real `stoker server` processes on one throwaway PostgreSQL (`stoker.control.pg_local`, its
default durable settings, loopback) and one state directory, with a running job (a command that
waits for a file) for every new leader to adopt. Each repeat SIGKILLs the leader and reads the
standby's /healthz until it leads and has finished a reconcile cycle; the server stamps both
moments itself (``leader.since``: lock taken and term announced; ``first_cycle_at``: recover +
first cycle done), so the polling does not add to the figures. The killed server is then
restarted as the next standby. At the end the job is released: it must finish once, never
started twice across all the takeovers.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from stoker.bench.figures import figure
from stoker.control.pg_local import LocalPostgres
from stoker.server.process import ServerProcess, kill_jobs

TOKENS = {"STOKER_ADMIN_TOKEN": "bench-admin", "STOKER_TOKEN": "bench-tenant"}
BENCH_QUICK = ["--repeats", "2"]
CLUSTER = """
[scheduler]
interval = {interval}
[flavors.cpu]
[autodetect]
cpu_slots = 2
cpu_flavor = "cpu"
[admin]
token_env = "STOKER_ADMIN_TOKEN"
[tenants.bench]
token_env = "STOKER_TOKEN"
queues = ["bench"]
[queues.bench.quotas.cpu]
cpus = 2
"""
WORKER = r"""
import os, time
with open("started.txt", "a") as f:
    f.write(f"{os.getpid()}\n")
while not os.path.exists("release"):
    time.sleep(0.05)
"""


def until(what: str, probe: Any, timeout: float = 120.0, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = probe()
        except Exception:  # a server still starting
            value = None
        if value:
            return value
        time.sleep(every)
    raise RuntimeError(f"timed out waiting for {what}")


def job_state(server: ServerProcess, job_id: int) -> dict[str, Any]:
    with server.client(TOKENS["STOKER_ADMIN_TOKEN"]) as c:
        return c.job(job_id)


def failover(leader: ServerProcess, standby: ServerProcess) -> tuple[float, float, float]:
    """Kill the leader: seconds to the standby leading, to the end of its recovery (the
    running job adopted), and to the end of its first reconcile cycle."""
    until("the standby to see the leader",
          lambda: standby.health()["leader"]["url"] == leader.url)
    killed_at = time.time()
    leader.kill()
    health = until("the standby to lead", lambda: (h := standby.health())["role"] == "leader"
                   and h["first_cycle_at"] and h, every=0.02)
    return (health["leader"]["since"] - killed_at, health["recovered_at"] - killed_at,
            health["first_cycle_at"] - killed_at)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--interval", type=float, default=1.0,
                        help="scheduler.interval of the servers (seconds between cycles)")
    args = parser.parse_args()
    rows: list[tuple[float, float, float]] = []
    with tempfile.TemporaryDirectory() as tmp, LocalPostgres(durable=True) as pg:
        root = Path(tmp)
        config = root / "cluster.toml"
        config.write_text(CLUSTER.format(interval=args.interval))
        db = pg.database()
        pair = [ServerProcess(root / "state", config, env=TOKENS, log=root / f"{n}.log",
                              args=["--db", db]) for n in "ab"]
        try:
            leader, standby = pair[0].start(), pair[1]
            until("the first server to lead", lambda: leader.health()["role"] == "leader")
            standby.start()
            with leader.client(TOKENS["STOKER_TOKEN"]) as c:
                job_id = c.submit({"name": "adopted", "queue": "bench",
                                   "resources": {"cpus": 1},
                                   "command": [sys.executable, "-c", WORKER]})["id"]
            until("the job to run", lambda: job_state(leader, job_id)["state"] == "RUNNING")
            for i in range(args.repeats):
                rows.append(failover(leader, standby))
                lead, recovered, first = rows[-1]
                print(f"repeat {i + 1}: leading after {lead:.3f} s, recovered after "
                      f"{recovered:.3f} s, first reconcile after {first:.3f} s", flush=True)
                leader, standby = standby, leader.start()
            work = root / "state" / "jobs" / str(job_id) / "work"
            (work / "release").touch()
            done = until("the job to finish",
                         lambda: (j := job_state(leader, job_id))["state"] in
                         ("SUCCEEDED", "FAILED") and j)
            starts = len((work / "started.txt").read_text().splitlines())
            adopts = sum(e["kind"] == "adopt" for e in done["events"])
            assert done["state"] == "SUCCEEDED" and starts == 1, (done["state"], starts)
        finally:
            for server in pair:
                server.stop()
            kill_jobs(root / "state")
    for i, what in enumerate(("leading", "recovered (job adopted)", "first reconcile done")):
        values = [r[i] for r in rows]
        print(f"{what:<24} median {statistics.median(values):.3f} s of {len(rows)} "
              f"(min {min(values):.3f}, max {max(values):.3f})")
    print(f"the job: {done['state']}, started {starts} time(s), adopted {adopts} time(s)")
    figure("failover to leading", [r[0] for r in rows], "s", "lower")
    figure("failover to recovered", [r[1] for r in rows], "s", "lower")
    figure("failover to first reconcile", [r[2] for r in rows], "s", "lower")
    figure("job starts", starts, "starts", "lower")


if __name__ == "__main__":
    main()
