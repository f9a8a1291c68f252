"""Runs a job attempt's processes on this machine.

Each process is started under `stoker.control.supervise` in a session (and process group) of
its own, so it outlives a ``kill -9`` of the server and can be killed as a group. Its pid and
start time go to the store; a restarted server adopts it by checking both with psutil.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Collection
from pathlib import Path

import psutil  # type: ignore[import-untyped]

from stoker.control.executor import LaunchPlan, Orphan, ProcessPlan, ProcessStatus
from stoker.control.store import ProcessRecord
from stoker.control.supervise import read_exit

SUPERVISOR = "stoker.control.supervise"
START_TIME_TOLERANCE_S = 0.05
_EXIT_PATH = re.compile(r"(\d+)/attempt-(\d+)/rank-(\d+)\.exit$")


class LocalExecutor:
    def __init__(self, jobs_dir: Path, hidden_env: Collection[str] = (),
                 python: str = sys.executable) -> None:
        self.jobs_dir = jobs_dir.resolve()
        self.hidden_env = frozenset(hidden_env)  # e.g. the API tokens: never passed to jobs
        self.python = python
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    # --- starting -----------------------------------------------------------------------------

    def launch(self, plan: LaunchPlan) -> list[ProcessRecord]:
        started: list[ProcessRecord] = []
        try:
            for process in plan.processes:
                started.append(self._start(plan, process))
        except OSError:
            for record in started:
                self.kill(record)
            raise
        return started

    def _start(self, plan: LaunchPlan, p: ProcessPlan) -> ProcessRecord:
        p.log_path.parent.mkdir(parents=True, exist_ok=True)
        p.exit_path.parent.mkdir(parents=True, exist_ok=True)
        p.exit_path.unlink(missing_ok=True)
        argv = [self.python, "-m", SUPERVISOR, str(p.exit_path)]
        if p.cpus:
            argv += ["--cpus", ",".join(map(str, p.cpus))]
        argv += ["--", *p.argv]
        env = {k: v for k, v in os.environ.items() if k not in self.hidden_env}
        env |= p.env
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, p.gpus))
        with p.log_path.open("ab") as log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(f"=== stoker: attempt {plan.attempt} started {stamp}\n".encode())
            log.flush()
            child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, env=env, cwd=plan.workdir,
                                     start_new_session=True)
        self._children[child.pid] = child
        try:
            create_time = psutil.Process(child.pid).create_time()
        except psutil.NoSuchProcess:  # already over; the store still needs a start time
            create_time = time.time()
        return ProcessRecord(job_id=plan.job_id, attempt=plan.attempt, index=p.index,
                             pid=child.pid, create_time=create_time, node=p.node,
                             devices=p.devices, log_path=str(p.log_path))

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
