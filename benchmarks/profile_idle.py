"""Profiling's cost when idle: what the step loop pays per step for `stoker profile` to work.

    python benchmarks/profile_idle.py [--steps 30] [--calls 20000] [--set KEY=VALUE ...]

Trains the demo config (`examples/tiny.toml`) as one rank in this process to get the median
step time, then times, on that trainer, what an idle step adds: the test ``capture is not
None`` (every step) and rank 0's look for RUN_DIR/profile.request (`Trainer._profile_ask`, a
failed ``open``, on log steps only), plus three more float64s in the log step's all_gather
(not timed: 24 bytes in a message that already carries 4 numbers per pending step). Reported
as a fraction of the median step, for train.log_interval = 1 (every step a log step: the worst
case). A run with and without the feature compiled in cannot be compared in one build; this
times the only code the feature added to an idle step instead.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from stoker.bench.figures import figure
from stoker.observe.live import NullDisplay
from stoker.spec import loading
from stoker.spec.train import TrainConfig
from stoker.train.data import ensure_dataset
from stoker.train.distributed import init_distributed
from stoker.train.trainer import Trainer

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tiny.toml"
BENCH_QUICK = ["--steps", "8", "--calls", "2000"]


def per_call_s(fn: object, calls: int) -> float:
    """Seconds per call of ``fn`` (the best of 5 batches)."""
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            fn()  # type: ignore[operator]
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--calls", type=int, default=20000)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args()
    overrides = [f"train.steps={args.steps}", "train.log_interval=1", "train.eval_interval=0",
                 "telemetry.live=false", "checkpoint.enabled=false", *args.overrides]
    cfg = loading.load(TrainConfig, EXAMPLE, overrides)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, Path(tmp), init_distributed(cfg.parallel, cfg.train),
                          ensure_dataset(cfg.data), display=NullDisplay())
        assert trainer.run() == "completed"
        steps_s = [r["step_time_s"] for r in trainer.stats.records[3:]]
        step_s = statistics.median(steps_s)
        ask_s = per_call_s(trainer._profile_ask, args.calls)
        test_s = per_call_s(lambda: trainer.capture is not None, args.calls)
    idle = ask_s + test_s
    print(f"median step {step_s * 1e3:.2f} ms; per idle step: request look {ask_s * 1e6:.2f} us"
          f" + capture test {test_s * 1e9:.0f} ns = {idle * 1e6:.2f} us "
          f"= {idle / step_s:.5%} of the step")
    figure("idle cost / step", idle / step_s * 100, "%", "lower")
    figure("request look", ask_s * 1e6, "us", "lower")
    figure("capture test", test_s * 1e9, "ns", "lower")
    figure("step", [s * 1e3 for s in steps_s], "ms", "lower")


if __name__ == "__main__":
    main()
