"""Operations on one job beside cancel, as Slurm's ``scontrol`` offers them: hold and release
a queued job, requeue an admitted one, change a job's priority class.

A hold is stored in the job's ``not_before`` (the time before which the scheduler does not
consider it, also used for restart backoff): `HELD` there keeps the job out of every cycle,
across server restarts, until a release sets it to now. The job stays QUEUED; its ``reason``
says who held it and why. A requeue stops the job as a preemption does (its checkpoints are
kept, its restarts not counted) and puts it back in the queue; with ``hold`` it comes back
held. Each is an event of the job; one done by someone else than the job's tenant (the
admin), and every priority change, is also in the audit log.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from stoker.control.states import ACTIVE, HELD, is_held
from stoker.control.store import AuditRecord, JobRecord
from stoker.spec.api import JobState
from stoker.spec.errors import StokerError

if TYPE_CHECKING:
    from stoker.control.plane import ControlPlane

TRIES = 20  # the reconciler may move the job between our read and our write


class Refused(StokerError):
    """Not allowed for this caller (403), e.g. a tenant raising its own job's priority."""


def _conflict(message: str) -> StokerError:
    from stoker.control.plane import Conflict

    return Conflict(message)


def _why(verb: str, actor: str, reason: str) -> str:
    return f"{verb} by {actor}" + (f": {reason}" if reason else "")


def hold(plane: ControlPlane, job_id: int, actor: str, reason: str = "") -> JobRecord:
    """Keep a queued job from being scheduled until it is released."""
    for _ in range(TRIES):
        job = _get(plane, job_id)
        if job.state != JobState.QUEUED:
            raise _conflict(f"job {job_id} is {job.state.value}: only a queued job can be "
                            "held (requeue it with --hold to stop it and hold it)")
        if is_held(job.not_before):
            return job
        done = plane.store.annotate(job_id, (JobState.QUEUED,), "hold",
                                    _why("held", actor, reason), actor,
                                    {"not_before": HELD, "reason": _why("held", actor, reason)},
                                    {"reason": reason}, version=job.version)
        if done is not None:
            _after(plane, job, actor, "hold", reason)
            return done
    raise _conflict(f"job {job_id} keeps changing; try again")


def release(plane: ControlPlane, job_id: int, actor: str) -> JobRecord:
    """Let a held job be scheduled again (at once: a restart backoff it was in is over)."""
    for _ in range(TRIES):
        job = _get(plane, job_id)
        if not is_held(job.not_before):
            raise _conflict(f"job {job_id} is not held")
        why = f"released by {actor}"
        changes = {"not_before": time.time()} | ({"reason": why} if job.state == JobState.QUEUED
                                                 else {})
        done = plane.store.annotate(job_id, (*ACTIVE, JobState.QUEUED), "release", why, actor,
                                    changes, version=job.version)
        if done is not None:
            _after(plane, job, actor, "release", "")
            return done
    raise _conflict(f"job {job_id} keeps changing; try again")


def requeue(plane: ControlPlane, job_id: int, actor: str, reason: str = "",
            held: bool = False) -> JobRecord:
    """Stop an admitted job as a preemption does and put it back in the queue (held, with
    ``held``); the reconciler does the stopping."""
    for _ in range(TRIES):
        job = _get(plane, job_id)
        if job.state not in ACTIVE:
            raise _conflict(f"job {job_id} is {job.state.value}: only an admitted, starting "
                            "or running job can be requeued")
        if job.stop_reason is not None:
            raise _conflict(f"job {job_id} is already stopping ({job.stop_reason})")
        changes: dict[str, object] = {"stop_reason": "preempt",
                                      "stop_requested_at": time.time()}
        if held:
            changes["not_before"] = HELD
        why = _why("requeued" + (" and held" if held else ""), actor, reason)
        done = plane.store.annotate(job_id, ACTIVE, "requeue", why, actor, changes,
                                    {"reason": reason, "hold": held}, version=job.version)
        if done is not None:
            _after(plane, job, actor, "requeue", reason, leader=True)
            return done
    raise _conflict(f"job {job_id} keeps changing; try again")


def set_priority(plane: ControlPlane, job_id: int, actor: str, admin: bool,
                 priority_class: str) -> JobRecord:
    """Move a job to another priority class: its tenant may lower it, the admin may set any.
    A queued job is ordered by it from the next cycle; an admitted one is preempted by it."""
    classes = plane.cluster.priority_classes
    if priority_class not in classes:
        known = ", ".join(sorted(classes)) or "none are configured"
        raise KeyError(f"no priority class {priority_class!r} ({known})")
    new = plane.cluster.priority(priority_class)
    for _ in range(TRIES):
        job = _get(plane, job_id)
        if job.state not in (*ACTIVE, JobState.QUEUED):
            raise _conflict(f"job {job_id} is {job.state.value}")
        if new > job.priority and not admin:
            raise Refused(f"only the admin may raise a job's priority ({job.priority_class} "
                          f"{job.priority} -> {priority_class} {new})")
        done = plane.store.annotate(
            job_id, (*ACTIVE, JobState.QUEUED), "priority",
            f"priority {job.priority_class or '-'} ({job.priority}) -> {priority_class} "
            f"({new}) by {actor}", actor, {"priority_class": priority_class, "priority": new},
            {"from": job.priority_class, "to": priority_class}, version=job.version)
        if done is not None:
            plane.store.add_audit(AuditRecord(time.time(), actor, "priority", str(job_id), {
                "tenant": job.tenant, "from": job.priority_class, "to": priority_class}))
            plane.reconciler.wake()
            return done
    raise _conflict(f"job {job_id} keeps changing; try again")


def _get(plane: ControlPlane, job_id: int) -> JobRecord:
    job = plane.store.get_job(job_id)
    assert job is not None  # the API checked it exists and is the caller's
    return job


def _after(plane: ControlPlane, job: JobRecord, actor: str, action: str, reason: str,
           leader: bool = False) -> None:
    """Wake the scheduler (the leader, when it must stop processes) and audit an action on
    another tenant's job."""
    from stoker.control.sql_store import SqlStore

    plane.reconciler.wake()
    if leader and isinstance(plane.store, SqlStore):
        plane.store.wake_leader()
    if actor != job.tenant:
        plane.store.add_audit(AuditRecord(time.time(), actor, action, str(job.id), {
            "tenant": job.tenant, "state": job.state.value, "reason": reason}))
