"""The parallel layout from one config: each dimension's size resolved for the world size, the
``strategy`` shorthand, and every impossible or unsupported layout refused before any process
starts, naming its key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from stoker.spec import loading
from stoker.spec.errors import ConfigError
from stoker.spec.train import Layout, ParallelConfig, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "tiny.toml"


def layout(world: int, **fields: object) -> tuple[int, int, int, int, int]:
    got = ParallelConfig(**fields).layout(world)  # type: ignore[arg-type]
    return got.pp, got.dp_replicate, got.dp_shard, got.cp, got.tp


@pytest.mark.parametrize(
    ("world", "fields", "expected"),  # expected: pp, dp_replicate, dp_shard, cp, tp
    [
        (4, {}, (1, 1, 4, 1, 1)),  # the default strategy, fsdp: every rank shards
        (4, {"strategy": "ddp"}, (1, 4, 1, 1, 1)),
        (1, {"strategy": "none"}, (1, 1, 1, 1, 1)),
        (4, {"dp_replicate": 2}, (1, 2, 2, 1, 1)),  # fsdp's -1 takes what replicate leaves
        (4, {"strategy": "ddp", "dp_shard": 2}, (1, 2, 2, 1, 1)),
        (4, {"dp_replicate": 2, "dp_shard": 2}, (1, 2, 2, 1, 1)),
        (4, {"dp_replicate": -1}, (1, 4, 1, 1, 1)),  # explicit wins over the shorthand
        (4, {"tp": 2}, (1, 1, 2, 1, 2)),
        (2, {"tp": 2}, (1, 1, 1, 1, 2)),
        (2, {"strategy": "none", "tp": 2}, (1, 1, 1, 1, 2)),
        (8, {"tp": 2, "dp_shard": -1, "dp_replicate": 2}, (1, 2, 2, 1, 2)),
        (4, {"pp": 2}, (2, 1, 2, 1, 1)),
        (4, {"pp": 2, "tp": 2}, (2, 1, 1, 1, 2)),
        (8, {"pp": 2, "dp_replicate": 2}, (2, 2, 2, 1, 1)),
    ],
)
def test_layout_resolves(world: int, fields: dict[str, object],
                         expected: tuple[int, int, int, int, int]) -> None:
    assert layout(world, **fields) == expected


def test_layout_sizes() -> None:
    got = Layout(pp=1, dp_replicate=2, dp_shard=2, cp=1, tp=2)
    assert (got.world_size, got.dp) == (8, 4)


def test_existing_configs_keep_their_layout() -> None:
    cfg = loading.load(TrainConfig, EXAMPLE)
    assert cfg.check_world_size(2) == Layout(pp=1, dp_replicate=1, dp_shard=2, cp=1, tp=1)
    ddp = loading.load(TrainConfig, EXAMPLE, ["parallel.strategy=\"ddp\""])
    assert ddp.check_world_size(2).dp_replicate == 2


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["parallel.dp_shard=0"], "parallel.dp_shard"),
        (["parallel.dp_replicate=0"], "parallel.dp_replicate"),
        (["parallel.dp_shard=-1", "parallel.dp_replicate=-1"], "parallel.dp_shard"),
        (["parallel.tp=0"], "parallel.tp"),
        (["parallel.pp_schedule=\"looped-bfs\""], "parallel.pp_schedule"),
        (["parallel.pp_split=[2, 1]"], "parallel.pp_split"),
        (["parallel.pp_split=[0]"], "parallel.pp_split"),
    ],
)
def test_bad_field_names_its_key(overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        loading.load(TrainConfig, EXAMPLE, overrides)
    assert info.value.key == key


@pytest.mark.parametrize(
    ("world", "overrides", "key"),
    [
        (4, ["parallel.dp_shard=3"], "parallel.dp_shard"),  # product 3 != 4 ranks
        (4, ["parallel.dp_replicate=2", "parallel.dp_shard=1"], "parallel.dp_shard"),
        (4, ["parallel.tp=3"], "parallel.dp_shard"),  # -1 cannot fill 4 / 3
        (2, ["parallel.strategy=\"none\""], "parallel.strategy"),
        (8, ["parallel.tp=8"], "parallel.tp"),  # tiny: 4 heads
        (2, ["parallel.tp=2", "model.n_kv_heads=1"], "parallel.tp"),
        (2, ["parallel.tp=2", "train.seq_len=33"], "parallel.tp"),  # sequence parallel splits T
        (4, ["parallel.tp=2", "parallel.strategy=\"ddp\""], "parallel.tp"),  # not supported yet
        (2, ["parallel.tp=2", "model.tie_embeddings=true"], "parallel.tp"),  # not yet
        (4, ["parallel.pp=2", "model.n_layers=1"], "parallel.pp"),  # fewer layers than stages
        (2, ["parallel.pp=2", "parallel.pp_microbatches=1"], "parallel.pp_microbatches"),
        (2, ["parallel.pp=2", "parallel.pp_split=[1, 2]"], "parallel.pp_split"),
        (2, ["parallel.pp=2", "parallel.pp_stages_per_rank=2"], "parallel.pp_stages_per_rank"),
        (2, ["parallel.pp=2", "parallel.pp_schedule=\"interleaved-1f1b\""],
         "parallel.pp_stages_per_rank"),
        (4, ["parallel.pp=2", "parallel.pp_schedule=\"zero-bubble\"",
             "parallel.pp_stages_per_rank=2", "parallel.pp_microbatches=5",
             "train.micro_batch_size=5", "train.global_batch_size=20"],
         "parallel.pp_microbatches"),  # 5 micro-batches do not fill rounds of 2
        (2, ["parallel.pp=2", "parallel.pp_microbatches=3"], "parallel.pp_microbatches"),
        (1, ["parallel.pp_stages_per_rank=2", "parallel.pp_schedule=\"interleaved-1f1b\"",
             "parallel.strategy=\"none\""], "parallel.pp_stages_per_rank"),  # no pp
        (1, ["parallel.pp_split=[2]", "parallel.strategy=\"none\""], "parallel.pp_split"),
        (2, ["parallel.pp=2", "model.tie_embeddings=true"], "parallel.pp"),  # not yet
        (4, ["parallel.pp=2", "parallel.strategy=\"ddp\""], "parallel.pp"),  # not yet
        (2, ["parallel.cp=2", "train.seq_len=66"], "parallel.cp"),  # not divisible by 2 × cp
        (8, ["parallel.cp=2", "parallel.tp=4", "train.seq_len=36"], "parallel.tp"),  # 18 / 4
    ],
)
def test_impossible_layout_names_its_key(world: int, overrides: list[str], key: str) -> None:
    cfg = loading.load(TrainConfig, EXAMPLE, overrides)
    with pytest.raises(ConfigError) as info:
        cfg.check_world_size(world, str(EXAMPLE))
    assert info.value.key == key
    assert "\n" not in str(info.value)


def test_unsupported_combinations_say_so() -> None:
    cfg = loading.load(TrainConfig, EXAMPLE, ["parallel.tp=2", "model.tie_embeddings=true"])
    with pytest.raises(ConfigError, match=r"tp with model\.tie_embeddings = true is not "
                       r"supported yet"):
        cfg.check_world_size(2)


@pytest.mark.parametrize(("world", "overrides"), [
    (2, ["parallel.cp=2"]),
    (4, ["parallel.cp=2", "parallel.dp_shard=2"]),
    (4, ["parallel.cp=2", "parallel.dp_replicate=2"]),
    (2, ["parallel.cp=2", "parallel.strategy=\"ddp\""]),
    (4, ["parallel.cp=2", "parallel.tp=2"]),
    (2, ["parallel.cp=2", "parallel.compile=true"]),
    (4, ["parallel.cp=2", "parallel.pp=2"]),
])
def test_context_parallel_layouts_are_accepted(world: int, overrides: list[str]) -> None:
    cfg = loading.load(TrainConfig, EXAMPLE, overrides)
    assert cfg.check_world_size(world).cp == 2


def test_tensor_parallel_with_compile_is_accepted() -> None:
    cfg = loading.load(TrainConfig, EXAMPLE, ["parallel.tp=2", "parallel.compile=true"])
    assert cfg.check_world_size(4).tp == 2


@pytest.mark.parametrize(
    ("world", "overrides"),
    [
        (2, ["parallel.pp=2"]),
        (2, ["parallel.pp=2", "parallel.pp_schedule=\"gpipe\"", "parallel.pp_split=[1]"]),
        (2, ["parallel.pp=2", "parallel.pp_schedule=\"interleaved-1f1b\"",
             "parallel.pp_stages_per_rank=2"]),
        (4, ["parallel.pp=2", "parallel.pp_schedule=\"zero-bubble\"",
             "parallel.pp_stages_per_rank=2", "parallel.dp_shard=2"]),
        (4, ["parallel.pp=2", "parallel.tp=2"]),
    ],
)
def test_pipeline_layouts_are_accepted(world: int, overrides: list[str]) -> None:
    cfg = loading.load(TrainConfig, EXAMPLE, overrides)  # tiny: 4 layers, micro-batches of 8
    assert cfg.check_world_size(world).pp == 2


@pytest.mark.parametrize(
    ("args", "key"),
    [
        (["--nproc", "4", "--set", "parallel.tp=3"], "parallel.dp_shard"),
        (["--nproc", "2", "--set", "parallel.tp=2", "--set", "model.n_heads=1",
          "--set", "model.n_kv_heads=1"], "parallel.tp"),
        (["--nproc", "2", "--set", "parallel.pp=2", "--set", "model.n_layers=1"],
         "parallel.pp"),
    ],
)
def test_cli_refuses_before_any_rank_starts(tmp_path: Path, args: list[str], key: str) -> None:
    run_dir = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "stoker", "train", str(EXAMPLE),
                             "--run-dir", str(run_dir), *args],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert key in line and str(EXAMPLE) in line
    assert not run_dir.exists()
