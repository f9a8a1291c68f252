"""The simulator's speed under heavy queueing, against a plain FIFO event loop on the same jobs.

    .venv/bin/python benchmarks/sim_speed.py                          # both cases, five policies
    .venv/bin/python benchmarks/sim_speed.py --case alibaba --policy fifo --finishes out.json

Cases (cut-down clusters of the shared traces, where jobs queue): the Alibaba GPU 2023 pod list
on about 24 of its GPUs (``--gpus 24``, load 0.51, jobs wait for days) and Tiresias's 60 jobs on
3 nodes x 4 GPUs (load 1.25). Per case the baseline is a plain event loop written here: strict
FIFO, best-fit placement of each rank on the node with the least free GPUs that holds it, one
heap of completions, arrivals in order. Per policy: Stoker's replay (`Simulator.run`) in seconds
and as a multiple of the plain loop's time in the same run (goal: <= 2x). ``--finishes`` writes
every job's finish time per case and policy, to check that a change to the engine leaves every
result the same (compare two files with ``cmp``).
"""

from __future__ import annotations

import argparse
import heapq
import json
import time
from collections import deque
from pathlib import Path

from stoker.bench.figures import figure
from stoker.sched import GPU
from stoker.sim.engine import SimJob, SimOptions, Simulator
from stoker.sim.policies import POLICIES, resolve
from stoker.sim.run import Cut, Prepared, SimInputs, prepare

TRACES = Path(__file__).resolve().parents[2] / "shared" / "traces"
CASES = {
    "alibaba": SimInputs(TRACES / "alibaba-openb-2023" / "openb_pod_list_default.csv", "alibaba",
                         cut=Cut(gpus=24)),
    "tiresias": SimInputs(TRACES / "tiresias" / "60_job.csv", "tiresias",
                          node_list=TRACES / "tiresias" / "n32g4.csv", cut=Cut(sample=3)),
}
DEFAULT_POLICIES = ("fifo", "fifo-backfill", "sjf", "las", "stoker")
GOAL_X = 2.0
BENCH_QUICK = ["--case", "tiresias", "--repeat", "3"]


def plain_fifo(jobs: list[SimJob], capacity: list[float],
               allowed: list[list[int]]) -> tuple[float, list[float]]:
    """Strict FIFO with best-fit placement, as a textbook event loop: seconds, finish times."""
    began = time.perf_counter()
    free = list(capacity)
    finish = [-1.0] * len(jobs)
    placed: list[list[int]] = [[] for _ in jobs]
    done: list[tuple[float, int]] = []  # (finish time, job)
    queue: deque[int] = deque()
    arrived = 0
    while arrived < len(jobs) or done:
        now = min(jobs[arrived].created_at if arrived < len(jobs) else float("inf"),
                  done[0][0] if done else float("inf"))
        while done and done[0][0] <= now:
            _, j = heapq.heappop(done)
            for i in placed[j]:
                free[i] += jobs[j].per_rank_gpus
        while arrived < len(jobs) and jobs[arrived].created_at <= now:
            queue.append(arrived)
            arrived += 1
        while queue:
            j = queue[0]
            nodes = best_fit(jobs[j], free, allowed[j])
            if nodes is None:
                break
            queue.popleft()
            placed[j] = nodes
            finish[j] = now + jobs[j].remaining
            heapq.heappush(done, (finish[j], j))
    return time.perf_counter() - began, finish


def best_fit(job: SimJob, free: list[float], allowed: list[int]) -> list[int] | None:
    """Each rank on the allowed node with the least free GPUs that holds it (lowest index on
    ties); None, with `free` unchanged, when some rank does not fit."""
    need = job.per_rank_gpus
    nodes: list[int] = []
    for _ in range(job.ranks):
        best = -1
        for i in allowed:
            if free[i] + 1e-9 >= need and (best < 0 or free[i] < free[best]):
                best = i
        if best < 0:
            for i in nodes:
                free[i] += need
            return None
        free[best] -= need
        nodes.append(best)
    return nodes


def run_case(name: str, prepared: Prepared, policies: list[str], repeat: int,
             finishes: dict[str, dict[str, list[float]]]) -> None:
    cluster = prepared.cluster
    plain = Simulator(cluster, prepared.jobs, prepared.tenants, resolve("fifo", cluster),
                      SimOptions())
    capacity = [n.capacity[GPU] / 1000 for n in plain.node_list]
    allowed = [[i for i, n in enumerate(plain.node_list) if n.name not in job.avoid]
               for job in plain.jobs]
    plain_runs = [plain_fifo(plain.jobs, capacity, allowed) for _ in range(repeat)]
    plain_s = min(s for s, _ in plain_runs)
    plain_jct = [f - j.outcome.arrival for f, j in zip(plain_runs[0][1], plain.jobs, strict=True)]
    print(json.dumps({"case": name, "jobs": len(plain.jobs), "gpus": sum(capacity),
                      "nodes": len(capacity), "plain_fifo_s": round(plain_s, 3),
                      "plain_fifo_jct_mean_h": round(sum(plain_jct) / len(plain_jct) / 3600, 2)}))
    figure(f"{name} plain fifo", plain_s, "s", "lower")
    finishes[name] = {}
    for policy in policies:
        results = [Simulator(cluster, prepared.jobs, prepared.tenants, resolve(policy, cluster),
                             prepared.inputs.options).run() for _ in range(repeat)]
        walls = [r.wall_seconds for r in results]
        result = min(results, key=lambda r: r.wall_seconds)
        wall = result.wall_seconds
        finishes[name][policy] = [j.finish for j in result.jobs]
        jct = [j.jct for j in result.jobs]
        print(json.dumps({
            "case": name, "policy": policy, "wall_s": round(wall, 3),
            "vs_plain_fifo": round(wall / plain_s, 2), "goal_x": GOAL_X,
            "sched_s": round(result.sched_seconds, 3),
            "sim_own_s": round(result.wall_seconds - result.sched_seconds, 3),
            "sched_calls": result.sched_calls,
            "jct_mean_h": round(sum(jct) / len(jct) / 3600, 2)}))
        figure(f"{name} {policy} wall", walls, "s", "lower")
        figure(f"{name} {policy} / plain fifo", [w / plain_s for w in walls], "x", "lower")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", action="append", choices=sorted(CASES))
    parser.add_argument("--policy", action="append", choices=POLICIES)
    parser.add_argument("--repeat", type=int, default=1, help="runs per policy (the best counts)")
    parser.add_argument("--finishes", type=Path, help="write every job's finish time here (JSON)")
    args = parser.parse_args()
    finishes: dict[str, dict[str, list[float]]] = {}
    for name in args.case or sorted(CASES):
        began = time.perf_counter()
        prepared = prepare(CASES[name])
        print(f"{name}: loaded {len(prepared.jobs)} jobs in {time.perf_counter() - began:.2f} s; "
              f"{prepared.cluster.describe()}")
        run_case(name, prepared, args.policy or list(DEFAULT_POLICIES), args.repeat, finishes)
    if args.finishes is not None:
        args.finishes.write_text(json.dumps(finishes, sort_keys=True))


if __name__ == "__main__":
    main()
