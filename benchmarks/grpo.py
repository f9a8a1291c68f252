"""The GRPO recipe end to end: pass@1 on held-out prompts after the warm-up and after GRPO.

    .venv/bin/python benchmarks/grpo.py [--config examples/grpo/reverse.toml] [--set k=v ...]

Runs `stoker.train.grpo.run` on the config (string reversal from scratch by default) into a
temporary run directory. Reported: pass@1 (greedy, exact match) of the warm-up model and of the
GRPO model, their difference, the minutes of each phase and GRPO's time split (generation,
reward, training).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from stoker.bench.figures import figure
from stoker.spec.grpo import GrpoRecipe
from stoker.spec.loading import load
from stoker.train.grpo import run

ROOT = Path(__file__).resolve().parents[1]
BENCH_QUICK = ["--set", "grpo.steps=100", "--set", "grpo.beta=0.0"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", type=Path, default=ROOT / "examples" / "grpo" / "reverse.toml")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args()
    recipe = load(GrpoRecipe, args.config, args.overrides)
    with tempfile.TemporaryDirectory() as tmp:
        s = run(recipe, Path(tmp))
    figure("pass@1 warm-up", s["pass_at_1_warmup"], "fraction", "higher")
    figure("pass@1 after GRPO", s["pass_at_1_grpo"], "fraction", "higher")
    figure("pass@1 gain", s["pass_at_1_grpo"] - s["pass_at_1_warmup"], "fraction", "higher")
    figure("warm-up minutes", s["warmup_s"] / 60, "min", "lower")
    figure("GRPO minutes", s["grpo_s"] / 60, "min", "lower")
    for part in ("gen", "reward", "train"):
        figure(f"GRPO {part} share", 100 * s[f"{part}_s"] / s["grpo_s"], "%", "lower")


if __name__ == "__main__":
    main()
