"""API submit throughput: jobs/s that a concurrent client gets from `stoker server`.

    python benchmarks/api_submit.py [--jobs 400] [--concurrency 16] [--stores sqlite,postgresql]
                                    [--rounds 1]

Starts a real server (default cluster) on a free loopback port, cordons its node so no job
starts (this measures the API and the store, not process launches), then with C concurrent
connections: GET /healthz (the HTTP stack alone: the baseline), POST /v1/jobs, and
GET /v1/jobs/{id}. Every submitted job must be in the store afterwards. The reconciler keeps
running a scheduling cycle after each submission, as in production.

``--stores sqlite,postgresql`` runs the same measurement on each store in turn, in the same run:
PostgreSQL is a throwaway local server (`stoker.control.pg_local`) with its default, durable
settings (fsync and synchronous commit on), on loopback. ``--rounds N`` alternates the stores N
times (a fresh server and database each time) and reports the round with the median POST rate
of each store, so a change in the machine's load hits both alike.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from stoker.bench.figures import figure
from stoker.control.pg_local import LocalPostgres
from stoker.server.process import ServerProcess

TOKENS = {"STOKER_TOKEN": "bench-tenant", "STOKER_ADMIN_TOKEN": "bench-admin"}
JOB = {"name": "bench", "queue": "default", "command": [sys.executable, "-c", "pass"]}
BENCH_QUICK = ["--jobs", "100", "--concurrency", "8"]


async def hammer(n: int, concurrency: int,
                 one: Callable[[int], Awaitable[httpx.Response]]) -> tuple[float, list[float]]:
    """Run ``one(i)`` for i < n on ``concurrency`` workers: (requests/s, latencies)."""
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)

    async def worker() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            t0 = time.perf_counter()
            response = await one(i)
            latencies.append(time.perf_counter() - t0)
            if response.status_code >= 400:
                raise RuntimeError(f"{response.status_code}: {response.text}")

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return n / (time.perf_counter() - start), latencies


async def measure(url: str, jobs: int, concurrency: int) -> dict[str, tuple[float, list[float]]]:
    auth = {"Authorization": f"Bearer {TOKENS['STOKER_TOKEN']}"}
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers=auth, limits=limits, timeout=60) as c:
        await hammer(50, concurrency, lambda _: c.get("/healthz"))  # warm up
        ids: list[int] = []

        async def submit(_: int) -> httpx.Response:
            response = await c.post("/v1/jobs", json={"job": JOB})
            ids.append(response.json()["id"])
            return response

        results = {
            "GET /healthz (baseline)": await hammer(jobs, concurrency,
                                                    lambda _: c.get("/healthz")),
            "POST /v1/jobs": await hammer(jobs, concurrency, submit),
            "GET /v1/jobs/{id}": await hammer(jobs, concurrency,
                                              lambda i: c.get(f"/v1/jobs/{ids[i]}")),
        }
        stored = (await c.get("/v1/jobs", params={"state": "QUEUED"})).json()
        assert sorted(j["id"] for j in stored) == sorted(ids), "a submitted job is missing"
        return results


Results = dict[str, tuple[float, list[float]]]


def run_store(store: str, jobs: int, concurrency: int) -> Results:
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        args: list[str] = []
        if store == "postgresql":
            pg = stack.enter_context(LocalPostgres(durable=True))
            args = ["--db", pg.database()]
        server = stack.enter_context(ServerProcess(Path(tmp) / "state", None, env=TOKENS,
                                                   args=args))
        httpx.put(f"{server.url}/v1/nodes/local/cordon", json={"cordoned": True},
                  headers={"Authorization": f"Bearer {TOKENS['STOKER_ADMIN_TOKEN']}"}
                  ).raise_for_status()
        return asyncio.run(measure(server.url, jobs, concurrency))


def report(store: str, results: Results) -> None:
    base = results["GET /healthz (baseline)"][0]
    print(f"store: {store}")
    print(f"{'request':<26}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'vs baseline':>13}")
    for name, (rate, lat) in results.items():
        lat.sort()
        p50 = statistics.median(lat) * 1e3
        p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1e3
        print(f"{name:<26}{rate:>9.1f}{p50:>9.1f}{p99:>9.1f}{rate / base:>12.2f}x")


def _median_round(runs: list[Results]) -> Results:
    return sorted(runs, key=lambda r: r["POST /v1/jobs"][0])[len(runs) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--stores", default="sqlite",
                        help="comma-separated: sqlite, postgresql (measured in this order)")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    stores = args.stores.split(",")
    unknown = set(stores) - {"sqlite", "postgresql"}
    if unknown:
        parser.error(f"--stores: unknown store {sorted(unknown)[0]!r}")
    print(f"{args.jobs} requests each, {args.concurrency} concurrent connections, "
          f"{args.rounds} round(s)")
    rounds: dict[str, list[Results]] = {store: [] for store in stores}
    for i in range(args.rounds):
        for store in stores:
            rounds[store].append(run_store(store, args.jobs, args.concurrency))
            rate = rounds[store][-1]["POST /v1/jobs"][0]
            print(f"round {i + 1}, {store}: POST /v1/jobs {rate:.1f} req/s", flush=True)
    results = {store: _median_round(runs) for store, runs in rounds.items()}
    for store, rows in results.items():
        report(store, rows)
    if len(results) == 2:
        (a, ra), (b, rb) = results.items()
        for name in ra:
            print(f"{name}: {b} / {a} = {rb[name][0] / ra[name][0]:.2f}x")
    report_figures(rounds)


def report_figures(rounds: dict[str, list[Results]]) -> None:
    """Each store's rates per round against the same round's baseline, and every latency."""
    base = "GET /healthz (baseline)"
    for store, runs in rounds.items():
        for name, short in (("POST /v1/jobs", "post"), ("GET /v1/jobs/{id}", "get")):
            figure(f"{store} {short} / healthz", [r[name][0] / r[base][0] for r in runs], "x",
                   "higher")
            figure(f"{store} {short} rate", [r[name][0] for r in runs], "req/s", "higher")
            figure(f"{store} {short} latency", [t * 1e3 for r in runs for t in r[name][1]],
                   "ms", "lower")
        figure(f"{store} healthz rate", [r[base][0] for r in runs], "req/s", "higher")
    if len(rounds) == 2:
        (a, ra), (b, rb) = rounds.items()
        figure(f"{b} / {a} post", [y["POST /v1/jobs"][0] / x["POST /v1/jobs"][0]
                                   for x, y in zip(ra, rb, strict=True)], "x", "higher")


if __name__ == "__main__":
    main()
