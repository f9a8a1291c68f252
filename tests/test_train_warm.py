"""Warm ranks (`stoker.train.warm`): `stoker train`'s ranks are forked from a zygote that has
imported torch, and look to elastic, the launcher and the tests like the ranks they replace:
real processes, gloo."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]
import pytest

from stoker.observe.events import read_events
from stoker.spec.loading import to_toml
from stoker.train.exitcodes import EXIT_PREEMPTED
from train_helpers import rank_pids, wait_until

pytestmark = pytest.mark.slow

CONFIG: dict[str, Any] = {
    "model": {"preset": "tiny", "dim": 64, "n_layers": 2, "n_heads": 2, "n_kv_heads": 2,
              "ffn_hidden": 128},
    "data": {"dataset": "stdlib", "tokenizer": "byte",
             "cache_dir": str(Path(".cache/stoker/data").absolute())},
    "parallel": {"strategy": "fsdp"},
    "train": {"name": "warm", "steps": 100_000, "global_batch_size": 8, "micro_batch_size": 2,
              "seq_len": 32, "eval_interval": 0, "hang_timeout_s": 60.0},
    "checkpoint": {"interval_steps": 1000, "keep_last": 2},
    "telemetry": {"live": False},
}


@contextmanager
def training(tmp: Path, env: dict[str, str] | None = None
             ) -> Iterator[tuple[subprocess.Popen[str], Path, list[int]]]:
    """`stoker train` of 2 ranks, once both train: the launcher, the run dir and the ranks'
    pids; the launcher is killed on the way out, whatever happened."""
    config, run = tmp / "train.toml", tmp / "run"
    config.write_text(to_toml(CONFIG))
    launcher = subprocess.Popen(
        [sys.executable, "-m", "stoker", "train", str(config), "--nproc", "2", "--run-dir",
         str(run)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": "", **(env or {})})
    try:
        yield launcher, run, rank_pids(run, 2)
    finally:
        launcher.kill()


def preempt(launcher: subprocess.Popen[str]) -> str:
    """SIGTERM to the launcher, as the control plane preempts: its stderr once it ended."""
    launcher.send_signal(signal.SIGTERM)
    return launcher.communicate(timeout=120)[1]


def zygote_of(pid: int) -> psutil.Process:
    return psutil.Process(pid).parent()


def socket_dir(zygote: psutil.Process) -> Path:
    """The directory of the socket a zygote serves (``... warm serve SOCKET ...``)."""
    argv = zygote.cmdline()
    return Path(argv[argv.index("serve") + 1]).parent


def alive(pid: int) -> bool:
    """Running (a dead rank whose zygote is gone may stay a zombie of init's for a while)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_ranks_are_forked_warm_and_a_sigterm_reaches_them(tmp_path: Path) -> None:
    """Each rank is a child of the zygote (named ``stoker-rank``), not of elastic's client; a
    SIGTERM to the launcher reaches the ranks through their clients, they checkpoint and stop
    (75), and the zygote and its socket are gone with the run."""
    with training(tmp_path) as (launcher, run, ranks):
        zygotes = {zygote_of(pid) for pid in ranks}
        assert len(zygotes) == 1, zygotes
        (zygote,) = zygotes
        assert zygote.cmdline()[3:5] == ["stoker.train.warm", "serve"], zygote.cmdline()
        assert all(psutil.Process(pid).name() == "stoker-rank" for pid in ranks)
        directory = socket_dir(zygote)
        assert directory.is_dir()
        err = preempt(launcher)
    assert launcher.returncode == EXIT_PREEMPTED, err
    assert read_events(run, "checkpoint_committed"), "the ranks checkpointed as they stopped"
    assert not any(alive(pid) for pid in ranks)
    assert not alive(zygote.pid) and not directory.exists()


def test_a_dead_zygote_takes_its_ranks_with_it(tmp_path: Path) -> None:
    """SIGKILL to the zygote: its ranks die with it (``PR_SET_PDEATHSIG``), their clients
    report them killed, and the launcher fails at once instead of waiting on them."""
    with training(tmp_path) as (launcher, run, ranks):
        zygote_of(ranks[0]).kill()
        killed = time.monotonic()
        _, err = launcher.communicate(timeout=120)
        took = time.monotonic() - killed
    assert launcher.returncode not in (0, EXIT_PREEMPTED), err
    (failure,) = read_events(run, "failure")
    assert {r["exitcode"] for r in failure["ranks"]} <= {-9, 1}, failure
    assert -9 in {r["exitcode"] for r in failure["ranks"]}, failure
    assert took < 30, f"the launcher took {took:.1f} s to see its ranks gone"
    assert not any(alive(pid) for pid in ranks)


def test_a_killed_launcher_leaves_no_zygote_ranks_or_socket(tmp_path: Path) -> None:
    """SIGKILL to the launcher: its zygote (told by ``PR_SET_PDEATHSIG``) removes the socket's
    directory, which the launcher could not, and its ranks die with it."""
    with training(tmp_path) as (launcher, _, ranks):
        zygote = zygote_of(ranks[0])
        directory = socket_dir(zygote)
        assert directory.is_dir()
        launcher.kill()
        launcher.wait(timeout=30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (directory.exists() or alive(zygote.pid)
                                               or any(alive(pid) for pid in ranks)):
            time.sleep(0.1)
    assert not directory.exists()
    assert not any(alive(pid) for pid in [zygote.pid, *ranks])


def test_a_long_tmpdir_still_gets_warm_ranks(tmp_path: Path) -> None:
    """$TMPDIR too long for a Unix socket's path: the zygote's socket goes under /tmp."""
    long_tmp = tmp_path / ("t" * 120)
    long_tmp.mkdir()
    with training(tmp_path, {"TMPDIR": str(long_tmp)}) as (launcher, _, ranks):
        assert all(psutil.Process(pid).name() == "stoker-rank" for pid in ranks)
        err = preempt(launcher)
    assert launcher.returncode == EXIT_PREEMPTED, err


def test_with_warm_ranks_off_each_rank_imports_for_itself(tmp_path: Path) -> None:
    """``STOKER_WARM_RANKS=0``: the ranks are ``python -u -m stoker.train`` again."""
    with training(tmp_path, {"STOKER_WARM_RANKS": "0"}) as (launcher, _, ranks):
        for pid in ranks:
            argv = psutil.Process(pid).cmdline()
            assert argv[1:4] == ["-u", "-m", "stoker.train"], argv
        err = preempt(launcher)
    assert launcher.returncode == EXIT_PREEMPTED, err


def test_a_client_without_a_zygote_becomes_the_rank_itself(tmp_path: Path) -> None:
    """No zygote at the socket: the client execs ``python -m stoker.train`` with its
    arguments (here a config that does not exist: the rank's own one-line error, exit 2)."""
    done = subprocess.run(
        [sys.executable, "-m", "stoker.train.warm", "attach", str(tmp_path / "socket"), "--",
         str(tmp_path / "missing.toml")], capture_output=True, text=True, timeout=120,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 2, done.stderr
    assert "missing.toml" in done.stderr


@pytest.mark.parametrize("code", [0, 75, -signal.SIGTERM, -signal.SIGKILL])
def test_a_client_ends_as_its_rank_ended(code: int) -> None:
    """The exit code, or death by the same signal, without a core dump."""
    done = subprocess.run([sys.executable, "-c",
                           f"from stoker.train.warm import _end_as; _end_as({code})"],
                          timeout=60)
    assert done.returncode == code


def test_a_rank_dies_with_its_client(tmp_path: Path) -> None:
    """SIGKILL to a rank's client (elastic's process, which cannot pass that one on): the
    zygote sees its connection close and kills the rank, so nothing keeps training."""
    with training(tmp_path) as (launcher, _, ranks):
        clients = [p for p in psutil.Process(launcher.pid).children(recursive=True)
                   if "attach" in p.cmdline()]
        assert len(clients) == 2, clients
        victim = psutil.Process(ranks[0])
        client = next(c for c in clients
                      if Path(c.cmdline()[5]).parent.joinpath(f"rank-of-{c.pid}").read_text()
                      == str(victim.pid))
        client.kill()
        wait_until(lambda: not alive(victim.pid), "the rank to die with its client", 30)
        _, err = launcher.communicate(timeout=120)
    assert launcher.returncode not in (0, EXIT_PREEMPTED), err
