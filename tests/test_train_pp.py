"""Pipeline parallelism changes nothing but speed and memory (real processes, gloo, up to 4
ranks): every schedule, and pp composed with FSDP and with tp, follows the loss, gradient norm
and eval loss of 1 rank with the same global batch and seed. A checkpoint saved under pp resumes
under other layouts and splits, and one written before pipeline parallelism (its optimizer
state nested) resumes under pp; the resumed losses continue the uninterrupted run's and the
data-parallel ranks read exactly the samples of the resumed steps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from stoker.observe.live import NullDisplay
from stoker.spec import loading
from stoker.spec.train import ModelShape, TrainConfig
from stoker.train.checkpoint import nested_optimizer_state, step_dir
from stoker.train.data import ensure_dataset
from stoker.train.distributed import init_distributed
from stoker.train.parallelize import init_full_model
from stoker.train.pipeline import stage_indices, stage_layers, take_stage
from stoker.train.trainer import Trainer
from test_train_equivalence import SMALL, assert_same_trajectory
from test_train_layouts import GLOBAL_BATCH, samples_by_rank, train_ranks
from train_helpers import EXAMPLE

# 4 layers, so that 2 ranks can run 4 stages; micro-batches of 4, so that each splits into one
# pipeline micro-batch per stage. lr 2e-3: at the example's 3e-3 step 18 of this model is a
# gradient spike (norm 5x its neighbours) that magnifies the last-digit differences of summing
# a micro-batch's gradient in pipeline micro-batches.
PP = [*SMALL, "model.n_layers=4", "train.micro_batch_size=4", "optim.lr=2e-3",
      "train.eval_interval=10", "train.eval_steps=1", "telemetry.sample_ids=true"]
SAVE_AT = 10
CHECKPOINTS = ["checkpoint.interval_steps=10", "checkpoint.keep_last=5"]


# ---------------------------------------------------------------------- the split, in-process

def test_even_split_gives_the_first_stages_the_extra_layers() -> None:
    assert stage_layers(4, 2) == [range(0, 2), range(2, 4)]
    assert stage_layers(5, 2) == [range(0, 3), range(3, 5)]
    assert stage_layers(4, 4) == [range(i, i + 1) for i in range(4)]
    assert stage_layers(4, 2, [1]) == [range(0, 1), range(1, 4)]


def test_stages_are_placed_in_a_loop() -> None:
    assert stage_indices(0, 2, 1) == [0]
    assert stage_indices(1, 2, 2) == [1, 3]
    assert stage_indices(2, 4, 2) == [2, 6]


def test_stages_keep_the_full_models_weights_and_names() -> None:
    shape = ModelShape(vocab_size=32, dim=16, n_layers=3, n_heads=2, n_kv_heads=2,
                       ffn_hidden=32)
    full = init_full_model(shape, torch.device("cpu"), seed=5)
    expected = {name: p.clone() for name, p in full.named_parameters()}
    layers = stage_layers(3, 2)
    stages = [take_stage(full, layers[s], first=s == 0, last=s == 1) for s in (0, 1)]
    names = [dict(stage.named_parameters()) for stage in stages]
    assert not set(names[0]) & set(names[1])
    assert set(names[0]) | set(names[1]) == set(expected)
    assert "tok_embeddings.weight" in names[0] and "output.weight" in names[1]
    for stage_names in names:
        for name, p in stage_names.items():
            assert torch.equal(p, expected[name]), name
    hidden = stages[0](torch.randint(0, 32, (2, 5)))
    assert hidden.shape == (2, 5, 16)
    assert stages[1](hidden).shape == (2, 5, 32)


# ---------------------------------------------------------------------- real processes

@pytest.fixture(scope="module")
def one_rank(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict[str, Any]], Path]:
    """The 1-rank trajectory, and a checkpoint of its step 10 in the nested optimizer form
    that every checkpoint had before pipeline parallelism (``get_optimizer_state_dict``'s
    default, which the trainer used)."""
    run_dir = tmp_path_factory.mktemp("one")

    def save_nested(trainer: Trainer, record: dict[str, Any]) -> None:
        if record["step"] == SAVE_AT:  # a log step: the hooks see it with the trainer there
            assert trainer.step == SAVE_AT
            state = trainer.state_dict(nested_optimizer=True)
            assert trainer.checkpointer.save(SAVE_AT, state, sync=True)

    cfg = loading.load(TrainConfig, EXAMPLE, [*PP, "parallel.strategy=none",
                                              "checkpoint.enabled=false",
                                              f"train.log_interval={SAVE_AT}"])
    trainer = Trainer(cfg, run_dir, init_distributed(cfg.parallel, cfg.train),
                      ensure_dataset(cfg.data), display=NullDisplay())
    trainer.after_step.append(save_nested)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as train_in_process: like each rank of a 2-rank run
    try:
        assert trainer.run() == "completed"
    finally:
        torch.set_num_threads(threads)
    return trainer.stats.records, step_dir(run_dir, SAVE_AT)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    """pp=2 × dp_shard=2 (1F1B), checkpointed at step 10."""
    run_dir = tmp_path_factory.mktemp("pp2_fsdp2") / "run"
    return run_dir, train_ranks(run_dir, 4, [*PP, *CHECKPOINTS, "parallel.pp=2",
                                             "parallel.dp_shard=2"])


def assert_same_evals(ref: list[dict[str, Any]], other: list[dict[str, Any]]) -> None:
    evals = [(a["eval_loss"], b["eval_loss"]) for a, b in zip(ref, other, strict=True)
             if "eval_loss" in a]
    assert len(evals) == 2
    for a, b in evals:
        assert b == pytest.approx(a, rel=1e-5)


def assert_samples(run_dir: Path, nproc: int, same_data: list[list[int]],
                   steps: range) -> None:
    """Each group of ranks (one per data-parallel rank) reads the same samples; the groups
    together read each global batch of ``steps`` exactly once."""
    samples = samples_by_rank(run_dir, nproc)
    for step in steps:
        for group in same_data:
            assert len({tuple(samples[r][step]) for r in group}) == 1, (step, group)
        ids = sorted(i for group in same_data for i in samples[group[0]][step])
        assert ids == list(range((step - 1) * GLOBAL_BATCH, step * GLOBAL_BATCH))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "nproc", "layout", "same_data"),
    [
        ("gpipe", 2, ["parallel.pp=2", "parallel.pp_schedule=\"gpipe\""], [[0, 1]]),
        ("interleaved_1f1b", 2, ["parallel.pp=2", "parallel.pp_schedule=\"interleaved-1f1b\"",
                                 "parallel.pp_stages_per_rank=2"], [[0, 1]]),
        ("zero_bubble", 2, ["parallel.pp=2", "parallel.pp_schedule=\"zero-bubble\"",
                            "parallel.pp_stages_per_rank=2"], [[0, 1]]),
        ("pp2_tp2", 4, ["parallel.pp=2", "parallel.tp=2"], [[0, 1, 2, 3]]),
    ],
)
def test_pipeline_matches_one_rank(tmp_path: Path,
                                   one_rank: tuple[list[dict[str, Any]], Path], name: str,
                                   nproc: int, layout: list[str],
                                   same_data: list[list[int]]) -> None:
    ref, _ = one_rank
    run_dir = tmp_path / name
    records = train_ranks(run_dir, nproc, [*PP, *layout])
    assert_same_trajectory(ref, records)
    assert_same_evals(ref, records)
    assert all(len(r["rank_step_times"]) == nproc for r in records)
    assert_samples(run_dir, nproc, same_data, range(1, len(ref) + 1))


@pytest.mark.slow
def test_pipeline_with_fsdp_matches_one_rank(
        one_rank: tuple[list[dict[str, Any]], Path],
        saved: tuple[Path, list[dict[str, Any]]]) -> None:
    ref, _ = one_rank
    run_dir, records = saved
    assert_same_trajectory(ref, records)
    assert_same_evals(ref, records)
    # ranks are (pp, dp_shard) row-major: 0 and 2 hold data-parallel rank 0's stages
    assert_samples(run_dir, 4, [[0, 2], [1, 3]], range(1, len(ref) + 1))


def assert_continues(uninterrupted: list[dict[str, Any]],
                     resumed: list[dict[str, Any]]) -> None:
    assert [r["step"] for r in resumed] == list(range(SAVE_AT + 1, len(uninterrupted) + 1))
    for a, b in zip(uninterrupted[SAVE_AT:], resumed, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-5), (a["step"], a, b)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4, abs=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "nproc", "layout", "same_data"),
    [
        ("fsdp2", 2, ["parallel.dp_shard=2"], [[0], [1]]),
        # 4 stages of one layer on 2 ranks, where the saved run had 2 stages of two
        ("interleaved", 2, ["parallel.pp=2", "parallel.pp_schedule=\"interleaved-1f1b\"",
                            "parallel.pp_stages_per_rank=2"], [[0, 1]]),
    ],
)
def test_resume_pipeline_checkpoint_under_another_layout(
        tmp_path: Path, saved: tuple[Path, list[dict[str, Any]]], name: str, nproc: int,
        layout: list[str], same_data: list[list[int]]) -> None:
    saved_dir, uninterrupted = saved
    checkpoint = step_dir(saved_dir, SAVE_AT)
    assert not nested_optimizer_state(checkpoint)
    run_dir = tmp_path / name
    resumed = train_ranks(run_dir, nproc, [*PP, *layout], ["--resume", str(checkpoint)])
    assert_continues(uninterrupted, resumed)
    assert_samples(run_dir, nproc, same_data, range(SAVE_AT + 1, len(uninterrupted) + 1))


@pytest.mark.slow
def test_checkpoint_from_before_pipelines_resumes_under_pp(
        tmp_path: Path, one_rank: tuple[list[dict[str, Any]], Path]) -> None:
    uninterrupted, checkpoint = one_rank
    assert nested_optimizer_state(checkpoint)
    run_dir = tmp_path / "pp2_fsdp2"
    resumed = train_ranks(run_dir, 4, [*PP, "parallel.pp=2", "parallel.dp_shard=2"],
                          ["--resume", str(checkpoint)])
    assert_continues(uninterrupted, resumed)
    assert_samples(run_dir, 4, [[0, 2], [1, 3]], range(SAVE_AT + 1, len(uninterrupted) + 1))
