"""A checkpoint saved under one parallel layout resumes under others (real processes, gloo):
saved at step 10 of a tp=2 run, resumed with dp_shard=2, tp=2 × dp_shard=2 and cp=2 ×
dp_shard=2, the
losses of steps 11-20 are the uninterrupted run's, and the data-parallel ranks read exactly the
samples of those steps, none skipped or repeated."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from test_train_equivalence import SMALL
from test_train_layouts import GLOBAL_BATCH, samples_by_rank, train_ranks

RUN = [*SMALL, "checkpoint.interval_steps=10", "checkpoint.keep_last=5",
       "telemetry.sample_ids=true"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    run_dir = tmp_path_factory.mktemp("tp2") / "run"
    return run_dir, train_ranks(run_dir, 2, [*RUN, "parallel.tp=2"])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "nproc", "layout", "dp_leaders"),  # dp_leaders: one rank of each tp/cp group
    [
        ("fsdp2", 2, ["parallel.dp_shard=2"], [0, 1]),
        ("tp2_fsdp2", 4, ["parallel.tp=2", "parallel.dp_shard=2"], [0, 2]),
        ("cp2_fsdp2", 4, ["parallel.cp=2", "parallel.dp_shard=2"], [0, 2]),
    ],
)
def test_resume_under_another_layout(tmp_path: Path, saved: tuple[Path, list[dict[str, Any]]],
                                     name: str, nproc: int, layout: list[str],
                                     dp_leaders: list[int]) -> None:
    saved_dir, uninterrupted = saved
    checkpoint = saved_dir / "checkpoints" / "step-00000010"
    assert checkpoint.is_dir()
    run_dir = tmp_path / name
    resumed = train_ranks(run_dir, nproc, [*RUN, *layout], ["--resume", str(checkpoint)])
    assert [r["step"] for r in resumed] == list(range(11, 21))
    for a, b in zip(uninterrupted[10:], resumed, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-5), (a["step"], a, b)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4, abs=1e-5)
    samples = samples_by_rank(run_dir, nproc)
    for step in range(11, 21):
        ids = sorted(i for r in dp_leaders for i in samples[r][step])
        assert ids == list(range((step - 1) * GLOBAL_BATCH, step * GLOBAL_BATCH))
