"""Checkpoint building blocks on one process: manifest, retention, loss guard, heartbeat,
fault spec, events, and an exact resume of a small model."""

from __future__ import annotations

import json
import math
import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from stoker.observe.events import EventLog, read_events
from stoker.spec.train import CheckpointConfig
from stoker.train import faults
from stoker.train.checkpoint import (
    Checkpointer,
    capture_rng,
    find_latest,
    list_steps,
    resolve_resume,
    restore_rng,
    step_dir,
)
from stoker.train.ckpt_manifest import MANIFEST, TornCheckpoint, verify
from stoker.train.ckpt_retention import to_delete
from stoker.train.exitcodes import EXIT_HANG, describe
from stoker.train.guards import LossGuard
from stoker.train.heartbeat import Heartbeat, flight_recorder_env, read_heartbeats
from stoker.train.restarts import AttemptResult, RankFailure, rank_failures, supervise

CPU = torch.device("cpu")


class FakeClock:
    """Monotonic seconds that move only when the test moves them."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


# ---------------------------------------------------------------------- a tiny training setup

class Tiny:
    """A small model + AdamW + LR schedule whose steps draw from the global torch RNG."""

    def __init__(self, seed: int = 0) -> None:
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        self.model = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Dropout(0.1),
                                   nn.Linear(64, 4))
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-2)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: 1 / (1 + s))
        self.step = 0

    def train_step(self, ck: Checkpointer | None = None) -> float:
        x = torch.randn(8, 32)
        noise = float(np.random.rand()) + random.random()
        loss = self.model(x).pow(2).mean() * (1 + 1e-3 * noise)
        loss.backward()
        if ck is not None:
            ck.staged()  # an async save may still be copying the weights
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad()
        self.step += 1
        return loss.item()

    def state(self) -> dict[str, object]:
        msd, osd = get_state_dict(self.model, self.opt)
        return {"model": msd, "optimizer": osd, "scheduler": self.sched.state_dict(),
                "step": self.step}

    def load(self, state: dict[str, object]) -> None:
        set_state_dict(self.model, self.opt, model_state_dict=state["model"],
                       optim_state_dict=state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])  # type: ignore[arg-type]
        self.step = int(state["step"])  # type: ignore[call-overload]


def train(run: Path, steps: int, cfg: CheckpointConfig, stop_at: int | None = None,
          resume: bool = False) -> list[float]:
    t = Tiny()
    ck = Checkpointer(run, cfg)
    if resume:
        path = ck.locate()
        assert path is not None
        state = t.state()
        ck.load(state, path)
        t.load(state)
    losses = []
    while t.step < steps:
        losses.append(t.train_step(ck))
        if ck.decide(t.step).save:
            ck.save(t.step, t.state())
        if t.step == stop_at:
            break
    ck.close()
    return losses


def test_resume_is_exact_with_async_saves(tmp_path: Path) -> None:
    cfg = CheckpointConfig(interval_steps=3, keep_last=2)
    full = train(tmp_path / "a", 10, cfg)
    first = train(tmp_path / "b", 10, cfg, stop_at=7)
    rest = train(tmp_path / "b", 10, cfg, resume=True)  # resumes from step 6
    assert first[:6] + rest == full
    assert list_steps(tmp_path / "a") == [6, 9]  # keep_last=2
    committed = read_events(tmp_path / "a", "checkpoint_committed")
    assert [e["step"] for e in committed] == [3, 6, 9] and committed[-1]["deleted"] == [3]
    loaded = read_events(tmp_path / "b", "checkpoint_loaded")
    assert [e["step"] for e in loaded] == [6]


def test_rng_round_trip() -> None:
    state = capture_rng(CPU)
    a = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng(state, CPU)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_time_interval_and_final_save(tmp_path: Path) -> None:
    clock = FakeClock()
    ck = Checkpointer(tmp_path, CheckpointConfig(interval_minutes=1), clock=clock)
    clock.advance(59.5)
    assert not ck.time_due() and not ck.decide(1).save
    clock.advance(0.5)
    assert ck.time_due() and ck.decide(2, time_due=True).save
    ck.save(2, Tiny().state(), sync=True)  # a save starts the interval again
    clock.advance(59.5)
    assert not ck.time_due() and not ck.decide(3).save
    assert ck.decide(3, final=True).save
    stop = ck.decide(4, stop_requested=True)
    assert stop.save and stop.stop
    assert not ck.decide(5).stop
    ck.close()
    assert not Checkpointer(tmp_path, CheckpointConfig(enabled=False)).decide(5, final=True).save


# ---------------------------------------------------------------------- torn checkpoints

def saved_run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    train(run, 6, CheckpointConfig(interval_steps=2, keep_last=5))
    assert list_steps(run) == [2, 4, 6]
    return run


@pytest.mark.parametrize("damage", ["no_manifest", "truncated", "flipped", "missing_file"])
def test_torn_checkpoint_is_skipped_and_reported(tmp_path: Path, damage: str) -> None:
    run = saved_run(tmp_path)
    newest = step_dir(run, 6)
    shard = newest / "__0_0.distcp"
    if damage == "no_manifest":
        (newest / MANIFEST).unlink()
    elif damage == "truncated":
        shard.write_bytes(shard.read_bytes()[:-10])
    elif damage == "flipped":
        data = bytearray(shard.read_bytes())
        data[len(data) // 2] ^= 0xFF
        shard.write_bytes(bytes(data))
    else:
        (newest / ".metadata").unlink()
    with pytest.raises(TornCheckpoint):
        verify(newest)
    events = EventLog(run)
    assert find_latest(run, events) == step_dir(run, 4)
    skipped = read_events(run, "checkpoint_skipped")
    assert len(skipped) == 1 and skipped[0]["step"] == 6 and skipped[0]["reason"]
    ck = Checkpointer(run, CheckpointConfig())
    path = ck.locate()
    assert path == step_dir(run, 4) and ck.load(Tiny(seed=1).state(), path) == 4


def test_resolve_resume(tmp_path: Path) -> None:
    run = saved_run(tmp_path)
    assert resolve_resume(run, "auto") == step_dir(run, 6)
    assert resolve_resume(tmp_path / "elsewhere", run) == step_dir(run, 6)
    assert resolve_resume(run, step_dir(run, 2)) == step_dir(run, 2)
    assert resolve_resume(tmp_path / "empty", "auto") is None
    from stoker.spec.errors import StokerError

    with pytest.raises(StokerError, match="no such"):
        resolve_resume(run, tmp_path / "nope")
    (step_dir(run, 4) / MANIFEST).unlink()
    with pytest.raises(StokerError, match="no manifest"):
        resolve_resume(run, step_dir(run, 4))


def test_save_over_a_torn_directory(tmp_path: Path) -> None:
    run = saved_run(tmp_path)
    (step_dir(run, 6) / MANIFEST).unlink()
    (step_dir(run, 6) / "junk").write_text("left by a crashed save")
    t = Tiny()
    ck = Checkpointer(run, CheckpointConfig(keep_last=5))
    ck.save(6, t.state(), sync=True)
    assert not (step_dir(run, 6) / "junk").exists()
    verify(step_dir(run, 6))


# ---------------------------------------------------------------------- retention

def test_retention_policy() -> None:
    assert to_delete([10, 20, 30, 40], [], keep_last=2, keep_every=0) == [10, 20]
    assert to_delete([10, 20, 30, 40], [], keep_last=2, keep_every=20) == [10]
    assert to_delete([10, 20, 30], [15, 35], keep_last=1, keep_every=0) == [10, 15, 20]
    assert to_delete([10, 20], [], keep_last=1, keep_every=0, in_flight=[10]) == []
    assert to_delete([], [5], keep_last=1, keep_every=0) == []


def test_retention_never_deletes_the_latest_committed() -> None:
    rng = random.Random(0)
    for _ in range(200):
        committed = rng.sample(range(100), rng.randint(1, 8))
        torn = rng.sample(range(100, 120), rng.randint(0, 3))
        doomed = to_delete(committed, torn, rng.randint(1, 4), rng.choice([0, 7]))
        assert max(committed) not in doomed and not set(torn) & set(doomed)


# ---------------------------------------------------------------------- loss guard

def test_loss_guard_non_finite_and_spikes() -> None:
    g = LossGuard("skip", spike_factor=3.0, window=10, warmup=3)
    assert g.check(5.0, 1.0).ok and g.check(4.0, 1.0).ok
    assert g.check(100.0, 1.0).ok  # still warming up: only 2 losses known
    v = g.check(math.nan, 1.0)
    assert v.action == "skip" and "loss is nan" in v.reason
    assert g.check(4.0, math.inf).action == "skip"
    assert g.check(4.5, 1.0).ok
    spike = g.check(40.0, 1.0)  # median of (5, 4, 100, 4.5) = 4.75
    assert spike.action == "skip" and "median" in spike.reason
    assert len(g.history) == 4  # bad steps do not join the window
    r = LossGuard("rollback")
    assert r.check(math.inf, 1.0).action == "rollback" and r.check(1e9, 1.0).ok
    r2 = LossGuard("rollback")
    r2.load_state_dict(g.state_dict())
    assert list(r2.history) == list(g.history)
    with pytest.raises(ValueError):
        LossGuard("ignore")  # type: ignore[arg-type]


# ---------------------------------------------------------------------- heartbeat / watchdog

def test_watchdog_fires_after_timeout(tmp_path: Path) -> None:
    fired = threading.Event()
    clock = FakeClock()
    hb = Heartbeat(tmp_path, rank=1, timeout_s=4, on_hang=fired.set, clock=clock)
    for step in range(5):
        hb.beat(step)
        clock.advance(3.5)  # every beat in time
        assert not hb.check()
    with hb.paused():  # a synchronous checkpoint, say
        clock.advance(60)
        assert not hb.check()
    clock.advance(3.5)  # counted from the end of the pause
    assert not hb.check() and not fired.is_set()
    clock.advance(0.5)
    assert hb.check() and fired.is_set()
    (event,) = read_events(tmp_path, "hang")
    assert event["rank"] == 1 and event["step"] == 4 and event["silent_s"] == 4.0
    assert event["furthest_behind"] == {"rank": 1, "step": 4}
    assert "test_watchdog_fires_after_timeout" in Path(event["stacks"]).read_text()
    beats = read_heartbeats(tmp_path)
    assert beats[1]["step"] == 4 and beats[1]["pid"] == os.getpid()


def test_the_watchdog_thread_acts_on_its_own(tmp_path: Path) -> None:
    fired = threading.Event()
    clock = FakeClock()
    hb = Heartbeat(tmp_path, rank=0, timeout_s=0.5, on_hang=fired.set, clock=clock).start()
    try:
        hb.beat(3)
        clock.advance(1)
        assert fired.wait(60)  # the thread looks every 0.05 s
    finally:
        hb.stop()
    assert read_heartbeats(tmp_path)[0]["step"] == 3
    assert [e["step"] for e in read_events(tmp_path, "hang")] == [3]


def test_the_rank_that_hung_fires_first(tmp_path: Path) -> None:
    """Rank 1 hangs before step 6; rank 0 began step 6 and waits for it in a collective."""
    fired: list[int] = []
    clock = FakeClock()
    beats = [Heartbeat(tmp_path, rank=r, timeout_s=4, grace_s=2,
                       on_hang=lambda r=r: fired.append(r), clock=clock) for r in (0, 1)]
    for hb in beats:
        hb.beat(5)
    beats[0].beat(6, started=True)
    assert not any(hb.check() for hb in beats)  # each publishes its progress
    clock.advance(4)
    assert [hb.check() for hb in beats] == [False, True]  # rank 0 gives rank 1 the grace
    clock.advance(1.5)
    assert not beats[0].check()
    clock.advance(0.5)
    assert beats[0].check()
    assert fired == [1, 0]
    culprits = {e["rank"]: e["furthest_behind"] for e in read_events(tmp_path, "hang")}
    assert culprits == {0: {"rank": 1, "step": 5}, 1: {"rank": 1, "step": 5}}
    assert read_heartbeats(tmp_path)[0]["progress"] == 11


def test_watchdog_is_armed_by_the_first_beat(tmp_path: Path) -> None:
    fired = threading.Event()
    clock = FakeClock()
    hb = Heartbeat(tmp_path, rank=0, timeout_s=2, on_hang=fired.set, clock=clock)
    clock.advance(100)  # start-up (imports, rendezvous, model build) is no hang
    assert not hb.check() and read_heartbeats(tmp_path) == {}
    hb.beat(1)
    clock.advance(2)
    assert hb.check() and fired.is_set()


def test_flight_recorder_env_points_into_the_run(tmp_path: Path) -> None:
    env = flight_recorder_env(tmp_path, "2.13.0+cpu")
    assert env["TORCH_NCCL_DUMP_ON_TIMEOUT"] == "1" and int(env["TORCH_FR_BUFFER_SIZE"]) > 0
    assert env["TORCH_FR_DUMP_TEMP_FILE"].startswith(str(tmp_path.resolve()))
    old = flight_recorder_env(tmp_path, "2.6.0")
    assert "TORCH_NCCL_TRACE_BUFFER_SIZE" in old and "TORCH_NCCL_DEBUG_INFO_TEMP_FILE" in old


def test_exit_codes_describe_causes() -> None:
    assert describe(-9) == "killed by SIGKILL"
    assert describe(137) == "killed by SIGKILL"
    assert describe(EXIT_HANG) == "hang detected by the watchdog"
    assert describe(75) == "preempted (resumable)"


# ---------------------------------------------------------------------- faults and events

def test_fault_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed = faults.parse("kill@step=7,rank=1; nan@step=3 ;exit@ckpt_shards,step=4,code=9")
    assert [(f.action, f.point, f.filters) for f in parsed] == [
        ("kill", "step", {"step": 7, "rank": 1}), ("nan", "step", {"step": 3}),
        ("exit", "ckpt_shards", {"step": 4, "code": 9})]
    with pytest.raises(ValueError):
        faults.parse("explode@step=1")
    monkeypatch.setattr(faults, "_faults", faults.parse("nan@step=3,rank=1"))
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT", raising=False)
    monkeypatch.delenv("STOKER_ATTEMPT", raising=False)
    assert faults.fire("step", 3, rank=0) is None
    assert faults.fire("step", 3, rank=1) == "nan"
    assert faults.fire("step", 3, rank=1) is None  # once per process


def test_fault_filters_for_a_node_and_a_control_plane_attempt(
        monkeypatch: pytest.MonkeyPatch) -> None:
    (fault,) = faults.parse("kill@step=7,node=n1,job_attempt=1")
    assert fault.filters == {"step": 7, "node": "n1", "job_attempt": 1}
    with pytest.raises(ValueError):
        faults.parse("kill@step=7,node=")
    for name in ("TORCHELASTIC_RESTART_COUNT", "STOKER_ATTEMPT", "STOKER_NODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STOKER_RANK_NODES", "n0,n1")
    monkeypatch.setenv("STOKER_JOB_ATTEMPT", "1")
    assert fault.matches("step", 7, rank=1, attempt=0)
    assert not fault.matches("step", 7, rank=0, attempt=0)  # rank 0 is on n0
    monkeypatch.setenv("STOKER_JOB_ATTEMPT", "2")  # the control plane's retry
    assert not fault.matches("step", 7, rank=1, attempt=0)
    monkeypatch.delenv("STOKER_RANK_NODES")
    monkeypatch.delenv("STOKER_JOB_ATTEMPT")
    monkeypatch.setenv("STOKER_NODE", "n1")  # one process per rank
    assert faults.parse("kill@step=7,node=n1")[0].matches("step", 7, rank=3, attempt=0)
    monkeypatch.delenv("STOKER_NODE")  # a plain `stoker train`: on no node
    assert not faults.parse("kill@step=7,node=n1")[0].matches("step", 7, rank=0, attempt=0)
    monkeypatch.setattr(faults, "_faults", faults.parse("nan@step=3"))
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert faults.fire("step", 3, rank=0) is None  # a restarted gang does not fault again


def test_events_append_from_threads(tmp_path: Path) -> None:
    def emit(i: int) -> None:
        log = EventLog(tmp_path, rank=i)
        for j in range(50):
            log.emit("tick", j=j, pad="x" * 500)

    threads = [threading.Thread(target=emit, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    assert len(lines) == 200 and all(json.loads(x)["event"] == "tick" for x in lines)


# ---------------------------------------------------------------------- restart loop

def test_rank_failures_put_the_root_cause_first(tmp_path: Path) -> None:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    nofile = str(tmp_path / "none.json")
    err = ChildFailedError("stoker.train", {
        0: ProcessFailure(0, 100, -15, nofile),  # torn down by the launcher
        1: ProcessFailure(1, 101, 1, nofile),  # lost its peer
        2: ProcessFailure(2, 102, -9, nofile),  # the one that was killed
    })
    causes = rank_failures(err)
    assert [f.rank for f in causes] == [2, 1, 0]
    assert causes[0].cause == "killed by SIGKILL" and causes[2].torn_down
    # Rank 2 was SIGKILLed by the launcher after the failure grace (it was still running when
    # rank 1 failed): rank 1 is the cause.
    causes = rank_failures(err, stopped={100, 102})
    assert causes[0].rank == 1 and not causes[0].torn_down
    assert all(f.torn_down for f in causes[1:])


def test_supervise_restarts_until_success_and_records_causes(tmp_path: Path) -> None:
    script = [AttemptResult(1, [RankFailure(1, -9, 42, "killed by SIGKILL")]),
              AttemptResult(EXIT_HANG, [RankFailure(0, EXIT_HANG, 43, describe(EXIT_HANG))]),
              AttemptResult(0)]
    seen: list[int] = []

    def launch_once(n: int) -> AttemptResult:
        seen.append(n)
        return script[n]

    assert supervise(launch_once, max_restarts=3, events=EventLog(tmp_path)) == 0
    assert seen == [0, 1, 2]
    failures = read_events(tmp_path, "failure")
    assert [(f["attempt"], f["rank"], f["cause"]) for f in failures] == [
        (0, 1, "killed by SIGKILL"), (1, 0, "hang detected by the watchdog")]
    assert [r["attempt"] for r in read_events(tmp_path, "restart")] == [1, 2]


def test_supervise_gives_up_and_never_restarts_a_preempted_run(tmp_path: Path) -> None:
    failing = AttemptResult(1, [RankFailure(0, 1, 7, "error")])
    assert supervise(lambda n: failing, 1, EventLog(tmp_path / "a")) == 1
    assert len(read_events(tmp_path / "a", "failure")) == 2
    assert supervise(lambda n: AttemptResult(75), 3, EventLog(tmp_path / "b")) == 75
    assert read_events(tmp_path / "b") == []


# ---------------------------------------------------------------------- stop signals

def test_stop_signals_and_their_kind(tmp_path: Path) -> None:
    import signal as sig

    from stoker.train.trainer import REPEAT_SIGNAL_GRACE_S, STOP_PREEMPT, StopRequest

    clock = FakeClock()
    stop = StopRequest(EventLog(tmp_path, rank=0), clock=clock)
    restore = stop.install()
    try:
        os.kill(os.getpid(), sig.SIGUSR1)
        clock.advance(REPEAT_SIGNAL_GRACE_S)
        os.kill(os.getpid(), sig.SIGTERM)  # a repeat within the grace period: the same stop
        wait_until(lambda: len(read_events(tmp_path, "signal")) == 2, "both signals")
        assert stop.signal == "SIGUSR1" and stop.kind == STOP_PREEMPT
        clock.advance(0.5)
        with pytest.raises(KeyboardInterrupt):  # after it, SIGINT aborts the step
            os.kill(os.getpid(), sig.SIGINT)
            wait_until(lambda: False, "the KeyboardInterrupt")
    finally:
        restore()
    assert [e["signal"] for e in read_events(tmp_path, "signal")] == [
        "SIGUSR1", "SIGTERM", "SIGINT"]


def test_a_second_sigterm_ends_the_process_at_once(tmp_path: Path) -> None:
    import signal as sig
    import subprocess
    import sys

    # The child reports each signal it has handled; its clock stands still until the test has
    # sent a repeat within the grace period, then moves past it.
    script = ("import sys, time\n"
              "from stoker.observe.events import EventLog, read_events\n"
              "from stoker.train.trainer import REPEAT_SIGNAL_GRACE_S, StopRequest\n"
              "now = [0.0]\n"
              "StopRequest(EventLog(sys.argv[1]), clock=lambda: now[0]).install()\n"
              "def handled(n):\n"
              "    while len(read_events(sys.argv[1], 'signal')) < n:\n"
              "        time.sleep(0.01)\n"
              "    print('handled', n, flush=True)\n"
              "print('ready', flush=True)\n"
              "handled(1)\n"
              "handled(2)\n"
              "now[0] += REPEAT_SIGNAL_GRACE_S + 1\n"
              "print('grace over', flush=True)\n"
              "while True:\n"
              "    time.sleep(0.05)\n")
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        proc.send_signal(sig.SIGTERM)  # only asks to stop after the step: the child lives on
        assert proc.stdout.readline() == "handled 1\n"
        proc.send_signal(sig.SIGTERM)  # within the grace period: the same signal, twice
        assert proc.stdout.readline() == "handled 2\n"
        assert proc.stdout.readline() == "grace over\n"
        proc.send_signal(sig.SIGTERM)  # after it: ends the process at once
        assert proc.wait(timeout=60) == -sig.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert [e["repeat"] for e in read_events(tmp_path, "signal")] == [False, True, True]


def test_a_bad_resume_path_is_refused_before_anything_starts(tmp_path: Path) -> None:
    import subprocess
    import sys

    example = Path(__file__).resolve().parents[1] / "examples" / "tiny.toml"
    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "stoker", "train", str(example), "--run-dir",
                           str(run), "--resume", str(tmp_path / "nope")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "no such checkpoint or run directory" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not run.exists()


def test_a_checkpoint_saved_by_the_same_model_needs_no_tensor_check(tmp_path: Path) -> None:
    """The launcher skips reading a resume's tensor metadata (and importing DCP) only when the
    checkpoint's RUN_META names the very model of the config; another model, or no RUN_META
    (an older checkpoint), is checked."""
    from stoker.spec.train import TrainConfig
    from stoker.train.ckpt_layout import RUN_META
    from stoker.train.launch import saved_by_this_model
    from stoker.train.resume_check import run_meta

    cfg = TrainConfig.model_validate({"model": {"preset": "tiny", "vocab_size": 300}})
    ckpt = tmp_path / "step-00000010"
    ckpt.mkdir()
    assert not saved_by_this_model(ckpt, cfg)
    (ckpt / RUN_META).write_text(json.dumps(run_meta(cfg, 0)))
    assert saved_by_this_model(ckpt, cfg)
    wider = cfg.model_copy(update={"model": cfg.model.model_copy(update={"dim": 128})})
    assert not saved_by_this_model(ckpt, wider)
    (ckpt / RUN_META).write_text("not json")
    assert not saved_by_this_model(ckpt, cfg)
