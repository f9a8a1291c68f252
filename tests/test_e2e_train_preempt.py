"""End to end: a high-priority job preempts a running Stoker training job, which checkpoints on
SIGTERM, is requeued, resumes from its checkpoint when re-admitted, and finishes with exactly
the per-step losses of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stoker.server.process import ServerProcess, kill_jobs
from stoker.spec.loading import to_toml
from stoker.train.exitcodes import EXIT_PREEMPTED
from train_helpers import deliver_to_held, rank_pids

pytestmark = pytest.mark.slow

STEPS = 40
TRAIN: dict[str, Any] = {
    "model": {"preset": "tiny", "dim": 64, "n_layers": 2, "n_heads": 2, "n_kv_heads": 2,
              "ffn_hidden": 128},
    "data": {"dataset": "stdlib", "tokenizer": "byte"},  # cached in the job's work dir
    "parallel": {"strategy": "fsdp"},
    "optim": {"warmup_steps": 2},
    "train": {"name": "victim", "steps": STEPS, "global_batch_size": 8, "micro_batch_size": 4,
              "seq_len": 64, "eval_interval": 0},
    "checkpoint": {"interval_steps": 20},
    "telemetry": {"live": False},
}
CLUSTER = """
[priority_classes]
low = 0
high = 1000
[flavors.cpu]
[autodetect]
cpu_slots = 2
cpu_flavor = "cpu"
[tenants.alice]
token_env = "STOKER_TOKEN_ALICE"
queues = ["q"]
[queues.q]
preemption = { within_queue = "LowerPriority" }
[queues.q.quotas.cpu]
cpus = 2
"""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    (tmp_path / "cluster.toml").write_text(CLUSTER)
    proc = ServerProcess(tmp_path / "state", tmp_path / "cluster.toml",
                         env={"STOKER_TOKEN_ALICE": "alice"},
                         args=["--interval", "0.5", "--grace-period", "120"])
    try:
        yield proc.start()
    finally:
        proc.stop()
        kill_jobs(tmp_path / "state")


def losses(run_dir: Path) -> dict[int, float]:
    """Step -> loss, the last record of each step (a resumed run may repeat a few)."""
    path = run_dir / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() \
        else []
    return {r["step"]: r["loss"] for r in records if "loss" in r and "step" in r}


def wait_for(predicate: Any, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_preempted_training_job_resumes_with_the_same_losses(server: ServerProcess,
                                                            tmp_path: Path) -> None:
    config = tmp_path / "train.toml"
    config.write_text(to_toml(TRAIN))
    # The uninterrupted run: the very command the control plane runs, without the server.
    reference = tmp_path / "reference"
    subprocess.run([sys.executable, "-m", "stoker", "train", str(config), "--nproc", "2",
                    "--run-dir", str(reference), "--resume", "auto"], check=True,
                   capture_output=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
                   timeout=300)
    expected = losses(reference)
    assert sorted(expected) == list(range(1, STEPS + 1))

    client = server.client("alice")
    victim = client.submit({"name": "victim", "queue": "q", "ranks": 2, "priority_class": "low",
                            "resources": {"cpus": 1}, "train_config": "train.toml"},
                           TRAIN)["id"]
    run_dir = server.state_dir / "jobs" / str(victim) / "run"
    ranks = rank_pids(run_dir, 2)
    wait_for(lambda: len(losses(run_dir)) >= 10, "the victim's 10th step")
    urgent_job = {"name": "urgent", "queue": "q", "ranks": 2, "priority_class": "high",
                  "resources": {"cpus": 1},
                  "command": [sys.executable, "-c", "print('urgent work done')"]}
    # The victim's ranks are held still until the server's SIGTERM has reached them: the
    # victim cannot finish before it is preempted, however slow the server is to act.
    submitted: list[int] = []
    deliver_to_held(ranks, signal.SIGTERM,
                    lambda: submitted.append(client.submit(urgent_job)["id"]))
    (urgent,) = submitted

    wait_for(lambda: client.job(urgent)["state"] == "SUCCEEDED", "the urgent job")
    wait_for(lambda: client.job(victim)["state"] in ("SUCCEEDED", "FAILED"), "the victim")
    job = client.job(victim)
    assert job["state"] == "SUCCEEDED", job["reason"]
    states = [e["to_state"] for e in job["events"] if e["kind"] == "transition"]
    assert states.count("PREEMPTED") == 1 and job["attempt"] == 2
    preempted = next(e for e in job["events"] if e["to_state"] == "PREEMPTED")
    assert f"exit code {EXIT_PREEMPTED}" in preempted["reason"]  # checkpointed, not killed
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "loss" in r]
    assert steps == list(range(1, STEPS + 1))  # resumed where it stopped: no step trained twice
    assert losses(run_dir) == expected
