"""Context parallelism against data parallelism on the same ranks: speed and memory per rank.

    .venv/bin/python benchmarks/context_parallel.py [--seq-len 2048] [--steps 6] [--repeats 2]
        [--compile]

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

With ``--compile`` every run compiles its blocks (``parallel.compile=true``, inductor); the
first two steps, left out, include the compilation.

The RSS high-water mark hides what the activations take, so the same three layouts are then
built in this script's own two gloo processes (`build_model`, `ContextParallel.apply`, one
micro-batch) and measured by glibc's count of heap bytes in use (``mallinfo2``): what a
forward pass leaves allocated for its backward, on rank 0, the second of two iterations.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from stoker.bench.figures import figure
from stoker.ports import free_port
from stoker.spec.train import PRESETS, ParallelConfig
from stoker.train.context_parallel import ContextParallel
from stoker.train.parallel_dims import ParallelDims
from stoker.train.parallelize import build_model
from stoker.train.trainer import token_loss

ROOT = Path(__file__).resolve().parents[1]
BENCH_QUICK = ["--seq-len", "256", "--steps", "3", "--repeats", "1"]
LAYOUTS = {
    "cp2": ["parallel.cp=2", "train.micro_batch_size=2"],  # 2 micro-batches of 2 half sequences
    "cp2_micro4": ["parallel.cp=2", "train.micro_batch_size=4"],  # 1 of 4 half sequences
    "dp_shard2": ["parallel.dp_shard=2", "train.micro_batch_size=2"],  # 1 of 2 whole sequences
}


def train(run_dir: Path, seq_len: int, steps: int, layout: list[str],
          compile_: bool = False) -> tuple[float, int]:
    """Median step time (s) after two steps, and the peak memory (bytes) of one run."""
    sets = [f"train.seq_len={seq_len}", f"train.steps={steps}", "train.global_batch_size=4",
            "train.eval_interval=0", "checkpoint.enabled=false",
            "telemetry.live=false", f"parallel.compile={str(compile_).lower()}", *layout]
    result = subprocess.run(
        [sys.executable, "-m", "stoker", "train", str(ROOT / "examples" / "tiny.toml"),
         "--nproc", "2", "--run-dir", str(run_dir), *(a for s in sets for a in ("--set", s))],
        capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(result.stderr[-3000:])
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    times = [r["step_time_s"] for r in records[2:]] or [r["step_time_s"] for r in records]
    return statistics.median(times), max(r["peak_mem_bytes"] for r in records)


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def heap_in_use() -> int:
    """Bytes glibc's malloc has handed out and not had back (its arenas and its mmaps)."""
    mallinfo2 = ctypes.CDLL(None).mallinfo2
    mallinfo2.restype = MallInfo2
    info = mallinfo2()
    return int(info.uordblks + info.hblkhd)


def forward_live(rank: int, port: int, cp: int, sequences: int, seq_len: int,
                 out: dict[str, float]) -> None:
    """One rank of two: the bytes a forward pass of ``sequences`` leaves for its backward."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    shape, cpu = PRESETS["tiny"], torch.device("cpu")
    parallel = ParallelConfig(strategy="fsdp", cp=cp)
    dims = ParallelDims.build(parallel.layout(2), cpu)
    model = build_model(shape, parallel, cpu, 0, 2, dims=dims)
    context = ContextParallel.apply([model], dims, seq_len, shape, cpu) if cp > 1 \
        else None
    data = torch.randint(0, shape.vocab_size, (sequences, seq_len + 1),
                         generator=torch.Generator().manual_seed(rank))
    inputs, targets = data[:, :-1], data[:, 1:]
    for _ in range(2):
        before = heap_in_use()
        if context is None:
            loss = token_loss(model(inputs), targets)
        else:
            loss = token_loss(model(context.shard(inputs)),
                              context.shard(targets))
        live = heap_in_use() - before
        loss.backward()
        del loss
    if rank == 0:
        out["live"] = float(live)
    dist.barrier()  # neither rank leaves while the other may still talk to it
    dist.destroy_process_group()


def live_after_forward(seq_len: int) -> dict[str, float]:
    """Each layout's bytes left by a forward pass on rank 0 (as in LAYOUTS)."""
    shapes = {"cp2": (2, 2), "cp2_micro4": (2, 4), "dp_shard2": (1, 2)}  # (cp, sequences)
    live = {}
    with mp.Manager() as manager:
        for name, (cp, sequences) in shapes.items():
            out = manager.dict()
            mp.spawn(forward_live, args=(free_port(), cp, sequences, seq_len, out), nprocs=2)
            live[name] = out["live"]
    return live


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--compile", action="store_true", help="compile every run's blocks")
    args = p.parse_args()
    mode = "compiled " if args.compile else ""
    results: dict[str, list[tuple[float, int]]] = {name: [] for name in LAYOUTS}
    with tempfile.TemporaryDirectory(prefix="stoker-cp-") as tmp:
        for repeat in range(args.repeats):
            for name, layout in LAYOUTS.items():
                run = Path(tmp) / f"{name}-{repeat}"
                step_s, peak = train(run, args.seq_len, args.steps, layout, args.compile)
                results[name].append((step_s, peak))
                print(f"repeat {repeat + 1} {name}: step {step_s * 1e3:.0f} ms, "
                      f"peak {peak / 2**20:.0f} MiB", flush=True)
    print("\n| layout | step ms (median of repeats) | peak MiB | step vs dp_shard2 | "
          "peak vs dp_shard2 |\n|---|---:|---:|---:|---:|")
    base = results["dp_shard2"]
    for name, runs in results.items():
        step_ratio = [a[0] / b[0] for a, b in zip(runs, base, strict=True)]
        peak_ratio = [a[1] / b[1] for a, b in zip(runs, base, strict=True)]
        print(f"| {mode}{name} (seq {args.seq_len}) | "
              f"{statistics.median(r[0] for r in runs) * 1e3:.0f}"
              f" | {statistics.median(r[1] for r in runs) / 2**20:.0f} | "
              f"{statistics.median(step_ratio):.2f} | {statistics.median(peak_ratio):.2f} |")
        figure(f"{mode}{name} step", [r[0] * 1e3 for r in runs], "ms", "lower")
        figure(f"{mode}{name} peak", [r[1] / 2**20 for r in runs], "MiB", "lower")
        if name != "dp_shard2":
            figure(f"{mode}{name} step / dp_shard2", step_ratio, "x", "lower")
            figure(f"{mode}{name} peak / dp_shard2", peak_ratio, "x", "lower")
    if args.compile:
        return  # the heap measure below runs the model eagerly
    if not hasattr(ctypes.CDLL(None), "mallinfo2"):
        print("\n(no glibc mallinfo2 here: the heap in use is not measured)")
        return
    live = live_after_forward(args.seq_len)
    print("\n| layout | heap left by a forward, rank 0 (MiB) | vs dp_shard2 |\n|---|---:|---:|")
    for name, value in live.items():
        print(f"| {name} (seq {args.seq_len}) | {value / 2**20:.0f} | "
              f"{value / live['dp_shard2']:.2f} |")
        figure(f"{name} heap after forward", value / 2**20, "MiB", "lower")


if __name__ == "__main__":
    main()
