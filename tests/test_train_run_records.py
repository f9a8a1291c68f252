"""Run records you can trust (issue 14 item 6), through `stoker train` with real processes on
CPU/gloo: one run dir per run (the lock), no silent start-over, attempt numbers after a rank is
killed with SIGKILL and the gang restarted, a summary over every attempt, a resume that changes
the LR schedule, and one that does not fit the checkpoint."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from stoker.observe.events import read_events
from stoker.observe.metrics import latest_per_step, read_metrics
from stoker.train.run_dir import lock_holder
from test_train_recovery import train, write_config

pytestmark = pytest.mark.slow

STEPS, MORE = 8, 10
TOKENS_PER_STEP = 8 * 32


def snapshot(run: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``run`` with its size and modification time."""
    return {str(p.relative_to(run)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def resumed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """A 2-rank run whose rank 1 is killed (SIGKILL) before step 7, after the checkpoint at
    step 4, and restarted by the launcher (steps 5 and 6 run twice); then resumed with more
    steps. Returns the run, the second config and the resume's output."""
    tmp = tmp_path_factory.mktemp("records")
    run = tmp / "run"
    first = write_config(tmp, train={"steps": STEPS}, checkpoint={"async": False})
    done = train(first, run, "--max-restarts", "1", fault="kill@step=7,rank=1")
    assert done.returncode == 0, done.stderr
    (tmp / "more").mkdir()
    more = write_config(tmp / "more", train={"steps": MORE}, checkpoint={"async": False})
    again = train(more, run, "--resume", "auto")
    assert again.returncode == 0, again.stderr
    return run, more, again.stdout + again.stderr


def test_attempt_numbers_after_a_kill_and_a_resume(resumed: tuple[Path, Path, str]) -> None:
    run, _, _ = resumed
    (failure,) = read_events(run, "failure")
    assert failure["cause"] == "killed by SIGKILL"
    records = read_metrics(run / "metrics.jsonl")
    by_attempt = {a: [r["step"] for r in records if r["attempt"] == a] for a in (1, 2, 3)}
    assert by_attempt == {1: [1, 2, 3, 4, 5, 6], 2: [5, 6, 7, 8], 3: [9, 10]}
    latest = latest_per_step(records)
    assert [(r["step"], r["attempt"]) for r in latest] == [
        (1, 1), (2, 1), (3, 1), (4, 1), (5, 2), (6, 2), (7, 2), (8, 2), (9, 3), (10, 3)]


def test_summary_covers_every_attempt_and_survives_a_finished_resume(
        resumed: tuple[Path, Path, str]) -> None:
    run, _, _ = resumed
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps_completed"] == MORE
    assert summary["tokens_trained"] == MORE * TOKENS_PER_STEP  # each step counted once
    attempts = summary["attempts"]
    assert [(a["attempt"], a["first_step"], a["last_step"]) for a in attempts] == [
        (1, 1, 6), (2, 5, 8), (3, 9, 10)]
    assert summary["wall_time_s"] == pytest.approx(sum(a["wall_time_s"] for a in attempts))
    # Resuming the finished run (here, as one rank in this process) trains nothing and keeps
    # the whole run's summary.
    lines = (run / "metrics.jsonl").read_text()
    assert resume_in_process(run) == "completed"
    assert (run / "metrics.jsonl").read_text() == lines
    again = json.loads((run / "summary.json").read_text())
    assert again["steps_completed"] == MORE
    assert again["tokens_trained"] == summary["tokens_trained"]
    assert [a["attempt"] for a in again["attempts"]] == [1, 2, 3, 4]


def resume_in_process(run: Path) -> str:
    """``--resume auto`` of the run's resolved config, as a world of one in this process."""
    from stoker.observe.live import NullDisplay
    from stoker.spec import loading
    from stoker.spec.train import TrainConfig
    from stoker.train.data import ensure_dataset
    from stoker.train.distributed import init_distributed
    from stoker.train.trainer import Trainer

    cfg = loading.load(TrainConfig, run / "config.toml")
    info = init_distributed(cfg.parallel, cfg.train)
    return Trainer(cfg, run, info, ensure_dataset(cfg.data), display=NullDisplay(),
                   resume="auto").run()


def test_a_changed_schedule_is_said_and_keeps_its_position(
        resumed: tuple[Path, Path, str]) -> None:
    run, _, output = resumed
    (line,) = [x for x in output.splitlines() if "LR schedule changed" in x]
    assert f"train.steps {STEPS} -> {MORE}" in line and f"step {STEPS}" in line
    (event,) = read_events(run, "schedule_changed")
    assert event["step"] == STEPS and not event["restarted"]
    from stoker.spec.train import OptimConfig
    from stoker.train.optim import lr_factor

    optim = OptimConfig(warmup_steps=2)
    step9 = next(r for r in read_metrics(run / "metrics.jsonl") if r["step"] == STEPS + 1)
    assert step9["lr"] == pytest.approx(optim.lr * lr_factor(STEPS, optim, MORE))


def refused(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert all(w in line for w in words), line
    assert "Traceback" not in result.stderr + result.stdout


def test_an_incompatible_checkpoint_is_one_line(resumed: tuple[Path, Path, str],
                                                tmp_path: Path) -> None:
    run, _, _ = resumed
    before = snapshot(run)
    config = write_config(tmp_path, model={"dim": 128, "n_heads": 2, "n_kv_heads": 2})
    refused(train(config, run, "--resume", "auto"), "model.dim: checkpoint has 64, config has 128")
    assert snapshot(run) == before


def test_reusing_a_run_dir_without_resume_is_refused(resumed: tuple[Path, Path, str]) -> None:
    run, more, _ = resumed
    before = snapshot(run)
    refused(train(more, run), "already holds a run", "--resume auto", "--run-dir")
    assert snapshot(run) == before


def test_a_second_run_into_a_locked_run_dir_is_refused(resumed: tuple[Path, Path, str]) -> None:
    """The lock is held by a real process; the second run names it; the lock goes with it."""
    run, more, _ = resumed
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, pathlib; from stoker.train.run_dir import "
         "lock_run_dir; lock_run_dir(pathlib.Path(sys.argv[1])); print('locked', flush=True); "
         "sys.stdin.read()", str(run)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        before = snapshot(run)
        refused(train(more, run, "--resume", "auto"), "in use by another run",
                f"pid {holder.pid}")
        assert snapshot(run) == before
        assert lock_holder(run).split()[0] == str(holder.pid)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert lock_holder(run) == ""  # the kernel dropped it with its holder
