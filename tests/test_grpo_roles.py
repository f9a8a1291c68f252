"""GRPO with trainer, rollout and reward roles (`stoker.train.grpo_roles`): the roles reproduce
the one-process recipe, and as a job on a real `stoker server` the three roles are admitted
whole, and a killed rollout worker comes back (the gang restarts, the trainers resume from
their checkpoint) and the run finishes."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]
import pytest
import torch

from stoker.server.process import ServerProcess, kill_jobs
from stoker.spec.grpo import GrpoRecipe
from stoker.spec.loading import validate
from stoker.train.grpo import run
from stoker.train.grpo_roles import launch_local

pytestmark = pytest.mark.slow

SMALL = {"model": {"dim": 32, "n_layers": 1, "n_heads": 2, "n_kv_heads": 2, "ffn_hidden": 64},
         "task": {"min_len": 3, "max_len": 4, "held_out": 20},
         "warmup": {"steps": 20, "batch_size": 16},
         "grpo": {"steps": 4, "prompts": 4, "group_size": 4, "beta": 0.1, "eval_interval": 2,
                  "checkpoint_interval": 1},
         "run": {"threads": 1}}
TIMING = ("gen_s", "reward_s", "train_s", "gen_tokens_per_s", "train_tokens_per_s")


def sets(tree: dict[str, Any], prefix: str = "") -> list[str]:
    """``SMALL`` as --set arguments."""
    out: list[str] = []
    for key, value in tree.items():
        if isinstance(value, dict):
            out += sets(value, f"{prefix}{key}.")
        else:
            out += ["--set", f"{prefix}{key}={value}"]
    return out


def records(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "grpo.jsonl").read_text().splitlines()]


def test_one_of_each_role_reproduces_the_one_process_recipe(tmp_path: Path) -> None:
    """1 trainer (FSDP2 on one rank), 1 rollout worker, 1 reward worker, synchronous: the same
    prompts, completions and rewards as `stoker grpo` in one process, the same losses."""
    threads = torch.get_num_threads()
    try:
        run(validate(GrpoRecipe, SMALL, None), tmp_path / "one", log=lambda line: None)
    finally:
        torch.set_num_threads(threads)
    code = launch_local([*sets(SMALL), "--run-dir", str(tmp_path / "roles")], tmp_path / "roles",
                        {"trainer": 1, "rollout": 1, "reward": 1})
    assert code == 0, (tmp_path / "roles" / "logs" / "rank-1.log").read_text()
    one, roles = records(tmp_path / "one"), records(tmp_path / "roles")
    assert [r["step"] for r in roles] == [1, 2, 3, 4]
    for a, b in zip(one, roles, strict=True):
        assert b["reward_mean"] == a["reward_mean"] and b["reward_std"] == a["reward_std"]
        assert b["completion_len"] == a["completion_len"] and b["staleness"] == 0
        for key in ("loss", "kl", "entropy", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (key, a, b)
        assert b.get("pass_at_1") == a.get("pass_at_1")


CLUSTER = """
[scheduler]
interval = 0.2
[flavors.cpu]
[autodetect]
cpu_slots = 4
cpu_flavor = "cpu"
[admin]
token_env = "STOKER_ADMIN_TOKEN"
[tenants.t]
token_env = "STOKER_TOKEN"
queues = ["q"]
[queues.q.quotas.cpu]
cpus = 3  # the job's roles need 4: nothing of it starts until the quota grows
[isolation]
pass_env = ["PYTHONPATH"]  # the jobs run this checkout's stoker, as the test does
"""


def grpo_job(settings: list[str]) -> dict[str, Any]:
    """As examples/grpo/roles-job.toml: the recipe's overrides in the job's env, every role's."""
    command = [sys.executable, "-m", "stoker.train.grpo_roles"]
    env = {"OMP_NUM_THREADS": "1", "STOKER_GRPO_SET": " ".join(settings[1::2])}
    return {"name": "grpo", "queue": "q", "max_restarts": 1, "env": env,
            "roles": [{"name": name, "ranks": n, "resources": {"cpus": 1}, "command": command}
                      for name, n in (("trainer", 2), ("rollout", 1), ("reward", 1))]}


def rollout_pid(job_id: int) -> int | None:
    for p in psutil.process_iter(["cmdline"]):
        if "stoker.train.grpo_roles" not in (p.info["cmdline"] or []):
            continue
        try:
            env = p.environ()
        except (psutil.AccessDenied, psutil.NoSuchProcess):
            continue
        if env.get("STOKER_JOB_ID") == str(job_id) and env.get("STOKER_ROLE") == "rollout":
            return int(p.pid)
    return None


def wait_for(what: str, condition: Any, timeout: float = 180) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return value


def test_a_three_role_job_is_admitted_whole_and_survives_a_killed_rollout_worker(
        tmp_path: Path) -> None:
    (tmp_path / "cluster.toml").write_text(CLUSTER)
    tokens = {"STOKER_ADMIN_TOKEN": "admin-t", "STOKER_TOKEN": "tenant-t"}
    server = ServerProcess(tmp_path / "state", tmp_path / "cluster.toml", env=tokens)
    small = SMALL | {"grpo": SMALL["grpo"] | {"steps": 8},
                     "roles": {"sync": "broadcast", "max_staleness": 1}}
    try:
        server.start()
        with server.client("tenant-t") as tenant, server.client("admin-t") as admin:
            job_id = tenant.submit(grpo_job(sets(small)))["id"]
            waiting = wait_for("the job to wait for quota",
                               lambda: (j := tenant.job(job_id))["waiting"] and j)
            assert waiting["state"] == "QUEUED" and waiting["attempt"] == 0
            assert waiting["waiting"]["code"] == "WaitingForQuota", waiting["waiting"]
            admin.set_quota("q", "cpu", {"cpus": 4})
            run_dir = server.state_dir / "jobs" / str(job_id) / "run"
            wait_for("GRPO step 2", lambda: (run_dir / "grpo.jsonl").exists()
                     and len(records(run_dir)) >= 2)
            pid = wait_for("the rollout worker", lambda: rollout_pid(job_id))
            os.kill(pid, signal.SIGKILL)
            job = wait_for("the job to end", lambda: (j := tenant.job(job_id))["state"] in (
                "SUCCEEDED", "FAILED") and j)
        assert job["state"] == "SUCCEEDED", job["reason"]
        assert job["attempt"] == 2 and job["restarts"] == 1
        done = records(run_dir)
        assert [r["step"] for r in done] == list(range(1, 9))  # each step once, none lost
        assert all(r["staleness"] <= 1 for r in done)
        assert any(r["staleness"] == 1 for r in done)  # rollouts overlapped training
        assert all(r["sync_s"] > 0 for r in done[:-2])  # the weights went out by broadcast
    finally:
        server.stop()
        kill_jobs(tmp_path / "state")


@pytest.mark.parametrize(("roles", "reason"), [
    ("trainer=2", "give every role (trainer, rollout, reward)"),
    ("trainer=2,rollout=0,reward=1", "counts of at least 1"),
    ("trainer=1,actor=1,reward=1", "expected trainer=T,rollout=R,reward=W"),
])
def test_bad_roles_are_one_line(tmp_path: Path, roles: str, reason: str,
                                capsys: pytest.CaptureFixture[str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    """`stoker grpo ... --roles` in this process (the CLI's own main): exit 2, one line."""
    from stoker.cli.main import main

    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setattr(sys, "argv", [
        "stoker", "grpo", str(Path(__file__).parents[1] / "examples" / "grpo" / "reverse.toml"),
        "--roles", roles, "--run-dir", str(tmp_path / "run")])
    with pytest.raises(SystemExit) as exited:
        main()
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "Traceback" not in err, err
    assert err.strip().startswith("error: --roles: ") and reason in err
    assert not (tmp_path / "run").exists()
