"""The store interface: jobs, their append-only event log, rank processes, quotas, nodes, the
audit log of admin actions, and the scheduler's state between cycles (why jobs wait, the
nominated jobs, admission fair sharing's usage).

Every job transition is one transaction together with its event. Implementations: `SqlStore`
(SQLite by default, any SQLAlchemy URL such as PostgreSQL).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from stoker.sched import Waiting
from stoker.spec.api import JobState
from stoker.spec.errors import StokerError


class DuplicateKey(StokerError):
    """The tenant already submitted a job with this idempotency key."""


# What a page of jobs can be sorted by (`Store.page_jobs`): the job's stored columns.
JOB_SORTS = ("id", "name", "tenant", "queue", "state", "priority", "started_at", "finished_at")

@dataclass(frozen=True)
class NewJob:
    tenant: str
    name: str
    queue: str
    priority_class: str
    priority: int
    spec: dict[str, Any]
    # A client's key for retrying the same submit: unique per tenant (None: no key).
    idempotency_key: str | None = None
    request_sha256: str | None = None  # of the submission the key was first used for
    code: bytes | None = None  # a [task] job's code archive, stored once by its SHA-256


@dataclass(frozen=True)
class JobRecord:
    id: int
    tenant: str
    name: str
    queue: str
    priority_class: str
    priority: int
    spec: dict[str, Any]
    state: JobState
    reason: str
    created_at: float
    updated_at: float
    queued_at: float
    admitted_at: float | None
    started_at: float | None
    finished_at: float | None
    attempt: int
    restarts: int
    not_before: float
    placement: dict[str, Any] | None
    stop_reason: str | None
    stop_requested_at: float | None
    term_sent_at: float | None
    attained_s: float
    exit_code: int | None
    version: int
    idempotency_key: str | None = None
    request_sha256: str | None = None


@dataclass(frozen=True)
class EventRecord:
    id: int
    job_id: int | None
    at: float
    kind: str
    from_state: JobState | None
    to_state: JobState | None
    reason: str
    actor: str
    detail: dict[str, Any] | None = None


@dataclass(frozen=True)
class ProcessRecord:
    job_id: int
    attempt: int
    index: int
    pid: int
    create_time: float
    node: str
    devices: dict[str, Any]
    log_path: str
    exit_code: int | None = None
    ended_at: float | None = None


@dataclass(frozen=True)
class QuotaRecord:
    queue: str
    flavor: str
    quota: dict[str, Any]
    updated_at: float
    updated_by: str


@dataclass(frozen=True)
class AuditRecord:
    """An admin action: ``action`` (quota, cordon, uncordon, cancel) on ``target`` (a
    queue/flavor, a node, a job id), by ``actor``. ``id`` is 0 until stored."""

    at: float
    actor: str
    action: str
    target: str
    detail: dict[str, Any] = field(default_factory=dict)
    id: int = 0


@dataclass(frozen=True)
class NodeRecord:
    """A node, its admin state and its health (`stoker.control.node_health` has the rules)."""

    name: str
    flavor: str
    labels: dict[str, Any] = field(default_factory=dict)
    capacity: dict[str, Any] = field(default_factory=dict)
    cordoned: bool = False
    cordon_reason: str = ""
    updated_at: float = 0.0
    cordoned_by: str = ""
    auto_cordon: bool = False  # cordoned by the health checks, which lift it again
    health: str = "healthy"  # healthy | suspect | unhealthy
    health_reason: str = ""
    passes: int = 0  # consecutive passes of the full check set while not healthy
    failures: int = 0  # consecutive failed checks
    repair: bool = False  # flagged for repair: failures_to_flag failed checks in a row
    drain: bool = False
    drain_reason: str = ""
    drained_at: float | None = None  # when a draining node's last job ended
    last_checks: dict[str, Any] | None = None  # check set -> its last report (JSON)


@dataclass(frozen=True)
class NodeEventRecord:
    """One entry of a node's history: a health change or failed check (``detail``: the
    check's report), a cordon, a drain, a repair flag."""

    node: str
    at: float
    kind: str
    from_state: str | None
    to_state: str | None
    reason: str
    actor: str
    detail: dict[str, Any] | None = None
    id: int = 0


@dataclass(frozen=True)
class CheckOutcome:
    """A health check set's result on one node, as the store records it."""

    check_set: str  # prestart | periodic | light
    passed: bool
    reason: str  # the failed checks, one line
    report: dict[str, Any]  # `HealthReport.to_json()`, with ``at``


@dataclass(frozen=True)
class CauseRecord:
    """Why attempt ``attempt`` of a job failed (`stoker.control.failure.Cause`)."""

    job_id: int
    attempt: int
    at: float
    category: str  # infra | user | unknown
    code: str
    message: str
    lines: list[str] = field(default_factory=list)  # the log lines that show it
    nodes: list[str] = field(default_factory=list)  # the nodes suspected
    exit_code: int | None = None


@dataclass(frozen=True)
class AttemptRecord:
    """One allocation of a job (its ``hold``-th admission) on one flavor: what it held there
    (``ranks``, ``gpus`` and ``cpus`` in all, on ``nodes``) from ``admitted_at`` to
    ``ended_at`` (None: still held), ``started_at`` when its processes were launched (None:
    never) as attempt ``attempt``, and the state it ended in (``outcome``: SUCCEEDED, FAILED,
    PREEMPTED, CANCELLED or QUEUED, requeued before it ran; None while held) with the failure's
    ``cause`` code. An allocation whose roles are on several flavors has one record per
    flavor. Written by the store with the transitions (`stoker.control.accounting`)."""

    job_id: int
    hold: int
    flavor: str
    tenant: str
    queue: str
    admitted_at: float
    ranks: int
    gpus: float
    cpus: float
    nodes: list[str] = field(default_factory=list)
    attempt: int | None = None
    started_at: float | None = None
    ended_at: float | None = None
    outcome: str | None = None
    cause: str | None = None


@dataclass(frozen=True)
class AttemptTotal:
    """GPU- and CPU-seconds of the ended allocations of one (tenant, queue, flavor, outcome)."""

    tenant: str
    queue: str
    flavor: str
    outcome: str
    gpu_s: float
    cpu_s: float


@dataclass(frozen=True)
class UsageRecord:
    """Admission fair sharing's usage of one tenant in one queue: the decayed ``usage`` and
    the entry ``penalty`` charged since the last sample, each per resource of the cluster's
    space in its unit (empty: none), and
    ``sampled_at``, the last sample (the usage decays from there)."""

    queue: str
    tenant: str
    usage: tuple[float, ...]
    penalty: tuple[float, ...]
    sampled_at: float | None


@dataclass(frozen=True)
class SchedulerChanges:
    """What one cycle changed in the scheduler's stored state: only that is written."""

    waiting: Mapping[int, Waiting] = field(default_factory=dict)  # new or changed reasons
    not_waiting: Collection[int] = ()  # jobs that no longer wait (or have no reason)
    nominations: Mapping[int, tuple[int, ...]] | None = None  # all of them; None: unchanged
    usage: Sequence[UsageRecord] = ()  # new or changed
    usage_gone: Collection[tuple[str, str]] = ()  # (queue, tenant) whose usage decayed away

    def __bool__(self) -> bool:
        return bool(self.waiting or self.not_waiting or self.nominations is not None
                    or self.usage or self.usage_gone)


class Store(Protocol):
    """Durable control-plane state. Methods are atomic; none keeps a transaction open."""

    def submit(self, job: NewJob, actor: str) -> JobRecord:
        """Insert a QUEUED job and its "submitted" event. DuplicateKey, and nothing written,
        when the tenant already has a job with ``job.idempotency_key``."""
        ...

    def get_job(self, job_id: int) -> JobRecord | None: ...

    def code_archive(self, sha256: str) -> bytes | None:
        """A code archive stored with a job (`NewJob.code`), by its SHA-256."""
        ...

    def job_by_key(self, tenant: str, idempotency_key: str) -> JobRecord | None:
        """The tenant's job submitted with this idempotency key."""
        ...

    def list_jobs(self, *, tenant: str | None = None,
                  states: Collection[JobState] | None = None) -> list[JobRecord]:
        """Jobs in id order, optionally of one tenant and in some states."""
        ...

    def job_owners(self, job_ids: Collection[int]) -> dict[int, tuple[str, JobState]]:
        """The tenant and state of each of these jobs that exists, in one read (a cycle's
        dependencies, `stoker.control.depends`)."""
        ...

    def page_jobs(self, *, limit: int, offset: int = 0, tenant: str | None = None,
                  states: Collection[JobState] | None = None, queue: str | None = None,
                  newest_first: bool = False, sort: str = "id") -> tuple[list[JobRecord], int]:
        """``limit`` jobs from ``offset`` in ``sort`` order (one of `JOB_SORTS`, then id;
        ``newest_first``: descending), with the filters of `list_jobs` and a queue, and how
        many jobs match in all."""
        ...

    def transition(self, job_id: int, expect: Collection[JobState], path: Sequence[JobState],
                   reason: str, actor: str, changes: Mapping[str, Any] | None = None,
                   detail: Mapping[str, Any] | None = None,
                   version: int | None = None,
                   cause: CauseRecord | None = None) -> JobRecord | None:
        """If the job is in one of ``expect`` (and at ``version``, when given), move it along
        ``path`` (one event per step) and apply ``changes`` (and record the ended attempt's
        ``cause``), all in one transaction. None, and nothing written, otherwise."""
        ...

    def causes(self, job_id: int) -> list[CauseRecord]:
        """Why each failed attempt of the job failed, by attempt."""
        ...

    def causes_since(self, since: float) -> list[CauseRecord]:
        """Every job's attempt causes recorded at or after ``since``, oldest first."""
        ...

    def attempts(self, *, start: float | None = None, end: float | None = None,
                 tenant: str | None = None, job_id: int | None = None) -> list[AttemptRecord]:
        """The allocations held at some time in [``start``, ``end``) (None: unbounded), of
        one tenant or job, by job, hold and flavor."""
        ...

    def attempt_totals(self) -> list[AttemptTotal]:
        """Every ended allocation's GPU- and CPU-seconds, summed per (tenant, queue, flavor,
        outcome) by the database."""
        ...

    def annotate(self, job_id: int, expect: Collection[JobState], kind: str, reason: str,
                 actor: str, changes: Mapping[str, Any] | None = None,
                 detail: Mapping[str, Any] | None = None,
                 version: int | None = None) -> JobRecord | None:
        """Like `transition` without a state change: apply ``changes`` and append one event."""
        ...

    def events(self, job_id: int | None = None, after_id: int = 0) -> list[EventRecord]:
        """Events in order; of one job, or all of them when ``job_id`` is None."""
        ...

    def log_event(self, kind: str, reason: str, actor: str,
                  detail: Mapping[str, Any] | None = None) -> EventRecord:
        """A cluster event not about a job (e.g. adopted orphans, config reloads)."""
        ...

    def add_processes(self, processes: Sequence[ProcessRecord]) -> None: ...

    def processes(self, job_id: int, attempt: int | None = None) -> list[ProcessRecord]:
        """A job's processes, of one attempt or all."""
        ...

    def live_processes(self) -> list[ProcessRecord]:
        """Processes of active jobs' current attempts that have no recorded exit."""
        ...

    def processes_since(self, since: float) -> list[ProcessRecord]:
        """Every job's processes still running at or after ``since`` (no exit recorded, or
        ended then or later)."""
        ...

    def end_process(self, job_id: int, attempt: int, index: int, exit_code: int | None,
                    ended_at: float) -> None: ...

    def set_quota(self, quota: QuotaRecord) -> QuotaRecord:
        """Create or replace a quota override, with a "quota" event and an audit entry."""
        ...

    def quotas(self) -> list[QuotaRecord]: ...

    def sync_nodes(self, nodes: Sequence[NodeRecord]) -> None:
        """Record the nodes seen now (flavor, labels, capacity), keeping their admin state."""
        ...

    def nodes(self) -> list[NodeRecord]: ...

    def set_cordon(self, name: str, cordoned: bool, reason: str, actor: str) -> NodeRecord | None:
        """Cordon or uncordon a node, with a "node" event, a history entry and an audit entry.
        An uncordon returns the node: healthy, its failure count and repair flag cleared."""
        ...

    def set_drain(self, name: str, drain: bool, reason: str, actor: str) -> NodeRecord | None:
        """Start or stop draining a node, with a "node" event, a history entry and an audit
        entry."""
        ...

    def mark_drained(self, name: str, actor: str) -> NodeRecord | None:
        """A draining node's last job has ended (once: None when not draining or already
        drained)."""
        ...

    def record_check(self, name: str, outcome: CheckOutcome, passes_to_return: int,
                     failures_to_flag: int, actor: str) -> NodeRecord | None:
        """Apply a check's outcome to the node's health (`node_health.after_check`) in one
        transaction, with its history entries; None for an unknown node."""
        ...

    def suspect_node(self, name: str, reason: str, failures_to_flag: int, actor: str,
                     detail: Mapping[str, Any] | None = None, cordon: bool = True
                     ) -> NodeRecord | None:
        """A failed attempt blames the node (`node_health.after_suspicion`): suspect and, with
        ``cordon``, cordoned by the health system, in one transaction with its history."""
        ...

    def node_events(self, name: str, limit: int = 100) -> list[NodeEventRecord]:
        """A node's history, the latest ``limit`` entries, oldest first."""
        ...

    def add_audit(self, entry: AuditRecord) -> AuditRecord: ...

    def audit(self, after_id: int = 0, limit: int | None = None) -> list[AuditRecord]:
        """Audit entries in order, from after ``after_id``."""
        ...

    def waiting(self, job_ids: Collection[int] | None = None) -> dict[int, Waiting]:
        """Why each job waits (of ``job_ids``, or all), as the leader's last cycle said."""
        ...

    def nominations(self) -> dict[int, tuple[int, ...]]:
        """The jobs the leader's last cycle nominated, each with its victims."""
        ...

    def tenant_usage(self) -> list[UsageRecord]:
        """Admission fair sharing's usage, by (queue, tenant)."""
        ...

    def save_scheduler(self, changes: SchedulerChanges) -> None:
        """Apply a cycle's changes to the scheduler's state, in one transaction."""
        ...
