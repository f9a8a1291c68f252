"""The CPU time each metric sink spends per metrics record, an upper bound on its step-time cost.

    .venv/bin/python benchmarks/sink_cost.py [--records 300] [--ranks 2] [--sinks tensorboard,...]

Each sink of `stoker.observe.sinks` is opened on a fresh run dir, given the demo's resolved
config, then fed ``--records`` records shaped like the trainer's (``--ranks`` entries in
``rank_step_times``), flushed every ``--per-flush`` records, as the sinks' thread does, and
closed. Reported per record: wall time, and CPU time of this process and its children (W&B's
``wandb-core`` writes in a process of its own), also with the close's spread over the records.
In a run these calls happen on the sinks' thread, not the step loop's, so a record's CPU time
is the most a sink can take from a step: divided by the step time, it bounds the sink's
overhead whatever else runs on the machine. Opening and closing (once per run) are apart.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from stoker.bench.figures import figure
from stoker.observe.sinks import MlflowSink, Sink, TensorBoardSink, WandbSink, scalars
from stoker.spec import loading
from stoker.spec.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
BENCH_QUICK = ["--records", "60"]


def cpu_s() -> float:
    """CPU seconds of this process and its live children (wandb-core)."""
    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += sum(child.cpu_times()[:2])
    return total


def record(step: int, ranks: int) -> dict[str, Any]:
    """A metrics record as `Trainer._record` makes it (numbers made up, shapes real)."""
    r = random.random
    return {"step": step, "attempt": 1, "loss": 5.0 - step / 100 + r(), "lr": 3e-3 * r(),
            "grad_norm": r(), "tokens": 2048, "tokens_per_s": 8000 + r(),
            "tokens_per_s_per_device": 4000 + r(), "mfu": r(), "step_time_s": 0.25 + r() / 100,
            "data_wait_s": 1e-4, "fwd_bwd_s": 0.2, "optim_s": 0.03, "peak_mem_bytes": 1 << 30,
            "rank_step_times": [0.25 + r() / 100 for _ in range(ranks)], "time": time.time()}


def measure(sink_of: Any, config: dict[str, Any], n: int, ranks: int,
            per_flush: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        sink: Sink = sink_of(Path(tmp))
        sink.log_config(config)
        t1, c1 = time.perf_counter(), cpu_s()
        for step in range(1, n + 1):
            sink.log(step, scalars(record(step, ranks)))
            if step % per_flush == 0:
                sink.flush()
        t2, c2 = time.perf_counter(), cpu_s()
        sink.close()
        t3, c3 = time.perf_counter(), cpu_s()
    return {"open_s": t1 - t0, "wall_ms": (t2 - t1) / n * 1e3, "cpu_ms": (c2 - c1) / n * 1e3,
            "cpu_close_ms": (c3 - c1) / n * 1e3, "close_s": t3 - t2}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--records", type=int, default=300)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--per-flush", type=int, default=10,
                   help="records per flush: the sinks' thread flushes once per log step "
                   "(the demo's train.log_interval is 10)")
    p.add_argument("--sinks", default="tensorboard,wandb,mlflow")
    args = p.parse_args()
    cfg = loading.load(TrainConfig, ROOT / "examples" / "tiny.toml", [])
    config = cfg.model_dump(by_alias=True)
    makers = {"tensorboard": TensorBoardSink, "wandb": WandbSink,
              "mlflow": lambda d: MlflowSink(d, cfg.train.name)}
    print(f"{args.records} records, {len(scalars(record(1, args.ranks)))} scalars each "
          f"({args.ranks} ranks), load average {psutil.getloadavg()[0]:.1f}")
    print(f"{'sink':<12} {'wall ms/rec':>11} {'cpu ms/rec':>10} {'+close':>7} {'open s':>7} "
          f"{'close s':>8}")
    for name in args.sinks.split(","):
        m = measure(makers[name], config, args.records, args.ranks, args.per_flush)
        print(f"{name:<12} {m['wall_ms']:>11.3f} {m['cpu_ms']:>10.3f} {m['cpu_close_ms']:>7.3f} "
              f"{m['open_s']:>7.1f} {m['close_s']:>8.1f}")
        figure(f"{name} cpu per record", m["cpu_close_ms"], "ms", "lower")
        figure(f"{name} wall per record", m["wall_ms"], "ms", "lower")


if __name__ == "__main__":
    main()
