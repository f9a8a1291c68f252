"""A generated trace of 100,000 jobs on 1,000 nodes x 8 GPUs (load 0.9), through the scheduler.

    .venv/bin/python benchmarks/sim_synthetic.py                      # every event, exact
    .venv/bin/python benchmarks/sim_synthetic.py --interval 60        # one cycle per minute

Reports wall seconds against the 60 s goal (ratio) and the scheduler's share of them (the
simulator's own cost is wall - scheduler). ``--interval`` schedules like the live control plane,
once per interval, instead of after every event.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from stoker.bench.figures import figure
from stoker.sim import synth
from stoker.sim.engine import SimOptions
from stoker.sim.policies import POLICIES
from stoker.sim.run import SimInputs, prepare_trace, run_policy

GOAL_S = 60.0
BENCH_QUICK = ["--jobs", "20000", "--nodes", "200"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--load", type=float, default=0.9)
    parser.add_argument("--interval", type=float, default=0.0, help="seconds; 0: every event")
    parser.add_argument("--policy", action="append", choices=POLICIES)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    began = time.perf_counter()
    trace = synth.generate(args.jobs, synth.nodes(args.nodes, 8), load=args.load, seed=args.seed)
    inputs = SimInputs(Path("synthetic"), "synthetic",
                       options=SimOptions(interval=args.interval, seed=args.seed))
    prepared = prepare_trace(trace, inputs)
    print(f"generated {len(trace.jobs)} jobs over {trace.span / 3600:.1f} h in "
          f"{time.perf_counter() - began:.2f} s; {prepared.cluster.describe()}")
    for policy in args.policy or ["fifo"]:
        s = run_policy(prepared, policy).summary()
        print(json.dumps({
            "policy": policy, "interval_s": args.interval, "wall_s": round(s["wall_seconds"], 2),
            "goal_ratio": round(s["wall_seconds"] / GOAL_S, 2),
            "sched_s": round(s["sched_seconds"], 2),
            "sim_own_s": round(s["wall_seconds"] - s["sched_seconds"], 2),
            "sched_calls": s["sched_calls"],
            "ms_per_call": round(1000 * s["sched_seconds"] / max(s["sched_calls"], 1), 3),
            "load": round(s["load"], 3), "finished": s["finished"],
            "wait_p95_h": round(s["wait_h"]["p95"], 3), "utilization": round(s["utilization"], 3),
            "preemptions": s["preemptions"]}))
        figure(f"{policy} wall / goal", s["wall_seconds"] / GOAL_S, "x", "lower")
        figure(f"{policy} wall", s["wall_seconds"], "s", "lower")
        figure(f"{policy} ms per call", 1000 * s["sched_seconds"] / max(s["sched_calls"], 1),
               "ms", "lower")
        figure(f"{policy} wait p95", s["wait_h"]["p95"], "h", "lower")


if __name__ == "__main__":
    main()
