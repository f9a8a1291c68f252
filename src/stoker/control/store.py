"""The store interface: jobs, their append-only event log, rank processes, quotas, nodes and
the audit log of admin actions.

Every job transition is one transaction together with its event. Implementations: `SqlStore`
(SQLite by default, any SQLAlchemy URL such as PostgreSQL).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from stoker.spec.api import JobState
from stoker.spec.errors import StokerError


class DuplicateKey(StokerError):
    """The tenant already submitted a job with this idempotency key."""


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
    name: str
    flavor: str
    labels: dict[str, Any] = field(default_factory=dict)
    capacity: dict[str, Any] = field(default_factory=dict)
    cordoned: bool = False
    cordon_reason: str = ""
    updated_at: float = 0.0


class Store(Protocol):
    """Durable control-plane state. Methods are atomic; none keeps a transaction open."""

    def submit(self, job: NewJob, actor: str) -> JobRecord:
        """Insert a QUEUED job and its "submitted" event. DuplicateKey, and nothing written,
        when the tenant already has a job with ``job.idempotency_key``."""
        ...

    def get_job(self, job_id: int) -> JobRecord | None: ...

    def job_by_key(self, tenant: str, idempotency_key: str) -> JobRecord | None:
        """The tenant's job submitted with this idempotency key."""
        ...

    def list_jobs(self, *, tenant: str | None = None,
                  states: Collection[JobState] | None = None) -> list[JobRecord]:
        """Jobs in id order, optionally of one tenant and in some states."""
        ...

    def transition(self, job_id: int, expect: Collection[JobState], path: Sequence[JobState],
                   reason: str, actor: str, changes: Mapping[str, Any] | None = None,
                   detail: Mapping[str, Any] | None = None,
                   version: int | None = None) -> JobRecord | None:
        """If the job is in one of ``expect`` (and at ``version``, when given), move it along
        ``path`` (one event per step) and apply ``changes``, all in one transaction.
        None, and nothing written, otherwise."""
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
        """Cordon or uncordon a node, with a "node" event and an audit entry."""
        ...

    def add_audit(self, entry: AuditRecord) -> AuditRecord: ...

    def audit(self, after_id: int = 0, limit: int | None = None) -> list[AuditRecord]:
        """Audit entries in order, from after ``after_id``."""
        ...
