"""Bring your own model (`stoker.train.task`): the example CNN task (examples/tasks/cnn.py, a
small CNN on generated images) trains on 2 ranks (real processes, gloo) with FSDP2 (`stoker
train`) and with DDP (a job on a real `stoker server`) with 1 rank's losses, resumes bit for
bit after a rank is killed (SIGKILL) and the gang restarted, and a bad ``task.module`` is one
line before any process starts."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper

from stoker.cli.jobs_cmd import _local_paths, _task_code
from stoker.observe.events import read_events
from stoker.observe.live import NullDisplay
from stoker.server.process import ServerProcess, kill_jobs
from stoker.spec import loading
from stoker.spec.errors import ConfigError, StokerError
from stoker.spec.train import TrainConfig
from stoker.train.distributed import init_distributed
from stoker.train.launch import prepare_run
from stoker.train.task import with_task_path
from stoker.train.trainer import Trainer

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TASK_DIR = ROOT / "examples" / "tasks"
STEPS = 12
CONFIG: dict[str, Any] = {
    "task": {"module": "cnn:build", "path": str(TASK_DIR),
             "args": {"width": 8, "noise": 0.5, "train_samples": 512, "val_samples": 32}},
    "parallel": {"strategy": "fsdp"},
    "optim": {"lr": 1e-2, "warmup_steps": 2, "weight_decay": 0.0},
    # Global batch 16 in micro-batches of 4: 4 accumulated on 1 rank, 2 on each of 2 ranks.
    "train": {"name": "cnn", "steps": STEPS, "global_batch_size": 16, "micro_batch_size": 4,
              "eval_interval": 6, "eval_steps": 1, "log_interval": 100,
              "hang_timeout_s": 30.0},
    "checkpoint": {"interval_steps": 4, "async": False},
    "telemetry": {"live": False, "peak_flops": 1e11},
}


def write_config(tmp: Path, **sections: dict[str, Any]) -> Path:
    cfg = {k: dict(v) for k, v in CONFIG.items()}
    for name, values in sections.items():
        cfg[name].update(values)
    path = tmp / "cnn.toml"
    path.write_text(loading.to_toml(cfg))
    return path


def train(config: Path, run: Path, *args: str, fault: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "STOKER_FAULT": fault,
           "STOKER_FAULT_OPT_IN": "1"}
    return subprocess.run([sys.executable, "-m", "stoker", "train", str(config), "--nproc", "2",
                           "--run-dir", str(run), *args],
                          capture_output=True, text=True, env=env, timeout=240)


def records(run: Path) -> dict[int, dict[str, Any]]:
    """Step -> its record, the last of each step (a restarted run repeats a few)."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r for r in map(json.loads, lines)}


def train_one_rank(tmp: Path, **parallel: Any) -> Trainer:
    """One rank, here in the test process."""
    config = write_config(tmp, parallel={"strategy": "none", **parallel})
    cfg = with_task_path(loading.load(TrainConfig, config), config)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer = Trainer(cfg, tmp / "run", init_distributed(cfg.parallel, cfg.train), None,
                          display=NullDisplay())
        assert trainer.run() == "completed"
    finally:
        torch.set_num_threads(threads)
    return trainer


def by_step(trainer: Trainer) -> dict[int, dict[str, Any]]:
    return {r["step"]: r for r in trainer.stats.records}


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict[str, Any]]:
    recs = by_step(train_one_rank(tmp_path_factory.mktemp("one")))
    assert recs[STEPS]["loss"] < recs[1]["loss"] - 0.5  # it trains: equal losses mean something
    assert [s for s, r in recs.items() if "eval_loss" in r] == [6, 12]
    return recs


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("fsdp")
    done = train(write_config(tmp), tmp / "run")
    assert done.returncode == 0, done.stderr
    return tmp / "run"


def assert_matches(one: dict[int, dict[str, Any]], two: dict[int, dict[str, Any]]) -> None:
    assert sorted(one) == sorted(two) == list(range(1, STEPS + 1))
    for step, a in one.items():
        b = two[step]
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-5), step
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4, abs=1e-5), step
        assert b["task"]["accuracy"] == pytest.approx(a["task"]["accuracy"], abs=1e-6), step
        assert ("eval_loss" in b) == ("eval_loss" in a), step
        if "eval_loss" in a:
            assert b["eval_loss"] == pytest.approx(a["eval_loss"], rel=1e-5), step
        assert len(b["rank_step_times"]) == 2


def test_fsdp_on_two_ranks_matches_one_rank(one_rank: dict[int, dict[str, Any]],
                                            fsdp_run: Path) -> None:
    two = records(fsdp_run)
    assert_matches(one_rank, two)
    last = two[STEPS]
    assert last["samples"] == 16 and last["samples_per_s"] == last["tokens_per_s"] > 0
    assert last["mfu"] > 0  # FLOPs counted by FlopCounterMode on the meta device
    summary = json.loads((fsdp_run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["flops_per_sample"] > 0


def test_activation_checkpointing_changes_nothing(one_rank: dict[int, dict[str, Any]],
                                                  tmp_path: Path) -> None:
    trainer = train_one_rank(tmp_path, activation_checkpoint="full")
    wrapped = [m for m in trainer.model.modules() if isinstance(m, CheckpointWrapper)]
    assert len(wrapped) == 3  # the CNN's top-level children, each recomputed in backward
    recs = by_step(trainer)
    for step, a in one_rank.items():
        assert recs[step]["loss"] == pytest.approx(a["loss"], rel=1e-6), step


def test_killed_rank_resumes_exactly(fsdp_run: Path, tmp_path: Path) -> None:
    """Rank 1 is SIGKILLed before step 7; the gang restarts from the step-4 checkpoint and
    must reproduce the uninterrupted run's losses bit for bit."""
    run = tmp_path / "run"
    done = train(write_config(tmp_path), run, "--max-restarts", "1",
                 fault="kill@step=7,rank=1")
    assert done.returncode == 0, done.stderr
    (failure,) = read_events(run, "failure")
    assert failure["rank"] == 1 and failure["cause"] == "killed by SIGKILL"
    assert [e["step"] for e in read_events(run, "checkpoint_loaded")] == [4]
    got, want = records(run), records(fsdp_run)
    assert {s: r["loss"] for s, r in got.items()} == {s: r["loss"] for s, r in want.items()}


def test_bad_module_is_one_line_before_any_process(tmp_path: Path) -> None:
    config = write_config(tmp_path, task={"module": "no_such_module:build"})
    done = subprocess.run([sys.executable, "-m", "stoker", "train", str(config), "--nproc", "2",
                           "--run-dir", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert (f"{config}: task.module: cannot import 'no_such_module': No module named "
            f"'no_such_module' (looked in {TASK_DIR} and PYTHONPATH)") in done.stderr
    assert not (tmp_path / "run").exists()  # nothing written, no rank started


@pytest.mark.parametrize(("task", "reason"), [
    ({"module": "cnn:no_such_function"}, "'cnn' has no function 'no_such_function'"),
    ({"module": "not a path"}, "task.module: 'not a path' is not \"package.module:function\""),
    ({"module": "elsewhere:build", "path": "sub"}, "sub and PYTHONPATH"),  # from the config's dir
])
def test_bad_module_is_refused_naming_the_key(tmp_path: Path, task: dict[str, str],
                                              reason: str) -> None:
    config = write_config(tmp_path, task=task)
    with pytest.raises(ConfigError, match=r"task\.module") as refused:
        prepare_run(config, (), 2, tmp_path / "run")
    assert reason in str(refused.value)
    if "path" in task:
        assert f"looked in {tmp_path / 'sub'} and PYTHONPATH" in str(refused.value)
    assert not (tmp_path / "run").exists()


CLUSTER = """
[flavors.cpu]
[autodetect]
cpu_slots = 2
cpu_flavor = "cpu"
[tenants.alice]
token_env = "STOKER_TOKEN_ALICE"
queues = ["q"]
[queues.q.quotas.cpu]
cpus = 2
[isolation]
pass_env = ["PYTHONPATH"]  # the jobs run this checkout's stoker, as the test does
"""


def test_ddp_job_on_the_control_plane_matches_one_rank(one_rank: dict[int, dict[str, Any]],
                                                       tmp_path: Path) -> None:
    """A DDP job submitted to a real `stoker server` as `stoker submit` sends it (its config,
    and the task's code packed from task.path) runs from the code unpacked in its own
    directory, in the tenant's sandbox where the server's isolation allows one, trains with 1
    rank's losses, and the server reports its progress from the run's records."""
    (tmp_path / "cluster.toml").write_text(CLUSTER)
    server = ServerProcess(tmp_path / "state", tmp_path / "cluster.toml",
                           env={"STOKER_TOKEN_ALICE": "alice"}, args=["--interval", "0.2"])
    try:
        config = write_config(tmp_path, task={"path": os.path.relpath(TASK_DIR, tmp_path)},
                              parallel={"strategy": "ddp"})
        train = _local_paths(loading.read_toml(config), config)
        code = _task_code(train)
        assert code is not None
        client = server.start().client("alice")
        job_id = client.submit({"name": "cnn", "queue": "q", "ranks": 2,
                                "resources": {"cpus": 1}, "train_config": "cnn.toml"},
                               train, code=base64.b64encode(code).decode())["id"]
        deadline = time.monotonic() + 240
        while client.job(job_id)["state"] not in ("SUCCEEDED", "FAILED"):
            assert time.monotonic() < deadline, "timed out waiting for the job"
            time.sleep(0.2)
        job = client.job(job_id)
        assert job["state"] == "SUCCEEDED", job["reason"]
        assert job["progress"]["step"] == STEPS
        job_dir = server.state_dir / "jobs" / str(job_id)
        assert_matches(one_rank, records(job_dir / "run"))
        ran = loading.read_toml(job_dir / "run" / "config.toml")["task"]["path"]
        assert Path(ran) == (job_dir / "code").resolve()
        assert (job_dir / "code" / "cnn.py").read_bytes() == (TASK_DIR / "cnn.py").read_bytes()
    finally:
        server.stop()
        kill_jobs(tmp_path / "state")


def test_export_gives_the_task_model_its_weights(fsdp_run: Path, tmp_path: Path) -> None:
    """`stoker export`'s safetensors load into the task's own model; the Hugging Face layout,
    which is the language model's, is refused in one line."""
    from safetensors.torch import load_file

    from stoker.train.export import export
    from stoker.train.task import build_task

    export(fsdp_run, tmp_path / "cnn.safetensors")
    cfg = loading.load(TrainConfig, fsdp_run / "config.toml")
    model = build_task(cfg).model()
    model.load_state_dict(load_file(tmp_path / "cnn.safetensors"))  # strict: every tensor
    with pytest.raises(StokerError, match="has no Hugging Face layout"):
        export(fsdp_run, tmp_path / "hf", fmt="hf")


def test_plan_refuses_a_task() -> None:
    done = subprocess.run([sys.executable, "-m", "stoker", "plan",
                           str(TASK_DIR / "cnn.toml"), "--nproc", "2"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "task.module: stoker plan estimates the built-in language model only" in done.stderr


@pytest.mark.parametrize("key", ["tp", "pp"])
def test_tensor_and_pipeline_parallelism_are_refused_for_a_task(key: str) -> None:
    cfg = TrainConfig.model_validate({**CONFIG, "parallel": {"strategy": "fsdp", key: 2}})
    with pytest.raises(ConfigError, match=rf"parallel\.{key}: {key} > 1 is not supported for "
                                          r"a \[task\] model yet"):
        cfg.check_world_size(4, "cnn.toml")
