"""Helpers of the training tests: one rank trained inside the test process (the loop and
equivalence tests), and ranks of a running job held still while a signal reaches them."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import psutil
import torch

from stoker.observe.live import NullDisplay
from stoker.spec import loading
from stoker.spec.train import TrainConfig
from stoker.train.data import ensure_dataset
from stoker.train.distributed import init_distributed
from stoker.train.heartbeat import read_heartbeats
from stoker.train.trainer import Trainer
from stoker.train.warm import is_rank

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tiny.toml"


def train_in_process(run_dir: Path, overrides: list[str], resume: str | None = None) -> Trainer:
    """Run the example config with ``overrides`` as one rank here (no torchrun env: a world of
    one) to completion, from checkpoint ``resume`` if given; the trainer's ``stats.records``
    hold every step's metrics."""
    cfg = loading.load(TrainConfig, EXAMPLE, overrides)
    info = init_distributed(cfg.parallel, cfg.train)
    # One thread, like each rank of a 2-rank run on 2 cores (and far faster on a busy machine).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    trainer = Trainer(cfg, run_dir, info, ensure_dataset(cfg.data), display=NullDisplay(),
                      resume=resume)
    try:
        assert trainer.run() == "completed"
    finally:
        torch.set_num_threads(threads)
    return trainer


# ---------------------------------------------------------------- holding ranks still
# A test that signals a running job holds its ranks still (SIGSTOP) until the signal is pending
# in each of them, so the run cannot finish, or pass the step the test picked, before the
# signal lands, however busy the machine is.


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def rank_pids(run_dir: Path, world_size: int, timeout: float = 300) -> list[int]:
    """The pids (as this machine sees them) of the run's ranks, once every rank has begun
    training (has a heartbeat file). The pids in the heartbeat files may be those of a
    sandbox's PID namespace: the ranks are found by their command line instead,
    ``python -u -m stoker.train RUN_DIR/config.toml --run-dir RUN_DIR ...``, or, for a warm
    rank (`stoker.train.warm`), by its name and its zygote's command line."""
    wait_until(lambda: len(read_heartbeats(run_dir)) == world_size, "every rank's heartbeat",
               timeout)
    pids = [p.pid for p in psutil.process_iter(["cmdline", "name"])
            if is_rank(p.info["cmdline"], p.info["name"], run_dir)]
    assert len(pids) == world_size, f"ranks of {run_dir}: {pids}"
    return pids


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def is_stopped(pid: int) -> bool:
    return _status(pid)["State"].startswith("T")


def signal_pending(pid: int, sig: signal.Signals) -> bool:
    """Whether ``sig`` was sent to ``pid`` and not yet handled (a stopped process keeps it)."""
    status = _status(pid)
    return any(int(status[k], 16) >> (sig - 1) & 1 for k in ("SigPnd", "ShdPnd"))


@contextmanager
def held(pids: list[int]) -> Iterator[None]:
    """Stop these processes for the duration (they are stopped once this has entered)."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        wait_until(lambda: all(is_stopped(p) for p in pids), "the ranks to stop")
        yield
    finally:
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def deliver_to_held(pids: list[int], sig: signal.Signals, send: Callable[[], None]) -> None:
    """Hold the ranks still, ``send`` a signal that reaches them (through their launcher, say),
    and let them go once each has it pending."""
    with held(pids):
        send()
        wait_until(lambda: all(signal_pending(p, sig) for p in pids),
                   f"{sig.name} to reach every rank")
