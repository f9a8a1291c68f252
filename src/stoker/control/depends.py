"""Job dependencies, as Slurm's ``--dependency=afterok``: a job with ``after_ok = [12, 13]``
(``stoker submit --after-ok 12 --after-ok 13``) stays QUEUED, out of the scheduler's sight,
until jobs 12 and 13 have both SUCCEEDED. If one of them ends FAILED or CANCELLED the
dependent job can never run, and it is CANCELLED with the reason (Slurm's
``kill_invalid_depend``, not its default of leaving the job pending forever).

At submission every named job must exist and be the submitter's own (the admin's: any
tenant's), and none may already have ended FAILED or CANCELLED; a job's dependencies all exist
before it does, so there are no cycles. Each cycle the reconciler reads the states of all the
queued jobs' dependencies at once (`Store.job_owners`, one query, only when some queued job
has dependencies) and sorts the queued jobs with `verdicts`: ready, waiting (left out of the
snapshot, its ``reason`` saying for which job) or broken (cancelled).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from stoker.control.snapshot import job_spec
from stoker.control.store import JobRecord, Store
from stoker.spec.api import JobState

BROKEN = (JobState.FAILED, JobState.CANCELLED)  # ends a dependency never comes back from


@dataclass(frozen=True)
class Blocked:
    """A queued job that may not be scheduled: ``on`` has not SUCCEEDED (yet, or ever:
    ``broken``, when it ended in ``state``, or no longer exists)."""

    job: int
    on: int
    state: JobState | None  # None: the job does not exist
    broken: bool

    @property
    def reason(self) -> str:
        if not self.broken:
            return waiting_reason(self.on)
        if self.state is None:
            return f"dependency job {self.on} no longer exists"
        return f"dependency job {self.on} ended {self.state.value}"


WAITING = "waiting for job "


def waiting_reason(on: int) -> str:
    return f"{WAITING}{on} to succeed"


def verdicts(records: Iterable[JobRecord], store: Store) -> dict[int, Blocked]:
    """The queued jobs among ``records`` that may not be scheduled, by id; the others
    (without dependencies, or all of them SUCCEEDED) are ready. One read of the store, none
    when no queued job has dependencies."""
    wanted: dict[int, tuple[int, ...]] = {}
    for record in records:
        if record.state == JobState.QUEUED:
            after = job_spec(record).after_ok
            if after:
                wanted[record.id] = after
    if not wanted:
        return {}
    states = {i: state for i, (_, state) in
              store.job_owners({d for after in wanted.values() for d in after}).items()}
    return blocked(wanted, states)


def blocked(wanted: Mapping[int, tuple[int, ...]], states: Mapping[int, JobState]
            ) -> dict[int, Blocked]:
    """``wanted``: each job's dependencies; ``states``: theirs. A broken dependency wins over
    one still running (the job can never run); else the first not yet SUCCEEDED."""
    out: dict[int, Blocked] = {}
    for job, after in wanted.items():
        waiting: Blocked | None = None
        for dep in after:
            state = states.get(dep)
            if state is None or state in BROKEN:
                waiting = Blocked(job, dep, state, broken=True)
                break
            if state != JobState.SUCCEEDED and waiting is None:
                waiting = Blocked(job, dep, state, broken=False)
        if waiting is not None:
            out[job] = waiting
    return out
