"""``checkpoint.interval = "auto"``: the Young–Daly formula, its inputs, the config keys, and
the checkpointer's time-based saves driven by it (one process, a fake clock)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from stoker.observe.events import read_events
from stoker.spec import loading
from stoker.spec.errors import ConfigError
from stoker.spec.train import CheckpointConfig, TrainConfig
from stoker.train.checkpoint import Checkpointer
from stoker.train.ckpt_interval import (
    NODES_ENV,
    RATE_ENV,
    AutoInterval,
    Mtbf,
    clamp,
    daly,
    gang_mtbf,
    young,
)
from stoker.train.ckpt_manifest import read_manifest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tiny.toml"


# ------------------------------------------------------------------ the formula

def test_young_is_sqrt_2cm() -> None:
    assert young(2.0, 3600.0) == pytest.approx(120.0)


def test_daly_tends_to_young_when_saves_are_cheap() -> None:
    m = 86400.0
    for c in (0.01, 0.1, 1.0):
        assert daly(c, m) == pytest.approx(young(c, m), rel=2 * math.sqrt(c / (2 * m)))
        assert daly(c, m) > young(c, m) - c  # the correction terms are positive


def test_daly_exact_value() -> None:
    c, m = 50.0, 1000.0  # C/2M = 1/40
    r = 1 / 40
    expected = math.sqrt(2 * c * m) * (1 + math.sqrt(r) / 3 + r / 9) - c
    assert daly(c, m) == pytest.approx(expected)


@pytest.mark.parametrize("c", [200.0, 201.0, 1e6])
def test_daly_is_m_once_a_save_costs_2m_or_more(c: float) -> None:
    assert daly(c, 100.0) == 100.0


def test_clamp_floor_and_ceiling() -> None:
    assert clamp(5.0, 60.0, 600.0) == 60.0
    assert clamp(6000.0, 60.0, 600.0) == 600.0
    assert clamp(100.0, 60.0, 600.0) == 100.0


# ------------------------------------------------------------------ M and C

def test_gang_mtbf_from_the_cluster_or_the_config() -> None:
    cfg = CheckpointConfig(interval="auto", mtbf_hours=2.0)
    assert gang_mtbf(cfg, {}) == Mtbf(7200.0, "config")
    m = gang_mtbf(cfg, {RATE_ENV: "0.01", NODES_ENV: "4"})  # 0.04 failures/hour for the gang
    assert m.source == "cluster" and m.seconds == pytest.approx(90000.0)
    assert m.rate_per_node_hour == 0.01 and m.nodes == 4
    for bad in ({RATE_ENV: "0"}, {RATE_ENV: "nan"}, {RATE_ENV: "x"},
                {RATE_ENV: "0.1", NODES_ENV: "0"}):
        assert gang_mtbf(cfg, bad).source == "config"


def test_auto_interval_starts_at_the_floor_then_follows_the_cost() -> None:
    cfg = CheckpointConfig(interval="auto", auto_min_minutes=1, auto_max_minutes=30)
    auto = AutoInterval(cfg, Mtbf(3600.0, "config"))
    assert auto.seconds == 60.0 and auto.current.cost_s is None
    chosen = auto.measured(2.0)
    assert chosen.cost_s == 2.0 and chosen.optimum_s == pytest.approx(daly(2.0, 3600.0))
    assert chosen.interval_s == chosen.optimum_s
    chosen = auto.measured(4.0)  # C: the mean of the recent saves
    assert chosen.cost_s == 3.0 and chosen.interval_s == pytest.approx(daly(3.0, 3600.0))
    for _ in range(4):
        chosen = auto.measured(1000.0)
    assert chosen.cost_s == 1000.0 and chosen.interval_s == 1800.0  # the ceiling
    tiny = AutoInterval(cfg, Mtbf(3600.0, "config")).measured(1e-6)
    assert tiny.interval_s == 60.0 and tiny.optimum_s is not None and tiny.optimum_s < 60


# ------------------------------------------------------------------ config

def test_auto_config_loads() -> None:
    cfg = loading.load(TrainConfig, EXAMPLE, [
        'checkpoint.interval="auto"', "checkpoint.interval_steps=0",
        "checkpoint.interval_minutes=0", "checkpoint.auto_min_minutes=0.5",
        "checkpoint.auto_max_minutes=10", "checkpoint.mtbf_hours=6"]).checkpoint
    assert cfg.interval == "auto" and cfg.mtbf_hours == 6
    assert loading.load(TrainConfig, EXAMPLE).checkpoint.interval == "fixed"


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (['checkpoint.interval="auto"', "checkpoint.interval_steps=0",
          "checkpoint.interval_minutes=5"],
         "checkpoint.interval_minutes"),
        (['checkpoint.interval="auto"', "checkpoint.interval_steps=100"],
         "checkpoint.interval_steps"),
        (["checkpoint.auto_min_minutes=10", "checkpoint.auto_max_minutes=5"],
         "checkpoint.auto_min_minutes"),
        (['checkpoint.interval="often"'], "checkpoint.interval"),
        (["checkpoint.mtbf_hours=0"], "checkpoint.mtbf_hours"),
        (["checkpoint.auto_min_minutes=-1"], "checkpoint.auto_min_minutes"),
    ],
)
def test_contradictory_auto_configs_name_the_key(overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        loading.load(TrainConfig, EXAMPLE, overrides)
    assert info.value.key == key and key in str(info.value)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------ the checkpointer

class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_checkpointer_saves_at_the_auto_interval(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(RATE_ENV, "1.0")  # one failure per node-hour, 2 nodes: M = 30 min
    monkeypatch.setenv(NODES_ENV, "2")
    clock = FakeClock()
    cfg = CheckpointConfig(interval="auto", auto_min_minutes=1, auto_max_minutes=600,
                           async_save=False)
    ck = Checkpointer(tmp_path, cfg, clock=clock)
    assert ck.interval_s == 60.0  # the floor until a save is measured
    clock.now += 59
    assert not ck.time_due()
    clock.now += 1
    assert ck.time_due() and ck.decide(1, time_due=True).save
    state = {"w": torch.ones(1000)}
    ck.save(1, state)
    start, measured = read_events(tmp_path, "checkpoint_interval")
    assert start["reason"] == "start" and start["cost_s"] is None
    assert start["mtbf_s"] == pytest.approx(1800.0) and start["mtbf_source"] == "cluster"
    assert measured["reason"] == "save" and measured["step"] == 1
    committed = read_events(tmp_path, "checkpoint_committed")[0]
    assert measured["cost_s"] == committed["stall_s"] > 0
    assert measured["optimum_s"] == pytest.approx(daly(committed["stall_s"], 1800.0))
    assert measured["interval_s"] == ck.interval_s == max(60.0, measured["optimum_s"])
    clock.now += ck.interval_s - 0.01
    assert not ck.time_due()
    clock.now += 0.01
    assert ck.time_due()
    ck.close()


def test_a_forced_synchronous_save_is_not_a_measure(tmp_path: Path) -> None:
    ck = Checkpointer(tmp_path, CheckpointConfig(interval="auto"), clock=FakeClock())
    ck.save(1, {"w": torch.ones(10)}, sync=True)  # a stop or the final save of an async run
    assert [e["reason"] for e in read_events(tmp_path, "checkpoint_interval")] == ["start"]
    ck.close()


def test_fixed_intervals_are_unchanged(tmp_path: Path) -> None:
    ck = Checkpointer(tmp_path, CheckpointConfig(interval_minutes=2), clock=FakeClock())
    assert ck.auto is None and ck.interval_s == 120.0
    assert read_events(tmp_path, "checkpoint_interval") == []


# ------------------------------------------------------------------ a real 2-rank run

@pytest.mark.slow
def test_two_ranks_save_at_the_auto_interval(tmp_path: Path) -> None:
    """Rank 0 chooses the interval from each save's measured stall and a small MTBF; both
    ranks save at the steps its clock picks (each save a collective: a disagreement would hang
    or tear it), and the events record C, M and τ."""
    from test_train_cli import SMALL, sets, stoker

    run_dir = tmp_path / "run"
    mtbf_hours = 0.0015  # 5.4 s: τ of a fraction of a second for a save stall of ~10-100 ms
    overrides = [*SMALL, "train.steps=60", "train.eval_interval=0",
                 'checkpoint.interval="auto"', "checkpoint.interval_steps=0",
                 "checkpoint.auto_min_minutes=0.005", f"checkpoint.mtbf_hours={mtbf_hours}",
                 "checkpoint.keep_last=100"]
    result = stoker("train", str(EXAMPLE), "--nproc", "2", "--run-dir", str(run_dir),
                    *sets(overrides))
    assert result.returncode == 0, result.stderr + result.stdout
    chosen = read_events(run_dir, "checkpoint_interval")
    assert {e["rank"] for e in chosen} == {0}  # rank 0 decides
    assert chosen[0]["reason"] == "start" and chosen[0]["interval_s"] == pytest.approx(0.3)
    m = mtbf_hours * 3600
    for e in chosen:
        assert e["mtbf_s"] == pytest.approx(m) and e["mtbf_source"] == "config"
    measured = [e for e in chosen if e["reason"] == "save"]
    for e in measured:
        assert e["optimum_s"] == pytest.approx(daly(e["cost_s"], m))
        assert e["interval_s"] == pytest.approx(clamp(e["optimum_s"], 0.3, 3600))
    committed = [e for e in read_events(run_dir, "checkpoint_committed") if e["rank"] == 0]
    by_time = [e for e in committed if e["step"] < 60]  # the last save is the final one
    assert len(by_time) >= 3, committed
    # Each save came once rank 0's clock passed the interval then in force (one of those
    # chosen), at the first log step after (each step is one here).
    steps_s = [r["step_time_s"] for r in
               (json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines())]
    intervals = [e["interval_s"] for e in chosen]
    for save in by_time:
        assert any(save["interval_s"] == pytest.approx(i) for i in intervals)
        assert save["interval_s"] <= save["since_last_s"]
        assert save["since_last_s"] <= save["interval_s"] + 3 * max(steps_s) + 1.0
    for e in committed:  # every save holds both ranks' parts
        manifest = read_manifest(run_dir / "checkpoints" / f"step-{e['step']:08d}")
        assert manifest.world_size == 2
