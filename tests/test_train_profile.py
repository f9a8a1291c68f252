"""Profiling (issue 14 item 1), with real processes on CPU/gloo: `stoker profile` asks a running
2-rank job to profile its next steps (every rank, the same steps), a ``[profile]`` schedule
profiles from the start, the job goes on and finishes with an unprofiled run's losses; and
the CLI's refusals are one line, exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from stoker.observe.events import read_events
from stoker.spec import loading
from stoker.spec.errors import ConfigError
from stoker.spec.loading import to_toml
from stoker.spec.train import TrainConfig
from stoker.train.heartbeat import read_heartbeats
from stoker.train.profile_request import REQUEST_FILE
from test_train_recovery import CONFIG, losses, train
from train_helpers import held, rank_pids, wait_until

pytestmark = pytest.mark.slow

STEPS, ASKED = 24, 2
SCHEDULE = {"enabled": True, "wait": 0, "warmup": 1, "active": 2, "repeat": 1}  # steps 2-3


def write(tmp: Path, profile: dict[str, Any] | None = None) -> Path:
    cfg = {k: dict(v) for k, v in CONFIG.items()}
    cfg["train"].update(steps=STEPS, log_interval=2)
    cfg["checkpoint"] = {"enabled": False}
    cfg["telemetry"].update(sample_ids=False, peak_flops=1e12)  # no peak calibration
    if profile is not None:
        cfg["profile"] = profile
    path = tmp / "train.toml"
    path.write_text(to_toml(cfg))
    return path


def stoker(*args: str, timeout: float = 120) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "stoker", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("unprofiled")
    done = train(write(tmp), tmp / "run")
    assert done.returncode == 0, done.stderr
    return tmp / "run"


@pytest.fixture(scope="module")
def profiled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """A 2-rank run with a ``[profile]`` schedule (steps 2-3), asked by `stoker profile
    --wait` to profile 2 more steps while its ranks are held still (so that the run cannot
    end first). Returns the run and the CLI's stdout and stderr."""
    tmp = tmp_path_factory.mktemp("profiled")
    run = tmp / "run"
    job = stoker("train", str(write(tmp, SCHEDULE)), "--nproc", "2", "--run-dir", str(run))
    try:
        pids = rank_pids(run, 2)
        with held(pids):
            at = max(h["step"] for h in read_heartbeats(run).values())
            assert at < STEPS - 8, f"the run was at step {at} before it could be held"
            cli = stoker("profile", str(run), "--steps", str(ASKED), "--memory", "--wait")
            wait_until(lambda: (run / REQUEST_FILE).exists() or cli.poll() is not None,
                       "the request")
        out, err = cli.communicate(timeout=120)
        assert cli.returncode == 0, err
        _, job_err = job.communicate(timeout=240)
        assert job.returncode == 0, job_err
    finally:
        job.kill()
    return run, out, err


def traces(paths: list[Path]) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in paths]


def test_profile_on_demand_writes_every_ranks_trace_and_changes_no_loss(
        profiled: tuple[Path, str, str], reference: Path) -> None:
    run, out, err = profiled
    (started,) = [e for e in read_events(run, "profile_started") if e["schedule"]["wait"] == 0
                  and e["schedule"]["repeat"] == 1 and e["schedule"]["memory"]]
    where = Path(started["dir"])
    assert where.parent == run / "profiles" and started["world_size"] == 2
    assert started["last_step"] - started["first_step"] == ASKED - 1
    assert started["first_step"] > 3  # after the schedule's window: one capture at a time
    done = [e for e in read_events(run, "profile_done") if e["dir"] == str(where)]
    assert sorted(e["rank"] for e in done) == [0, 1]
    assert {(e["first_step"], e["last_step"]) for e in done} == {
        (started["first_step"], started["last_step"])}  # every rank, the same steps
    printed = [Path(x) for x in out.split()]
    ranks = [where / "rank-00000.json", where / "rank-00001.json"]
    assert [p for p in printed if p.suffix == ".json" and "memory" not in p.name] == ranks
    for trace in traces(ranks):
        names = {e.get("name", "") for e in trace["traceEvents"]}
        assert any(n.startswith("ProfilerStep#") for n in names)
        assert "[memory]" in names  # --memory on CPU: the allocations
    assert (where / "rank-00000.memory.txt").is_file()
    assert "Traceback" not in err
    assert losses(run) == losses(reference)
    assert not (run / REQUEST_FILE).exists()


def test_profile_schedule_from_the_config(profiled: tuple[Path, str, str]) -> None:
    run, _, _ = profiled
    (first,) = [e for e in read_events(run, "profile_started") if e["schedule"]["warmup"] == 1
                and not e["schedule"]["memory"]]
    assert (first["first_step"], first["last_step"]) == (2, 3)
    where = Path(first["dir"])
    assert where.name.endswith("-step000002")
    for trace in traces(sorted(where.glob("rank-*.json"))):
        assert trace["traceEvents"]
    assert len(list(where.glob("rank-*.json"))) == 2


@pytest.mark.parametrize(("args", "words"), [
    (["profile", "/nonexistent/run"], ["no such run dir"]),
    (["profile", "{tmp}"], ["not a training run dir"]),
    (["profile", "{ref}", "--steps", "0"], ["--steps 0", "at least 1"]),
    (["profile", "{ref}"], ["is not running"]),
])
def test_profile_refusals_are_one_line(reference: Path, tmp_path: Path, args: list[str],
                                       words: list[str], capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from stoker.cli.main import main

    argv = [a.format(tmp=tmp_path, ref=reference) for a in args]
    monkeypatch.setattr(sys, "argv", ["stoker", *argv])
    monkeypatch.setenv("COLUMNS", "300")
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert all(w in line for w in words), line
    assert not (reference / REQUEST_FILE).exists()


@pytest.mark.parametrize(("section", "key"), [
    ({"active": 0}, "profile.active"), ({"wait": -1}, "profile.wait"),
    ({"repaet": 2}, "profile.repaet")])
def test_profile_config_is_checked(tmp_path: Path, section: dict[str, Any], key: str) -> None:
    path = tmp_path / "t.toml"
    path.write_text(to_toml({"profile": {"enabled": True, **section}}))
    with pytest.raises(ConfigError) as e:
        loading.load(TrainConfig, path)
    assert e.value.key == key or key in str(e.value)
    assert "\n" not in str(e.value)

