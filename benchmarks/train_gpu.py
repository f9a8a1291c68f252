"""Tokens/s and MFU of Stoker's Trainer on one GPU: GPT-2 124M and the Llama-style 1B preset,
bf16, torch.compile per block.

    .venv/bin/python benchmarks/train_gpu.py [--cases gpt2-124m,llama-1b] [--steps 30]

Each case runs in its own process (a clean allocator and compile cache) on the `stdlib` dataset
(byte tokens; the vocabulary of the preset is kept, so the output layer costs what it does in
real training). The first --warmup steps (compilation) are left out of the medians. Reference
point: nanoGPT reports about 135 ms per iteration of 8 x 1024 tokens for GPT-2 124M on an A100
with compile. Without a CUDA device the script says so and exits 0; --cpu-smoke runs the same
code path on the CPU with the tiny model, to check the script itself.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from stoker.bench.figures import figure

BENCH_NEEDS = "cuda"
BENCH_QUICK = ["--steps", "5", "--warmup", "3"]
ROOT = Path(__file__).resolve().parents[1]
CASES: dict[str, list[str]] = {
    # nanoGPT's GPT-2 124M setting: micro-batches of 8 x 1024 tokens.
    "gpt2-124m": ["model.preset=gpt2-124m", "train.seq_len=1024", "train.micro_batch_size=8",
                  "train.global_batch_size=8"],
    "llama-1b": ["model.preset=llama-1b", "train.seq_len=2048", "train.micro_batch_size=4",
                 "train.global_batch_size=4"],
}
COMMON = ["parallel.strategy=none", "parallel.mixed_precision=bf16", "parallel.compile=true",
          "train.device=cuda", "train.eval_interval=0", "telemetry.live=false",
          "optim.warmup_steps=10"]
CPU_SMOKE = ["model.preset=tiny", "parallel.strategy=none", "parallel.compile=false",
             "train.device=cpu", "train.eval_interval=0", "telemetry.live=false",
             "train.seq_len=64", "train.global_batch_size=4", "train.micro_batch_size=4"]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cases", default=",".join(CASES), help="comma-separated: " + ", ".join(CASES))
    p.add_argument("--steps", type=int, default=30, help="measured steps per case")
    p.add_argument("--warmup", type=int, default=10, help="steps left out (compilation)")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   help="extra config override for every case")
    p.add_argument("--cpu-smoke", action="store_true", help="run on CPU with the tiny model")
    p.add_argument("--case", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    return p.parse_args()


def run_case(args: argparse.Namespace) -> dict[str, Any]:
    """One case in this process: the Trainer's own telemetry, medians after warm-up."""
    import torch

    from stoker.observe.live import NullDisplay
    from stoker.spec import loading
    from stoker.spec.train import TrainConfig
    from stoker.train.data import ensure_dataset
    from stoker.train.distributed import destroy_distributed, init_distributed
    from stoker.train.trainer import Trainer

    base = CPU_SMOKE if args.cpu_smoke else [*COMMON, *CASES[args.case]]
    steps = args.warmup + args.steps
    overrides = [*base, *args.overrides, f"train.steps={steps}"]
    cfg = loading.load(TrainConfig, ROOT / "examples" / "tiny.toml", overrides)
    torch.backends.cuda.matmul.allow_tf32 = True
    info = init_distributed(cfg.parallel, cfg.train)
    run_dir = Path(tempfile.mkdtemp(prefix=f"stoker-gpu-{args.case}-"))
    trainer = Trainer(cfg, run_dir, info, ensure_dataset(cfg.data), display=NullDisplay())
    status = trainer.run()
    destroy_distributed()
    recs = trainer.stats.records[args.warmup:]
    if status != "completed" or not recs:
        raise SystemExit(f"{args.case}: run {status} after {len(trainer.stats.records)} steps")
    device = info.device
    return {
        "case": args.case,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "tokens_per_step": trainer.tokens_per_step,
        "step_time_ms": 1e3 * statistics.median(r["step_time_s"] for r in recs),
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in recs),
        "mfu": statistics.median(r["mfu"] for r in recs),
        "peak_source": trainer.peak.source,
        "peak_mem_gib": max(r["peak_mem_bytes"] for r in recs) / 2**30,
        "loss_first": trainer.stats.records[0]["loss"],
        "loss_last": recs[-1]["loss"],
        "step_times_ms": [1e3 * r["step_time_s"] for r in recs],
        "tokens_per_s_steps": [r["tokens_per_s"] for r in recs],
        "mfu_steps": [r["mfu"] for r in recs],
    }


def main() -> None:
    args = parse_args()
    if args.case:
        args.out.write_text(json.dumps(run_case(args)))
        return
    import torch

    if not torch.cuda.is_available() and not args.cpu_smoke:
        print("train_gpu.py: skipped, no CUDA device here (run it on a GPU machine; "
              "--cpu-smoke checks the script on CPU)")
        return
    cases = ["cpu-smoke"] if args.cpu_smoke else args.cases.split(",")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            out = Path(tmp) / f"{case}.json"
            cmd = [sys.executable, str(Path(__file__).resolve()), f"--case={case}",
                   f"--out={out}", f"--steps={args.steps}", f"--warmup={args.warmup}",
                   *(f"--set={o}" for o in args.overrides)]
            if args.cpu_smoke:
                cmd.append("--cpu-smoke")
            subprocess.run(cmd, check=True, cwd=ROOT)
            rows.append(json.loads(out.read_text()))
    print(f"\n{platform.node()}: {rows[0]['device']}, torch {rows[0]['torch']}; medians of "
          f"{args.steps} steps after {args.warmup} warm-up")
    print(f"{'case':<12} {'tokens/step':>11} {'step ms':>9} {'tokens/s':>10} {'MFU':>7} "
          f"{'mem GiB':>8}  loss   peak")
    for r in rows:
        print(f"{r['case']:<12} {r['tokens_per_step']:>11} {r['step_time_ms']:>9.1f} "
              f"{r['tokens_per_s']:>10.0f} {r['mfu']:>7.1%} {r['peak_mem_gib']:>8.1f}  "
              f"{r['loss_first']:.2f}->{r['loss_last']:.2f}  {r['peak_source']}")
    for r in rows:
        figure(f"{r['case']} tokens/s", r["tokens_per_s_steps"], "tokens/s", "higher")
        figure(f"{r['case']} step", r["step_times_ms"], "ms", "lower")
        figure(f"{r['case']} mfu", [m * 100 for m in r["mfu_steps"]], "%", "higher")
        figure(f"{r['case']} peak memory", r["peak_mem_gib"], "GiB", "lower")


if __name__ == "__main__":
    main()
