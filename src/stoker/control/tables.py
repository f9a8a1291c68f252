"""The store's schema as SQLAlchemy 2 tables. Alembic migrations (control/migrations) create it.

Portable types only (no SQLite-only SQL): times are epoch seconds as doubles, structured values
are JSON, so the same schema runs on PostgreSQL.
"""

from __future__ import annotations

from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Row ids are 64-bit (the API's ids are): BIGINT on PostgreSQL, where INTEGER is 32-bit; on
# SQLite INTEGER is already 64-bit and only "INTEGER PRIMARY KEY" numbers rows by itself.
Id = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dict[str, Any]: JSON, list[Any]: JSON, float: Double,
    }


class Job(Base):
    __tablename__ = "jobs"
    # NULL keys never collide: only submits that carry a key are deduplicated.
    __table_args__ = (Index("ix_jobs_tenant_idempotency_key", "tenant", "idempotency_key",
                            unique=True),)

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(String(128), index=True)
    name: Mapped[str] = mapped_column(String(256))
    queue: Mapped[str] = mapped_column(String(128), index=True)
    priority_class: Mapped[str] = mapped_column(String(128))
    priority: Mapped[int] = mapped_column(Integer)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[float]
    updated_at: Mapped[float]
    queued_at: Mapped[float]
    admitted_at: Mapped[float | None]
    started_at: Mapped[float | None]
    finished_at: Mapped[float | None]
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    restarts: Mapped[int] = mapped_column(Integer, default=0)
    not_before: Mapped[float] = mapped_column(Double, default=0.0)
    placement: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    stop_reason: Mapped[str | None] = mapped_column(String(32))
    stop_requested_at: Mapped[float | None]
    term_sent_at: Mapped[float | None]
    attained_s: Mapped[float] = mapped_column(Double, default=0.0)
    exit_code: Mapped[int | None] = mapped_column(Integer)
    version: Mapped[int] = mapped_column(Integer, default=0)
    idempotency_key: Mapped[str | None] = mapped_column(String(128))
    request_sha256: Mapped[str | None] = mapped_column(String(64))


class Event(Base):
    """Append-only: rows are inserted, never updated or deleted."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_job_id_id", "job_id", "id"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    job_id: Mapped[int | None] = mapped_column(Id, ForeignKey("jobs.id"))
    at: Mapped[float]
    kind: Mapped[str] = mapped_column(String(32))
    from_state: Mapped[str | None] = mapped_column(String(16))
    to_state: Mapped[str | None] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text, default="")
    actor: Mapped[str] = mapped_column(String(128))
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class RankProcess(Base):
    """One process started for a job attempt: a rank, or the training launcher of all ranks."""

    __tablename__ = "processes"

    job_id: Mapped[int] = mapped_column(Id, ForeignKey("jobs.id"), primary_key=True)
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True)
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    pid: Mapped[int] = mapped_column(Integer)
    create_time: Mapped[float]
    node: Mapped[str] = mapped_column(String(128))
    devices: Mapped[dict[str, Any]] = mapped_column(JSON)
    log_path: Mapped[str] = mapped_column(Text)
    exit_code: Mapped[int | None] = mapped_column(Integer)
    ended_at: Mapped[float | None]


class QuotaOverride(Base):
    """An admin's replacement of one queue's quota for one flavor, applied from the next cycle.

    ``quota`` is a `stoker.spec.cluster.Quota` as JSON (nominal amounts and limits).
    """

    __tablename__ = "quota_overrides"

    queue: Mapped[str] = mapped_column(String(128), primary_key=True)
    flavor: Mapped[str] = mapped_column(String(128), primary_key=True)
    quota: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[float]
    updated_by: Mapped[str] = mapped_column(String(128))


class Node(Base):
    """A node as last seen (from config or autodetection), its admin state (cordon, drain) and
    its health (`stoker.control.node_health`): the checks' verdict, the consecutive passes and
    failures behind it, the repair flag and each check set's last report."""

    __tablename__ = "nodes"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    flavor: Mapped[str] = mapped_column(String(128))
    labels: Mapped[dict[str, Any]] = mapped_column(JSON)
    capacity: Mapped[dict[str, Any]] = mapped_column(JSON)
    cordoned: Mapped[bool] = mapped_column(Boolean, default=False)
    cordon_reason: Mapped[str] = mapped_column(Text, default="")
    updated_at: Mapped[float]
    cordoned_by: Mapped[str] = mapped_column(String(128), default="", server_default="")
    # Cordoned by the health checks (they lift it again), not by an admin.
    auto_cordon: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    health: Mapped[str] = mapped_column(String(16), default="healthy",
                                        server_default="healthy")
    health_reason: Mapped[str] = mapped_column(Text, default="", server_default="")
    passes: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    repair: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    drain: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    drain_reason: Mapped[str] = mapped_column(Text, default="", server_default="")
    drained_at: Mapped[float | None]
    last_checks: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # check set -> report


class NodeEvent(Base):
    """A node's history, append-only: health changes and failed checks (with the checks'
    figures in ``detail``), cordons, drains, repair flags."""

    __tablename__ = "node_events"
    __table_args__ = (Index("ix_node_events_node_id", "node", "id"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    node: Mapped[str] = mapped_column(String(128))
    at: Mapped[float]
    kind: Mapped[str] = mapped_column(String(32))
    from_state: Mapped[str | None] = mapped_column(String(16))
    to_state: Mapped[str | None] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text, default="")
    actor: Mapped[str] = mapped_column(String(128))
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class Audit(Base):
    """Append-only log of admin actions (quota changes, cordons, cancels of others' jobs)."""

    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    at: Mapped[float]
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(String(256))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)


class Leader(Base):
    """The control plane's leader as it announced itself (one row, ``id`` 1), on PostgreSQL.

    The advisory lock decides who leads (`stoker.control.leader`); this row says who took it
    last, and ``term`` (+1 at each takeover) fences a deposed leader's writes.
    """

    __tablename__ = "leader"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    term: Mapped[int] = mapped_column(Integer)
    server: Mapped[str] = mapped_column(String(256))
    url: Mapped[str] = mapped_column(Text)
    since: Mapped[float]


class JobWaiting(Base):
    """Why a queued job waits, as the leader's last cycle said (`stoker.sched.Waiting`), so
    every server's API serves it. Written when it changes; removed when the job stops waiting.
    Amounts are [gpus, cpus, memory]."""

    __tablename__ = "waiting"

    job_id: Mapped[int] = mapped_column(Id, ForeignKey("jobs.id"), primary_key=True)
    code: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)
    flavor: Mapped[str | None] = mapped_column(String(128))
    requested: Mapped[list[Any] | None] = mapped_column(JSON)
    available: Mapped[list[Any] | None] = mapped_column(JSON)
    borrowable: Mapped[list[Any] | None] = mapped_column(JSON)
    starving: Mapped[bool] = mapped_column(Boolean)
    updated_at: Mapped[float]


class Nomination(Base):
    """A queued job the leader's last cycle nominated: it waits for its victims (job ids) to
    stop and goes first in the next cycle, whichever server runs it."""

    __tablename__ = "nominations"

    job_id: Mapped[int] = mapped_column(Id, ForeignKey("jobs.id"), primary_key=True)
    victims: Mapped[list[Any]] = mapped_column(JSON)
    updated_at: Mapped[float]


class TenantUsage(Base):
    """Admission fair sharing's decayed usage of one tenant in one queue (`UsageTracker`):
    ``usage`` and the entry ``penalty`` charged since the last sample, each [gpus, cpus,
    memory bytes], and ``sampled_at``, the tracker's last sample, from which it decays."""

    __tablename__ = "tenant_usage"

    queue: Mapped[str] = mapped_column(String(128), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(128), primary_key=True)
    usage: Mapped[list[Any]] = mapped_column(JSON)
    penalty: Mapped[list[Any]] = mapped_column(JSON)
    sampled_at: Mapped[float | None]
    updated_at: Mapped[float]


class AttemptCause(Base):
    """Why a job attempt failed (`stoker.control.failure`): written with the transition that
    ends the attempt, never changed. ``lines``: the log lines that show it; ``nodes``: the
    nodes suspected."""

    __tablename__ = "attempt_causes"

    job_id: Mapped[int] = mapped_column(Id, ForeignKey("jobs.id"), primary_key=True)
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[float]
    category: Mapped[str] = mapped_column(String(16))
    code: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)
    lines: Mapped[list[Any]] = mapped_column(JSON)
    nodes: Mapped[list[Any]] = mapped_column(JSON)
    exit_code: Mapped[int | None] = mapped_column(Integer)


class Attempt(Base):
    """One allocation of a job on one flavor (`stoker.control.store.AttemptRecord`): inserted
    by the transition that admits the job, its start and end written by the transitions that
    launch and release it, in the same transactions. The accounting reads it
    (`stoker.control.accounting`)."""

    __tablename__ = "attempts"
    __table_args__ = (Index("ix_attempts_admitted_at", "admitted_at"),
                      Index("ix_attempts_ended_at", "ended_at"),
                      Index("ix_attempts_tenant", "tenant"))

    job_id: Mapped[int] = mapped_column(Id, ForeignKey("jobs.id"), primary_key=True)
    hold: Mapped[int] = mapped_column(Integer, primary_key=True)
    flavor: Mapped[str] = mapped_column(String(128), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(128))
    queue: Mapped[str] = mapped_column(String(128))
    admitted_at: Mapped[float]
    ranks: Mapped[int] = mapped_column(Integer)
    gpus: Mapped[float]
    cpus: Mapped[float]
    nodes: Mapped[list[Any]] = mapped_column(JSON)
    attempt: Mapped[int | None] = mapped_column(Integer)
    started_at: Mapped[float | None]
    ended_at: Mapped[float | None]
    outcome: Mapped[str | None] = mapped_column(String(16))
    cause: Mapped[str | None] = mapped_column(String(32))


class CodeArchive(Base):
    """A [task] job's code as submitted (`stoker.control.code_archive`), stored once by its
    SHA-256 whichever jobs carry it; the launch unpacks it into the job's directory."""

    __tablename__ = "code_archives"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[float]
