"""GRPO with roles: weight-sync time per step by method (file vs broadcast), against the step.

    PYTHONPATH=src .venv/bin/python benchmarks/grpo_sync.py [--dim 256] [--layers 4]
        [--steps 12] [--roles trainer=1,rollout=2,reward=1] [--staleness 0]

The same GRPO run (examples/grpo/reverse.toml's task, a model of the given width and depth,
a short warm-up) is launched twice with `stoker.train.grpo_roles.launch_local`, once per
``[roles] sync`` method, one after the other in this invocation. Per method, over the steps
after the first: trainer 0's time to send the step's weights (``sync_s``: `torch.save` and a
rename, or a gloo broadcast to every rollout worker), the slowest rollout worker's time to
take them (``sync_take_s``: a `torch.load` with mmap and `load_state_dict`, or its side of the
broadcast; from the moment the version is there, its wait for the trainer left out), and the
step's wall time (from one record to the next); the longer of the two sides over the step is
the share of the step that weight sync costs (the sides overlap: a broadcast is one transfer).
The model's size in MiB is printed with them.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import tempfile
import time
from pathlib import Path

from stoker.bench.figures import figure
from stoker.train.grpo_roles import launch_local

ROOT = Path(__file__).resolve().parents[1]
BENCH_QUICK = ["--dim", "64", "--layers", "2", "--steps", "6"]


def run(method: str, args: argparse.Namespace, root: Path) -> dict[str, float]:
    run_dir = root / method
    counts = dict((k, int(v)) for k, v in (p.split("=") for p in args.roles.split(",")))
    sets = {"model.dim": args.dim, "model.n_layers": args.layers, "model.n_heads": 4,
            "model.n_kv_heads": 4, "model.ffn_hidden": 4 * args.dim, "warmup.steps": 10,
            "grpo.steps": args.steps, "grpo.prompts": 8, "grpo.group_size": 4,
            "grpo.eval_interval": 1000, "grpo.checkpoint_interval": 0, "run.threads": 1,
            "roles.sync": method, "roles.max_staleness": args.staleness}
    argv = [str(ROOT / "examples" / "grpo" / "reverse.toml"), "--run-dir", str(run_dir),
            *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")]]
    code = launch_local(argv, run_dir, counts)
    if code != 0:
        raise SystemExit(f"{method}: exit code {code}; logs in {run_dir / 'logs'}")
    records = [json.loads(line) for line in (run_dir / "grpo.jsonl").read_text().splitlines()]
    steps = records[1:-1]  # the first includes start-up; the last sends nothing
    step_s = [b["time"] - a["time"] for a, b in itertools.pairwise(records)][:-1]
    return {"sync_s": statistics.median(r["sync_s"] for r in steps),
            "take_s": statistics.median(r["sync_take_s"] for r in steps),
            "step_s": statistics.median(step_s)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--roles", default="trainer=1,rollout=2,reward=1")
    p.add_argument("--staleness", type=int, default=0)
    args = p.parse_args()
    params = 2 * 256 * args.dim + args.layers * (4 * args.dim**2 + 3 * 4 * args.dim**2)
    print(f"model ~{params / 1e6:.2f}M parameters, {4 * params / 2**20:.1f} MiB in fp32; "
          f"roles {args.roles}, staleness {args.staleness}")
    with tempfile.TemporaryDirectory() as tmp:
        for method in ("file", "broadcast"):
            started = time.perf_counter()
            r = run(method, args, Path(tmp))
            share = 100 * max(r["sync_s"], r["take_s"]) / r["step_s"]  # they overlap
            print(f"{method:>9}: send {1e3 * r['sync_s']:.1f} ms, take {1e3 * r['take_s']:.1f} "
                  f"ms, step {1e3 * r['step_s']:.0f} ms: sync {share:.1f}% of the step "
                  f"({time.perf_counter() - started:.0f} s in all)")
            figure(f"{method} send ms", 1e3 * r["sync_s"], "ms", "lower")
            figure(f"{method} take ms", 1e3 * r["take_s"], "ms", "lower")
            figure(f"{method} share of step", share, "%", "lower")


if __name__ == "__main__":
    main()
