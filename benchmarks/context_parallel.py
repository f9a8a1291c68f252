"""Context parallelism against data parallelism on the same ranks: speed and memory per rank.

    .venv/bin/python benchmarks/context_parallel.py [--seq-len 2048] [--steps 6] [--repeats 2]

Two runs of `stoker train examples/tiny.toml --nproc 2` (gloo, CPU), alternating, ``--repeats``
times each: ``parallel.cp=2`` (each rank holds half of every sequence, keys and values
all-gathered) and the baseline ``parallel.dp_shard=2`` (each rank holds whole sequences,
FSDP2). Same global batch (4 sequences of ``--seq-len`` tokens), so each rank trains the same
number of tokens per step: the baseline in one micro-batch of 2 whole sequences; ``cp2`` in
two micro-batches of 2 half sequences (the same sequences per micro-batch: what cp saves in
memory); ``cp2_micro4`` in one micro-batch of 4 half sequences (the same tokens per
micro-batch: what cp costs in time). Reported from each run's metrics.jsonl: the median step
time after the first two steps, and the peak memory (the largest max RSS of the ranks, which
includes the torch runtime, about 0.3 GB per rank, and what glibc keeps of freed blocks);
ratios to the baseline per repeat.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from stoker.bench.figures import figure

ROOT = Path(__file__).resolve().parents[1]
BENCH_QUICK = ["--seq-len", "256", "--steps", "3", "--repeats", "1"]
LAYOUTS = {
    "cp2": ["parallel.cp=2", "train.micro_batch_size=2"],  # 2 micro-batches of 2 half sequences
    "cp2_micro4": ["parallel.cp=2", "train.micro_batch_size=4"],  # 1 of 4 half sequences
    "dp_shard2": ["parallel.dp_shard=2", "train.micro_batch_size=2"],  # 1 of 2 whole sequences
}


def train(run_dir: Path, seq_len: int, steps: int, layout: list[str]) -> tuple[float, int]:
    """Median step time (s) after two steps, and the peak memory (bytes) of one run."""
    sets = [f"train.seq_len={seq_len}", f"train.steps={steps}", "train.global_batch_size=4",
            "train.eval_interval=0", "checkpoint.enabled=false",
            "telemetry.live=false", *layout]
    result = subprocess.run(
        [sys.executable, "-m", "stoker", "train", str(ROOT / "examples" / "tiny.toml"),
         "--nproc", "2", "--run-dir", str(run_dir), *(a for s in sets for a in ("--set", s))],
        capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(result.stderr[-3000:])
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    times = [r["step_time_s"] for r in records[2:]] or [r["step_time_s"] for r in records]
    return statistics.median(times), max(r["peak_mem_bytes"] for r in records)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    results: dict[str, list[tuple[float, int]]] = {name: [] for name in LAYOUTS}
    with tempfile.TemporaryDirectory(prefix="stoker-cp-") as tmp:
        for repeat in range(args.repeats):
            for name, layout in LAYOUTS.items():
                run = Path(tmp) / f"{name}-{repeat}"
                step_s, peak = train(run, args.seq_len, args.steps, layout)
                results[name].append((step_s, peak))
                print(f"repeat {repeat + 1} {name}: step {step_s * 1e3:.0f} ms, "
                      f"peak {peak / 2**20:.0f} MiB", flush=True)
    print("\n| layout | step ms (median of repeats) | peak MiB | step vs dp_shard2 | "
          "peak vs dp_shard2 |\n|---|---:|---:|---:|---:|")
    base = results["dp_shard2"]
    for name, runs in results.items():
        step_ratio = [a[0] / b[0] for a, b in zip(runs, base, strict=True)]
        peak_ratio = [a[1] / b[1] for a, b in zip(runs, base, strict=True)]
        print(f"| {name} (seq {args.seq_len}) | {statistics.median(r[0] for r in runs) * 1e3:.0f}"
              f" | {statistics.median(r[1] for r in runs) / 2**20:.0f} | "
              f"{statistics.median(step_ratio):.2f} | {statistics.median(peak_ratio):.2f} |")
        figure(f"{name} step", [r[0] * 1e3 for r in runs], "ms", "lower")
        figure(f"{name} peak", [r[1] / 2**20 for r in runs], "MiB", "lower")
        if name != "dp_shard2":
            figure(f"{name} step / dp_shard2", step_ratio, "x", "lower")
            figure(f"{name} peak / dp_shard2", peak_ratio, "x", "lower")


if __name__ == "__main__":
    main()
