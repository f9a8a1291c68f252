"""Gradient accumulation: k micro-batches of b samples make the same steps as one batch of k*b."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from stoker.train.trainer import Trainer
from train_helpers import train_in_process

SMALL = [
    "model.dim=64", "model.n_layers=2", "model.n_heads=2", "model.n_kv_heads=2",
    "model.ffn_hidden=128", "train.seq_len=32", "train.global_batch_size=8", "train.steps=20",
    "train.eval_interval=0", "optim.warmup_steps=5", "telemetry.peak_flops=1e11",
    "parallel.strategy=none",
]


def train(run_dir: Path, overrides: list[str]) -> tuple[Trainer, list[dict[str, Any]]]:
    trainer = train_in_process(run_dir, overrides)
    return trainer, trainer.stats.records


def test_accumulated_micro_batches_equal_one_big_batch(tmp_path: Path) -> None:
    big, ref = train(tmp_path / "big", [*SMALL, "train.micro_batch_size=8"])
    small, acc = train(tmp_path / "acc", [*SMALL, "train.micro_batch_size=2"])
    assert (big.accum, small.accum) == (1, 4)
    for a, b in zip(ref, acc, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-5), a["step"]
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
    assert ref[-1]["loss"] < ref[0]["loss"] - 0.5
    # Same weights at the end, not only the same logged losses.
    for (name, p), q in zip(big.model.named_parameters(), small.model.parameters(), strict=True):
        assert (p - q).abs().max().item() < 1e-4, name


def test_run_writes_metrics_and_summary(tmp_path: Path) -> None:
    trainer, recs = train(tmp_path, [*SMALL, "train.steps=4", "train.micro_batch_size=4",
                                     "train.eval_interval=2", "train.eval_steps=1"])
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4 and [r["step"] for r in recs] == [1, 2, 3, 4]
    assert [r["step"] for r in recs if "eval_loss" in r] == [2, 4]
    summary = (tmp_path / "summary.json").read_text()
    assert '"status": "completed"' in summary
    assert trainer.state_dict()["step"] == 4
