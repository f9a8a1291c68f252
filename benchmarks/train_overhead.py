"""Stoker's step time vs a minimal hand-written PyTorch loop, same model, wrapping and batch.

    .venv/bin/python benchmarks/train_overhead.py [--config examples/tiny.toml] [--set k=v ...]

For 1 and 2 ranks (2 through torchrun, gloo), each rank builds Stoker's Trainer and, next to it,
a second copy of the same wrapped model (build_model) driven by a bare loop: fixed in-memory
batches, forward/backward per micro-batch (DDP no_sync like the Trainer), clip, AdamW, LR
schedule step, loss.item(). The two alternate step by step in ABBA order, so machine noise and
cache effects hit both alike. A Stoker step is everything `Trainer.step_once()` does: the
loader, timers, the all_gather of telemetry, metrics.jsonl, the display. Reported: median step
time of each after warm-up, their ratio (and the ratio of means: Stoker reads the devices only
every ``train.log_interval`` steps), and the data wait as a share of Stoker's step time.

A third arm is the same Trainer with its straggler scoring switched off for the step (rank 0's
`StragglerDetector`; the section times still travel in the log step's all_gather): the ratio of
the two Stoker arms is the scoring's same-run overhead. Rank 0 also times the scoring itself
(``Trainer._score_stragglers``, per log step), reported as a share of Stoker's mean step time.

A fourth arm is the same Trainer with its timer's CPU clock (`StepTimer.cpu_clock`, the main
thread's CPU time that splits forward+backward and optimizer into compute and exposed
communication) replaced by a constant: the ratio of the Stoker arm to it is that split's
same-run overhead.

``--sinks tensorboard,wandb,mlflow`` adds another arm: a second Trainer, the same but for
``telemetry.sinks`` (`stoker.observe.sinks`), alternating with the other two; its step time is
reported against the plain Stoker arm's: what the sinks cost the step loop itself. Their
thread's work overlaps whichever arm runs next, so its CPU time is measured apart
(benchmarks/sink_cost.py).
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
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from stoker.bench.figures import figure

ROOT = Path(__file__).resolve().parents[1]
BENCH_QUICK = ["--steps", "10", "--warmup", "2", "--set", "model.dim=64",
               "--set", "model.n_layers=2", "--set", "model.n_heads=2",
               "--set", "model.n_kv_heads=2", "--set", "model.ffn_hidden=128",
               "--set", "train.seq_len=32", "--set", "train.global_batch_size=8",
               "--set", "train.micro_batch_size=4"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", type=Path, default=ROOT / "examples" / "tiny.toml")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--steps", type=int, default=30, help="measured steps per arm (after warm-up)")
    p.add_argument("--warmup", type=int, default=5, help="unmeasured steps per arm first")
    p.add_argument("--block", type=int, default=1, help="steps per alternating block")
    p.add_argument("--nprocs", default="1,2", help="world sizes to measure")
    p.add_argument("--sinks", default="", help="a third arm with these telemetry.sinks "
                   "(comma-separated), e.g. tensorboard,wandb,mlflow")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ---------------------------------------------------------------------- one rank


def worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel

    from stoker.observe.live import NullDisplay
    from stoker.spec import loading
    from stoker.spec.train import TrainConfig
    from stoker.train.data import ensure_dataset
    from stoker.train.distributed import barrier, init_distributed
    from stoker.train.optim import build_optimizer, build_scheduler, clip_grad_norm_
    from stoker.train.parallelize import autocast_context, build_model
    from stoker.train.trainer import Trainer

    # No checkpoints: each rank has a run dir of its own here, and saves are not the step loop.
    overrides = [*args.overrides, "train.eval_interval=0", "train.steps=100000",
                 "checkpoint.enabled=false"]
    cfg = loading.load(TrainConfig, args.config, overrides)
    info = init_distributed(cfg.parallel, cfg.train)
    run_dir = Path(tempfile.mkdtemp(prefix="stoker-overhead-"))
    trainer = Trainer(cfg, run_dir, info, ensure_dataset(cfg.data, progress=False),
                      display=NullDisplay())
    with_sinks: Trainer | None = None
    if args.sinks:
        names = json.dumps(["jsonl", *args.sinks.split(",")])
        sinks_cfg = loading.load(TrainConfig, args.config, [*overrides, f"telemetry.sinks={names}"])
        with_sinks = Trainer(sinks_cfg, Path(tempfile.mkdtemp(prefix="stoker-sinks-")), info,
                             ensure_dataset(cfg.data, progress=False), display=NullDisplay())

    # The baseline: the same wrapped model, optimizer and schedule, and a bare loop.
    t = cfg.train
    model = build_model(cfg.model.shape(), cfg.parallel, info.device, t.seed, info.world_size)
    opt = build_optimizer(model, cfg.optim, info.device)
    sched = build_scheduler(opt, cfg.optim, t.steps)
    accum = cfg.grad_accum_steps(cfg.parallel.layout(info.world_size).dp)
    gen = torch.Generator().manual_seed(info.rank)
    vocab = cfg.model.shape().vocab_size
    tokens = [torch.randint(0, vocab, (t.micro_batch_size, t.seq_len + 1), generator=gen)
              for _ in range(accum)]
    batches = [(x[:, :-1].contiguous().to(info.device), x[:, 1:].contiguous().to(info.device))
               for x in tokens]

    def baseline_step() -> float:
        for i, (inputs, targets) in enumerate(batches):
            skip_sync = i < accum - 1 and isinstance(model, DistributedDataParallel)
            with model.no_sync() if skip_sync else nullcontext():
                with autocast_context(cfg.parallel, info.device):
                    logits = model(inputs)
                loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
                (loss / accum).backward()
        clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    detector = trainer.straggler

    def unscored_step() -> object:
        trainer.straggler = None
        try:
            return trainer.step_once()
        finally:
            trainer.straggler = detector

    scoring: list[float] = []
    score = trainer._score_stragglers

    def timed_score(*a: Any) -> None:
        start = time.perf_counter()
        score(*a)
        scoring.append(time.perf_counter() - start)

    trainer._score_stragglers = timed_score  # type: ignore[method-assign]

    def unsplit_step() -> object:
        trainer.timer.cpu_clock = float  # float() is 0.0: no CPU time read
        try:
            return trainer.step_once()
        finally:
            trainer.timer.cpu_clock = time.thread_time

    arms: dict[str, Any] = {"baseline": baseline_step, "stoker": trainer.step_once,
                            "unscored": unscored_step, "unsplit": unsplit_step}
    if with_sinks is not None:
        arms["sinks"] = with_sinks.step_once
    times: dict[str, list[float]] = {name: [] for name in arms}
    for step in arms.values():  # warm-up, unmeasured
        for _ in range(args.warmup):
            step()
    skip_records = len(trainer.stats.records)
    order = list(arms)
    while len(times["stoker"]) < args.steps:
        for name in order:  # each arm goes first equally often (caches, turbo, neighbours)
            step = arms[name]
            barrier()
            for _ in range(args.block):
                start = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - start)
        order = order[1:] + order[:1]  # ABBA with two arms; with three each takes each place
    trainer.train_loader.close()
    if with_sinks is not None:
        with_sinks.train_loader.close()
        if with_sinks.sinks is not None:
            with_sinks.sinks.close()
    recs = trainer.stats.records[skip_records:]
    if info.is_main and args.out:
        result = {
            "world_size": info.world_size,
            "steps": len(times["stoker"]),
            "baseline_median_s": statistics.median(times["baseline"]),
            "stoker_median_s": statistics.median(times["stoker"]),
            # Means too: only every train.log_interval-th Stoker step reads the devices.
            "baseline_mean_s": statistics.fmean(times["baseline"]),
            "stoker_mean_s": statistics.fmean(times["stoker"]),
            "unscored_median_s": statistics.median(times["unscored"]),
            "unscored_mean_s": statistics.fmean(times["unscored"]),
            "unsplit_median_s": statistics.median(times["unsplit"]),
            # Scoring time per Stoker step: every log step's scoring, over all scored steps.
            "scoring_per_step_s": sum(scoring) / (len(times["stoker"]) + args.warmup),
            "data_wait_fraction": sum(r["data_wait_s"] for r in recs)
            / sum(r["step_time_s"] for r in recs),
            "baseline_s": times["baseline"],
            "stoker_s": times["stoker"],
            "unscored_s": times["unscored"],
            "unsplit_s": times["unsplit"],
            "data_wait_fractions": [r["data_wait_s"] / r["step_time_s"] for r in recs],
        }
        if with_sinks is not None:
            result["sinks_median_s"] = statistics.median(times["sinks"])
            result["sinks_mean_s"] = statistics.fmean(times["sinks"])
        args.out.write_text(json.dumps(result))
    if dist.is_initialized():
        dist.destroy_process_group()


# ---------------------------------------------------------------------- the driver


def run_world(args: argparse.Namespace, nproc: int, out: Path) -> dict[str, Any]:
    passthrough = [f"--config={args.config}", f"--steps={args.steps}",
                   f"--warmup={args.warmup}", f"--block={args.block}", "--worker",
                   f"--sinks={args.sinks}",
                   f"--out={out}", *(f"--set={o}" for o in args.overrides)]
    script = str(Path(__file__).resolve())
    if nproc == 1:
        cmd = [sys.executable, script, *passthrough]
    else:
        from stoker.ports import free_port

        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
               "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}",
               "--local-addr=127.0.0.1", script, *passthrough]
    # One thread per rank: what each rank of the 2-rank demo gets on 2 cores, and far less
    # exposed than spinning OpenMP teams to other load on a shared machine.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, check=True, cwd=ROOT, env=env)
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def main() -> None:
    args = parse_args()
    if args.worker:
        worker(args)
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(x) for x in args.nprocs.split(",")):
            rows.append(run_world(args, n, Path(tmp) / f"world{n}.json"))
    print(f"\nconfig: {args.config} {' '.join(args.overrides)}; {args.steps} steps per arm "
          f"after {args.warmup} warm-up, alternating blocks of {args.block}")
    print(f"{'ranks':>5} {'baseline ms':>12} {'stoker ms':>10} {'ratio':>7} "
          f"{'mean ratio':>11} {'data wait':>10} {'unscored ms':>12} {'scored/unscored':>16} "
          f"{'scoring':>8} {'split/unsplit':>14}")
    for r in rows:
        ratio = r["stoker_median_s"] / r["baseline_median_s"]
        mean_ratio = r["stoker_mean_s"] / r["baseline_mean_s"]
        scored = r["stoker_median_s"] / r["unscored_median_s"]
        print(f"{r['world_size']:>5} {r['baseline_median_s'] * 1e3:>12.1f} "
              f"{r['stoker_median_s'] * 1e3:>10.1f} {ratio:>7.3f} {mean_ratio:>11.3f} "
              f"{r['data_wait_fraction']:>10.2%} {r['unscored_median_s'] * 1e3:>12.1f} "
              f"{scored:>16.3f} {r['scoring_per_step_s'] / r['stoker_mean_s']:>8.3%} "
              f"{r['stoker_median_s'] / r['unsplit_median_s']:>14.3f}")
    if args.sinks:
        print(f"\nsinks {args.sinks}, against the plain Stoker arm:")
        print(f"{'ranks':>5} {'stoker ms':>10} {'sinks ms':>9} {'ratio':>7} {'mean ratio':>11}")
        for r in rows:
            print(f"{r['world_size']:>5} {r['stoker_median_s'] * 1e3:>10.1f} "
                  f"{r['sinks_median_s'] * 1e3:>9.1f} "
                  f"{r['sinks_median_s'] / r['stoker_median_s']:>7.3f} "
                  f"{r['sinks_mean_s'] / r['stoker_mean_s']:>11.3f}")
    for r in rows:
        report_figures(r)


def report_figures(row: dict[str, Any]) -> None:
    """The figures of one world size; the arms alternate step by step, so steps pair up."""
    ranks = f"{row['world_size']} rank" + ("s" if row["world_size"] > 1 else "")
    pairs = zip(row["stoker_s"], row["baseline_s"], strict=False)
    figure(f"stoker / baseline {ranks}", [s / b for s, b in pairs], "x", "lower")
    figure(f"stoker step {ranks}", [s * 1e3 for s in row["stoker_s"]], "ms", "lower")
    figure(f"baseline step {ranks}", [s * 1e3 for s in row["baseline_s"]], "ms", "lower")
    figure(f"data wait {ranks}", [f * 100 for f in row["data_wait_fractions"]], "%", "lower")
    scored = zip(row["stoker_s"], row["unscored_s"], strict=False)
    figure(f"straggler scored / unscored {ranks}", [s / u for s, u in scored], "x", "lower")
    figure(f"straggler scoring share {ranks}",
           [100 * row["scoring_per_step_s"] / row["stoker_mean_s"]], "%", "lower")
    split = zip(row["stoker_s"], row["unsplit_s"], strict=False)
    figure(f"compute split / unsplit {ranks}", [s / u for s, u in split], "x", "lower")


if __name__ == "__main__":
    main()
