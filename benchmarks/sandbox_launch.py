"""What the sandbox adds to a job's start: the local executor launching a rank, sandboxed or not.

    python benchmarks/sandbox_launch.py [--repeats 10] [--ranks 4] [--code "import torch"]

Each trial launches a command job of RANKS processes (``python -c CODE``; default ``pass``, the
interpreter alone, which keeps the noise of a shared machine out; ``import torch`` is what
every training rank begins with) through `LocalExecutor` and times it from ``launch()`` to the
last rank's exit. Baseline, in the same run and interleaved with it: the same launch with
no sandbox and no change of user. Measured: the same launch under bubblewrap, as a tenant's
own Unix user when run as root (what `stoker server` does here). Reported: medians, and the
added time per rank. Needs bubblewrap (and root for the user switch).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.progress import track
from rich.table import Table

from stoker.bench.figures import figure
from stoker.control.executor import LaunchPlan, ProcessPlan
from stoker.control.isolation import Isolation, find_sandbox, runtime_paths, tenant_identity
from stoker.control.local_executor import LocalExecutor
from stoker.spec.cluster import IsolationConfig

BENCH_QUICK = ["--repeats", "3", "--ranks", "2"]


def plan(jobs: Path, job_id: int, ranks: int, code: str) -> LaunchPlan:
    workdir = jobs / str(job_id)
    processes = tuple(
        ProcessPlan(index=i, node="local", argv=(sys.executable, "-c", code),
                    env={"RANK": str(i)}, log_path=workdir / "logs" / f"rank-{i}.log",
                    exit_path=workdir / "attempt-1" / f"rank-{i}.exit", devices={})
        for i in range(ranks))
    return LaunchPlan(job_id, 1, workdir, processes, tenant="bench")


def trial(executor: LocalExecutor, job_id: int, ranks: int, code: str) -> float:
    launch = plan(executor.jobs_dir, job_id, ranks, code)
    started = time.perf_counter()
    records = executor.launch(launch)
    for record, process in zip(records, launch.processes, strict=True):
        while executor.status(record, process.exit_path).state == "alive":
            time.sleep(0.002)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument("--code", default="pass")
    args = parser.parse_args()
    sandbox = find_sandbox(IsolationConfig(sandbox="bubblewrap"), runtime_paths(),
                           switch_user=os.geteuid() == 0)
    who = {"bench": tenant_identity("bench", None)} if os.geteuid() == 0 else {}
    with tempfile.TemporaryDirectory(prefix="stoker-sandbox-bench-") as tmp:
        jobs = Path(tmp) / "jobs"
        jobs.mkdir(mode=0o711)
        os.chmod(tmp, 0o711)
        executors = {"plain": LocalExecutor(jobs),
                     "sandboxed": LocalExecutor(jobs, isolation=Isolation(who, sandbox))}
        times: dict[str, list[float]] = {name: [] for name in executors}
        job_id = 0
        for _ in track(range(args.repeats + 1), description="launching"):
            for name, executor in executors.items():
                job_id += 1
                seconds = trial(executor, job_id, args.ranks, args.code)
                if job_id > len(executors):  # the first round warms the page cache
                    times[name].append(seconds)
    plain, boxed = (statistics.median(times[n]) for n in ("plain", "sandboxed"))
    table = Table(title=f"{args.ranks}-rank launch of python -c {args.code!r} to exit, "
                  f"median of {args.repeats}")
    for column in ("", "seconds", "per rank"):
        table.add_column(column, justify="right")
    table.add_row("plain (baseline)", f"{plain:.3f}", f"{plain / args.ranks:.3f}")
    table.add_row("sandboxed" + (" + own user" if who else ""), f"{boxed:.3f}",
                  f"{boxed / args.ranks:.3f}")
    Console().print(table)
    print(f"ratio sandboxed/plain {boxed / plain:.2f}; added to the launch "
          f"{boxed - plain:.3f} s, per rank {(boxed - plain) / args.ranks:.3f} s "
          "(goal <= 0.5 s per rank)")
    pairs = list(zip(times["sandboxed"], times["plain"], strict=True))
    figure("sandboxed / plain", [b / p for b, p in pairs], "x", "lower")
    figure("added per rank", [(b - p) / args.ranks for b, p in pairs], "s", "lower")
    figure("sandboxed launch", times["sandboxed"], "s", "lower")
    figure("plain launch", times["plain"], "s", "lower")


if __name__ == "__main__":
    main()
