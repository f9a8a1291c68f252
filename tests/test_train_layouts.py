"""Every implemented parallel layout changes nothing but speed: tensor + sequence parallel,
HSDP, FSDP + TP, and context parallelism alone and with FSDP, HSDP, TP and PP (real processes,
gloo, up to 4 ranks) follow the loss trajectory of 1 rank with the same global batch and seed;
ranks of one tp (or cp) group read the same samples, and the data-parallel ranks together read
each global batch exactly once."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from stoker.train.heartbeat import HANGS
from test_train_equivalence import SMALL, assert_same_trajectory
from train_helpers import EXAMPLE, train_in_process

ROOT = Path(__file__).resolve().parents[1]
GLOBAL_BATCH = 8
HANG_TIMEOUT_S = 120


def hang_stacks(run_dir: Path) -> str:
    """What the hang watchdog wrote, if it fired: every rank's threads' stacks."""
    return "".join(f"\n--- {path.name}\n{path.read_text(errors='replace')}"
                   for path in sorted((run_dir / HANGS).glob("*")) if path.is_file())


def train_ranks(run_dir: Path, nproc: int, overrides: list[str],
                extra: list[str] | None = None) -> list[dict[str, Any]]:
    # The watchdog fires well before the subprocess timeout, so a hang fails the run with
    # every rank's stacks (RUN_DIR/hangs/) in the assertion's message, not a bare timeout.
    args = [arg for o in [f"train.hang_timeout_s={HANG_TIMEOUT_S}", *overrides]
            for arg in ("--set", o)]
    result = subprocess.run(
        [sys.executable, "-m", "stoker", "train", str(EXAMPLE), "--nproc", str(nproc),
         "--run-dir", str(run_dir), *args, *(extra or [])],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr + result.stdout + hang_stacks(run_dir)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def samples_by_rank(run_dir: Path, nproc: int) -> list[dict[int, list[int]]]:
    """Per rank: step -> the global sample ids it trained on."""
    out = []
    for rank in range(nproc):
        lines = (run_dir / "samples" / f"rank-{rank:05d}.jsonl").read_text().splitlines()
        out.append({r["step"]: r["ids"] for r in map(json.loads, lines)})
    return out


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return train_in_process(tmp_path_factory.mktemp("one"),
                            [*SMALL, "parallel.strategy=none"]).stats.records


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "nproc", "layout", "tp_groups"),
    [
        # tp_groups: the ranks that must read the same samples (one tp group each)
        ("tp2", 2, ["parallel.tp=2"], [[0, 1]]),
        ("tp2_ac_eval", 2, ["parallel.tp=2", "parallel.activation_checkpoint=\"full\"",
                            "train.eval_interval=10", "train.eval_steps=1"], [[0, 1]]),
        ("hsdp2x2", 4, ["parallel.dp_replicate=2", "parallel.dp_shard=2"],
         [[0], [1], [2], [3]]),
        ("tp2_fsdp2", 4, ["parallel.tp=2", "parallel.dp_shard=2"], [[0, 1], [2, 3]]),
        # cp_groups as tp_groups: a cp group's ranks hold parts of the same sequences
        ("cp2", 2, ["parallel.cp=2"], [[0, 1]]),
        ("cp2_ac_eval", 2, ["parallel.cp=2", "parallel.activation_checkpoint=\"full\"",
                            "train.eval_interval=10", "train.eval_steps=1"], [[0, 1]]),
        ("cp2_fsdp2", 4, ["parallel.cp=2", "parallel.dp_shard=2"], [[0, 1], [2, 3]]),
        ("cp2_hsdp", 4, ["parallel.cp=2", "parallel.dp_replicate=2"], [[0, 1], [2, 3]]),
        ("cp2_tp2", 4, ["parallel.cp=2", "parallel.tp=2"], [[0, 1, 2, 3]]),
        ("cp2_pp2_eval", 4, ["parallel.cp=2", "parallel.pp=2", "train.eval_interval=10",
                             "train.eval_steps=1"], [[0, 1, 2, 3]]),
    ],
)
def test_layout_matches_one_rank(tmp_path: Path, one_rank: list[dict[str, Any]], name: str,
                                 nproc: int, layout: list[str],
                                 tp_groups: list[list[int]]) -> None:
    run_dir = tmp_path / name
    records = train_ranks(run_dir, nproc, [*SMALL, *layout, "telemetry.sample_ids=true"])
    assert all(len(r["rank_step_times"]) == nproc for r in records)
    assert_same_trajectory(one_rank, records)
    evals = [r["eval_loss"] for r in records if "eval_loss" in r]
    assert len(evals) == (2 if "train.eval_interval=10" in layout else 0)
    assert all(0 < e < records[0]["loss"] for e in evals)  # eval under the layout runs, too
    summary = json.loads((run_dir / "summary.json").read_text())
    sizes = summary["layout"]
    assert math.prod(sizes[d] for d in ("pp", "dp_replicate", "dp_shard", "cp", "tp")) == nproc

    samples = samples_by_rank(run_dir, nproc)
    for step in samples[0]:
        for group in tp_groups:
            assert len({tuple(samples[r][step]) for r in group}) == 1, (step, group)
        ids = [i for group in tp_groups for i in samples[group[0]][step]]
        assert sorted(ids) == list(range((step - 1) * GLOBAL_BATCH, step * GLOBAL_BATCH))
