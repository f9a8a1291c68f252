"""The pipeline runner's own cost: the same steps run by `stoker.pipeline` and called as plain
functions, in the same process, alternately; and the time of a run served from the cache.

    .venv/bin/python benchmarks/pipeline_overhead.py [--shards 8] [--mb 4] [--passes 9]
                                                     [--workers 2] [--repeats 3]

The pipeline: ``make`` (``--shards`` shards, each ``--mb`` MB of seeded random float32 written
as .npy) -> ``smooth`` (per shard: a moving average, ``--passes`` passes) -> ``stats`` (all
shards: mean, std and a histogram, as JSON). Plain: the three functions called in order on
files in a temporary directory, sequentially, exactly as the runner calls them (same
`StepContext`).
Runner, sequential: ``workers = 1`` (every task in this process), so the difference is the
runner alone: hashing the outputs, storing them, cache entries and run records. Runner,
parallel: the shards in ``--workers`` spawned processes. Each runner run has a fresh store (no
cache hit); then the cached run: the same pipeline again on the last store.
Figures: runner / plain time (x), per-task overhead (ms), the cached run's wall time (ms).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from stoker.bench.figures import figure
from stoker.pipeline import StepContext

HERE = Path(__file__).resolve().parent
BENCH_QUICK = ["--shards", "4", "--mb", "1", "--repeats", "2"]


def make(ctx: StepContext) -> None:
    n = int(ctx.params["mb"] * (1 << 20)) // 4
    data = np.random.default_rng([ctx.params["seed"], ctx.shard]).standard_normal(n)
    with open(ctx.outputs["data"], "wb") as f:  # np.save adds .npy to a path without it
        np.save(f, data.astype(np.float32), allow_pickle=False)


def smooth(ctx: StepContext) -> None:
    data = np.load(ctx.paths("data")[0])
    kernel = np.ones(ctx.params["width"], np.float32) / ctx.params["width"]
    for _ in range(ctx.params["passes"]):
        data = np.convolve(data, kernel, mode="same")
    with open(ctx.outputs["data"], "wb") as f:
        np.save(f, data, allow_pickle=False)


def stats(ctx: StepContext) -> dict[str, float]:
    data = np.concatenate([np.load(p) for p in ctx.paths("data")])
    hist, _ = np.histogram(data, bins=64)
    out = {"mean": float(data.mean()), "std": float(data.std()), "n": int(data.size)}
    ctx.outputs["stats"].write_text(json.dumps({**out, "hist": hist.tolist()}))
    return out


PIPELINE = """
name = "bench"
store = "{store}"
path = "{here}"
workers = {workers}
[steps.make]
run = "pipeline_overhead:make"
params = {{ mb = {mb}, seed = 0 }}
outputs = ["data"]
shards = {shards}
[steps.smooth]
run = "pipeline_overhead:smooth"
inputs = {{ data = "make.data" }}
params = {{ width = 9, passes = {passes} }}
outputs = ["data"]
shards = {shards}
[steps.stats]
run = "pipeline_overhead:stats"
inputs = {{ data = "smooth.data" }}
outputs = ["stats"]
"""


def plain(tmp: Path, shards: int, mb: float, passes: int) -> float:
    """The three functions called in order, as the runner calls them; seconds."""
    start = time.perf_counter()
    made, smoothed = [], []
    for i in range(shards):
        out = tmp / f"make-{i}"
        make(StepContext("make", {"mb": mb, "seed": 0}, {}, {"data": out}, i, shards))
        made.append(out)
    for i in range(shards):
        out = tmp / f"smooth-{i}"
        smooth(StepContext("smooth", {"width": 9, "passes": passes}, {"data": made[i]},
                           {"data": out}, i, shards))
        smoothed.append(out)
    stats(StepContext("stats", {}, {"data": smoothed}, {"stats": tmp / "stats"}))
    return time.perf_counter() - start


def runner(tmp: Path, shards: int, mb: float, passes: int, workers: int,
           expect: str = "ran") -> float:
    from stoker.pipeline.runner import Runner, load_pipeline

    path = tmp / "pipeline.toml"
    path.write_text(PIPELINE.format(store=tmp / "store", here=HERE, workers=workers,
                                    mb=mb, shards=shards, passes=passes))
    start = time.perf_counter()
    record = Runner(load_pipeline(path)).run()
    took = time.perf_counter() - start
    assert {s["state"] for s in record["steps"].values()} == {expect}, record["steps"]
    return took


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--mb", type=float, default=4.0, help="MB of data per shard")
    p.add_argument("--passes", type=int, default=9, help="smoothing passes: the work per shard")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    tasks = 2 * args.shards + 1
    times: dict[str, list[float]] = {"plain": [], "sequential": [], "parallel": [],
                                     "cached": []}
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as d:
            times["plain"].append(plain(Path(d), args.shards, args.mb, args.passes))
        with tempfile.TemporaryDirectory() as d:
            times["sequential"].append(runner(Path(d), args.shards, args.mb, args.passes, 1))
            times["cached"].append(runner(Path(d), args.shards, args.mb, args.passes, 1,
                                          "cached"))
        with tempfile.TemporaryDirectory() as d:
            times["parallel"].append(runner(Path(d), args.shards, args.mb, args.passes,
                                            args.workers))
    seq = [s / p for s, p in zip(times["sequential"], times["plain"], strict=True)]
    par = [s / p for s, p in zip(times["parallel"], times["plain"], strict=True)]
    per_task = [(s - p) / tasks * 1000 for s, p in
                zip(times["sequential"], times["plain"], strict=True)]
    print(f"{args.shards} shards x {args.mb} MB, {args.passes} passes, {tasks} tasks, "
          f"{args.repeats} repeats "
          "(median seconds):")
    for name, values in times.items():
        print(f"  {name:<11} {statistics.median(values):.3f} s")
    print(f"  runner (sequential) / plain  {statistics.median(seq):.3f}x, "
          f"{statistics.median(per_task):.1f} ms per task")
    print(f"  runner ({args.workers} workers) / plain     {statistics.median(par):.3f}x")
    print(f"  cached run                   {statistics.median(times['cached']) * 1000:.0f} ms "
          f"({statistics.median(times['cached']) * 1000 / tasks:.2f} ms per task)")
    figure("runner sequential / plain", seq, "x", "lower")
    figure(f"runner {args.workers} workers / plain", par, "x", "lower")
    figure("runner overhead per task", per_task, "ms", "lower")
    figure("cached run", [t * 1000 for t in times["cached"]], "ms", "lower")


if __name__ == "__main__":
    main()
