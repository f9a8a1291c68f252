"""Live straggler detection: the scores on hand-made numbers, and 2-rank runs (FSDP2, DDP) whose
rank 1's compute the test fault hook slows for a few steps in the middle (and, under DDP, then
rank 0's host work): flagged within the window in that section, cleared after, the other rank
never flagged, no rank flagged on the even steps before."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rich.console import Console

from stoker.cli.jobs_cmd import _stragglers
from stoker.control.launch import RUN
from stoker.control.run_telemetry import read_stragglers
from stoker.observe.events import EventLog, read_events
from stoker.observe.straggler import SECTIONS, StragglerDetector, section_scores
from stoker.spec.train import StragglerConfig

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "tiny.toml"


def test_section_scores_are_the_fastest_rank_and_the_own_best_over_the_time() -> None:
    times = torch.tensor([[1.0, 0.0], [2.0, 1.0], [4.0, 0.0]])  # 3 ranks, 2 sections
    best = torch.tensor([[1.0, 0.0], [1.0, 1.0], [2.0, 0.0]])
    relative, individual = section_scores(times, best, floor=0.0)
    assert relative[:, 0].tolist() == [1.0, 0.5, 0.25]
    assert individual[:, 0].tolist() == [1.0, 0.5, 0.5]
    padded, _ = section_scores(times, best, floor=1.0)
    assert padded[:, 1].tolist() == [1.0, 0.5, 1.0]


def step(data: list[float], step_time: float = 1.0) -> tuple[list[float], list[list[float]]]:
    """Every rank's step time and sections, with ``data`` as the data wait of each rank."""
    return [step_time] * len(data), [[d, 0.5, 0.1, 0.0, 0.5, 0.1] for d in data]


def test_a_rank_is_flagged_after_patience_log_steps_and_cleared_when_it_recovers() -> None:
    detector = StragglerDetector(StragglerConfig(threshold=0.7, window=3, patience=2), 2)
    flags, clears = [], []
    data = [[0.0, 0.0]] * 3 + [[0.0, 1.0]] * 6 + [[0.0, 0.0]] * 4
    for i, d in enumerate(data, start=1):
        detector.add(*step(d))
        verdict = detector.score()
        flags += [(i, rank, section) for rank, section, _, _ in verdict.flagged]
        clears += [(i, rank) for rank, _ in verdict.cleared]
    # The window's median turns slow at step 5 (two of three), the second log step below is 6.
    assert flags == [(6, 1, "data")]
    assert clears == [(11, 1)]
    assert verdict.record["flagged"] == []
    assert set(verdict.record["sections"]) == set(SECTIONS)


def test_no_rank_is_judged_before_the_window_is_full() -> None:
    detector = StragglerDetector(StragglerConfig(window=3, patience=1), 2)
    flags = []
    for i in range(1, 5):
        detector.add(*step([0.0, 1.0]))
        verdict = detector.score()
        assert verdict.record["relative"][1] < 0.7
        flags += [i for _ in verdict.flagged]
    assert flags == [3]


def test_sections_ending_in_a_collective_do_not_flag() -> None:
    """The early rank's wait inside forward+backward is not its own slowness: its compute is."""
    detector = StragglerDetector(StragglerConfig(window=1, patience=1), 2)
    detector.add([1.0, 1.0], [[0.0, 0.9, 0.1, 0.0, 0.3, 0.7], [0.0, 0.3, 0.1, 0.0, 0.3, 0.1]])
    verdict = detector.score()
    assert verdict.flagged == []
    assert verdict.record["sections"]["fwd_bwd"][0] < 0.7
    assert verdict.record["sections"]["comm"][0] < 0.7
    detector.add([1.0, 1.0], [[0.0, 0.9, 0.1, 0.0, 0.9, 0.1], [0.0, 0.9, 0.1, 0.0, 0.3, 0.7]])
    assert [(rank, section) for rank, section, _, _ in detector.score().flagged] == [
        (0, "compute")]


def test_a_section_not_measured_scores_none_and_flags_nothing() -> None:
    """On CUDA compute and communication are not measured: NaN in, None out."""
    detector = StragglerDetector(StragglerConfig(window=1, patience=1), 2)
    nan = float("nan")
    detector.add([1.0, 1.0], [[0.0, 0.9, 0.1, 0.0, nan, nan], [0.0, 0.3, 0.1, 0.0, nan, nan]])
    verdict = detector.score()
    assert verdict.flagged == []
    assert verdict.record["sections"]["compute"] == [None, None]
    assert verdict.record["relative"] == [1.0, 1.0]
    assert verdict.record["individual"] == [1.0, 1.0]


def test_the_control_plane_reads_a_runs_straggler_events(tmp_path: Path) -> None:
    """What `GET /v1/jobs/{id}` carries as ``stragglers`` and `stoker job N` shows."""
    events = EventLog(tmp_path / "7" / RUN, rank=0)
    events.emit("straggler", rank=1, step=12, section="host", score=0.21, steps=3)
    events.emit("checkpoint_committed", step=12, stall_s=0.1)
    events.emit("straggler", rank="2", step=12, score=0.1)  # not one: skipped
    events.emit("straggler_cleared", rank=1, step=15, score=0.93)
    views = read_stragglers(tmp_path, 7)
    assert [(v.event, v.rank, v.step, v.section, v.steps) for v in views] == [
        ("straggler", 1, 12, "host", 3), ("straggler_cleared", 1, 15, None, None)]
    console = Console(width=200, record=True)
    console.print(_stragglers([v.model_dump() for v in views]))
    shown = console.export_text()
    assert "flagged: host at 0.21 of the fastest rank for 3 log steps" in shown
    assert "cleared: 0.93" in shown
    assert read_stragglers(tmp_path, 8) == []


# ---------------------------------------------------------------- two ranks, gloo

WINDOW, PATIENCE = 4, 2
SMALL = [
    "model.dim=64", "model.n_layers=2", "model.n_heads=2", "model.n_kv_heads=2",
    "model.ffn_hidden=128", "train.global_batch_size=8",
    "train.micro_batch_size=4", "train.log_interval=1", "telemetry.peak_flops=1e11",
    "telemetry.live=false", "train.eval_interval=0", "checkpoint.interval_steps=0",
    f"straggler.window={WINDOW}", f"straggler.patience={PATIENCE}",
]
BURN = [f"burn@fwd_bwd,step={s},rank=1,ms=150" for s in range(11, 17)]  # compute, in fwd_bwd
SLOW = [f"slow@step={s},rank=0,ms=200" for s in range(23, 29)]  # host, before the step
# Each case: its steps, sequence length, faults and slowed spans: (first step, last, rank,
# section). DDP's steps are longer than the others' so that rank 0's logging every step (a
# millisecond or two of host time) stays well within the threshold of a step.
CASES = {"fsdp": (22, 32, BURN, [(11, 16, 1, "compute")]),
         "ddp": (34, 256, BURN + SLOW, [(11, 16, 1, "compute"), (23, 28, 0, "host")])}


@pytest.mark.slow
@pytest.mark.parametrize("strategy", CASES)
def test_a_slowed_rank_is_flagged_within_the_window_and_no_rank_on_even_steps(
        tmp_path: Path, strategy: str) -> None:
    steps, seq_len, faults, spans = CASES[strategy]
    run_dir = tmp_path / "run"
    sets = [a for o in [*SMALL, f"train.steps={steps}", f"train.seq_len={seq_len}",
                        f"parallel.strategy={strategy}"] for a in ("--set", o)]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "STOKER_FAULT": ";".join(faults),
           "STOKER_FAULT_OPT_IN": "1"}
    done = subprocess.run([sys.executable, "-m", "stoker", "train", str(EXAMPLE), "--nproc",
                           "2", "--run-dir", str(run_dir), *sets], capture_output=True,
                          text=True, timeout=180, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr + done.stdout
    records = {r["step"]: r for r in map(json.loads,
                                         (run_dir / "metrics.jsonl").read_text().splitlines())}
    flagged = {step: r["straggler"]["flagged"] for step, r in records.items()}
    assert len(flagged) == steps
    assert all(len(r["straggler"]["sections"]["compute"]) == 2 for r in records.values())
    # Even steps (warm-up included) flag no rank.
    assert all(flagged[s] == [] for s in range(1, spans[0][0]))
    # Rank 0 waits for the burning rank 1: in communication, not in its own compute.
    assert all(records[s]["comm_s"] > 0.1 > records[s]["compute_s"] for s in range(11, 17))
    events = [e for e in read_events(run_dir) if e["event"].startswith("straggler")]
    assert [(e["event"], e["rank"]) for e in events] == [
        (kind, rank) for _, _, rank, _ in spans for kind in ("straggler", "straggler_cleared")]
    for (first, last, rank, section), flag, clear, until in zip(
            spans, events[::2], events[1::2], [s[0] for s in spans[1:]] + [steps + 1],
            strict=True):
        assert flag["section"] == section and flag["score"] < 0.7
        # The window's median turns slow half way through it; then `patience` log steps below.
        assert flag["step"] <= first + WINDOW // 2 + PATIENCE - 1
        assert all(flagged[s] == [rank] for s in range(flag["step"], clear["step"]))
        assert last < clear["step"] <= last + WINDOW
        assert all(flagged[s] == [] for s in range(clear["step"], until))
