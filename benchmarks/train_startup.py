"""What a `stoker train` launch costs besides its steps: imports, start-up to the first step,
teardown after the last.

    python benchmarks/train_startup.py [--repeats 3] [--nproc 2] [--config examples/tiny.toml]

Each repeat, interleaved: ``python -c "import torch"`` (the anchor: every process of a run
imports torch, so the other import times are reported as ratios to it, which a shared
machine's load changes less than the seconds), the imports of one rank
(``stoker.train.__main__``) and of the launcher (``stoker.cli.main`` and the modules every
launch imports), and one 1-step run (``python -m stoker train``, as the tests and the control
plane start it) of CONFIG on NPROC gloo ranks with a checkpoint at its step, its ranks forked
warm (`stoker.train.warm`) and, in the same repeat, the same run with ``STOKER_WARM_RANKS=0``
(each rank imports for itself: the baseline),
timed from the launch to the rank's "start" event (imports, process group, model, wrapping,
checkpointer, loader: ready to step), to the step's metrics record, and from the last record
(the final checkpoint's commit) to the launcher's exit (teardown). Reported: medians, with
the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from stoker.bench.figures import figure

BENCH_QUICK = ["--repeats", "1"]
ROOT = Path(__file__).resolve().parent.parent
LAUNCHER_IMPORTS = ("import stoker.cli.main, stoker.train.launch, stoker.train.data, "
                    "torch.distributed.launcher.api")


def import_seconds(code: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - started


def first_record_time(path: Path, event: str | None = None) -> float:
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if event is None or record.get("event") == event:
            return float(record["time"])
    raise SystemExit(f"no {event or 'record'} in {path}")


def last_record_time(path: Path) -> float:
    return float(json.loads(path.read_text().splitlines()[-1])["time"])


def one_run(config: Path, nproc: int, tmp: Path, n: int, warm: bool = True) -> dict[str, float]:
    """A 1-step run's timeline, in seconds from its launch (``warm``: ranks forked from the
    zygote, `stoker.train.warm`; else each imports for itself, ``STOKER_WARM_RANKS=0``)."""
    run_dir = tmp / f"run{n}-{'warm' if warm else 'cold'}"
    cmd = [sys.executable, "-m", "stoker", "train", str(config), "--nproc", str(nproc),
           "--run-dir", str(run_dir), "--set", "train.steps=1", "--set", "train.eval_interval=0",
           "--set", "checkpoint.interval_steps=1", "--set", "telemetry.live=false"]
    launched = time.time()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, "STOKER_WARM_RANKS": "1" if warm else "0"})
    ended = time.time()
    events, metrics = run_dir / "events.jsonl", run_dir / "metrics.jsonl"
    ready = first_record_time(events, "start")
    stepped = first_record_time(metrics)
    last = max(last_record_time(events), stepped)
    return {"ready": ready - launched, "first step": stepped - ready,
            "teardown": ended - last, "run": ended - launched}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--config", type=Path, default=ROOT / "examples" / "tiny.toml")
    args = parser.parse_args()
    samples: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="stoker-startup-bench-") as tmp:
        for n in range(args.repeats):
            torch_s = import_seconds("import torch")
            rank_s = import_seconds("import stoker.train.__main__")
            launcher_s = import_seconds(LAUNCHER_IMPORTS)
            cold = one_run(args.config.resolve(), args.nproc, Path(tmp), n, warm=False)
            timeline = one_run(args.config.resolve(), args.nproc, Path(tmp), n)
            for name, value in {"import torch": torch_s, "rank imports": rank_s,
                                "launcher imports": launcher_s,
                                "rank imports / import torch": rank_s / torch_s,
                                "launcher imports / import torch": launcher_s / torch_s,
                                **{f"launch to {k}" if k == "ready" else k: v
                                   for k, v in timeline.items()},
                                "launch to ready / import torch": timeline["ready"] / torch_s,
                                "cold ranks: launch to ready": cold["ready"],
                                "cold ranks: run": cold["run"],
                                "launch to ready, warm / cold": timeline["ready"] / cold["ready"],
                                "run, warm / cold": timeline["run"] / cold["run"],
                                "teardown / import torch": timeline["teardown"] / torch_s,
                                "run / import torch": timeline["run"] / torch_s}.items():
                samples.setdefault(name, []).append(value)
    load = os.getloadavg()[0]
    print(f"load {load:.1f} on {os.cpu_count()} cpus; medians of {args.repeats}")
    for name, values in samples.items():
        ratio = "/" in name
        print(f"  {name:34s} {statistics.median(values):7.2f}{'x' if ratio else ' s'}")
        figure(name, values, "x" if ratio else "s", "lower")


if __name__ == "__main__":
    main()
