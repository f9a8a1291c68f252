"""The executor interface: start a job attempt's processes, watch them, signal them.

`LocalExecutor` runs them on this machine; a Ray executor would place them on a cluster. The
reconciler decides *what* runs (a `LaunchPlan`, see control/launch.py); the executor only runs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from stoker.control.store import ProcessRecord


@dataclass(frozen=True)
class ProcessPlan:
    """One process of an attempt: a rank, or the training launcher that starts all ranks."""

    index: int
    node: str
    argv: tuple[str, ...]
    env: dict[str, str]
    log_path: Path
    exit_path: Path
    devices: dict[str, dict[str, list[int]]]  # node -> {"gpus": [...], "cpus": [...]}
    cpus: tuple[int, ...] | None = None  # CPU affinity (physical CPU ids)
    gpus: tuple[int, ...] = ()  # CUDA_VISIBLE_DEVICES


@dataclass(frozen=True)
class LaunchPlan:
    job_id: int
    attempt: int
    workdir: Path  # the job's directory
    processes: tuple[ProcessPlan, ...]
    tenant: str = ""  # whose identity the processes run under


@dataclass(frozen=True)
class ProcessStatus:
    """``alive``; ``exited`` with its exit code (negative: killed by that signal); or
    ``vanished``: gone with no exit status recorded (e.g. killed with its supervisor)."""

    state: Literal["alive", "exited", "vanished"]
    exit_code: int | None = None
    ended_at: float | None = None


@dataclass(frozen=True)
class Orphan:
    """A supervisor running on this machine for one of this control plane's job attempts."""

    pid: int
    create_time: float
    job_id: int
    attempt: int
    index: int
    exit_path: Path = field(compare=False)


class Executor(Protocol):
    def launch(self, plan: LaunchPlan) -> list[ProcessRecord]:
        """Start every process of the plan; returns their records (pid, start time, ...).
        If one fails to start, those already started are killed and OSError is raised."""
        ...

    def status(self, proc: ProcessRecord, exit_path: Path) -> ProcessStatus: ...

    def terminate(self, proc: ProcessRecord) -> None:
        """Ask the process to stop (SIGTERM to its supervisor, forwarded once to the job)."""
        ...

    def kill(self, proc: ProcessRecord) -> None:
        """Kill the process and everything in its process group (SIGKILL)."""
        ...

    def orphans(self) -> list[Orphan]:
        """Supervisors of this control plane still running, whatever the store says."""
        ...

    def kill_orphan(self, orphan: Orphan) -> None: ...
