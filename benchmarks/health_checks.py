"""How long node health checks take, and whether a healthy machine ever fails one.

    .venv/bin/python benchmarks/health_checks.py              # 10 pre-start sets, 2 ranks
    .venv/bin/python benchmarks/health_checks.py --runs 30 --ranks 2

Runs the ``prestart`` set (device state, matmul, checkpoint path free space and write speed,
an all-reduce among ``--ranks`` processes) ``--runs`` times on this machine with the default
``[health]`` settings, then the ``light`` set (device state only). Reported: each check's
median and worst duration, the set's, and how many runs failed a check (false positives: this
machine is healthy). The baseline, in the same run, is what the all-reduce probe cannot avoid:
spawning ``--ranks`` processes that import torch and join a gloo group, with no transfer; the
ratio says how much of the probe is the probe.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch.distributed as dist
import torch.multiprocessing as mp
from rich.console import Console
from rich.progress import track
from rich.table import Table

from stoker.bench.figures import figure
from stoker.health.runner import run_checks
from stoker.spec.health import HealthConfig

BENCH_QUICK = ["--runs", "2", "--ranks", "2"]


def _join(rank: int, world: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    dist.barrier()
    dist.destroy_process_group()


def bare_spawn(ranks: int) -> float:
    """Seconds to spawn ``ranks`` processes that join a gloo group and leave."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.perf_counter()
    mp.start_processes(_join, args=(ranks, port), nprocs=ranks, start_method="spawn")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--ranks", type=int, default=2)
    args = parser.parse_args()
    config = HealthConfig()
    durations: dict[str, list[float]] = defaultdict(list)
    failures: list[str] = []
    spawn: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in track(range(args.runs), description="pre-start sets"):
            report = run_checks("bench", "prestart", config, Path(tmp), gang_ranks=args.ranks)
            durations["prestart set"].append(report.duration_s)
            for check in report.results:
                durations[check.name].append(check.duration_s)
                if not check.passed:
                    failures.append(f"run {i}: {check.name} {check.value} vs {check.limit}")
            spawn.append(bare_spawn(args.ranks))
        for _ in range(args.runs):
            durations["light set"].append(run_checks("bench", "light", config, Path(tmp),
                                                     gang_ranks=0).duration_s)
    table = Table(title=f"health checks, {args.runs} runs, {args.ranks} ranks")
    for column in ("check", "median s", "worst s"):
        table.add_column(column, justify="right" if column != "check" else "left")
    for name, values in durations.items():
        table.add_row(name, f"{statistics.median(values):.3f}", f"{max(values):.3f}")
    table.add_row("baseline: bare spawn + gloo join", f"{statistics.median(spawn):.3f}",
                  f"{max(spawn):.3f}")
    console = Console()
    console.print(table)
    ratio = statistics.median(durations["allreduce"]) / statistics.median(spawn)
    console.print(f"all-reduce probe / bare spawn: {ratio:.2f}x")
    console.print(f"false positives: {len(failures)} of {args.runs} runs"
                  + "".join(f"\n  {f}" for f in failures))
    figure("allreduce / bare spawn",
           [a / b for a, b in zip(durations["allreduce"], spawn, strict=True)], "x", "lower")
    for name, values in durations.items():
        figure(name, values, "s", "lower")
    figure("bare spawn", spawn, "s", "lower")
    figure("false positives", len(failures), "runs", "lower")


if __name__ == "__main__":
    main()
