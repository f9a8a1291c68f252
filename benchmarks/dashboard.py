"""The dashboard's jobs page and the API's job listing with 10,000 jobs in the store.

    python benchmarks/dashboard.py [--jobs 10000] [--queued 100] [--requests 30]

Inserts the jobs through the store API directly (`SqlStore.submit`, then `transition` for all
but the newest ``--queued``, which stay QUEUED: the first page then shows queued jobs, with
their queue positions), two tenants half each, then starts a real `stoker server` on that state
directory (SQLite), cordons its node so nothing launches, and times sequential requests as the
admin and as a tenant, each ``--requests`` times after a warm-up: `GET /healthz` (the HTTP stack
alone: the baseline), the paginated API listing (`GET /v1/jobs?limit=50&order=desc`), the jobs
page (`GET /`, 50 a page) first, deep and filtered, and, for reference, the unpaginated listing
of every job. Goal: the page and the paginated listing under 300 ms (p50).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from stoker.bench.figures import figure
from stoker.control.plane import make_state_dirs
from stoker.control.sql_store import SqlStore
from stoker.control.store import NewJob
from stoker.server.process import ServerProcess
from stoker.spec.api import JobState
from stoker.spec.job import JobSpec

BENCH_QUICK = ["--jobs", "2000", "--requests", "10"]

TOKENS = {"STOKER_ADMIN_TOKEN": "bench-admin", "STOKER_TOKEN_ALICE": "bench-alice",
          "STOKER_TOKEN_BOB": "bench-bob"}
CLUSTER = """
[flavors.cpu]
[autodetect]
cpu_slots = 4
cpu_flavor = "cpu"
[tenants.alice]
token_env = "STOKER_TOKEN_ALICE"
queues = ["alice"]
[tenants.bob]
token_env = "STOKER_TOKEN_BOB"
queues = ["bob"]
[queues.alice.quotas.cpu]
cpus = 2
[queues.bob.quotas.cpu]
cpus = 2
"""
DONE = (JobState.ADMITTED, JobState.STARTING, JobState.RUNNING, JobState.SUCCEEDED)


def fill(state: Path, jobs: int, queued: int) -> float:
    """Insert the jobs; returns the seconds it took."""
    make_state_dirs(state)
    store = SqlStore.open(f"sqlite:///{state}/stoker.db")
    started = time.perf_counter()
    for i in range(jobs):
        tenant = ("alice", "bob")[i % 2]
        spec = JobSpec.model_validate({"name": f"job-{i}", "queue": tenant,
                                       "resources": {"cpus": 1},
                                       "command": [sys.executable, "-c", "pass"]})
        record = store.submit(NewJob(tenant=tenant, name=spec.name, queue=tenant,
                                     priority_class="", priority=0,
                                     spec={"job": spec.model_dump(mode="json"), "train": None}),
                              tenant)
        if i < jobs - queued:
            now = time.time()
            store.transition(record.id, [JobState.QUEUED], DONE, "done", "bench",
                             changes={"admitted_at": now, "started_at": now,
                                      "finished_at": now + 60, "attempt": 1})
    store.engine.dispose()
    return time.perf_counter() - started


def timed(client: httpx.Client, path: str, token: str, n: int) -> list[float]:
    headers = {"Authorization": f"Bearer {token}"}
    client.get(path, headers=headers).raise_for_status()  # warm up
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        response = client.get(path, headers=headers)
        out.append(time.perf_counter() - t0)
        response.raise_for_status()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--queued", type=int, default=100)
    parser.add_argument("--requests", type=int, default=30)
    args = parser.parse_args()
    admin, alice = TOKENS["STOKER_ADMIN_TOKEN"], TOKENS["STOKER_TOKEN_ALICE"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "cluster.toml").write_text(CLUSTER)
        seconds = fill(root / "state", args.jobs, args.queued)
        print(f"inserted {args.jobs} jobs ({args.queued} queued) in {seconds:.1f} s")
        with ServerProcess(root / "state", root / "cluster.toml", env=TOKENS) as server, \
                httpx.Client(base_url=server.url, timeout=120) as client:
            client.put("/v1/nodes/local/cordon", json={"cordoned": True},
                       headers={"Authorization": f"Bearer {admin}"}).raise_for_status()
            listed = client.get("/v1/jobs?limit=1", headers={"Authorization": f"Bearer {admin}"})
            assert listed.headers["X-Total-Count"] == str(args.jobs), listed.headers
            page = client.get("/", headers={"Authorization": f"Bearer {admin}"}).text
            assert f"{args.jobs} jobs" in page and "QUEUED" in page
            rows = [  # (printed name, figure name, path, token)
                ("GET /healthz (baseline)", "healthz", "/healthz", admin),
                ("API /v1/jobs?limit=50&order=desc, admin", "api jobs admin",
                 "/v1/jobs?limit=50&order=desc", admin),
                ("API /v1/jobs?limit=50&order=desc, tenant", "api jobs tenant",
                 "/v1/jobs?limit=50&order=desc", alice),
                ("page /, admin", "jobs page admin", "/", admin),
                ("page /, tenant", "jobs page tenant", "/", alice),
                ("page /?page=150, admin", "deep page admin", "/?page=150", admin),
                ("page /?state=SUCCEEDED&queue=bob", "filtered page",
                 "/?state=SUCCEEDED&queue=bob", admin),
                ("API /v1/jobs, all (unpaginated)", "api all jobs", "/v1/jobs", admin),
            ]
            results = {name: timed(client, path, token, args.requests)
                       for name, _, path, token in rows}
    base = statistics.median(results[rows[0][0]])
    print(f"{args.requests} sequential requests each after a warm-up")
    print(f"{'request':<44}{'p50 ms':>9}{'p95 ms':>9}{'vs baseline':>13}")
    for name, lat in results.items():
        lat.sort()
        p50 = statistics.median(lat)
        p95 = lat[min(len(lat) - 1, int(0.95 * len(lat)))]
        print(f"{name:<44}{p50 * 1e3:>9.1f}{p95 * 1e3:>9.1f}{p50 / base:>12.1f}x")
    for name, short, _, _ in rows:
        lat = results[name]
        figure(short, [t * 1e3 for t in lat], "ms", "lower")
        if short != "healthz":
            figure(f"{short} / healthz", [t / base for t in lat], "x", "lower")
            figure(f"p95 {short}", lat[min(len(lat) - 1, int(0.95 * len(lat)))] * 1e3, "ms",
                   "lower")


if __name__ == "__main__":
    main()
