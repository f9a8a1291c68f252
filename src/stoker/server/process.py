"""`stoker server` as a child process on a free loopback port: for tests and benchmarks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from stoker.ports import free_port
from stoker.server.client import Client


class ServerProcess:
    """Start with `start()` (or as a context manager), stop with `stop()` (SIGTERM) or
    `kill()` (SIGKILL, as a crash would). The server's output goes to STATE_DIR/server.log, or
    to ``log`` (servers sharing a state directory on PostgreSQL)."""

    def __init__(self, state_dir: Path, config: Path | None = None,
                 env: Mapping[str, str] | None = None, args: Sequence[str] = (),
                 port: int | None = None, log: Path | None = None) -> None:
        self.state_dir = state_dir
        self.config = config
        self.env = dict(env or {})
        self.args = list(args)
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = log

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self._log or self.state_dir / "server.log"

    def health(self) -> dict[str, Any]:
        """GET /healthz: alive, and who leads (``role``, ``leader``)."""
        response = httpx.get(f"{self.url}/healthz", timeout=10.0)
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def client(self, token: str | None) -> Client:
        return Client(self.url, token)

    def start(self, timeout: float = 60.0) -> ServerProcess:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "stoker", "server", "--port", str(self.port),
                "--state-dir", str(self.state_dir), *self.args]
        if self.config is not None:
            argv += ["--config", str(self.config)]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL,
                                         env={**os.environ, **self.env})
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"stoker server exited with {self.proc.returncode}:\n"
                                   + self.log.read_text()[-3000:])
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.kill()
        raise RuntimeError("stoker server did not become ready:\n" + self.log.read_text()[-3000:])

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL the server alone; its jobs' processes live on in their own sessions."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> ServerProcess:
        return self.start() if self.proc is None else self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def kill_jobs(state_dir: Path) -> int:
    """Kill every job process a server with this state dir started; returns how many."""
    from stoker.control.local_executor import LocalExecutor

    executor = LocalExecutor(state_dir / "jobs")
    orphans = executor.orphans()
    for orphan in orphans:
        executor.kill_orphan(orphan)
    return len(orphans)
