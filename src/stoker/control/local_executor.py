"""Runs a job attempt's processes on this machine.

Each process is started under `stoker.control.supervise` in a session (and process group) of
its own, so it outlives a ``kill -9`` of the server and can be killed as a group. Its pid and
start time go to the store; a restarted server adopts it by checking both with psutil.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Collection
from pathlib import Path

import psutil  # type: ignore[import-untyped]

from stoker.control.code_archive import CODE_DIR
from stoker.control.executor import LaunchPlan, Orphan, ProcessPlan, ProcessStatus
from stoker.control.isolation import Identity, Isolation
from stoker.control.jobenv import job_environment
from stoker.control.launch import RUN, WORK
from stoker.control.safe_fs import open_beneath
from stoker.control.store import ProcessRecord
from stoker.control.supervise import read_exit

SUPERVISOR = "stoker.control.supervise"
START_TIME_TOLERANCE_S = 0.05
_EXIT_PATH = re.compile(r"(\d+)/attempt-(\d+)/rank-(\d+)\.exit$")


class LocalExecutor:
    """``isolation``: who each tenant's processes run as and in what sandbox (default: this
    process's user, no sandbox). ``pass_env``: server variables jobs may see beyond the fixed
    allow-list; ``hidden_env`` never reach a job (the API tokens)."""

    per_rank = False  # a training job is one process, its launcher, which starts the ranks

    def __init__(self, jobs_dir: Path, hidden_env: Collection[str] = (),
                 python: str = sys.executable, isolation: Isolation | None = None,
                 pass_env: Collection[str] = (), allow_faults: bool = False,
                 hidden_dirs: Collection[Path] = ()) -> None:
        self.jobs_dir = jobs_dir.resolve()
        self.hidden_env = frozenset(hidden_env)
        self.python = python
        self.isolation = isolation or Isolation()
        self.pass_env = tuple(pass_env)
        self.allow_faults = allow_faults
        # Replaced by empty directories in a sandbox: the server's state (database, jobs).
        self.hidden_dirs = tuple(hidden_dirs) or (self.jobs_dir,)
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    # --- starting -----------------------------------------------------------------------------

    def launch(self, plan: LaunchPlan) -> list[ProcessRecord]:
        who = self.isolation.identity(plan.tenant)
        prepare_job_dir(plan, who)
        started: list[ProcessRecord] = []
        try:
            for process in plan.processes:
                started.append(self._start(plan, process, who))
        except Exception:
            for record in started:
                self.kill(record)
            raise
        return started

    def _start(self, plan: LaunchPlan, p: ProcessPlan, who: Identity | None) -> ProcessRecord:
        work = plan.workdir / WORK
        argv = [self.python, "-m", SUPERVISOR, str(p.exit_path)]
        if p.cpus:
            argv += ["--cpus", ",".join(map(str, p.cpus))]
        sandbox = self.isolation.sandbox
        if sandbox is not None:
            argv += ["--sandbox", "--", *sandbox.argv(plan.workdir, (plan.workdir / RUN, work),
                                                      work, self.hidden_dirs, who)]
        else:
            if who is not None:
                argv += ["--uid", str(who.uid), "--gid", str(who.gid)]
            argv.append("--")
        argv += p.argv
        env = job_environment(os.environ, self._own_env(p, who, work), pass_env=self.pass_env,
                              hidden=self.hidden_env, allow_faults=self.allow_faults)
        log_fd = open_log(plan.workdir, p.log_path, who)
        with os.fdopen(log_fd, "ab") as log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(f"=== stoker: attempt {plan.attempt} started {stamp}\n".encode())
            log.flush()
            child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, env=env, cwd=work,
                                     start_new_session=True)
        self._children[child.pid] = child
        try:
            create_time = psutil.Process(child.pid).create_time()
        except psutil.NoSuchProcess:  # already over; the store still needs a start time
            create_time = time.time()
        return ProcessRecord(job_id=plan.job_id, attempt=plan.attempt, index=p.index,
                             pid=child.pid, create_time=create_time, node=p.node,
                             devices=p.devices, log_path=str(p.log_path))

    @staticmethod
    def _own_env(p: ProcessPlan, who: Identity | None, work: Path) -> dict[str, str]:
        entry = pwd.getpwuid(who.uid if who else os.geteuid())
        home = entry.pw_dir if os.path.isdir(entry.pw_dir) else str(work)  # managed: none
        return {"HOME": home, "USER": entry.pw_name, "LOGNAME": entry.pw_name, **p.env,
                "CUDA_VISIBLE_DEVICES": ",".join(map(str, p.gpus))}

    # --- watching -----------------------------------------------------------------------------

    def status(self, proc: ProcessRecord, exit_path: Path) -> ProcessStatus:
        child = self._children.get(proc.pid)
        if child is not None:
            code = child.poll()
            if code is None:
                return ProcessStatus("alive")
            del self._children[proc.pid]
        elif _same_process(proc.pid, proc.create_time):
            return ProcessStatus("alive")
        recorded = read_exit(str(exit_path))
        if recorded is not None:
            return ProcessStatus("exited", recorded[0], recorded[1])
        if child is not None and child.returncode is not None:
            # The supervisor itself was killed (SIGKILL from us, or the OOM killer).
            return ProcessStatus("exited", child.returncode, time.time())
        return ProcessStatus("vanished", None, time.time())

    # --- signalling ---------------------------------------------------------------------------

    def terminate(self, proc: ProcessRecord) -> None:
        if _same_process(proc.pid, proc.create_time):
            _signal(lambda: os.kill(proc.pid, signal.SIGTERM))

    def kill(self, proc: ProcessRecord) -> None:
        # The group outlives its leader; while any member lives, its id cannot be reused.
        if _same_process(proc.pid, proc.create_time) or not psutil.pid_exists(proc.pid):
            _signal(lambda: os.killpg(proc.pid, signal.SIGKILL))
        child = self._children.get(proc.pid)
        if child is not None:
            child.poll()

    # --- adoption -----------------------------------------------------------------------------

    def orphans(self) -> list[Orphan]:
        found: list[Orphan] = []
        for process in psutil.process_iter(["pid", "cmdline", "create_time", "status"]):
            info = process.info
            cmdline: list[str] = info.get("cmdline") or []
            if SUPERVISOR not in cmdline or info.get("status") == psutil.STATUS_ZOMBIE:
                continue
            position = cmdline.index(SUPERVISOR) + 1
            if position >= len(cmdline):
                continue
            exit_path = Path(cmdline[position])
            match = _EXIT_PATH.search(exit_path.as_posix())
            if match is None or not exit_path.is_relative_to(self.jobs_dir):
                continue
            job_id, attempt, index = (int(g) for g in match.groups())
            found.append(Orphan(info["pid"], info["create_time"], job_id, attempt, index,
                                exit_path))
        return found

    def kill_orphan(self, orphan: Orphan) -> None:
        if _same_process(orphan.pid, orphan.create_time):
            _signal(lambda: os.killpg(orphan.pid, signal.SIGKILL))

    def release(self, job_id: int, attempt: int) -> None:
        """Nothing is held beyond the processes."""


def _same_process(pid: int, create_time: float) -> bool:
    """True if ``pid`` is alive and is the process that started at ``create_time``."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        started: float = process.create_time()
        return abs(started - create_time) < START_TIME_TOLERANCE_S
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _signal(send: Callable[[], None]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        send()


# --- the job directory ----------------------------------------------------------------------------


def prepare_job_dir(plan: LaunchPlan, who: Identity | None) -> None:
    """Make the job's directories with their owners: ``run/`` and ``work/`` the tenant's own
    (0700), the rest the control plane's, readable by the tenant's group and nobody else."""
    group = who.gid if who is not None else -1
    root = plan.workdir
    shared = 0o750 if who is not None else 0o700
    for path in (root, root / "logs"):
        path.mkdir(parents=True, exist_ok=True)
        _own(path, -1, group, shared)
    config = root / "train.toml"
    if config.exists():
        _own(config, -1, group, 0o640 if who is not None else 0o600)
    code = root / CODE_DIR
    if code.is_dir() and not code.is_symlink():  # read-only for the tenant, as train.toml
        for parent, _dirs, files in os.walk(code):
            _own(Path(parent), -1, group, shared)
            for name in files:
                _own(Path(parent) / name, -1, group, 0o640 if who is not None else 0o600)
    (root / f"attempt-{plan.attempt}").mkdir(mode=0o700, exist_ok=True)
    for p in plan.processes:
        p.exit_path.unlink(missing_ok=True)
    for name in (RUN, WORK):
        path = root / name
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            path.unlink()  # the job's own directory, replaced by something else: start afresh
        path.mkdir(mode=0o700, exist_ok=True)
        if who is not None and path.stat().st_uid != who.uid:
            _chown_tree(path, who.uid, who.gid)  # written by an attempt that ran as another user
        _own(path, who.uid if who else -1, group, 0o700)


def _chown_tree(top: Path, uid: int, gid: int) -> None:
    for parent, dirs, files in os.walk(top):
        for name in (*dirs, *files):
            os.chown(os.path.join(parent, name), uid, gid, follow_symlinks=False)


def _own(path: Path, uid: int, gid: int, mode: int) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if uid != -1 or gid != -1:
            os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def open_log(job_dir: Path, log_path: Path, who: Identity | None) -> int:
    """The process's log, opened for appending without following links, owned by the
    tenant (0600), appended to only through the process's output."""
    fd = open_beneath(job_dir, log_path.relative_to(job_dir).as_posix(),
                      os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    if who is not None:
        os.fchown(fd, who.uid, who.gid)
    return fd
