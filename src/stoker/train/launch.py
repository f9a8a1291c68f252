"""`stoker train`: check everything that can be checked once, then start N local ranks through
torch.distributed.elastic (the machinery behind torchrun).

    prepare_run(): validate config + world size, prepare the dataset (and take its tokenizer
                   and vocabulary where the config leaves them unset) or, for a user task,
                   import its module (`task.py`), create and lock RUN_DIR
                   (RUN_DIR/.lock, held for the launcher's life: a second run into it is
                   refused), refuse to start over a run it holds without --resume, and write
                   the resolved RUN_DIR/config.toml (before any rank starts)
    launch():      elastic_launch `python -m stoker.train RUN_DIR/config.toml --run-dir RUN_DIR`
                   on a c10d rendezvous at 127.0.0.1; each rank's output prefixed by its rank,
                   rank 0 keeping the terminal for the live display; when a rank fails, the gang
                   is torn down and launched again (``--max-restarts``, `restarts.supervise`),
                   resuming from the newest committed checkpoint

Ranks read the resolved config file, so they train exactly what was validated here. A world of
one goes through the same path (one elastic worker), so there is a single way a rank starts.

Signals: SIGTERM or SIGUSR1 to this process (preemption) reach every rank, which checkpoint at
the next step boundary and stop; the launcher then exits 75, "preempted, resumable"
(`stoker.train.exitcodes`). SIGINT (Ctrl-C) stops them the same way and exits 130. When a rank
fails, the others get SIGTERM and ``$STOKER_FAILURE_GRACE_S`` seconds (default 3; the control
plane sets its ``--failure-grace``) before SIGKILL, not elastic's 30: a rank hung or blocked in
a collective on a dead peer would only hold the gang's devices meanwhile. When the failure is a
hang (a watchdog's exit), the others get SIGKILL at once, as does a stopped rank (SIGSTOP, a
frozen cgroup) whatever the failure: neither could act on SIGTERM.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from stoker.observe.events import EventLog
from stoker.observe.sinks import check_installed
from stoker.ports import free_port
from stoker.spec import loading
from stoker.spec.errors import ConfigError, StokerError
from stoker.spec.train import TrainConfig
from stoker.train import faults, warm
from stoker.train.ckpt_layout import read_run_meta
from stoker.train.exitcodes import EXIT_HANG, EXIT_PREEMPTED, describe
from stoker.train.heartbeat import enable_flight_recorder
from stoker.train.restarts import ATTEMPT_ENV, AttemptResult, rank_failures, supervise
from stoker.train.run_dir import check_reuse, lock_run_dir, record_holder, unlock_run_dir

if TYPE_CHECKING:
    from torch.distributed.launcher.api import LaunchConfig

CONFIG_NAME = "config.toml"
RUNS_ROOT = Path("runs")
FAILURE_GRACE_ENV = "STOKER_FAILURE_GRACE_S"
FAILURE_GRACE_S = 3.0


def prepare_run(config_path: Path, overrides: Sequence[str], nproc: int,
                run_dir: Path | None, *, resume: str | None = None,
                check_fresh: bool = False) -> tuple[TrainConfig, Path]:
    """Everything a launch needs, checked and made before any process starts. The run dir is
    locked for this process's life (`run_dir.lock_run_dir`) before anything is written in it;
    ``check_fresh``: refuse a run dir that holds a run unless ``resume`` is given."""
    cfg = loading.load(TrainConfig, config_path, overrides)
    cfg.check_world_size(nproc, str(config_path))
    check_installed(cfg.telemetry.sinks, str(config_path))
    from stoker.train.ckpt_find import resolve_resume
    from stoker.train.data import ensure_dataset, fit_to_dataset  # imports torch: config is good
    from stoker.train.task import resolve_build, with_task_path

    if cfg.task.module is not None:  # user code: it must import here, before any rank starts
        cfg = with_task_path(cfg, config_path)
        resolve_build(cfg, str(config_path))
    else:
        try:
            cfg = fit_to_dataset(cfg, ensure_dataset(cfg.data), str(config_path))
        except ConfigError as e:
            raise ConfigError(e.source or str(config_path), e.key, e.reason) from None
        cfg.check_world_size(nproc, str(config_path))  # again: the vocabulary may be the data's
    run_dir = make_run_dir(cfg.train.name, run_dir)
    lock_run_dir(run_dir, record=False)
    try:
        if check_fresh:
            check_reuse(run_dir, cfg.telemetry.metrics_file, resume)
        start = resolve_resume(run_dir, resume, checksums=False) if resume else None
        if start is not None and not saved_by_this_model(start, cfg):
            from stoker.train.resume_check import check_fits  # torch.distributed.checkpoint

            check_fits(start, cfg, str(config_path))
    except StokerError:
        unlock_run_dir(run_dir)
        raise
    record_holder(run_dir)
    write_config(run_dir, cfg)
    return cfg, run_dir


def saved_by_this_model(ckpt: Path, cfg: TrainConfig) -> bool:
    """Whether the checkpoint's RUN_META says it was saved by ``cfg``'s model (a restart of
    the same run): it fits without reading its tensors' metadata, so the launcher need not
    import torch.distributed.checkpoint to check it (about 1 s of every restart)."""
    saved = read_run_meta(ckpt).get("config")
    model = cfg.model_dump(mode="json", by_alias=True)["model"]
    return isinstance(saved, dict) and saved.get("model") == model


def make_run_dir(name: str, run_dir: Path | None = None) -> Path:
    """``run_dir`` itself, or a new ``runs/<name>-<YYYYmmdd-HHMMSS>[-k]/``."""
    if run_dir is not None:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError("--run-dir", None, f"cannot create {run_dir}: {e.strerror}") from None
        return run_dir
    stamp = time.strftime("%Y%m%d-%H%M%S")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    for k in range(1000):
        path = RUNS_ROOT / (f"{safe}-{stamp}" + (f"-{k}" if k else ""))
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
    raise ConfigError("--run-dir", None, f"could not create a new run dir under {RUNS_ROOT}")


def write_config(run_dir: Path, cfg: TrainConfig) -> Path:
    """RUN_DIR/config.toml, the resolved config; write-then-rename, so a reader never sees half
    of it (ranks may read it while rank 0 writes it again)."""
    path = run_dir / CONFIG_NAME
    text = "# resolved by stoker: every default filled in, every override applied\n"
    text += loading.to_toml(cfg.model_dump(by_alias=True))
    if path.is_file() and path.read_text() == text:
        return path
    tmp = path.with_name(f".{CONFIG_NAME}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def share_cores(nproc: int) -> None:
    """As torchrun does: ranks share the cores instead of each taking all of them (set before
    the warm ranks' zygote imports torch, which reads it then)."""
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, nproc))))


def launch(cfg: TrainConfig, run_dir: Path, nproc: int, *, max_restarts: int = 0,
           resume: str | None = None, rank_args: Sequence[str] = (),
           zygote: warm.Zygote | None = None) -> int:
    """Run ``nproc`` local ranks, restarting the gang up to ``max_restarts`` times when a rank
    fails; returns the exit code for the CLI: 0, 75 if preempted, 130 if interrupted, or the
    failed rank's code. ``resume`` ("auto" or a checkpoint path) is where the first attempt
    starts from; restarts start from the run's newest checkpoint. ``rank_args`` are passed on to
    every rank's command line. Ranks are forked warm from ``zygote`` (`stoker.train.warm`;
    one is started here if none is given), which is closed on return."""
    logging.getLogger("torch.distributed.elastic").setLevel(logging.ERROR)  # we report failures
    share_cores(nproc)
    enable_flight_recorder(run_dir)
    if zygote is None:
        zygote = warm.start(run_dir)
    args = [str(run_dir / CONFIG_NAME), "--run-dir", str(run_dir),
            *(["--resume", resume] if resume else []), *rank_args]
    args = zygote.rank_args(args) if zygote else ["-u", "-m", "stoker.train", *args]
    grace = failure_grace()

    def attempt(n: int) -> AttemptResult:
        if n:
            print(f"stoker train: restart {n}/{max_restarts}, from the newest checkpoint",
                  file=sys.stderr)
        os.environ[ATTEMPT_ENV] = str(n)
        return _launch_once(_launch_config(cfg, run_dir, nproc), args, run_dir, grace, zygote)

    before = os.environ.get(ATTEMPT_ENV)
    events = EventLog(run_dir)
    faults.announce(events)
    try:
        with _sigusr1_stops_the_gang():
            return supervise(attempt, max_restarts, events)
    finally:
        if zygote is not None:
            zygote.close()
        if before is None:
            os.environ.pop(ATTEMPT_ENV, None)
        else:
            os.environ[ATTEMPT_ENV] = before


def failure_grace() -> float:
    """Seconds a failed gang's other ranks get between SIGTERM and SIGKILL."""
    value = os.environ.get(FAILURE_GRACE_ENV)
    if value is None:
        return FAILURE_GRACE_S
    try:
        grace = float(value)
    except ValueError:
        grace = -1.0
    if not grace >= 0:
        raise ConfigError(f"${FAILURE_GRACE_ENV}", None,
                          f"{value!r} is not a number of seconds >= 0")
    return grace


@contextmanager
def _failed_gang_stopped_within(grace: float, zygote: warm.Zygote | None = None
                                ) -> Iterator[set[int]]:
    """Elastic's agent, while this is open, stops a failed gang with ``grace`` seconds between
    SIGTERM and SIGKILL (its own is a fixed 30 s; a stop on a signal keeps the launch config's
    ``shutdown_timeout``); yields the pids it stopped so, which `rank_failures` never takes for
    the cause. Each time the agent looks at its ranks, it first peeks at their exits without
    reaping them (so elastic still reads every exit code): once one has failed, the others are
    stopped here, before elastic's own stop finds nothing left to wait for. `elastic_launch`
    builds the agent itself, so the class it builds is swapped for the call."""
    import torch.distributed.launcher.api as launcher
    from torch.distributed.elastic.agent.server.api import RunResult, WorkerGroup

    base = launcher.LocalElasticAgent
    stopped: set[int] = set()

    class FailFastAgent(base):  # type: ignore[valid-type,misc]
        def _monitor_workers(self, worker_group: WorkerGroup) -> RunResult:
            if self._pcontext is not None:
                pids = self._pcontext.pids()
                ended = {rank: _exit_status(pid) for rank, pid in pids.items()}
                failed = [r for r, status in ended.items()
                          if status not in (None, 0, EXIT_PREEMPTED)]
                if failed:
                    live = [pids[r] for r, status in ended.items() if status is None]
                    stopped.update(live)
                    # After a watchdog's hang the others wait in a collective on the hung rank
                    # (or are it): they act on SIGTERM only at a step boundary they cannot
                    # reach, and the hang's evidence is written already.
                    hung = any(ended[r] == EXIT_HANG for r in failed)
                    _stop(live, 0.0 if hung else grace, zygote)
            return super()._monitor_workers(worker_group)

    launcher.LocalElasticAgent = FailFastAgent  # type: ignore[misc]
    try:
        yield stopped
    finally:
        launcher.LocalElasticAgent = base  # type: ignore[misc]


def _stopped(pid: int) -> bool:
    """Whether process ``pid`` is stopped (SIGSTOP, a debugger, a frozen cgroup): Linux only."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:][:1] in ("T", "t")


def _exit_status(pid: int) -> int | None:
    """How this process's child ``pid`` ended, without reaping it: None while it runs, else
    its exit code (-N: killed by signal N); 0 once reaped (by elastic, which then read its
    code itself)."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return 0
    if info is None:
        return None
    return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status


def _stop(pids: Sequence[int], grace: float, zygote: warm.Zygote | None = None) -> None:
    """SIGTERM to ``pids`` (children of this process), SIGKILL to those left after ``grace``
    (at once when it is 0, and to a stopped rank, which cannot act on SIGTERM: with warm
    ranks, the rank is the child of the zygote that the process in ``pids`` runs)."""
    if grace > 0:
        for pid in pids:
            rank = zygote.rank_pid(pid) if zygote else pid
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL if _stopped(rank) else signal.SIGTERM)
    deadline = time.monotonic() + grace
    while (left := [p for p in pids if _exit_status(p) is None]) and \
            time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in left:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _launch_config(cfg: TrainConfig, run_dir: Path, nproc: int) -> LaunchConfig:
    """One attempt: a fresh rendezvous, no restarts inside elastic (`supervise` restarts)."""
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, Std
    from torch.distributed.launcher.api import LaunchConfig

    live = cfg.telemetry.live and sys.stdout.isatty()
    # Rank 0 keeps the terminal when it draws the live display; everything else goes to
    # RUN_DIR/logs and to the console with a "[rankN]:" prefix.
    tee = {r: Std.ALL for r in range(nproc) if r > 0 or not live}
    return LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=run_dir.name,
        rdzv_backend="c10d",
        rdzv_endpoint=f"127.0.0.1:{free_port()}",
        local_addr="127.0.0.1",
        max_restarts=0,
        monitor_interval=0.1,
        logs_specs=DefaultLogsSpecs(log_dir=str(run_dir / "logs"), tee=tee),
        log_line_prefix_template="[rank${rank}]:",
    )


def _launch_once(config: LaunchConfig, args: list[str], run_dir: Path,
                 grace: float = FAILURE_GRACE_S, zygote: warm.Zygote | None = None
                 ) -> AttemptResult:
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch

    stopped: set[int] = set()
    try:
        with _failed_gang_stopped_within(grace, zygote) as stopped:
            elastic_launch(config, sys.executable)(*args)
    except SignalException as e:
        # Elastic has passed the signal on to every rank and waited for them to stop.
        _close_rendezvous(e)
        preempted = e.sigval in (signal.SIGTERM, signal.SIGUSR1)
        print(f"stoker train: stopped by {e.sigval.name}"
              f"{'; resume with --resume auto' if preempted else ''}", file=sys.stderr)
        return AttemptResult(EXIT_PREEMPTED if preempted else 130)
    except ChildFailedError as e:
        failures = rank_failures(e, stopped)
        if (any(f.exitcode == EXIT_PREEMPTED for f in failures)
                and all(f.exitcode == EXIT_PREEMPTED or f.torn_down for f in failures)):
            return AttemptResult(EXIT_PREEMPTED, failures)  # signalled directly, checkpointed
        root = failures[0]
        code = root.exitcode if root.exitcode > 0 else 128 - root.exitcode
        if code not in (2, 130):  # those ranks already said why, in one line
            print(f"stoker train: rank {root.rank} failed: {describe(root.exitcode)} (exit "
                  f"{root.exitcode}); logs in {run_dir / 'logs'}", file=sys.stderr)
        return AttemptResult(code, failures)
    return AttemptResult(0)


def _close_rendezvous(e: BaseException) -> None:
    """Shut the attempt's rendezvous down here, on the main thread. Elastic leaves it open after a
    signal (to allow rescaling, which one attempt never does); its keep-alive thread could then
    drop the last reference and run the timer's finalizer on itself, which prints torch's
    "cannot join current thread" traceback as the launcher exits."""
    from torch.distributed.elastic.agent.server.api import WorkerSpec

    tb = e.__traceback__
    while tb is not None:
        for value in list(tb.tb_frame.f_locals.values()):
            if isinstance(value, WorkerSpec):
                # The gang has already stopped: a close that fails changes nothing.
                with suppress(Exception):
                    value.rdzv_handler.shutdown()
                return
        tb = tb.tb_next


@contextmanager
def _sigusr1_stops_the_gang() -> Iterator[None]:
    """Elastic passes SIGTERM/SIGINT/SIGHUP/SIGQUIT on to the ranks; SIGUSR1 too, with this."""
    from torch.distributed.elastic.multiprocessing import SignalException

    def handler(signum: int, frame: FrameType | None) -> None:
        raise SignalException(f"Process {os.getpid()} got signal: {signum}",
                              sigval=signal.Signals(signum))

    old = signal.signal(signal.SIGUSR1, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGUSR1, old)
