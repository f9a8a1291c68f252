"""Stoker's default policy against the reference policies, on every contention case of the
shared traces: mean and p99 JCT, the ratio to the best reference, preemptions, quota owed.

    .venv/bin/python benchmarks/sim_policies.py                      # every case, ~5 min
    .venv/bin/python benchmarks/sim_policies.py --case tiresias-3 --no-checkpoint-on-preempt

Cases: the Alibaba GPU 2023 pod list cut to about 24 GPUs, and to about 48 GPUs with arrivals
twice as fast (load 0.51 both: long pods hold GPUs for months, jobs wait for days), and
Tiresias's 60 jobs on 2, 3 and 4 nodes x 4 GPUs (load 1.87, 1.25, 0.94). Reference policies:
fifo, fifo-backfill, sjf and srtf (oracle durations), las. Stoker's: `stoker` (the default
`[scheduler]`, least attained service first within each queue) and `stoker-kueue` (Kueue's
order, priority then age: the default before). ``--equal-priorities`` gives every job priority
0, as the references see the trace (the Alibaba loader maps QoS classes to priorities 0-2).

"Quota owed" checks that quotas are honoured: the GPU-hours during which a queue had a pending
job that fits its unused nominal quota on a flavor the job may use while another queue borrowed
on that flavor (what reclaim must give back). The scheduler's own accounting (nominal quota,
borrowing limits) is the same code for every `stoker*` policy.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

from stoker.bench.figures import figure
from stoker.sched import GPU, UNLIMITED, Decisions
from stoker.sim.engine import SimOptions, Simulator
from stoker.sim.policies import resolve
from stoker.sim.run import Cut, Prepared, SimInputs, prepare

TRACES = Path(__file__).resolve().parents[2] / "shared" / "traces"
ALIBABA = TRACES / "alibaba-openb-2023" / "openb_pod_list_default.csv"
TIRESIAS = TRACES / "tiresias" / "60_job.csv"
NODES = TRACES / "tiresias" / "n32g4.csv"
CASES = {
    "alibaba-24": SimInputs(ALIBABA, "alibaba", cut=Cut(gpus=24)),
    "alibaba-48x2": SimInputs(ALIBABA, "alibaba", cut=Cut(gpus=48), arrival_scale=2.0),
    "tiresias-2": SimInputs(TIRESIAS, "tiresias", node_list=NODES, cut=Cut(sample=2)),
    "tiresias-3": SimInputs(TIRESIAS, "tiresias", node_list=NODES, cut=Cut(sample=3)),
    "tiresias-4": SimInputs(TIRESIAS, "tiresias", node_list=NODES, cut=Cut(sample=4)),
}
REFERENCES = ("fifo", "fifo-backfill", "sjf", "srtf", "las")
STOKER = ("stoker-kueue", "stoker")
BENCH_QUICK = ["--case", "tiresias-3"]


class QuotaWatch(Simulator):
    """A simulator that integrates the quota owed to queues between its scheduling cycles."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.nominal = {(q.name, fq.flavor): fq.nominal[GPU] / 1000 for q in self.queues
                        for fq in q.quotas if fq.nominal[GPU] < UNLIMITED}
        self.owed_since = (0.0, 0.0)  # (time, GPUs owed then)
        self.owed_gpu_seconds = 0.0

    def apply(self, decisions: Decisions, now: float) -> None:
        super().apply(decisions, now)
        at, owed = self.owed_since
        self.owed_gpu_seconds += owed * (now - at)
        self.owed_since = (now, self._owed())

    def _owed(self) -> float:
        if not self.nominal:
            return 0.0
        used: dict[tuple[str, str], float] = defaultdict(float)
        for job in self.running.values():
            used[(job.queue, job.flavor)] += job.gpus
        borrowed = {f for (q, f), u in used.items() if u > self.nominal.get((q, f), 0.0) + 1e-9}
        owed = 0.0
        for job in self.pending.values():
            for (q, f), nominal in self.nominal.items():
                if (q == job.queue and f in borrowed and (job.flavors is None or f in job.flavors)
                        and job.gpus <= nominal - used[(q, f)] + 1e-9):
                    owed += job.gpus
                    break
        return owed


def run(prepared: Prepared, policy: str, options: SimOptions) -> dict[str, Any]:
    sim_policy = resolve(policy, prepared.cluster)
    began = time.perf_counter()
    sim = QuotaWatch(prepared.cluster, prepared.jobs, prepared.tenants, sim_policy, options)
    s = sim.run().summary()
    s["quota_owed_h"] = sim.owed_gpu_seconds / 3600
    s["seconds"] = time.perf_counter() - began
    return s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", action="append", choices=list(CASES))
    parser.add_argument("--policy", action="append", choices=REFERENCES + STOKER)
    parser.add_argument("--checkpoint-on-preempt", action=argparse.BooleanOptionalAction,
                        default=True, help="a preempted job loses no work (it checkpoints on "
                        "SIGTERM; the default, as in `stoker sim`)")
    parser.add_argument("--equal-priorities", action="store_true",
                        help="every job priority 0, as the reference policies see the trace")
    args = parser.parse_args()
    options = SimOptions(checkpoint_on_preempt=args.checkpoint_on_preempt)
    policies = args.policy or list(REFERENCES + STOKER)
    print("| case | load | policy | JCT mean (h) | JCT p99 (h) | x best reference | "
          "preemptions | GPU-h lost | quota owed (GPU-h) | s |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for case in args.case or list(CASES):
        prepared = prepare(replace(CASES[case], options=options))
        if args.equal_priorities:
            prepared.jobs = [replace(j, priority=0) for j in prepared.jobs]
        results = {p: run(prepared, p, options) for p in policies}
        refs = [results[p]["jct_h"]["mean"] for p in REFERENCES if p in results]
        best = min(refs) if refs else float("nan")
        for p, s in results.items():
            ratio = s["jct_h"]["mean"] / best
            figure(f"{case} {p} jct mean / best reference", ratio, "x", "lower")
            owed = f"{s['quota_owed_h']:.1f}" if p in STOKER else "-"
            print(f"| {case} | {s['load']:.2f} | {p} | {s['jct_h']['mean']:.3f} | "
                  f"{s['jct_h']['p99']:.2f} | {ratio:.2f} | {s['preemptions']} | "
                  f"{s['gpu_hours_lost']:.1f} | {owed} | {s['seconds']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
