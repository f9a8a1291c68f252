"""The pipeline bubble, measured: how long each pipeline rank sits idle in one schedule step.

    .venv/bin/python benchmarks/pp_bubble.py [--pp 2] [--microbatches 4,8] [--steps 5]

For each pp size, schedule and number of micro-batches, ``pp`` local processes (gloo, one CPU
thread each) build Stoker's own pipeline (`stoker.train.pipeline.build_pipeline`: a Llama-style
model of 8 layers, dim 256, byte vocabulary, cut into ``pp`` stages, or ``2 × pp`` for the
interleaved schedules) and run ``--steps`` schedule steps (forward and backward of one batch of
``microbatches × 2`` sequences of 128 tokens) after two unmeasured ones.

Method. A rank is busy while one of its stages computes: the time spent inside the stage's
``forward_one_chunk``, ``backward_one_chunk`` and ``backward_weight_one_chunk`` (the schedule
calls these for every action; the sends and receives, and the waits on them, happen outside
them). Every rank starts a step after a barrier; its idle fraction is ``1 - busy / wall``, wall
being the time its ``schedule.step`` took. The table gives the mean over ranks and steps; what
is idle includes the transfers between stages and the schedule's own bookkeeping, and the loss
(the byte vocabulary keeps it small). The theoretical bubble of 1F1B (and GPipe), (p - 1) /
(m + p - 1) for p stages and m micro-batches, assumes equal stages and free transfers; the
interleaved schedules, with v stages per rank, aim at (p - 1) / (v·m + p - 1).

Each rank needs a core of its own for the measure to mean anything: on a machine with fewer
cores than ``pp`` (or a busy one) ranks wait for a CPU, which shows up as busy time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

SCHEDULES = ("gpipe", "1f1b", "interleaved-1f1b", "zero-bubble")
BENCH_QUICK = ["--microbatches", "4", "--steps", "1"]
STAGE_WORK = ("forward_one_chunk", "backward_one_chunk", "backward_weight_one_chunk")
SEQ_LEN, SEQS_PER_MICROBATCH = 128, 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--pp", default="2", help="pipeline sizes, comma-separated")
    p.add_argument("--microbatches", default="4,8", help="micro-batches per step, comma-separated")
    p.add_argument("--steps", type=int, default=5, help="measured schedule steps")
    p.add_argument("--port", type=int, default=29731)
    return p.parse_args(argv)


class BusyClock:
    """Seconds a rank spends inside its stages' compute calls (outermost calls only: a
    backward may call the weight backward itself)."""

    def __init__(self) -> None:
        self.busy = 0.0
        self._depth = 0

    def instrument(self, stage: object) -> None:
        for name in STAGE_WORK:
            setattr(stage, name, self._timed(getattr(stage, name)))

    def _timed(self, fn: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            self._depth += 1
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self.busy += time.perf_counter() - start
        return timed


def rank_main(rank: int, pp: int, schedule: str, microbatches: int, steps: int, port: int,
              out: Any) -> None:
    from stoker.spec.train import Layout, ModelShape, ParallelConfig
    from stoker.train.parallel_dims import ParallelDims
    from stoker.train.pipeline import build_pipeline
    from stoker.train.trainer import token_loss

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=pp)
    try:
        interleaved = schedule not in ("gpipe", "1f1b")
        parallel = ParallelConfig(strategy="none", pp=pp, pp_schedule=schedule,  # type: ignore[arg-type]
                                  pp_microbatches=microbatches,
                                  pp_stages_per_rank=2 if interleaved else 1)
        shape = ModelShape(vocab_size=256, dim=256, n_layers=8, n_heads=4, n_kv_heads=4,
                           ffn_hidden=768)
        cpu = torch.device("cpu")
        dims = ParallelDims.build(Layout(pp=pp, dp_replicate=1, dp_shard=1, cp=1, tp=1), cpu)
        pipeline = build_pipeline(shape, parallel, dims, cpu, seed=0, loss_fn=token_loss)
        clock = BusyClock()
        for stage in pipeline.stages:
            clock.instrument(stage)
        batch = torch.randint(0, 256, (microbatches * SEQS_PER_MICROBATCH, SEQ_LEN + 1),
                              generator=torch.Generator().manual_seed(0))
        inputs, targets = batch[:, :-1], batch[:, 1:]
        idle = []
        for step in range(steps + 2):
            dist.barrier()
            clock.busy = 0.0
            start = time.perf_counter()
            pipeline.step(inputs, targets, loss_scale=1.0 / microbatches)
            wall = time.perf_counter() - start
            if step >= 2:
                idle.append(1.0 - clock.busy / wall)
            for part in pipeline.parts:
                part.zero_grad(set_to_none=True)
        out.put((rank, idle))
    finally:
        dist.destroy_process_group()


def measure(pp: int, schedule: str, microbatches: int, steps: int, port: int) -> list[float]:
    """The idle fraction of each rank in each measured step."""
    ctx = mp.get_context("spawn")
    out = ctx.SimpleQueue()
    mp.start_processes(rank_main, args=(pp, schedule, microbatches, steps, port, out),
                       nprocs=pp, start_method="spawn")
    return [f for _ in range(pp) for f in out.get()[1]]


def main(argv: list[str] | None = None) -> None:
    from stoker.bench.figures import figure

    args = parse_args(argv)
    rows = []
    port = args.port
    for pp in (int(x) for x in args.pp.split(",")):
        for m in (int(x) for x in args.microbatches.split(",")):
            theory = (pp - 1) / (m + pp - 1)
            for schedule in SCHEDULES:
                port += 1
                fractions = measure(pp, schedule, m, args.steps, port)
                idle = statistics.mean(fractions)
                name = f"pp{pp} m{m} {schedule}"
                figure(f"{name} idle", [f * 100 for f in fractions], "%", "lower")
                if theory > 0:
                    figure(f"{name} idle / theory", [f / theory for f in fractions], "x",
                           "lower")
                rows.append({"pp": pp, "microbatches": m, "schedule": schedule,
                             "idle_measured": round(idle, 3),
                             "bubble_1f1b_theory": round(theory, 3)})
                print(f"pp={pp} m={m:<3} {schedule:<17} idle {idle:6.1%}   "
                      f"1F1B theory {theory:6.1%}", flush=True)
    print()
    print("| pp | micro-batches | schedule | measured idle | 1F1B theory (p-1)/(m+p-1) |")
    print("|---:|---:|---|---:|---:|")
    for r in rows:
        print(f"| {r['pp']} | {r['microbatches']} | {r['schedule']} | "
              f"{r['idle_measured']:.1%} | {r['bubble_1f1b_theory']:.1%} |")
    print()
    print(json.dumps({"cpu_count": os.cpu_count(), "torch": torch.__version__,
                      "load_avg_1m": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
