"""The Ray actor that runs one rank on its node (see control/ray_executor.py).

It starts the rank under `stoker.control.supervise` exactly as the local executor does (the
supervisor forwards SIGTERM once and writes the exit file on the shared path), in a session of
its own, with ``--parent`` so that the rank dies with the actor: when Ray reports the node or
the actor dead, nothing of the rank is left running. Output goes to the job's log file.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import BinaryIO

from stoker.control.jobenv import job_environment
from stoker.control.supervise import write_exit

PYTHON = "{python}"  # in an argv: this node's Python (the control plane's may live elsewhere)
SUPERVISOR = "stoker.control.supervise"


class RankActor:
    def __init__(self, pass_env: Collection[str], hidden_env: Collection[str],
                 allow_faults: bool) -> None:
        self.pass_env = tuple(pass_env)
        self.hidden_env = frozenset(hidden_env)
        self.allow_faults = allow_faults
        self.child: subprocess.Popen[bytes] | None = None  # the rank's supervisor
        self.preparing: subprocess.Popen[bytes] | None = None  # the preparation's
        self.stopped: int | None = None  # a signal that came before the rank started
        self.lock = threading.Lock()

    def where(self) -> tuple[str, int]:
        """(this node's Ray id, a port free on it): rank 0's port is the gang's c10d store's."""
        import ray

        with socket.socket() as s:
            s.bind(("", 0))
            port = int(s.getsockname()[1])
        return ray.get_runtime_context().get_node_id(), port

    def prepare(self, argv: Sequence[str], env: Mapping[str, str], cwd: str, log_path: str,
                exit_path: str) -> int:
        """Run ``argv`` to its end (the training run's one-time preparation), under the
        supervisor like a rank, so that signals and `kill` reach it: its exit code."""
        began = time.perf_counter()
        with self.lock:
            if self.stopped is not None:
                return -int(self.stopped)
            with self._log(log_path, "preparing the run") as log:
                child = subprocess.Popen(self._supervised(argv, exit_path),
                                         stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, env=self._env(env), cwd=cwd,
                                         start_new_session=True)
            self.preparing = child
        code = child.wait()
        with open(log_path, "ab") as log:
            log.write(f"=== stoker: preparation ended (exit code {code}) after "
                      f"{time.perf_counter() - began:.3f} s\n".encode())
        return code

    def start(self, ready: int, argv: Sequence[str], env: Mapping[str, str], cwd: str,
              log_path: str, exit_path: str) -> int:
        """Start the rank once ``ready`` (the preparation's exit code) is 0; its supervisor's
        pid, or 0 when it does not start (the exit file then says why)."""
        with self.lock:
            if ready != 0 or self.stopped is not None:
                write_exit(exit_path, ready if ready != 0 else -(self.stopped or 0))
                return 0
            command = self._supervised(argv, exit_path)
            import ray

            own = dict(env) | {"STOKER_RAY_NODE_ID": ray.get_runtime_context().get_node_id()}
            ids = ray.get_runtime_context().get_accelerator_ids().get("GPU", [])
            own["CUDA_VISIBLE_DEVICES"] = ",".join(ids)
            started = f"attempt {env.get('STOKER_ATTEMPT')} rank {env.get('RANK')} started"
            try:
                with self._log(log_path, started) as log:
                    self.child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                                  stderr=subprocess.STDOUT, env=self._env(own),
                                                  cwd=cwd, start_new_session=True)
            except OSError as e:  # the status poll must learn of it: a rank that never ran
                print(f"stoker: cannot start rank: {e}", file=sys.stderr, flush=True)
                write_exit(exit_path, 127)
                return 0
            return self.child.pid

    def poll(self) -> int | None:
        """The supervisor's exit code; None while it runs or before it started."""
        return None if self.child is None else self.child.poll()

    def signal(self, signum: int) -> None:
        with self.lock:
            if self.child is None:
                self.stopped = signum
            for child in (self.preparing, self.child):
                if child is not None and child.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(child.pid, signum)

    def kill(self) -> None:
        with self.lock:
            self.stopped = signal.SIGKILL
            for child in (self.preparing, self.child):
                if child is not None:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(child.pid, signal.SIGKILL)
                    child.wait()

    # --- helpers --------------------------------------------------------------------------------

    def _supervised(self, argv: Sequence[str], exit_path: str) -> list[str]:
        """``argv`` under the supervisor, which dies with this actor (``--parent``)."""
        return [sys.executable, "-m", SUPERVISOR, exit_path, "--parent", str(os.getpid()), "--",
                *(sys.executable if a == PYTHON else a for a in argv)]

    def _env(self, own: Mapping[str, str]) -> dict[str, str]:
        return job_environment(os.environ, own, pass_env=self.pass_env, hidden=self.hidden_env,
                               allow_faults=self.allow_faults)

    @contextlib.contextmanager
    def _log(self, path: str, what: str) -> Iterator[BinaryIO]:
        import ray

        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "ab") as log:
            node = ray.get_runtime_context().get_node_id()[:12]
            now = time.time()
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)) + \
                f".{int(now % 1 * 1000):03d}"
            log.write(f"=== stoker: {what} {stamp} on Ray node {node} "
                      f"({socket.gethostname()})\n".encode())
            log.flush()
            yield log
