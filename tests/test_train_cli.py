"""`stoker train` and `torchrun -m stoker.train` as a user runs them: real processes, gloo."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from stoker.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "tiny.toml"
# The tiny model shrunk further, so a run takes seconds on a busy 2-core machine.
SMALL = [
    "model.dim=64", "model.n_layers=2", "model.n_heads=2", "model.n_kv_heads=2",
    "model.ffn_hidden=128", "train.seq_len=32", "train.global_batch_size=8",
    "train.micro_batch_size=2", "train.log_interval=1", "telemetry.peak_flops=1e11",
    "telemetry.live=false",
]
REQUIRED = {
    "step", "loss", "lr", "grad_norm", "tokens_per_s", "tokens_per_s_per_device", "mfu",
    "step_time_s", "data_wait_s", "fwd_bwd_s", "optim_s", "peak_mem_bytes", "rank_step_times",
}


def sets(overrides: list[str]) -> list[str]:
    return [arg for o in overrides for arg in ("--set", o)]


def stoker(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stoker", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def records(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def example_data() -> Path:
    """The example's dataset, prepared before the CLI runs (where the CLI looks for it), so
    that nothing but the error can reach stderr."""
    from stoker.spec import loading
    from stoker.spec.train import TrainConfig
    from stoker.train.data import ensure_dataset

    data = loading.load(TrainConfig, EXAMPLE).data
    return ensure_dataset(data.model_copy(update={"cache_dir": str(ROOT / data.cache_dir)}),
                          progress=False)


@pytest.mark.parametrize(
    ("args", "key"),
    [
        (["--set", "train.stepz=3"], "train.stepz"),
        (["--set", "parallel.strategy=tp"], "parallel.strategy"),
        (["--nproc", "3"], "train.global_batch_size"),
        (["--nproc", "2", "--set", "parallel.strategy=none"], "parallel.strategy"),
        (["--nproc", "0"], "--nproc"),
        (["--set", "model.vocab_size=100"], "model.vocab_size"),  # smaller than the data's 256
        # the example saves every 100 steps: "auto" chooses the interval itself
        (["--set", 'checkpoint.interval="auto"'], "checkpoint.interval_steps"),
        (["--set", 'checkpoint.interval="auto"', "--set", "checkpoint.interval_steps=0",
          "--set", "checkpoint.auto_min_minutes=90"], "checkpoint.auto_min_minutes"),
    ],
)
def test_bad_config_is_one_line_and_exit_2(tmp_path: Path, args: list[str], key: str,
                                           example_data: Path) -> None:
    run_dir = tmp_path / "run"
    result = stoker("train", str(EXAMPLE), "--run-dir", str(run_dir), *sets(SMALL), *args)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert key in line and str(EXAMPLE) in line
    assert "Traceback" not in result.stderr + result.stdout
    assert not run_dir.exists()  # nothing started, nothing written


@pytest.mark.slow
def test_two_ranks_write_metrics_summary_and_config(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    overrides = [*SMALL, "train.steps=6", "train.eval_interval=3", "train.eval_steps=1"]
    result = stoker("train", str(EXAMPLE), "--nproc", "2", "--run-dir", str(run_dir),
                    *sets(overrides))
    assert result.returncode == 0, result.stderr + result.stdout
    recs = records(run_dir)
    assert [r["step"] for r in recs] == list(range(1, 7))
    for r in recs:
        assert set(r) >= REQUIRED, REQUIRED - set(r)
        assert len(r["rank_step_times"]) == 2
        assert r["tokens_per_s"] == pytest.approx(2 * r["tokens_per_s_per_device"])
        assert 0 < r["mfu"] < 1
        assert r["data_wait_s"] + r["fwd_bwd_s"] + r["optim_s"] <= r["step_time_s"]
    assert [r["step"] for r in recs if "eval_loss" in r] == [3, 6]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps_completed"] == 6
    assert summary["world_size"] == 2
    # Rank-prefixed output; rank 0 prints the plain step lines when stdout is not a terminal.
    assert "[rank0]:step 6/6" in result.stdout
    # The resolved config is a valid config that reproduces the run's settings.
    from stoker.spec import loading
    from stoker.spec.train import TrainConfig

    cfg = loading.load(TrainConfig, run_dir / "config.toml")
    assert cfg.train.steps == 6 and cfg.model.dim == 64
    assert list((run_dir / "logs").rglob("stdout.log"))


@pytest.mark.slow
def test_torchrun_entry(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}",
           "--local-addr", "127.0.0.1", "-m", "stoker.train", str(EXAMPLE),
           "--run-dir", str(run_dir), *sets([*SMALL, "train.steps=3", "train.eval_interval=0"])]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert result.returncode == 0, result.stderr + result.stdout
    recs = records(run_dir)
    assert [r["step"] for r in recs] == [1, 2, 3]
    assert all(len(r["rank_step_times"]) == 2 for r in recs)


@pytest.mark.slow
def test_ctrl_c_stops_at_a_step_boundary(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "stoker", "train", str(EXAMPLE), "--nproc", "2",
           "--run-dir", str(run_dir), *sets([*SMALL, "train.steps=100000"])]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["signal"] == "SIGINT"
    recs = records(run_dir)
    # Both ranks stopped after the same, complete step: it is the last record, whole.
    assert summary["steps_completed"] == recs[-1]["step"] == len(recs)
    assert "Traceback" not in out + err
