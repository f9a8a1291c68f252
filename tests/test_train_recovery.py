"""Issue 3 end to end, through `stoker train` with real processes on CPU/gloo: a rank killed
and the gang restarted, the whole run killed mid-save, resharded resumes, SIGTERM, a hung rank,
an injected NaN. Every resumed run must reproduce an uninterrupted run's losses bit for bit."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from stoker.observe.events import read_events
from stoker.spec.errors import StokerError
from stoker.spec.loading import to_toml
from stoker.train.checkpoint import list_steps, step_dir
from stoker.train.exitcodes import EXIT_PREEMPTED
from stoker.train.heartbeat import read_heartbeats
from train_helpers import deliver_to_held, rank_pids, wait_until

pytestmark = pytest.mark.slow

STEPS = 16
CONFIG: dict[str, Any] = {
    "model": {"preset": "tiny", "dim": 64, "n_layers": 2, "n_heads": 2, "n_kv_heads": 2,
              "ffn_hidden": 128},
    "data": {"dataset": "stdlib", "tokenizer": "byte",
             "cache_dir": str(Path(".cache/stoker/data").absolute())},
    "parallel": {"strategy": "fsdp"},
    "optim": {"warmup_steps": 2},
    "train": {"name": "recovery", "steps": STEPS, "global_batch_size": 8, "micro_batch_size": 2,
              "seq_len": 32, "eval_interval": 0, "hang_timeout_s": 8.0},
    "checkpoint": {"interval_steps": 4, "keep_last": 10},
    "telemetry": {"live": False, "sample_ids": True},
}


def write_config(tmp: Path, **sections: dict[str, Any]) -> Path:
    cfg = {k: dict(v) for k, v in CONFIG.items()}
    for name, values in sections.items():
        cfg[name].update(values)
    path = tmp / "train.toml"
    path.write_text(to_toml(cfg))
    return path


def train(config: Path, run: Path, *args: str, nproc: int = 2, fault: str = "",
          timeout: float = 240, env: dict[str, str] | None = None
          ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "STOKER_FAULT": fault,
           "STOKER_FAULT_OPT_IN": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "stoker", "train", str(config), "--nproc",
                           str(nproc), "--run-dir", str(run), *args],
                          capture_output=True, text=True, env=env, timeout=timeout)


def losses(run: Path) -> dict[int, float]:
    """Step -> loss, the last record of each step (a resumed run repeats a few)."""
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records}


def samples(run: Path) -> dict[int, list[int]]:
    """Step -> the global sample ids it trained on, all ranks together, last record wins."""
    by_step: dict[int, dict[int, list[int]]] = {}
    for path in sorted((run / "samples").glob("rank-*.jsonl")):
        for line in path.read_text().splitlines():
            r = json.loads(line)
            by_step.setdefault(r["step"], {})[r["rank"]] = r["ids"]
    return {s: sorted(i for ids in ranks.values() for i in ids) for s, ranks in by_step.items()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted 2-rank run; its checkpoints also serve the resharding tests."""
    tmp = tmp_path_factory.mktemp("reference")
    run = tmp / "run"
    done = train(write_config(tmp), run)
    assert done.returncode == 0, done.stderr
    assert sorted(losses(run)) == list(range(1, STEPS + 1))
    assert list_steps(run) == [4, 8, 12, 16]
    return run


@pytest.mark.parametrize(("kill_at", "newest"), [(5, 4), (11, 8)])
def test_a_killed_rank_is_restarted_from_the_newest_checkpoint(
        reference: Path, tmp_path: Path, kill_at: int, newest: int) -> None:
    """Rank 1 is killed before step ``kill_at``. Saves are synchronous here, so the newest
    checkpoint committed by then is ``newest`` whatever the machine's speed; the restarted gang
    must load it (training is deterministic: a restart from scratch gives the same losses)."""
    run = tmp_path / "run"
    done = train(write_config(tmp_path, checkpoint={"async": False}), run, "--max-restarts", "1",
                 fault=f"kill@step={kill_at},rank=1")
    assert done.returncode == 0, done.stderr
    (failure,) = read_events(run, "failure")
    assert failure["rank"] == 1 and failure["cause"] == "killed by SIGKILL"
    (restart,) = read_events(run, "restart")
    assert restart["attempt"] == 1
    assert [e["step"] for e in read_events(run, "checkpoint_loaded")] == [newest]
    (resumed,) = [e for e in read_events(run, "start") if e["resumed"]]
    assert resumed["step"] == newest and resumed["attempt"] == 1
    assert losses(run) == losses(reference)


@pytest.mark.parametrize("point", ["ckpt_shards", "ckpt_manifest"])
def test_run_killed_during_an_async_save_resumes_from_the_previous_one(
        reference: Path, tmp_path: Path, point: str) -> None:
    config, run = write_config(tmp_path), tmp_path / "run"
    killed = train(config, run, fault=f"kill@{point},step=8,rank=0")
    assert killed.returncode != 0
    assert not (step_dir(run, 8) / "MANIFEST.json").exists()
    done = train(config, run, "--resume", "auto")
    assert done.returncode == 0, done.stderr
    assert losses(run) == losses(reference)
    assert [e["step"] for e in read_events(run, "checkpoint_skipped")] == [8]
    assert [e["step"] for e in read_events(run, "checkpoint_loaded")] == [4]


@pytest.mark.parametrize("nproc", [1, 4])
def test_resume_on_another_world_size_sees_every_sample_once(reference: Path, tmp_path: Path,
                                                             nproc: int) -> None:
    run = tmp_path / "run"
    strategy = "fsdp" if nproc > 1 else "none"
    done = train(write_config(tmp_path, parallel={"strategy": strategy}), run, "--resume",
                 str(step_dir(reference, 8)), nproc=nproc)
    assert done.returncode == 0, done.stderr
    resumed, before = samples(run), samples(reference)
    assert sorted(resumed) == list(range(9, STEPS + 1))
    seen = [i for s in range(1, 9) for i in before[s]] + [i for s in resumed for i in resumed[s]]
    assert sorted(seen) == list(range(STEPS * 8))  # no sample skipped, none repeated
    assert resumed == {s: before[s] for s in resumed}  # the same samples in the same steps
    for s, loss in losses(run).items():
        assert loss == pytest.approx(losses(reference)[s], rel=1e-4)


def test_sigterm_checkpoints_and_exits_preempted(reference: Path, tmp_path: Path) -> None:
    config, run = write_config(tmp_path), tmp_path / "run"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.Popen([sys.executable, "-m", "stoker", "train", str(config), "--nproc",
                             "2", "--run-dir", str(run)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        ranks = rank_pids(run, 2)
        wait_until(lambda: proc.poll() is None and len(losses(run)) >= 6, "step 6")
        # Held still until the signal has reached them: the run cannot end first.
        deliver_to_held(ranks, signal.SIGTERM, lambda: proc.send_signal(signal.SIGTERM))
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == EXIT_PREEMPTED, stderr
    stopped = max(losses(run))
    assert stopped < STEPS and step_dir(run, stopped).is_dir()
    assert (step_dir(run, stopped) / "MANIFEST.json").is_file()
    done = train(config, run, "--resume", "auto")
    assert done.returncode == 0, done.stderr
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))  # nothing trained twice
    assert losses(run) == losses(reference)


def test_a_hung_rank_is_detected_and_restarted(reference: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    done = train(write_config(tmp_path), run, "--max-restarts", "1", fault="hang@step=6,rank=1")
    assert done.returncode == 0, done.stderr
    (hang,) = read_events(run, "hang")
    assert hang["rank"] == 1 and hang["step"] == 5
    assert hang["silent_s"] >= hang["timeout_s"] == 8.0
    (failure,) = read_events(run, "failure")
    assert failure["rank"] == 1 and failure["cause"] == "hang detected by the watchdog"
    assert losses(run) == losses(reference)
    assert Path(hang["stacks"]).is_file()
    assert read_heartbeats(run)[1]["attempt"] == 1


def test_a_failed_ranks_stuck_peer_is_killed_after_the_failure_grace(tmp_path: Path) -> None:
    """Rank 0 exits 1 at step 6; rank 1 is stuck there (asleep: its SIGTERM handler only sets
    a flag, and its watchdog would wait 120 s). The launcher kills it after
    $STOKER_FAILURE_GRACE_S (1 s), not after elastic's 30 s."""
    run = tmp_path / "run"
    config = write_config(tmp_path, train={"hang_timeout_s": 120.0})
    done = train(config, run, fault="exit@step=6,rank=0;hang@step=6,rank=1",
                 env={"STOKER_FAULT_OPT_IN": "1", "STOKER_FAILURE_GRACE_S": "1"})
    assert done.returncode == 1, done.stderr
    (failure,) = read_events(run, "failure")
    assert failure["rank"] == 0
    assert {r["rank"]: r["exitcode"] for r in failure["ranks"]} == {0: 1, 1: -9}
    last_step = max(json.loads(x)["time"] for x in (run / "metrics.jsonl").read_text()
                    .splitlines())
    assert failure["time"] - last_step < 20  # 30 s and more with elastic's own grace


def test_a_stopped_rank_is_killed_at_once(tmp_path: Path) -> None:
    """Rank 1 is frozen at step 6 (SIGSTOP: its watchdog cannot run, its SIGTERM waits); rank
    0's collective times out after 4 s (the process group's timeout is the hang timeout; or its
    watchdog, as silent for as long, ends it first). The launcher SIGKILLs rank 1 at once (a
    stopped process cannot act on SIGTERM): a failure grace of 60 s would otherwise pass."""
    run = tmp_path / "run"
    config = write_config(tmp_path, train={"hang_timeout_s": 4.0})
    done = train(config, run, fault="stop@step=6,rank=1", env={"STOKER_FAILURE_GRACE_S": "60"})
    assert done.returncode in (1, 86), done.stderr
    if done.returncode == 1:
        assert "Timed out waiting" in done.stderr
    (failure,) = read_events(run, "failure")
    assert failure["rank"] == 0
    assert {r["rank"]: r["exitcode"] for r in failure["ranks"]} == {0: done.returncode, 1: -9}
    last_step = max(json.loads(x)["time"] for x in (run / "metrics.jsonl").read_text()
                    .splitlines())
    assert failure["time"] - last_step < 40  # 60 s and more with the grace


@pytest.mark.parametrize(("action", "where"), [("skip", "host"), ("rollback", "host"),
                                               ("skip", "device"), ("rollback", "device")])
def test_an_injected_nan_is_skipped_or_rolled_back(tmp_path: Path, action: str,
                                                    where: str) -> None:
    """On the host: the guard judges every step before the update. On the device (a fused
    optimizer, no spike check, as on CUDA by default): the optimizer drops the update itself and
    the verdict is read at the next log step (every 4 steps here: steps 1, 4, 8, 10)."""
    device = where == "device"
    config = write_config(tmp_path, parallel={"strategy": "none"},
                          optim={"warmup_steps": 2, "fused": "on" if device else "auto"},
                          train={"loss_guard": action, "steps": 10,
                                 "log_interval": 4 if device else 1})
    run = tmp_path / "run"
    done = train(config, run, nproc=1, fault="nan@step=7")
    assert done.returncode == 0, done.stderr
    (event,) = read_events(run, "loss_guard")
    assert event["step"] == 7 and event["action"] == action and "nan" in event["reason"]
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records]
    assert next(r.get("guard") for r in records if r["step"] == 7) == action
    if action == "skip":
        assert steps == list(range(1, 11))
    else:  # back to the step-4 checkpoint when the verdict is read, then on with later data
        seen = 8 if device else 7
        assert steps == [*range(1, seen + 1), *range(5, 11)]
        assert [e["step"] for e in read_events(run, "checkpoint_loaded")] == [4]
    good = [r for r in records if "guard" not in r]
    assert len(good) == len(records) - 1 and all(math.isfinite(r["loss"]) for r in good)


def test_log_steps_only_change_when_numbers_are_read(reference: Path, tmp_path: Path) -> None:
    """Every 5th step read from the devices: the same records, step for step."""
    config = write_config(tmp_path, train={"log_interval": 5})
    run = tmp_path / "run"
    done = train(config, run)
    assert done.returncode == 0, done.stderr
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert losses(run) == losses(reference)
    assert samples(run) == samples(reference)


def test_export_consolidates_the_sharded_checkpoint(reference: Path, tmp_path: Path) -> None:
    import typer
    from safetensors.torch import load_file
    from typer.testing import CliRunner

    from stoker.cli import export_cmd
    from stoker.spec.train import TrainConfig
    from stoker.train.model import Transformer

    app = typer.Typer()
    export_cmd.register(app)
    out = tmp_path / "model.safetensors"
    result = CliRunner().invoke(app, [str(reference), "--step", "8", "--to", str(out)])
    assert result.exit_code == 0, result.output
    assert "step 8" in result.output
    shape = TrainConfig.model_validate(CONFIG).model.shape()
    model = Transformer(shape)
    model.load_state_dict(load_file(out))  # strict: the plain model's names and shapes
    assert CliRunner().invoke(app, [str(reference), "--step", "9", "--to", str(out)]).exit_code


def test_export_hf_loads_in_transformers_with_the_same_logits(
        reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    import typer
    from safetensors.torch import load_file
    from typer.testing import CliRunner

    from stoker.cli import export_cmd
    from stoker.spec.train import TrainConfig
    from stoker.train.model import Transformer

    app = typer.Typer()
    export_cmd.register(app)
    out = tmp_path / "hf"
    result = CliRunner().invoke(app, [str(reference), "--to", str(out), "--format", "hf"])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["eos_token_id"] == 0
    assert config["max_position_embeddings"] == CONFIG["train"]["seq_len"]

    plain = tmp_path / "model.safetensors"
    assert CliRunner().invoke(app, [str(reference), "--to", str(plain)]).exit_code == 0
    model = Transformer(TrainConfig.model_validate(CONFIG).model.shape())
    model.load_state_dict(load_file(plain))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # local files only
    from transformers import LlamaForCausalLM

    hf = LlamaForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tokens = torch.randint(0, 256, (2, CONFIG["train"]["seq_len"]),
                           generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert float((model(tokens) - hf(tokens).logits).abs().max()) < 1e-4

    bad = CliRunner().invoke(app, [str(reference), "--to", str(out), "--format", "gguf"])
    assert isinstance(bad.exception, StokerError) and "--format" in str(bad.exception)
