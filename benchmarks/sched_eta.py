"""Estimated start times against actual ones, on a replayed trace.

    .venv/bin/python benchmarks/sched_eta.py                         # Alibaba 2023, 64 GPUs
    .venv/bin/python benchmarks/sched_eta.py --gpus 128 --max-jobs 3000 --policy stoker

The trace is replayed through the simulator (`stoker.sim`), where every admission is decided by
`stoker.sched.schedule`. Every ``--every`` simulated seconds, before that instant's scheduling
cycle, each pending job that has no estimate yet gets one from `stoker.sched.estimate_starts`
on the simulator's snapshot, with the running jobs' true ends and the pending jobs' true
durations (an oracle for durations: the control plane uses ``max_run_time`` instead, which
only adds its own error). What the estimate cannot know is what happens after it: jobs that
arrive later and go first (priority, fair sharing), preemptions, node failures. The run then
goes on to the end, and each estimate is compared with the job's actual first start.

Reported: how many pending jobs got an estimate, and the error (actual - estimated start) in
minutes: median, percentiles of its absolute value, the share within 1 minute and within 10%
of the wait that was predicted, and the share of jobs that started later / earlier than
estimated. The baseline is the simplest estimate, "starts now" (the wait so far is all of it),
in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from stoker.bench.figures import figure
from stoker.sched import estimate_starts
from stoker.sim.engine import SimOptions, Simulator
from stoker.sim.policies import POLICIES, resolve
from stoker.sim.run import Cut, SimInputs, prepare

TRACE = (Path(__file__).resolve().parents[2] / "shared" / "traces" / "alibaba-openb-2023"
         / "openb_pod_list_default.csv")
BENCH_QUICK = ["--arrival-scale", "8"]


class EstimatingSimulator(Simulator):
    """The simulator, estimating the pending jobs' starts every ``every`` seconds."""

    def __init__(self, *args: object, every: float, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.every = every
        self.next_estimate = 0.0
        self.estimates: dict[int, tuple[float, float]] = {}  # job -> (made at, start)
        self.first_start: dict[int, float] = {}
        self.estimate_seconds = 0.0

    def _schedule(self, now: float) -> None:
        if now >= self.next_estimate and self.pending:
            self._estimate(now)
            self.next_estimate = now + self.every
        before = set(self.running)
        super()._schedule(now)
        for idx in self.running.keys() - before:
            self.first_start.setdefault(idx, now)

    def _estimate(self, now: float) -> None:
        began = time.perf_counter()
        snapshot = self.snapshot(now)
        ends = {job.idx: job.start + job.remaining for job in self.running.values()}
        for idx, at in estimate_starts(snapshot, self.policy.policy, ends).items():
            self.estimates.setdefault(int(idx), (now, at))
        self.estimate_seconds += time.perf_counter() - began


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(name: str, errors: list[float], predicted_waits: list[float]) -> float:
    """Print one row; return the share of jobs within 10% of the predicted wait."""
    absolute = [abs(e) for e in errors]
    close = sum(a <= 60 for a in absolute) / len(errors)
    relative = sum(a <= max(60.0, 0.1 * w) for a, w in zip(absolute, predicted_waits,
                                                           strict=True)) / len(errors)
    late = sum(e > 60 for e in errors) / len(errors)
    early = sum(e < -60 for e in errors) / len(errors)
    print(f"{name:22} {statistics.median(errors) / 60:9.1f} {percentile(absolute, 0.5) / 60:9.1f}"
          f" {percentile(absolute, 0.9) / 60:9.1f} {percentile(absolute, 0.99) / 60:9.1f}"
          f" {close:8.1%} {relative:8.1%} {late:7.1%} {early:7.1%}")
    return relative


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", type=Path, default=TRACE)
    parser.add_argument("--format", default="alibaba")
    parser.add_argument("--gpus", type=float, default=64)
    parser.add_argument("--max-jobs", type=int, default=2000)
    parser.add_argument("--arrival-scale", type=float, default=1.0)
    parser.add_argument("--policy", default="stoker", choices=POLICIES)
    parser.add_argument("--every", type=float, default=600.0, help="simulated seconds")
    args = parser.parse_args()
    inputs = SimInputs(args.trace, args.format, cut=Cut(gpus=args.gpus),
                       arrival_scale=args.arrival_scale, max_jobs=args.max_jobs,
                       options=SimOptions())
    prepared = prepare(inputs)
    sim = EstimatingSimulator(prepared.cluster, prepared.jobs, prepared.tenants,
                              resolve(args.policy, prepared.cluster, None), prepared.inputs.options,
                              every=args.every)
    began = time.perf_counter()
    sim.run()
    wall = time.perf_counter() - began
    made = {idx: est for idx, est in sim.estimates.items() if idx in sim.first_start}
    errors = [sim.first_start[idx] - at for idx, (_, at) in made.items()]
    waits = [at - when for when, at in made.values()]
    naive = [sim.first_start[idx] - when for idx, (when, _) in made.items()]
    print(f"{prepared.cluster.describe()}; {len(prepared.jobs)} jobs, policy {args.policy}, an "
          f"estimate every {args.every:g} s; {len(made)} pending jobs estimated, "
          f"{len(sim.estimates) - len(made)} never started; run {wall:.1f} s, of which "
          f"estimating {sim.estimate_seconds:.1f} s")
    print(f"{'error (min)':22} {'median':>9} {'|p50|':>9} {'|p90|':>9} {'|p99|':>9} "
          f"{'<=1 min':>8} {'<=10%':>8} {'late':>7} {'early':>7}")
    within = report("estimate_starts", errors, waits)
    naive_within = report("baseline: starts now", naive, [0.0] * len(naive))
    absolute = [abs(e) / 60 for e in errors]
    naive_absolute = [abs(e) / 60 for e in naive]
    if percentile(naive_absolute, 0.9) > 0:
        figure("estimate / starts now abs p90",
               percentile(absolute, 0.9) / percentile(naive_absolute, 0.9), "x", "lower")
    figure("estimate abs error", absolute, "min", "lower")
    figure("starts now abs error", naive_absolute, "min", "lower")
    figure("estimate within 10%", within * 100, "%", "higher")
    figure("starts now within 10%", naive_within * 100, "%", "higher")
    figure("estimating time", sim.estimate_seconds, "s", "lower")


if __name__ == "__main__":
    main()
