"""Replay the Alibaba GPU 2023 trace through the scheduler, once per policy.

    .venv/bin/python benchmarks/sim_alibaba.py                    # whole trace, every policy
    .venv/bin/python benchmarks/sim_alibaba.py --gpus 64 --arrival-scale 4 --markdown

Per policy: wall seconds against the 10 s goal (ratio), the scheduler's share of them (the
baseline: the simulator's own cost is wall - scheduler), calls, and the run's metrics.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from stoker.bench.figures import figure
from stoker.sim.engine import SimOptions
from stoker.sim.policies import POLICIES
from stoker.sim.run import Cut, SimInputs, prepare, run_policy

TRACE = (Path(__file__).resolve().parents[2] / "shared" / "traces" / "alibaba-openb-2023"
         / "openb_pod_list_default.csv")
GOAL_S = 10.0
# Quick: Tiresias's 60 jobs on 3 of its nodes (seconds), from the repository root; the whole
# Alibaba trace takes about two minutes here (the replays about 16 s, the summaries the rest).
BENCH_QUICK = ["--trace", "../shared/traces/tiresias/60_job.csv", "--format", "tiresias",
               "--node-list", "../shared/traces/tiresias/n32g4.csv", "--nodes", "3"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", type=Path, default=TRACE)
    parser.add_argument("--format", default="alibaba")
    parser.add_argument("--node-list", type=Path, default=None)
    parser.add_argument("--policy", action="append", choices=POLICIES)
    parser.add_argument("--sample-nodes", "--nodes", dest="nodes", type=int,
                        help="N nodes spread evenly over the node list")
    parser.add_argument("--gpus", type=float)
    parser.add_argument("--arrival-scale", type=float, default=1.0)
    parser.add_argument("--las-thresholds", type=float, nargs="+", default=None,
                        help="GPU-seconds")
    parser.add_argument("--goal", type=float, default=GOAL_S, help="seconds per policy")
    parser.add_argument("--markdown", action="store_true", help="print a table for the docs")
    args = parser.parse_args()
    inputs = SimInputs(args.trace, args.format, node_list=args.node_list,
                       cut=Cut(sample=args.nodes, gpus=args.gpus),
                       arrival_scale=args.arrival_scale,
                       las_thresholds=tuple(args.las_thresholds) if args.las_thresholds else None,
                       options=SimOptions())
    began = time.perf_counter()
    prepared = prepare(inputs)
    print(f"loaded {len(prepared.jobs)} jobs in {time.perf_counter() - began:.2f} s; "
          f"{prepared.cluster.describe()}; " + "; ".join(prepared.trace.skips.lines()))
    summaries = []
    for policy in args.policy or POLICIES:
        result = run_policy(prepared, policy)
        s = result.summary()
        summaries.append(s)
        own = s["wall_seconds"] - s["sched_seconds"]
        print(json.dumps({
            "policy": policy, "wall_s": round(s["wall_seconds"], 2),
            "goal_ratio": round(s["wall_seconds"] / args.goal, 2),
            "sched_s": round(s["sched_seconds"], 2), "sim_own_s": round(own, 2),
            "sched_share": round(s["sched_seconds"] / s["wall_seconds"], 3),
            "sched_calls": s["sched_calls"],
            "ms_per_call": round(1000 * s["sched_seconds"] / max(s["sched_calls"], 1), 3),
            "load": round(s["load"], 3), "finished": s["finished"]}))
        figure(f"{policy} wall / goal", s["wall_seconds"] / args.goal, "x", "lower")
        figure(f"{policy} wall", s["wall_seconds"], "s", "lower")
        figure(f"{policy} ms per call", 1000 * s["sched_seconds"] / max(s["sched_calls"], 1),
               "ms", "lower")
        figure(f"{policy} jct mean", s["jct_h"]["mean"], "h", "lower")
    if args.markdown:
        print(markdown(summaries))


def markdown(summaries: list[dict[str, object]]) -> str:
    from stoker.sim.report import TABLE_ROWS, cell

    head = "| metric | " + " | ".join(str(s["policy"]) for s in summaries) + " |"
    rule = "|---|" + "---:|" * len(summaries)
    rows = [f"| {label} | " + " | ".join(cell(s, path, fmt) for s in summaries) + " |"
            for label, path, fmt in TABLE_ROWS]
    return "\n".join([head, rule, *rows])


if __name__ == "__main__":
    main()
