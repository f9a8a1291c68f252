"""What a job attempt runs: its devices and its processes (a `LaunchPlan` for the executor).

On one machine a Stoker training job is one process, the training runtime's launcher, which
starts every rank: ``stoker train JOBDIR/train.toml --nproc R --run-dir JOBDIR/run --resume
auto``. An executor that places ranks on several machines (``per_rank``: Ray) gets one process
per rank instead, ``python -m stoker.train JOBDIR/run/config.toml --run-dir JOBDIR/run``, after
a one-time preparation (`stoker.control.prepare_train`: dataset, resolved config). A command job
is one process per rank, with the usual torch.distributed environment (RANK, WORLD_SIZE, ...);
MASTER_ADDR/MASTER_PORT are set by the executor where rank 0's node is not known here.

A job with several roles (`stoker.spec.job.RoleSpec`) is one gang: its processes are the ranks
of every role, numbered in role order (process and log index = ``RANK``), each running its
role's command with its role's environment. ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``LOCAL_WORLD_SIZE`` (per node, all roles together) and one ``MASTER_ADDR``/``MASTER_PORT``
cover the whole job, so its roles can form one torch.distributed group and split it; each
process also has ``STOKER_ROLE`` (its role's name), ``STOKER_ROLE_RANK`` and
``STOKER_ROLE_WORLD_SIZE`` (its rank and count within the role) and ``STOKER_ROLES`` (every
role's job-wide ranks: ``trainer=0-7,rollout=8-11``). A job without roles has one, ``main``.
Any process of any role that fails fails the attempt: the whole gang is stopped, as for a job
without roles.
A job directory holds ``train.toml`` (and ``code/``, a [task] job's code as submitted),
``run/`` (the training run), ``work/`` (the processes' working and home directory),
``logs/rank-I.log`` (one per process, appended across attempts) and ``attempt-N/rank-I.exit``
(how each process ended). Only ``run/`` and ``work/`` belong to
the job's identity; the rest is the control plane's, readable by the tenant.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from stoker.control import code_archive
from stoker.control.executor import LaunchPlan, ProcessPlan
from stoker.control.store import JobRecord, ProcessRecord
from stoker.ports import free_port
from stoker.sched import CPU, GPU, UNLIMITED, Node, Resources
from stoker.spec import loading
from stoker.spec.job import JobSpec
from stoker.spec.resources import written

DeviceUse = dict[str, dict[str, list[int]]]  # node -> {"gpus": [...], "cpus": [...]} (CPU slots)


@dataclass(frozen=True)
class RankDevices:
    node: str
    gpus: tuple[int, ...]
    cpu_slots: tuple[int, ...]


RUN, WORK = "run", "work"  # the job's own, writable directories


def job_dir(jobs_dir: Path, job_id: int) -> Path:
    return jobs_dir / str(job_id)


def log_relpath(job_id: int, index: int) -> PurePosixPath:
    return PurePosixPath(str(job_id), "logs", f"rank-{index}.log")


def log_path(jobs_dir: Path, job_id: int, index: int) -> Path:
    return jobs_dir / log_relpath(job_id, index)


def exit_path(jobs_dir: Path, job_id: int, attempt: int, index: int) -> Path:
    return job_dir(jobs_dir, job_id) / f"attempt-{attempt}" / f"rank-{index}.exit"


def process_count(spec: JobSpec, per_rank: bool = False) -> int:
    return 1 if spec.kind == "train" and not per_rank else spec.total_ranks


def devices_in_use(processes: Sequence[ProcessRecord]) -> DeviceUse:
    used: DeviceUse = {}
    for proc in processes:
        for node, devices in proc.devices.items():
            slot = used.setdefault(node, {"gpus": [], "cpus": []})
            slot["gpus"].extend(devices.get("gpus", ()))
            slot["cpus"].extend(devices.get("cpus", ()))
    return used


def assign_devices(nodes: Mapping[str, Node], placement: Sequence[str], per_rank: Resources,
                   in_use: DeviceUse) -> list[RankDevices]:
    """Pick each rank's GPU indices and CPU slots on its node, avoiding those in use.

    Fractional requests (thousandths of a GPU or CPU) are rounded up to whole devices; when a
    node has fewer free devices than asked for (fractional GPUs shared by several jobs), the
    lowest indices are shared.
    """
    taken = {node: {kind: set(use.get(kind, ())) for kind in ("gpus", "cpus")}
             for node, use in in_use.items()}
    ranks: list[RankDevices] = []
    for node_name in placement:
        node = nodes[node_name]
        used = taken.setdefault(node_name, {"gpus": set(), "cpus": set()})
        gpus = _pick(node.capacity[GPU], per_rank[GPU], used["gpus"])
        slots = _pick(node.capacity[CPU], per_rank[CPU], used["cpus"])
        ranks.append(RankDevices(node_name, gpus, slots))
    return ranks


def assign_role_devices(nodes: Mapping[str, Node], placement: Sequence[str],
                        roles: Sequence[tuple[int, Resources]], in_use: DeviceUse
                        ) -> list[RankDevices]:
    """`assign_devices` for the roles of a job in turn, each ``(ranks, per_rank)``, their
    ranks' nodes ``placement`` in role order: a role's ranks avoid the devices of the roles
    before it (on one node they share none)."""
    taken: DeviceUse = {node: {kind: list(ids) for kind, ids in use.items()}
                        for node, use in in_use.items()}
    found: list[RankDevices] = []
    for ranks, need in roles:
        mine = assign_devices(nodes, placement[len(found):len(found) + ranks], need, taken)
        for r in mine:
            slot = taken.setdefault(r.node, {"gpus": [], "cpus": []})
            slot.setdefault("gpus", []).extend(r.gpus)
            slot.setdefault("cpus", []).extend(r.cpu_slots)
        found += mine
    return found


def _pick(capacity: int, want: int, used: set[int]) -> tuple[int, ...]:
    """Devices for ``want`` thousandths out of ``capacity`` thousandths."""
    count = -(-want // 1000)
    if count == 0 or capacity >= UNLIMITED:  # an unlimited resource has no devices to pin
        return ()
    total = capacity // 1000
    free = [i for i in range(total) if i not in used] or list(range(total))
    chosen = tuple((free + list(range(total)))[:count])
    used.update(chosen)
    return chosen


def physical_cpus(slots: Sequence[int]) -> tuple[int, ...] | None:
    """CPU slots -> this machine's CPUs (slot i -> the i-th CPU we may run on, wrapping)."""
    if not slots:
        return None
    allowed = sorted(os.sched_getaffinity(0))
    return tuple(sorted({allowed[s % len(allowed)] for s in slots}))


def plan_launch(job: JobRecord, spec: JobSpec, attempt: int, jobs_dir: Path,
                ranks: Sequence[RankDevices], resume: bool = True,
                per_rank: bool = False, stoker_env: Mapping[str, str] | None = None,
                code: bytes | None = None) -> LaunchPlan:
    """``per_rank``: one process per rank for a training job too (see the module's doc).
    ``stoker_env``: more of Stoker's job variables (the cluster's failure rate for
    ``checkpoint.interval = "auto"``); the spec's ``env`` still wins. ``code``: a [task] job's
    code archive, unpacked into JOBDIR/code (its ``task.path``)."""
    workdir = job_dir(jobs_dir, job.id)
    if code is not None:
        code_archive.unpack(code, workdir / code_archive.CODE_DIR)
    run_dir = workdir / RUN
    base_env = {"PYTHONUNBUFFERED": "1", "STOKER_JOB_ID": str(job.id),
                "STOKER_ATTEMPT": str(attempt), "STOKER_JOB_ATTEMPT": str(attempt),
                "STOKER_RUN_DIR": str(run_dir), **(stoker_env or {})}
    r = spec.job_roles()[0].resources
    amounts = {name: float(written(name, v)) for name, v in r.amounts().items()}
    if spec.kind == "train" and per_rank:
        config = workdir / "train.toml"
        write_train_config(config, job.spec["train"])
        prepare = (sys.executable, "-m", "stoker.control.prepare_train", str(config),
                   "--nproc", str(spec.ranks), "--run-dir", str(run_dir))
        argv = [sys.executable, "-m", "stoker.train", str(run_dir / "config.toml"),
                "--run-dir", str(run_dir)]
        if resume:
            argv += ["--resume", "auto"]
        threads = str(max(1, math.floor(r.cpu_count)))
        processes = _rank_processes(job, spec, attempt, jobs_dir, ranks,
                                    base_env | {"OMP_NUM_THREADS": threads}, tuple(argv))
        return LaunchPlan(job.id, attempt, workdir, processes, job.tenant, prepare, amounts)
    processes: tuple[ProcessPlan, ...]
    if spec.kind == "train":
        processes = (_train_process(job, spec, attempt, jobs_dir, ranks, base_env, resume),)
    else:
        processes = _rank_processes(job, spec, attempt, jobs_dir, ranks, base_env)
    return LaunchPlan(job.id, attempt, workdir, processes, job.tenant, rank_resources=amounts)


def _train_process(job: JobRecord, spec: JobSpec, attempt: int, jobs_dir: Path,
                   ranks: Sequence[RankDevices], env: dict[str, str],
                   resume: bool) -> ProcessPlan:
    workdir = job_dir(jobs_dir, job.id)
    config = workdir / "train.toml"
    write_train_config(config, job.spec["train"])
    argv = [sys.executable, "-m", "stoker", "train", str(config), "--nproc", str(spec.ranks),
            "--run-dir", str(workdir / RUN)]
    if resume:
        argv += ["--resume", "auto"]
    slots = [s for r in ranks for s in r.cpu_slots]
    gpus = tuple(g for r in ranks for g in r.gpus)
    nodes = {"STOKER_RANK_NODES": ",".join(r.node for r in ranks)}  # rank i's node
    return ProcessPlan(index=0, node=ranks[0].node, argv=tuple(argv),
                       env=env | nodes | dict(spec.env),
                       log_path=log_path(jobs_dir, job.id, 0),
                       exit_path=exit_path(jobs_dir, job.id, attempt, 0),
                       devices=_devices(ranks), cpus=physical_cpus(slots), gpus=gpus)


def _rank_processes(job: JobRecord, spec: JobSpec, attempt: int, jobs_dir: Path,
                    ranks: Sequence[RankDevices], env: dict[str, str],
                    argv: tuple[str, ...] | None = None) -> tuple[ProcessPlan, ...]:
    """One process per rank of every role (``argv``: instead of each role's command)."""
    port = str(free_port())
    roles = spec.job_roles()
    per_node: dict[str, int] = {}
    for r in ranks:
        per_node[r.node] = per_node.get(r.node, 0) + 1
    every = ",".join(f"{role.name}={role.first}-{role.first + role.ranks - 1}"
                     for role in roles)
    seen: dict[str, int] = {}
    processes = []
    for role in roles:
        command = argv or role.command
        assert command is not None
        need = {name: float(written(name, v)) for name, v in role.resources.amounts().items()}
        for index in role.rank_range:
            r = ranks[index]
            local_rank = seen.get(r.node, 0)
            seen[r.node] = local_rank + 1
            rank_env = env | {
                "RANK": str(index), "WORLD_SIZE": str(len(ranks)),
                "LOCAL_RANK": str(local_rank), "LOCAL_WORLD_SIZE": str(per_node[r.node]),
                "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "STOKER_NODE": r.node,
                "STOKER_ROLE": role.name, "STOKER_ROLE_RANK": str(index - role.first),
                "STOKER_ROLE_WORLD_SIZE": str(role.ranks), "STOKER_ROLES": every,
            } | dict(role.env)
            processes.append(ProcessPlan(
                index=index, node=r.node, argv=tuple(command), env=rank_env,
                log_path=log_path(jobs_dir, job.id, index),
                exit_path=exit_path(jobs_dir, job.id, attempt, index),
                devices=_devices([r]), cpus=physical_cpus(r.cpu_slots), gpus=r.gpus,
                resources=need))
    return tuple(processes)


def _devices(ranks: Sequence[RankDevices]) -> DeviceUse:
    out: DeviceUse = {}
    for r in ranks:
        slot = out.setdefault(r.node, {"gpus": [], "cpus": []})
        slot["gpus"].extend(r.gpus)
        slot["cpus"].extend(r.cpu_slots)
    return out


def set_aside_run(jobs_dir: Path, job_id: int, attempt: int) -> Path | None:
    """Without ``--resume``, attempt ``attempt`` starts a training run afresh: the run dir of
    the attempts before it is kept as ``run.before-N`` (a run dir is never silently reused:
    `stoker train` refuses one that holds a run). Returns where it went, None if empty."""
    run = job_dir(jobs_dir, job_id) / RUN
    if run.is_symlink() or not run.is_dir() or not any(run.iterdir()):
        return None
    kept = run.with_name(f"{RUN}.before-{attempt}")
    run.rename(kept)
    return kept


def write_train_config(path: Path, train: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(loading.to_toml(train))
    tmp.replace(path)
