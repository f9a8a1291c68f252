"""The executor interface: start a job attempt's processes, watch them, signal them.

`LocalExecutor` runs them on this machine; `RayExecutor` places them on a Ray cluster. The
reconciler decides *what* runs (a `LaunchPlan`, see control/launch.py); the executor only runs it.
"""

from __future__ import annotations

from collections.abc import Mapping
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
    # What this process needs, by resource name, as written (its role's request); None: the
    # plan's ``rank_resources``.
    resources: Mapping[str, float] | None = None


@dataclass(frozen=True)
class LaunchPlan:
    job_id: int
    attempt: int
    workdir: Path  # the job's directory
    processes: tuple[ProcessPlan, ...]
    tenant: str = ""  # whose identity the processes run under
    # Run once, to its end, before any process starts (with its log and exit code in
    # process 0's); empty: nothing to prepare.
    prepare: tuple[str, ...] = ()
    # What each process needs, by resource name, as written: GPUs, CPUs, bytes, units (a
    # process's own ``resources`` win: the roles of a job differ).
    rank_resources: Mapping[str, float] = field(default_factory=dict)


class NotReserved(Exception):
    """The executor could not reserve the attempt's resources (in time); nothing started. The
    job goes back to the queue with this as the reason."""


@dataclass(frozen=True)
class ProcessStatus:
    """``alive``; ``exited`` with its exit code (negative: killed by that signal); or
    ``vanished``: gone with no exit status recorded (e.g. killed with its supervisor)."""

    state: Literal["alive", "exited", "vanished"]
    exit_code: int | None = None
    ended_at: float | None = None
    reason: str | None = None  # how it vanished, when the executor knows (its node died)
    lost_node: str | None = None  # the node that died under it


@dataclass(frozen=True)
class Orphan:
    """A process (a supervisor, a Ray actor) still running for one of this control plane's job
    attempts; ``index`` -1: something the attempt holds besides its processes (Ray: its
    placement group)."""

    pid: int
    create_time: float
    job_id: int
    attempt: int
    index: int
    exit_path: Path = field(compare=False)


class Executor(Protocol):
    # One process per rank for training jobs too (`plan_launch(per_rank=True)`).
    per_rank: bool
    jobs_dir: Path  # where the job directories are (the shared path, on a cluster)

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

    def release(self, job_id: int, attempt: int) -> None:
        """Every process of the attempt has ended: free what it still holds."""
        ...
