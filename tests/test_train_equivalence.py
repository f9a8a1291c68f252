"""Data parallelism changes nothing but speed: FSDP2 and DDP on 2 ranks (real processes, gloo)
follow the loss trajectory of 1 rank with the same global batch and seed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from train_helpers import EXAMPLE, train_in_process

ROOT = Path(__file__).resolve().parents[1]
STEPS = 20
# Global batch 8 in micro-batches of 2: 4 accumulated on 1 rank, 2 on each of 2 ranks.
SMALL = [
    "model.dim=64", "model.n_layers=2", "model.n_heads=2", "model.n_kv_heads=2",
    "model.ffn_hidden=128", "train.seq_len=32", "train.global_batch_size=8",
    "train.micro_batch_size=2", f"train.steps={STEPS}", "train.eval_interval=0",
    "optim.warmup_steps=5", "telemetry.peak_flops=1e11", "telemetry.live=false",
    "train.log_interval=100",
]


def train_two_ranks(run_dir: Path, overrides: list[str]) -> list[dict[str, Any]]:
    args = [arg for o in overrides for arg in ("--set", o)]
    result = subprocess.run(
        [sys.executable, "-m", "stoker", "train", str(EXAMPLE), "--nproc", "2",
         "--run-dir", str(run_dir), *args],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return train_in_process(tmp_path_factory.mktemp("one"),
                            [*SMALL, "parallel.strategy=none"]).stats.records


def assert_same_trajectory(ref: list[dict[str, Any]], other: list[dict[str, Any]]) -> None:
    assert len(ref) == len(other) == STEPS
    for a, b in zip(ref, other, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-5), (a["step"], a, b)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4, abs=1e-5)
        assert b["lr"] == pytest.approx(a["lr"], rel=1e-12)
    # The reference must actually train, or equal trajectories would prove little.
    assert ref[-1]["loss"] < ref[0]["loss"] - 0.5


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["fsdp", "ddp"])
def test_two_ranks_match_one_rank(tmp_path: Path, one_rank: list[dict[str, Any]],
                                  strategy: str) -> None:
    two = train_two_ranks(tmp_path / strategy, [*SMALL, f"parallel.strategy={strategy}"])
    assert all(len(r["rank_step_times"]) == 2 for r in two)
    assert_same_trajectory(one_rank, two)
