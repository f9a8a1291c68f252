"""`Store` over SQLAlchemy 2: SQLite (WAL) by default, or PostgreSQL.

SQLite has one writer at a time (``BEGIN IMMEDIATE``), so a read-then-write transaction sees
no concurrent change. PostgreSQL runs writers concurrently at READ COMMITTED, so the rows a
transaction reads before changing them are locked (``SELECT ... FOR UPDATE``; a no-op on
SQLite), inserts that race on a key are retried, and audit entries are numbered in commit order
(a transaction-scoped advisory lock) so that paging by id never skips one.

A store may carry a *fence*: a check run first in each write transaction (the leader's term,
`stoker.control.leader`) that raises to refuse the write.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import fields, replace
from itertools import pairwise
from typing import Any

from sqlalchemy import Engine, Row, delete, func, or_, select, text, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from stoker.control import node_health
from stoker.control import tables as t
from stoker.control.accounting import parts
from stoker.control.db import WRITE, migrate, open_engine
from stoker.control.states import ACTIVE, check_path
from stoker.control.store import (
    JOB_SORTS,
    AttemptRecord,
    AttemptTotal,
    AuditRecord,
    CauseRecord,
    CheckOutcome,
    DuplicateKey,
    EventRecord,
    JobRecord,
    NewJob,
    NodeEventRecord,
    NodeRecord,
    ProcessRecord,
    QuotaRecord,
    SchedulerChanges,
    UsageRecord,
)
from stoker.sched import Resources, Waiting
from stoker.spec.api import JobState

# Columns a transition may change besides the state (the rest are set by the store itself).
MUTABLE = frozenset({
    "queued_at", "admitted_at", "started_at", "finished_at", "attempt", "restarts", "not_before",
    "placement", "stop_reason", "stop_requested_at", "term_sent_at", "attained_s", "exit_code",
    "reason", "priority_class", "priority",  # a hold's reason; a priority change (job_ops)
})


CHUNK = 500  # ids per IN (...): well below SQLite's and PostgreSQL's bound on parameters
AUDIT_LOCK = 0x73746F6B65720002  # pg_advisory_xact_lock key: audit ids in commit order
WAKE_CHANNEL = "stoker_wake"  # PostgreSQL NOTIFY: work for the leader (a submit, a cancel)
Fence = Callable[[Session], None]


class SqlStore:
    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time,
                 fence: Fence | None = None) -> None:
        self.engine = engine
        self.postgres = engine.dialect.name == "postgresql"
        self._clock = clock
        self._fence = fence
        self._read = sessionmaker(engine, expire_on_commit=False)
        self._write = sessionmaker(engine.execution_options(**WRITE), expire_on_commit=False)

    @classmethod
    def open(cls, url: str) -> SqlStore:
        """Connect to ``url`` and migrate its schema to the latest revision. A bad URL or an
        unreachable database is a one-line `DatabaseError` (never showing a password)."""
        engine = open_engine(url)
        try:
            migrate(engine)
        except Exception:
            engine.dispose()
            raise
        return cls(engine)

    def wake_leader(self) -> None:
        """Tell the leader, whichever server it is, to run a cycle now (PostgreSQL NOTIFY;
        nothing to do on SQLite, where the one server is the leader)."""
        if self.postgres:
            with self.engine.begin() as conn:
                conn.execute(text(f"NOTIFY {WAKE_CHANNEL}"))

    def fenced(self, fence: Fence) -> SqlStore:
        """This store (same engine and clock) with ``fence`` run first in every write."""
        return SqlStore(self.engine, self._clock, fence)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        with self._write() as session, session.begin():
            if self._fence is not None:
                self._fence(session)
            yield session

    def _audit_order(self, session: Session) -> None:
        """Hold the audit lock to the end of this transaction (PostgreSQL)."""
        if self.postgres:
            session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": AUDIT_LOCK})

    def _retrying(self, write: Callable[[], Any], tries: int = 5) -> Any:
        """Run ``write`` again when a concurrent insert of the same key won the race."""
        for attempt in range(tries):
            try:
                return write()
            except IntegrityError:
                if attempt == tries - 1:
                    raise
        raise AssertionError("unreachable")

    # --- jobs -------------------------------------------------------------------------------

    def submit(self, job: NewJob, actor: str) -> JobRecord:
        now = self._clock()
        try:
            with self._tx() as s:
                row = t.Job(tenant=job.tenant, name=job.name, queue=job.queue,
                            priority_class=job.priority_class, priority=job.priority,
                            spec=job.spec, state=JobState.QUEUED.value, reason="submitted",
                            created_at=now, updated_at=now, queued_at=now, attempt=0,
                            restarts=0, not_before=0.0, attained_s=0.0, version=0,
                            idempotency_key=job.idempotency_key,
                            request_sha256=job.request_sha256)
                s.add(row)
                s.flush()
                s.add(t.Event(job_id=row.id, at=now, kind="transition", from_state=None,
                              to_state=JobState.QUEUED.value, reason="submitted", actor=actor))
                if job.code is not None:
                    self._keep_code(s, job.code, now)
                if self.postgres:  # delivered at commit, to the leader wherever it runs
                    s.execute(text(f"NOTIFY {WAKE_CHANNEL}"))
                return _job(row)  # type: ignore[arg-type]
        except IntegrityError:
            # Only the (tenant, idempotency key) index can refuse a new job row.
            if job.idempotency_key is None:
                raise
            raise DuplicateKey(f"tenant {job.tenant!r} already used idempotency key "
                               f"{job.idempotency_key!r}") from None

    def _keep_code(self, s: Session, code: bytes, now: float) -> None:
        """Store a code archive unless one with its digest is (a concurrent submit of the same
        code is no conflict: the insert does nothing)."""
        insert = postgresql.insert if self.postgres else sqlite.insert
        s.execute(insert(t.CodeArchive)
                  .values(sha256=hashlib.sha256(code).hexdigest(), data=code, created_at=now)
                  .on_conflict_do_nothing(index_elements=["sha256"]))

    def code_archive(self, sha256: str) -> bytes | None:
        with self._read() as s:
            data: bytes | None = s.scalar(select(t.CodeArchive.data)
                                          .where(t.CodeArchive.sha256 == sha256))
            return data

    def get_job(self, job_id: int) -> JobRecord | None:
        with self._read() as s:
            row = s.execute(select(*_JOB_COLUMNS).where(t.Job.id == job_id)).first()
            return _job(row) if row else None

    def job_by_key(self, tenant: str, idempotency_key: str) -> JobRecord | None:
        query = select(*_JOB_COLUMNS).where(t.Job.tenant == tenant,
                                            t.Job.idempotency_key == idempotency_key)
        with self._read() as s:
            row = s.execute(query).first()
            return _job(row) if row else None

    def list_jobs(self, *, tenant: str | None = None,
                  states: Collection[JobState] | None = None) -> list[JobRecord]:
        # Core rows, not ORM objects: listing is on every reconcile cycle's path.
        query = select(*_JOB_COLUMNS).order_by(t.Job.id)
        if tenant is not None:
            query = query.where(t.Job.tenant == tenant)
        if states is not None:
            query = query.where(t.Job.state.in_([s.value for s in states]))
        with self._read() as s:
            return [_job(row) for row in s.execute(query)]

    def job_owners(self, job_ids: Collection[int]) -> dict[int, tuple[str, JobState]]:
        ids = sorted(set(job_ids))
        with self._read() as s:
            return {row.id: (row.tenant, JobState(row.state)) for part in _chunks(ids)
                    for row in s.execute(select(t.Job.id, t.Job.tenant, t.Job.state)
                                         .where(t.Job.id.in_(part)))}

    def page_jobs(self, *, limit: int, offset: int = 0, tenant: str | None = None,
                  states: Collection[JobState] | None = None, queue: str | None = None,
                  newest_first: bool = False, sort: str = "id") -> tuple[list[JobRecord], int]:
        if sort not in JOB_SORTS:
            raise ValueError(f"cannot sort jobs by {sort!r}")
        where = []
        if tenant is not None:
            where.append(t.Job.tenant == tenant)
        if states is not None:
            where.append(t.Job.state.in_([s.value for s in states]))
        if queue is not None:
            where.append(t.Job.queue == queue)
        column, by_id = getattr(t.Job, sort), t.Job.id
        order = [column.desc().nulls_last(), by_id.desc()] if newest_first \
            else [column.asc().nulls_last(), by_id]
        query = select(*_JOB_COLUMNS).where(*where).order_by(*order).limit(limit).offset(offset)
        with self._read() as s:
            total = s.execute(select(func.count()).select_from(t.Job).where(*where)).scalar_one()
            return [_job(row) for row in s.execute(query)], int(total)

    def transition(self, job_id: int, expect: Collection[JobState], path: Sequence[JobState],
                   reason: str, actor: str, changes: Mapping[str, Any] | None = None,
                   detail: Mapping[str, Any] | None = None,
                   version: int | None = None,
                   cause: CauseRecord | None = None) -> JobRecord | None:
        if not path:
            raise ValueError("empty transition path")
        for state in expect:
            check_path(state, tuple(path))
        return self._change(job_id, expect, path, "transition", reason, actor, changes, detail,
                            version, cause)

    def causes(self, job_id: int) -> list[CauseRecord]:
        query = (select(t.AttemptCause).where(t.AttemptCause.job_id == job_id)
                 .order_by(t.AttemptCause.attempt))
        with self._read() as s:
            return [CauseRecord(**_columns(row, CauseRecord)) for row in s.scalars(query)]

    def causes_since(self, since: float) -> list[CauseRecord]:
        query = (select(t.AttemptCause).where(t.AttemptCause.at >= since)
                 .order_by(t.AttemptCause.at, t.AttemptCause.job_id, t.AttemptCause.attempt))
        with self._read() as s:
            return [CauseRecord(**_columns(row, CauseRecord)) for row in s.scalars(query)]

    def annotate(self, job_id: int, expect: Collection[JobState], kind: str, reason: str,
                 actor: str, changes: Mapping[str, Any] | None = None,
                 detail: Mapping[str, Any] | None = None,
                 version: int | None = None) -> JobRecord | None:
        return self._change(job_id, expect, (), kind, reason, actor, changes, detail, version)

    def _change(self, job_id: int, expect: Collection[JobState], path: Sequence[JobState],
                kind: str, reason: str, actor: str, changes: Mapping[str, Any] | None,
                detail: Mapping[str, Any] | None, version: int | None,
                cause: CauseRecord | None = None) -> JobRecord | None:
        changes = dict(changes or {})
        unknown = set(changes) - MUTABLE
        if unknown:
            raise ValueError(f"not changeable by a transition: {sorted(unknown)}")
        now = self._clock()
        values: dict[str, Any] = {**changes, "updated_at": now, "version": t.Job.version + 1}
        if path:
            values |= {"state": path[-1].value, "reason": reason}
        with self._tx() as s:
            # Compare-and-set on the state (and version): a concurrent change makes this a no-op.
            query = select(t.Job.state).where(t.Job.id == job_id,
                                              t.Job.state.in_([e.value for e in expect]))
            if version is not None:
                query = query.where(t.Job.version == version)
            # FOR UPDATE: on PostgreSQL a racing writer waits here and then sees our result.
            query = query.with_for_update()
            before = s.execute(query).scalar_one_or_none()
            if before is None:
                return None
            s.execute(update(t.Job).where(t.Job.id == job_id).values(**values))
            previous = JobState(before)
            for state in path:
                s.add(t.Event(job_id=job_id, at=now, kind=kind, from_state=previous.value,
                              to_state=state.value, reason=reason, actor=actor,
                              detail=dict(detail) if detail else None))
                previous = state
            if cause is not None:
                s.merge(t.AttemptCause(**_as_dict(replace(cause, at=now))))
            if not path:
                s.add(t.Event(job_id=job_id, at=now, kind=kind, from_state=previous.value,
                              to_state=previous.value, reason=reason, actor=actor,
                              detail=dict(detail) if detail else None))
            row = s.execute(select(*_JOB_COLUMNS).where(t.Job.id == job_id)).one()
            job = _job(row)
            if path:
                _record_attempt(s, (JobState(before), *path), job, now, cause)
            return job

    def attempts(self, *, start: float | None = None, end: float | None = None,
                 tenant: str | None = None, job_id: int | None = None) -> list[AttemptRecord]:
        query = select(t.Attempt).order_by(t.Attempt.job_id, t.Attempt.hold, t.Attempt.flavor)
        if start is not None:
            query = query.where(or_(t.Attempt.ended_at.is_(None), t.Attempt.ended_at > start))
        if end is not None:
            query = query.where(t.Attempt.admitted_at < end)
        if tenant is not None:
            query = query.where(t.Attempt.tenant == tenant)
        if job_id is not None:
            query = query.where(t.Attempt.job_id == job_id)
        with self._read() as s:
            return [AttemptRecord(**_columns(row, AttemptRecord)) for row in s.scalars(query)]

    def attempt_totals(self) -> list[AttemptTotal]:
        a = t.Attempt
        held = a.ended_at - a.admitted_at
        query = (select(a.tenant, a.queue, a.flavor, a.outcome, func.sum(held * a.gpus),
                        func.sum(held * a.cpus))
                 .where(a.ended_at.is_not(None))
                 .group_by(a.tenant, a.queue, a.flavor, a.outcome)
                 .order_by(a.tenant, a.queue, a.flavor, a.outcome))
        with self._read() as s:
            return [AttemptTotal(tenant, queue, flavor, str(outcome), float(gpu_s or 0.0),
                                 float(cpu_s or 0.0))
                    for tenant, queue, flavor, outcome, gpu_s, cpu_s in s.execute(query)]

    # --- events -----------------------------------------------------------------------------

    def events(self, job_id: int | None = None, after_id: int = 0) -> list[EventRecord]:
        query = select(t.Event).where(t.Event.id > after_id).order_by(t.Event.id)
        if job_id is not None:
            query = query.where(t.Event.job_id == job_id)
        with self._read() as s:
            return [_event(row) for row in s.scalars(query)]

    def log_event(self, kind: str, reason: str, actor: str,
                  detail: Mapping[str, Any] | None = None) -> EventRecord:
        with self._tx() as s:
            row = t.Event(job_id=None, at=self._clock(), kind=kind, reason=reason, actor=actor,
                          detail=dict(detail) if detail else None)
            s.add(row)
            s.flush()
            return _event(row)

    # --- processes --------------------------------------------------------------------------

    def add_processes(self, processes: Sequence[ProcessRecord]) -> None:
        with self._tx() as s:
            s.add_all(t.RankProcess(**_as_dict(p)) for p in processes)

    def processes(self, job_id: int, attempt: int | None = None) -> list[ProcessRecord]:
        query = select(t.RankProcess).where(t.RankProcess.job_id == job_id)
        if attempt is not None:
            query = query.where(t.RankProcess.attempt == attempt)
        query = query.order_by(t.RankProcess.attempt, t.RankProcess.index)
        with self._read() as s:
            return [_process(row) for row in s.scalars(query)]

    def live_processes(self) -> list[ProcessRecord]:
        query = (
            select(t.RankProcess)
            .join(t.Job, t.Job.id == t.RankProcess.job_id)
            .where(t.Job.state.in_([s.value for s in ACTIVE]),
                   t.RankProcess.attempt == t.Job.attempt,
                   t.RankProcess.ended_at.is_(None))
            .order_by(t.RankProcess.job_id, t.RankProcess.index)
        )
        with self._read() as s:
            return [_process(row) for row in s.scalars(query)]

    def processes_since(self, since: float) -> list[ProcessRecord]:
        query = (
            select(t.RankProcess)
            .where(or_(t.RankProcess.ended_at.is_(None), t.RankProcess.ended_at >= since))
            .order_by(t.RankProcess.job_id, t.RankProcess.attempt, t.RankProcess.index)
        )
        with self._read() as s:
            return [_process(row) for row in s.scalars(query)]

    def end_process(self, job_id: int, attempt: int, index: int, exit_code: int | None,
                    ended_at: float) -> None:
        with self._tx() as s:
            s.execute(update(t.RankProcess)
                      .where(t.RankProcess.job_id == job_id, t.RankProcess.attempt == attempt,
                             t.RankProcess.index == index, t.RankProcess.ended_at.is_(None))
                      .values(exit_code=exit_code, ended_at=ended_at))

    # --- quotas and nodes -------------------------------------------------------------------

    def set_quota(self, quota: QuotaRecord) -> QuotaRecord:
        self._retrying(lambda: self._set_quota(quota))
        return quota

    def _set_quota(self, quota: QuotaRecord) -> None:
        with self._tx() as s:
            self._audit_order(s)
            row = s.get(t.QuotaOverride, (quota.queue, quota.flavor), with_for_update=True)
            values = _as_dict(quota)
            if row is None:
                s.add(t.QuotaOverride(**values))
            else:
                for key, value in values.items():
                    setattr(row, key, value)
            s.add(t.Event(job_id=None, at=quota.updated_at, kind="quota", actor=quota.updated_by,
                          reason=f"quota of queue {quota.queue} for flavor {quota.flavor} set",
                          detail=values))
            s.add(_audit_row(AuditRecord(quota.updated_at, quota.updated_by, "quota",
                                         f"{quota.queue}/{quota.flavor}",
                                         {"quota": quota.quota})))

    def quotas(self) -> list[QuotaRecord]:
        query = select(t.QuotaOverride).order_by(t.QuotaOverride.queue, t.QuotaOverride.flavor)
        with self._read() as s:
            return [QuotaRecord(**_columns(row, QuotaRecord)) for row in s.scalars(query)]

    def sync_nodes(self, nodes: Sequence[NodeRecord]) -> None:
        self._retrying(lambda: self._sync_nodes(nodes))

    def _sync_nodes(self, nodes: Sequence[NodeRecord]) -> None:
        now = self._clock()
        with self._tx() as s:
            for node in sorted(nodes, key=lambda n: n.name):  # one lock order for every server
                row = s.get(t.Node, node.name, with_for_update=True)
                if row is None:
                    s.add(t.Node(name=node.name, flavor=node.flavor, labels=node.labels,
                                 capacity=node.capacity, cordoned=False, cordon_reason="",
                                 updated_at=now))
                else:
                    row.flavor, row.labels, row.capacity = node.flavor, node.labels, node.capacity
                    row.updated_at = now

    def nodes(self) -> list[NodeRecord]:
        with self._read() as s:
            rows = s.scalars(select(t.Node).order_by(t.Node.name))
            return [NodeRecord(**_columns(row, NodeRecord)) for row in rows]

    def set_cordon(self, name: str, cordoned: bool, reason: str, actor: str) -> NodeRecord | None:
        verb = "cordon" if cordoned else "uncordon"
        return self._change_node(
            name, actor, lambda node, _now: node_health.after_cordon(node, cordoned, reason, actor),
            audit=(verb, {"reason": reason}), event={"cordoned": cordoned})

    def set_drain(self, name: str, drain: bool, reason: str, actor: str) -> NodeRecord | None:
        return self._change_node(
            name, actor, lambda node, _now: node_health.after_drain(node, drain, reason, actor),
            audit=("drain" if drain else "undrain", {"reason": reason}), event={"drain": drain})

    def mark_drained(self, name: str, actor: str) -> NodeRecord | None:
        return self._change_node(name, actor, node_health.after_drained, event={"drained": True},
                                 only_if_changed=True)

    def record_check(self, name: str, outcome: CheckOutcome, passes_to_return: int,
                     failures_to_flag: int, actor: str) -> NodeRecord | None:
        return self._change_node(
            name, actor, lambda node, _now: node_health.after_check(
                node, outcome, passes_to_return, failures_to_flag),
            event={"check_set": outcome.check_set})

    def suspect_node(self, name: str, reason: str, failures_to_flag: int, actor: str,
                     detail: Mapping[str, Any] | None = None, cordon: bool = True
                     ) -> NodeRecord | None:
        return self._change_node(
            name, actor, lambda node, _now: node_health.after_suspicion(
                node, reason, failures_to_flag, dict(detail or {}), cordon),
            event={"cause": "attempt"})

    def _change_node(self, name: str, actor: str,
                     change: Callable[[NodeRecord, float],
                                      tuple[NodeRecord, list[node_health.Change]]],
                     audit: tuple[str, dict[str, Any]] | None = None,
                     event: dict[str, Any] | None = None,
                     only_if_changed: bool = False) -> NodeRecord | None:
        """Apply ``change`` to the node's row, with its history entries, a cluster event for
        each change of state (and for an admin's action), and ``audit`` (action, detail)."""
        now = self._clock()
        with self._tx() as s:
            if audit is not None:
                self._audit_order(s)
            row = s.get(t.Node, name, with_for_update=True)
            if row is None:
                return None
            before = NodeRecord(**_columns(row, NodeRecord))
            after, changes = change(before, now)
            if only_if_changed and not changes:
                return None
            for key, value in _as_dict(after).items():
                if getattr(row, key) != value:
                    setattr(row, key, value)
            row.updated_at = now
            for c in changes:
                s.add(t.NodeEvent(node=name, at=now, kind=c.kind, from_state=c.from_state,
                                  to_state=c.to_state, reason=c.reason, actor=actor,
                                  detail=c.detail))
                if c.kind != "check-failed":
                    s.add(t.Event(job_id=None, at=now, kind="node", actor=actor,
                                  reason=f"node {name}: {c.reason}",
                                  detail={"node": name, "change": c.kind, **(event or {})}))
            if audit is not None:
                s.add(_audit_row(AuditRecord(now, actor, audit[0], name, audit[1])))
            return NodeRecord(**_columns(row, NodeRecord))

    def node_events(self, name: str, limit: int = 100) -> list[NodeEventRecord]:
        query = (select(t.NodeEvent).where(t.NodeEvent.node == name)
                 .order_by(t.NodeEvent.id.desc()).limit(limit))
        with self._read() as s:
            rows = list(s.scalars(query))
        return [NodeEventRecord(**_columns(row, NodeEventRecord)) for row in reversed(rows)]

    # --- audit ------------------------------------------------------------------------------

    def add_audit(self, entry: AuditRecord) -> AuditRecord:
        with self._tx() as s:
            self._audit_order(s)
            row = _audit_row(entry)
            s.add(row)
            s.flush()
            return AuditRecord(**_columns(row, AuditRecord))

    def audit(self, after_id: int = 0, limit: int | None = None) -> list[AuditRecord]:
        query = select(t.Audit).where(t.Audit.id > after_id).order_by(t.Audit.id).limit(limit)
        with self._read() as s:
            return [AuditRecord(**_columns(row, AuditRecord)) for row in s.scalars(query)]

    # --- the scheduler's state between cycles -----------------------------------------------

    def waiting(self, job_ids: Collection[int] | None = None) -> dict[int, Waiting]:
        with self._read() as s:
            if job_ids is None:
                rows = list(s.scalars(select(t.JobWaiting)))
            else:
                ids = sorted(set(job_ids))
                rows = [row for part in _chunks(ids) for row in s.scalars(
                    select(t.JobWaiting).where(t.JobWaiting.job_id.in_(part)))]
            return {row.job_id: _waiting(row) for row in rows}

    def nominations(self) -> dict[int, tuple[int, ...]]:
        with self._read() as s:
            return {row.job_id: tuple(row.victims)
                    for row in s.scalars(select(t.Nomination).order_by(t.Nomination.job_id))}

    def tenant_usage(self) -> list[UsageRecord]:
        query = select(t.TenantUsage).order_by(t.TenantUsage.queue, t.TenantUsage.tenant)
        with self._read() as s:
            return [UsageRecord(row.queue, row.tenant, _floats(row.usage),
                                _floats(row.penalty), row.sampled_at)
                    for row in s.scalars(query)]

    def save_scheduler(self, changes: SchedulerChanges) -> None:
        if not changes:
            return
        now = self._clock()
        with self._tx() as s:
            self._save_waiting(s, changes, now)
            if changes.nominations is not None:
                s.execute(delete(t.Nomination))
                s.add_all(t.Nomination(job_id=job, victims=list(victims), updated_at=now)
                          for job, victims in changes.nominations.items())
            self._save_usage(s, changes, now)

    def _save_waiting(self, s: Session, changes: SchedulerChanges, now: float) -> None:
        """Replace the changed rows: delete, then insert (no upsert race: the leader alone
        writes, and a deposed one is fenced)."""
        for part in _chunks(sorted({*changes.waiting, *changes.not_waiting})):
            s.execute(delete(t.JobWaiting).where(t.JobWaiting.job_id.in_(part)))
        s.add_all(_waiting_row(job, why, now) for job, why in changes.waiting.items())

    def _save_usage(self, s: Session, changes: SchedulerChanges, now: float) -> None:
        keys = sorted({*((u.queue, u.tenant) for u in changes.usage), *changes.usage_gone})
        key = tuple_(t.TenantUsage.queue, t.TenantUsage.tenant)
        for part in _chunks(keys):
            s.execute(delete(t.TenantUsage).where(key.in_(part)))
        s.add_all(t.TenantUsage(queue=u.queue, tenant=u.tenant, usage=list(u.usage),
                                penalty=list(u.penalty), sampled_at=u.sampled_at,
                                updated_at=now) for u in changes.usage)


def _chunks(items: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), CHUNK):
        yield items[start:start + CHUNK]


def _floats(values: Sequence[float]) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


def _amounts(values: Resources | None) -> list[int] | None:
    return None if values is None else [int(v) for v in values]


def _resources(values: Sequence[float] | None) -> Resources | None:
    return None if values is None else tuple(int(v) for v in values)


def _record_attempt(s: Session, states: Sequence[JobState], job: JobRecord, now: float,
                    cause: CauseRecord | None) -> None:
    """Keep the job's allocations in step with a transition along ``states`` (the state it
    was in, then its path): an admission opens one (per flavor), a launch starts it, leaving
    the active states ends it with its outcome."""
    held = (t.Attempt.job_id == job.id, t.Attempt.ended_at.is_(None))
    for old, new in pairwise(states):
        if new == JobState.ADMITTED:
            last = s.execute(select(func.max(t.Attempt.hold))
                             .where(t.Attempt.job_id == job.id)).scalar_one_or_none()
            s.add_all(t.Attempt(job_id=job.id, hold=(last or 0) + 1, flavor=p.flavor,
                                tenant=job.tenant, queue=job.queue, admitted_at=now,
                                ranks=p.ranks, gpus=p.gpus, cpus=p.cpus, nodes=list(p.nodes))
                      for p in parts(job.spec, job.placement))
        elif new == JobState.STARTING:
            s.execute(update(t.Attempt).where(*held)
                      .values(started_at=now, attempt=job.attempt))
        elif old in ACTIVE and new not in ACTIVE:
            s.execute(update(t.Attempt).where(*held).values(
                ended_at=now, outcome=new.value,
                cause=cause.code[:32] if cause is not None else None))


def _waiting_row(job: int, why: Waiting, now: float) -> t.JobWaiting:
    return t.JobWaiting(job_id=job, code=why.code, message=why.message, flavor=why.flavor,
                        requested=_amounts(why.requested), available=_amounts(why.available),
                        borrowable=_amounts(why.borrowable), starving=why.starving,
                        updated_at=now)


def _waiting(row: t.JobWaiting) -> Waiting:
    return Waiting(row.code, row.message, row.flavor,  # type: ignore[arg-type]
                   _resources(row.requested), _resources(row.available),
                   _resources(row.borrowable), row.starving)


def _audit_row(entry: AuditRecord) -> t.Audit:
    return t.Audit(at=entry.at, actor=entry.actor, action=entry.action, target=entry.target,
                   detail=dict(entry.detail))


def _columns(row: Any, record: type) -> dict[str, Any]:
    return {f.name: getattr(row, f.name) for f in fields(record)}


def _as_dict(record: Any) -> dict[str, Any]:
    return {f.name: getattr(record, f.name) for f in fields(record)}


_JOB_FIELDS = tuple(f.name for f in fields(JobRecord))
_JOB_COLUMNS = tuple(getattr(t.Job, name) for name in _JOB_FIELDS)


def _job(row: Row[Any]) -> JobRecord:
    """A job from a row of `_JOB_COLUMNS` (or an ORM object with those attributes)."""
    values = dict(zip(_JOB_FIELDS, row, strict=True)) if isinstance(row, Row) else \
        {name: getattr(row, name) for name in _JOB_FIELDS}
    values["state"] = JobState(values["state"])
    return JobRecord(**values)


def _event(row: t.Event) -> EventRecord:
    values = _columns(row, EventRecord)
    values["from_state"] = JobState(row.from_state) if row.from_state else None
    values["to_state"] = JobState(row.to_state) if row.to_state else None
    return EventRecord(**values)


def _process(row: t.RankProcess) -> ProcessRecord:
    return ProcessRecord(**_columns(row, ProcessRecord))
