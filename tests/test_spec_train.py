"""Training config validation: every rejected case names its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from stoker.spec import loading
from stoker.spec.errors import ConfigError
from stoker.spec.train import TrainConfig

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tiny.toml"


def test_example_loads() -> None:
    cfg = loading.load(TrainConfig, EXAMPLE)
    assert cfg.model.preset == "tiny"
    assert cfg.parallel.strategy == "fsdp"


def test_override_applies() -> None:
    cfg = loading.load(TrainConfig, EXAMPLE, ["train.steps=7", "optim.lr=0.5", "train.name=x y"])
    assert cfg.train.steps == 7
    assert cfg.optim.lr == 0.5
    assert cfg.train.name == "x y"


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["train.stepz=3"], "train.stepz"),
        (["bogus.key=1"], "bogus"),
        (["train.steps=\"many\""], "train.steps"),
        (["train.steps=0"], "train.steps"),
        (["parallel.strategy=\"tp\""], "parallel.strategy"),
        (["train.global_batch_size=10", "train.micro_batch_size=4"], "train.global_batch_size"),
        (["model.preset=\"huge\""], "model.preset"),
        (["model.n_heads=5"], "model.n_heads"),
        (["optim.warmup_steps=-1"], "optim.warmup_steps"),
        (["checkpoint.async=3"], "checkpoint.async"),
    ],
)
def test_rejected_configs_name_the_key(overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        loading.load(TrainConfig, EXAMPLE, overrides)
    assert info.value.key == key
    assert key in str(info.value)
    assert str(EXAMPLE) in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_key_suggests() -> None:
    with pytest.raises(ConfigError, match="did you mean 'steps'"):
        loading.load(TrainConfig, EXAMPLE, ["train.stepz=3"])


def test_world_size_divisibility() -> None:
    cfg = loading.load(TrainConfig, EXAMPLE, ["train.global_batch_size=16",
                                              "train.micro_batch_size=8"])
    cfg.check_world_size(2)
    with pytest.raises(ConfigError) as info:
        cfg.check_world_size(3, str(EXAMPLE))
    assert info.value.key == "train.global_batch_size"


def test_strategy_none_needs_one_rank() -> None:
    cfg = loading.load(TrainConfig, EXAMPLE, ["parallel.strategy=\"none\""])
    with pytest.raises(ConfigError) as info:
        cfg.check_world_size(2)
    assert info.value.key == "parallel.strategy"


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        loading.load(TrainConfig, tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nsteps = 1\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        loading.load(TrainConfig, bad)
