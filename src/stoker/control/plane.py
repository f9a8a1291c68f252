"""The control plane as one object: cluster config, store, executor and reconciler, and the
operations the API offers on them (submit, cancel, views, quotas, cordons).

On SQLite one server owns the state directory and the database (an exclusive lock on each).
On PostgreSQL several servers may share one database and one state directory (a shared lock):
each serves the API, and the one holding the leader lease runs the reconciler and the executor
(`stoker.control.leader`)."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Sequence
from pathlib import Path, PurePosixPath
from typing import IO, Any

from stoker.control import code_archive, node_health
from stoker.control.db import is_postgres, parse_url, redact
from stoker.control.depends import BROKEN, verdicts
from stoker.control.executor import Executor
from stoker.control.isolation import Isolation, IsolationError, decide
from stoker.control.launch import log_relpath
from stoker.control.leader import AdvisoryLease, Leadership, server_id
from stoker.control.local_executor import LocalExecutor
from stoker.control.nodes import cluster_nodes, node_record
from stoker.control.queue_history import RESOURCES, held_over_time
from stoker.control.quotas import current_quota, merged_quota, usage, with_overrides
from stoker.control.reconciler import ControlSettings, Reconciler
from stoker.control.run_telemetry import read_run_events, read_stragglers
from stoker.control.sched_state import stored_scores
from stoker.control.snapshot import (
    build_snapshot,
    expected_ends,
    job_spec,
    per_rank,
    placed_roles,
)
from stoker.control.sql_store import SqlStore
from stoker.control.states import ACTIVE, TERMINAL, is_held
from stoker.control.store import (
    AttemptRecord,
    AuditRecord,
    CauseRecord,
    DuplicateKey,
    EventRecord,
    JobRecord,
    NewJob,
    NodeEventRecord,
    NodeRecord,
    QuotaRecord,
    Store,
)
from stoker.control.usage import GoodputBook, accounting_report, goodput_view
from stoker.sched import (
    DEFAULT_SPACE,
    UNLIMITED,
    JobId,
    Node,
    Resources,
    ResourceSpace,
    Waiting,
    estimate_starts,
    queue_positions,
)
from stoker.sched.config import resource_space
from stoker.sched.fit import never_fits
from stoker.spec import loading
from stoker.spec.api import (
    AccountingReport,
    AttemptCauseView,
    AttemptView,
    CheckReportView,
    CheckView,
    EventView,
    JobDetail,
    JobState,
    JobSubmission,
    JobView,
    NodeDetail,
    NodeEventView,
    NodeView,
    QueueHistory,
    QueueSeries,
    QueueUsage,
    RoleView,
    ServerSettings,
    UsageReport,
    WaitingView,
)
from stoker.spec.cluster import ClusterConfig, Quota, load_cluster
from stoker.spec.errors import ConfigError, StokerError
from stoker.spec.job import JobSpec, Placement, RankResources
from stoker.spec.resources import describe, written

log = logging.getLogger(__name__)


class Conflict(StokerError):
    """The request cannot apply to the job's current state (e.g. cancelling a finished job)."""


def default_cluster() -> ClusterConfig:
    """Without ``--config``: this machine as one node, one unlimited queue ``default`` for one
    tenant ``default`` whose token is in $STOKER_TOKEN; the admin's in $STOKER_ADMIN_TOKEN."""
    data = {
        "flavors": {"cpu": {}},
        "autodetect": {"cpu_flavor": "cpu"},
        "admin": {"token_env": "STOKER_ADMIN_TOKEN"},
        "tenants": {"default": {"token_env": "STOKER_TOKEN", "queues": ["default"]}},
        "queues": {"default": {"quotas": {"cpu": {}}}},
    }
    return loading.validate(ClusterConfig, data, "default cluster")


class ControlPlane:
    def __init__(self, settings: ServerSettings, cluster: ClusterConfig, store: Store,
                 reconciler: Reconciler, isolation: Isolation | None = None) -> None:
        self.settings = settings
        self.cluster = cluster
        self.store = store
        self.reconciler = reconciler
        self._stop = threading.Event()
        self._quota_lock = threading.Lock()  # a quota change reads, merges, then stores
        self._thread: threading.Thread | None = None
        self._listener: threading.Thread | None = None
        self._locks: list[IO[str]] = []
        self.isolation = isolation or Isolation()
        self.leadership: Leadership | None = None  # None: the only server (SQLite)
        self._eta_lock = threading.Lock()
        self._eta: tuple[int, dict[int, float]] = (-1, {})  # (reconciler cycle, estimates)
        self.goodput = GoodputBook(store, reconciler.jobs_dir)

    @classmethod
    def open(cls, settings: ServerSettings,
             hidden_env: Callable[[ClusterConfig], Iterable[str]] = lambda _: ()) -> ControlPlane:
        """``hidden_env``: environment variables never passed to jobs (the API tokens)."""
        cluster = load_cluster(settings.config) if settings.config else default_cluster()
        if settings.single_trust:
            isolation_cfg = cluster.isolation.model_copy(update={"single_trust": True})
            cluster = cluster.model_copy(update={"isolation": isolation_cfg})
        if settings.ray_address is not None and cluster.executor != "ray":
            raise ConfigError(settings.config or "default cluster", "executor",
                              '--ray-address needs executor = "ray"')
        url = database_url(settings, cluster)  # DatabaseError, before anything is changed
        state = Path(settings.state_dir)
        if is_postgres(url):
            store = SqlStore.open(url)  # unreachable: DatabaseError, still nothing changed
            try:
                isolation = _isolation(settings, cluster)
                make_state_dirs(state)
                locks = [_lock(state / "server.lock", shared=True)]
            except BaseException:
                store.close()
                raise
        else:
            isolation = _isolation(settings, cluster)
            make_state_dirs(state)
            locks = sqlite_locks(state, url)
            store = SqlStore.open(url)
        executor: Executor
        node_source: Callable[[], Sequence[Node]] | None = None
        try:
            if cluster.executor == "ray":
                executor, node_source = _ray_executor(settings, cluster, set(hidden_env(cluster)))
                nodes: Sequence[Node] = node_source()
            else:
                nodes = cluster_nodes(cluster)
                executor = LocalExecutor(state / "jobs", set(hidden_env(cluster)),
                                         isolation=isolation,
                                         pass_env=cluster.isolation.pass_env,
                                         allow_faults=cluster.isolation.fault_injection,
                                         hidden_dirs=(state.resolve(),))
            store.sync_nodes([node_record(cluster, n) for n in nodes])
        except BaseException:
            store.close()
            for lock in locks:
                lock.close()
            raise
        control = ControlSettings(grace_period_s=settings.grace_period,
                                  failure_grace_s=settings.failure_grace,
                                  backoff_base_s=settings.backoff_base,
                                  backoff_max_s=settings.backoff_max, resume=settings.resume)
        lease = None
        if store.postgres:  # the reconciler's writes are fenced by the leader's term
            lease = AdvisoryLease(store.engine, server_id())
        reconciler = Reconciler(store.fenced(lease.fence) if lease else store, executor,
                                cluster, nodes, executor.jobs_dir, control,
                                node_source=node_source)
        plane = cls(settings, cluster, store, reconciler, isolation)
        if lease is not None:
            url = f"http://{settings.host}:{settings.port}"
            plane.leadership = Leadership(lease, store, reconciler, server_id(), url)
        plane._locks = locks
        return plane

    def describe_store(self) -> str:
        url = redact(self.store.engine.url) if isinstance(self.store, SqlStore) else "?"
        several = "; several servers, one leader" if self.leadership else ""
        return f"store {url}{several}"

    def status(self) -> dict[str, Any]:
        """Who leads: this server (``role`` leader) or another (standby), as last seen."""
        if self.leadership is None:
            return {"role": "leader", "store": "sqlite"}
        return {**self.leadership.status(), "store": "postgresql"}

    @property
    def nodes(self) -> tuple[Node, ...]:
        """The cluster's nodes; read again from Ray when last read over 2 s ago (a standby's
        reconciler does not run its cycles)."""
        return self.reconciler.refresh_nodes(max_age=2.0)

    @property
    def jobs_dir(self) -> Path:
        return self.reconciler.jobs_dir

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Adopt what a previous run left, then reconcile in a background thread. With a
        leader lease (PostgreSQL): compete for it, and do both only while holding it."""
        interval = self.settings.interval or self.cluster.scheduler.interval
        if self.leadership is not None:
            self._thread = threading.Thread(target=self.leadership.run,
                                            args=(self._stop, interval), name="leadership",
                                            daemon=True)
            self._listener = threading.Thread(target=self.leadership.listen, args=(self._stop,),
                                              name="wake-listener", daemon=True)
            self._listener.start()
        else:
            self.reconciler.recover()
            self._thread = threading.Thread(target=self.reconciler.run,
                                            args=(self._stop, interval), name="reconciler",
                                            daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop reconciling. Job processes keep running; the next server adopts them."""
        self._stop.set()
        self.reconciler.wake()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._listener is not None:
            self._listener.join(timeout=30)
        self.reconciler.close()
        if self.leadership is not None:
            self.leadership.lease.dispose()  # the lock is free for a standby at once
        if isinstance(self.store, SqlStore):
            self.store.close()
        for lock in self._locks:
            lock.close()

    # --- jobs -----------------------------------------------------------------------------------

    def submit(self, tenant: str, submission: JobSubmission,
               idempotency_key: str | None = None, admin: bool = False
               ) -> tuple[JobRecord, bool]:
        """Check the job against this cluster and queue it: (the job, whether it is new).
        ConfigError names the bad key. With ``idempotency_key``, a retry of the same
        submission returns the tenant's first job with that key, even when the retries race;
        the key used for another submission is a `Conflict`. The jobs of ``after_ok`` must
        be the tenant's own (``admin``: anyone's) and not have ended FAILED or CANCELLED."""
        job = submission.job
        digest = submission_sha256(submission)
        if idempotency_key is not None:  # a retry gets its job even if the cluster changed
            first = self.store.job_by_key(tenant, idempotency_key)
            if first is not None:
                return _same_submission(first, digest), False
        self.cluster.check_job(job)
        self._check_after_ok(tenant, job.after_ok, admin)
        for i, role in enumerate(job.job_roles()):
            self._check_fits(job.queue, role.ranks, role.resources, role.placement,
                             "" if job.roles is None else f"roles.{i}.")
        if job.roles is not None and len(job.roles) > 1:
            self._check_roles_fit(job)
        train = None
        if submission.train is not None:
            submission.resolved_train()  # validated; the table is stored as written
            train = loading.apply_overrides(submission.train, job.overrides)
        spec: dict[str, Any] = {"job": job.model_dump(mode="json"), "train": train}
        if submission.code is not None:
            spec["code"] = _code(submission.code)
            assert train is not None  # JobSubmission allows code only with [task] module
            train["task"] = {**train["task"], "path": code_archive.CODE_DIR}
        priority_class = job.priority_class or self.cluster.default_priority_class or ""
        new = NewJob(tenant=tenant, name=job.name, queue=job.queue,
                     priority_class=priority_class,
                     priority=self.cluster.priority(job.priority_class), spec=spec,
                     idempotency_key=idempotency_key,
                     request_sha256=digest if idempotency_key is not None else None,
                     code=submission.code)
        try:
            record = self.store.submit(new, tenant)
        except DuplicateKey:  # a concurrent retry inserted first
            assert idempotency_key is not None
            first = self.store.job_by_key(tenant, idempotency_key)
            assert first is not None
            return _same_submission(first, digest), False
        self.reconciler.wake()
        return record, True

    def _check_after_ok(self, tenant: str, after_ok: Sequence[int], admin: bool) -> None:
        """Each job waited for exists, is the tenant's (the admin: anyone's) and may still
        succeed (`stoker.control.depends`); another tenant's job reads as one that does not
        exist, so its existence is not told."""
        if not after_ok:
            return
        owners = self.store.job_owners(after_ok)
        for i, dep in enumerate(after_ok):
            owner = owners.get(dep)
            if owner is None or (not admin and owner[0] != tenant):
                raise ConfigError(None, f"after_ok.{i}", f"no job {dep} of yours")
            if owner[1] in BROKEN:
                raise ConfigError(None, f"after_ok.{i}", f"job {dep} ended "
                                  f"{owner[1].value}: it will never succeed")

    def _check_fits(self, queue: str, ranks: int, resources: RankResources,
                    placement: Placement, prefix: str = "") -> None:
        """Refuse a gang that can never be placed on the queue's nodes, all of them empty
        (`stoker.sched.fit`: one flavor's nodes, each holding as many ranks as its scarcest
        resource allows, one domain of a required topology level). Each role of a job is
        checked alone (``prefix``: its key); roles that fit one by one but never together
        wait in the queue, with the scheduler's reason."""
        flavors = set(self.cluster.queues[queue].flavor_quotas())
        allowed = self.cluster.flavors_for_model(placement.gpu_model)
        if allowed is not None:
            flavors &= set(allowed)
        space = resource_space(self.cluster)
        one = space.vector(resources.amounts())
        required = placement.topology_mode == "required"
        unfit = never_fits(ranks, one, self.nodes, flavors, self.cluster.topology,
                           placement.topology, required)
        if unfit is None:
            return
        if unfit.why in ("no_flavor", "rank"):
            raise ConfigError(None, f"{prefix}resources", f"no node of queue {queue!r} can "
                              f"hold one rank ({space.describe(one)})")
        if unfit.why == "domain":
            raise ConfigError(None, f"{prefix}ranks", f"{ranks} ranks do not fit in one "
                              f"{placement.topology} of queue {queue!r} (at most {unfit.room})")
        raise ConfigError(None, f"{prefix}ranks", f"{ranks} ranks need more than the nodes of "
                          f"any one flavor of queue {queue!r} offer (room for {unfit.room})")

    def _check_roles_fit(self, job: JobSpec) -> None:
        """Refuse a job whose roles together ask more of some resource than all the nodes
        any of them may use have (a bound: roles that pass it may still never fit together,
        and then wait with the scheduler's reason)."""
        queue_flavors = set(self.cluster.queues[job.queue].flavor_quotas())
        space = resource_space(self.cluster)
        need = [0] * len(space)
        flavors: set[str] = set()
        for role in job.job_roles():
            allowed = self.cluster.flavors_for_model(role.placement.gpu_model)
            flavors |= queue_flavors if allowed is None else queue_flavors & set(allowed)
            for i, amount in enumerate(space.vector(role.resources.amounts())):
                need[i] += amount * role.ranks
        have = [0] * len(space)
        for node in self.nodes:
            if node.flavor in flavors:
                have = [min(UNLIMITED, h + c) for h, c in zip(have, node.capacity, strict=True)]
        for i, name in enumerate(space.names):
            if need[i] > have[i]:
                raise ConfigError(None, "roles", f"the roles together need "
                                  f"{describe(name, need[i])}, more than all nodes of queue "
                                  f"{job.queue!r} have ({describe(name, have[i])})")

    def cancel(self, job_id: int, actor: str) -> JobRecord:
        """Cancel a queued job at once; ask the reconciler to stop an admitted one."""
        for _ in range(20):  # the reconciler may move the job between our read and write
            job = self.store.get_job(job_id)
            assert job is not None
            if job.state in TERMINAL or job.state == JobState.PREEMPTED:
                raise Conflict(f"job {job_id} is already {job.state.value}")
            if job.state == JobState.QUEUED:
                done = self.store.transition(job_id, (JobState.QUEUED,),
                                             (JobState.CANCELLED,), f"cancelled by {actor}",
                                             actor, {"finished_at": time.time()},
                                             version=job.version)
            elif job.stop_reason == "cancel":
                return job
            else:
                done = self.store.annotate(job_id, ACTIVE, "cancel",
                                           f"cancel requested by {actor}", actor,
                                           {"stop_reason": "cancel",
                                            "stop_requested_at": time.time()},
                                           version=job.version)
            if done is not None:
                self.reconciler.wake()
                if isinstance(self.store, SqlStore) and job.state != JobState.QUEUED:
                    self.store.wake_leader()  # it may be another server
                if actor != job.tenant:
                    self.store.add_audit(AuditRecord(time.time(), actor, "cancel", str(job_id),
                                                     {"tenant": job.tenant,
                                                      "state": job.state.value}))
                return done
        raise Conflict(f"job {job_id} keeps changing; try again")

    def job_views(self, jobs: Sequence[JobRecord]) -> list[JobView]:
        positions: dict[int, int] = {}
        starts: dict[int, float] = {}
        waiting: dict[int, Waiting] = {}
        queued = [j.id for j in jobs if j.state == JobState.QUEUED]
        if queued:
            positions, starts = self._queue_order()
            waiting = self.store.waiting(queued)  # as the leader, wherever it runs, stored it
        space = resource_space(self.cluster)
        return [job_view(j, positions.get(j.id), waiting.get(j.id), starts.get(j.id), space)
                for j in jobs]

    def _queue_order(self) -> tuple[dict[int, int], dict[int, float]]:
        """Every queued job's position, in the scheduler's own order (jobs in restart backoff
        after the rest), and its estimated start (computed again after each cycle)."""
        now = time.time()
        records = self.store.list_jobs(states=(*ACTIVE, JobState.QUEUED))
        blocked = verdicts(records, self.store)  # waiting for other jobs: no place yet
        records = [j for j in records if j.id not in blocked]
        policy = self.reconciler.policy
        afs = policy.admission_fair_sharing
        snapshot = build_snapshot(now, self.reconciler.effective_cluster(),
                                  self.reconciler.current_nodes(), records, None,
                                  self.store.nominations(),
                                  None if afs is None else stored_scores(self.store, afs),
                                  self.reconciler.suspects(records))
        positions = {int(k): v for k, v in queue_positions(snapshot, policy).items()}
        counts = Counter(j.queue for j in snapshot.pending)
        backoff = sorted((j for j in records if j.state == JobState.QUEUED
                          and j.id not in positions and not is_held(j.not_before)),
                         key=lambda j: (-j.priority, j.queued_at))
        for j in backoff:
            counts[j.queue] += 1
            positions[j.id] = counts[j.queue]
        with self._eta_lock:
            if self._eta[0] != self.reconciler.cycles:
                ends: dict[JobId, float] = dict(expected_ends(records).items())
                starts = estimate_starts(snapshot, policy, ends)
                self._eta = (self.reconciler.cycles, {int(k): v for k, v in starts.items()})
            return positions, self._eta[1]

    def job_detail(self, job: JobRecord) -> JobDetail:
        view = self.job_views([job])[0]
        events = self.store.events(job.id)
        goodput = self.goodput.job(job, time.time(), events=events)
        train = isinstance(job.spec, dict) and isinstance(job.spec.get("train"), dict)
        return JobDetail(**view.model_dump(), spec=job.spec,
                         events=[event_view(e) for e in events],
                         causes=[cause_view(c) for c in self.store.causes(job.id)],
                         attempts=[attempt_view(a) for a in self.store.attempts(job_id=job.id)],
                         goodput=goodput_view(goodput),
                         stragglers=read_stragglers(self.jobs_dir, job.id) if train else [],
                         run_events=read_run_events(self.jobs_dir, job.id) if train else [])

    def usage(self, tenant: str | None, since: float | None) -> UsageReport:
        """Goodput per cluster, tenant and queue from ``since`` (None: all time), over every
        job, or ``tenant``'s alone."""
        now = time.time()
        jobs = self.store.list_jobs(tenant=tenant)
        return UsageReport(since=since, until=now, rows=self.goodput.usage(jobs, now, since))

    def accounting(self, tenant: str | None, by: str, start: float | None,
                   end: float | None) -> AccountingReport:
        """GPU- and CPU-hours by tenant, queue, flavor or job over [``start``, ``end``), with
        their cost, over every tenant or ``tenant``'s alone (`stoker.control.accounting`)."""
        return accounting_report(self.store, self.cluster.prices, tenant, by, start, end,
                                 time.time())

    # --- queues, quotas, nodes ------------------------------------------------------------------

    def queue_usage(self, queues: Iterable[str] | None = None) -> list[QueueUsage]:
        cluster = self.reconciler.effective_cluster()
        jobs = self.store.list_jobs(states=(*ACTIVE, JobState.QUEUED))
        snapshot = build_snapshot(time.time(), cluster, self.nodes, jobs)
        wanted = set(queues) if queues is not None else set(cluster.queues)
        pending = Counter(j.queue for j in jobs if j.state == JobState.QUEUED)
        running = Counter(j.queue for j in jobs if j.state in ACTIVE)
        return [
            QueueUsage(queue=u.queue, cohort=cluster.queues[u.queue].cohort, flavor=u.flavor,
                       resource=u.resource, nominal=u.nominal, borrowing_limit=u.borrowing_limit,
                       lending_limit=u.lending_limit, used=u.used, borrowed=u.borrowed,
                       pending_jobs=pending[u.queue], running_jobs=running[u.queue])
            for u in usage(snapshot) if u.queue in wanted
        ]

    def queue_history(self, queues: Iterable[str] | None, window_s: float,
                      buckets: int) -> QueueHistory:
        """What each queue (every one, or ``queues``) held of each flavor's GPUs and CPUs over
        the last ``window_s`` seconds, per bucket (`stoker.control.queue_history`), beside
        each one's nominal quota as configured now."""
        end = time.time()
        start = end - window_s
        wanted = set(queues) if queues is not None else None
        held = held_over_time(self.store.attempts(start=start, end=end), start, end, buckets,
                              end)
        nominal = {(u.queue, u.flavor, u.resource): u.nominal
                   for u in self.queue_usage(queues) if u.resource in RESOURCES}
        keys = sorted(k for k in set(held) | set(nominal) if wanted is None or k[0] in wanted)
        series = [QueueSeries(queue=q, flavor=f, resource=r, nominal=nominal.get((q, f, r)),
                              held=[round(x, 6) for x in held.get((q, f, r), [0.0] * buckets)])
                  for q, f, r in keys]
        step = window_s / buckets
        return QueueHistory(start=start, end=end, step_s=step,
                            times=[start + i * step for i in range(buckets)], series=series)

    def set_quota(self, queue: str, flavor: str, quota: Quota, actor: str) -> QuotaRecord:
        """Replace a queue's quota of one flavor from the next cycle on, if the cluster stays
        valid with it (ConfigError otherwise, and nothing is stored)."""
        if queue not in self.cluster.queues:
            raise KeyError(queue)
        return self._store_quota(queue, flavor,
                                 quota.model_dump(mode="json", exclude_none=True), actor)

    def change_quota(self, queue: str, flavor: str, change: Quota, actor: str) -> QuotaRecord:
        """Change only the amounts ``change`` gives (nominal, borrowing and lending limits,
        each resource apart) of a queue's quota of one flavor, keeping the rest as it is now
        (overrides included); checked and stored as `set_quota`."""
        if queue not in self.cluster.queues:
            raise KeyError(queue)
        with self._quota_lock:
            now = current_quota(self.reconciler.effective_cluster(), queue, flavor)
            merged = merged_quota(now, change.model_dump(mode="json", by_alias=True,
                                                         exclude_none=True))
            return self._store_quota(queue, flavor, merged, actor)

    def _store_quota(self, queue: str, flavor: str, quota: dict[str, Any],
                     actor: str) -> QuotaRecord:
        record = QuotaRecord(queue, flavor, quota, time.time(), actor)
        with_overrides(self.cluster, [record], source=f"queues.{queue}")
        return self.store.set_quota(record)

    def node_views(self, names: Collection[str] | None = None) -> list[NodeView]:
        """The cluster's nodes (of ``names``, when given) with what is allocated on them,
        their cordon, drain and health."""
        records = {r.name: r for r in self.store.nodes()}
        space = resource_space(self.cluster)
        allocated: dict[str, list[int]] = {}
        jobs_on: dict[str, list[int]] = {}
        for job in self.store.list_jobs(states=ACTIVE):
            if not job.placement:
                continue
            for placed in placed_roles(job, job_spec(job)):
                need = per_rank(self.cluster, placed.role)
                for node in placed.nodes:
                    total = allocated.setdefault(node, [0] * len(space))
                    for i, amount in enumerate(need):
                        total[i] += amount
                    if job.id not in jobs_on.setdefault(node, []):
                        jobs_on[node].append(job.id)
        views = []
        for node in self.nodes:
            if names is not None and node.name not in names:
                continue
            rec = records.get(node.name) or NodeRecord(node.name, node.flavor)
            views.append(NodeView(
                name=node.name, flavor=node.flavor,
                labels=dict(zip(self.cluster.topology, node.domains, strict=True)),
                capacity=_amounts(space, node.capacity),
                allocated=_amounts(space, allocated.get(node.name, space.zero)),
                jobs=jobs_on.get(node.name, []), cordoned=rec.cordoned,
                cordon_reason=rec.cordon_reason, cordoned_by=rec.cordoned_by,
                state=node_health.state(rec), health=rec.health,
                health_reason=rec.health_reason, passes=rec.passes, failures=rec.failures,
                repair_needed=rec.repair, draining=rec.drain, drain_reason=rec.drain_reason))
        return views

    def node_detail(self, name: str, history: int = 100) -> NodeDetail | None:
        """One node: its view, each check set's last report and its latest ``history``
        entries; None when the cluster has no such node."""
        views = self.node_views([name])
        record = next((r for r in self.store.nodes() if r.name == name), None)
        if not views or record is None:
            return None
        reports = [report_view(r) for r in (record.last_checks or {}).values()]
        return NodeDetail(**views[0].model_dump(),
                          last_checks=sorted(reports, key=lambda r: r.at),
                          history=[node_event_view(e)
                                   for e in self.store.node_events(name, history)])

    def drain(self, name: str, drain: bool, reason: str, requeue: bool, actor: str
              ) -> NodeView | None:
        """Start draining a node (no new jobs; with ``requeue`` its active jobs are stopped
        and requeued, as a preemption would) or stop; None for an unknown node."""
        if not self.node_views([name]):
            return None
        if self.store.set_drain(name, drain, reason, actor) is None:
            return None
        if drain and requeue:
            why = f"requeued: node {name} is drained by {actor}" + (f" ({reason})" if reason
                                                                  else "")
            for job in self.store.list_jobs(states=ACTIVE):
                if job.placement and name in job.placement["nodes"]:
                    self._stop_for_drain(job.id, name, why, actor)
        self.reconciler.wake()
        if isinstance(self.store, SqlStore):
            self.store.wake_leader()
        return self.node_views([name])[0]

    def _stop_for_drain(self, job_id: int, node: str, why: str, actor: str) -> None:
        """Ask the reconciler to stop the job and requeue it (its preemption path)."""
        for _ in range(20):  # the reconciler may move the job between our read and write
            job = self.store.get_job(job_id)
            if job is None or job.state not in ACTIVE or job.stop_reason is not None:
                return
            done = self.store.annotate(job_id, ACTIVE, "preempt", why, actor,
                                       {"stop_reason": "preempt",
                                        "stop_requested_at": time.time()},
                                       {"node": node, "reason": "drain"}, version=job.version)
            if done is not None:
                return

    def log_file(self, job: JobRecord, index: int) -> PurePosixPath:
        """The log of process ``index``, relative to the jobs directory."""
        return log_relpath(job.id, index)




def _code(archive: bytes) -> dict[str, Any]:
    """The job spec's record of its code archive (the archive itself is stored by digest)."""
    try:
        files, unpacked = code_archive.check(archive)
    except code_archive.BadArchive as e:
        raise ConfigError(None, "code", str(e)) from None
    return {"sha256": code_archive.sha256(archive), "bytes": len(archive), "files": files,
            "unpacked_bytes": unpacked}


def submission_sha256(submission: JobSubmission) -> str:
    """A digest of what was submitted (as validated: key order and spelling do not count)."""
    text = json.dumps(submission.model_dump(mode="json"), sort_keys=True,
                      separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _same_submission(first: JobRecord, digest: str) -> JobRecord:
    if first.request_sha256 != digest:
        raise Conflict(f"the idempotency key was used for another submission (job {first.id}); "
                       "use a new key for a new job")
    return first


def job_view(job: JobRecord, position: int | None = None, waiting: Waiting | None = None,
             estimated_start: float | None = None, space: ResourceSpace = DEFAULT_SPACE
             ) -> JobView:
    """The API's view of a job; ``space``: the resources of the cluster (and of ``waiting``'s
    numbers)."""
    spec = job_spec(job)
    roles = []
    if spec.roles is not None:
        placed = placed_roles(job, spec) if job.placement else None
        roles = [RoleView(name=r.name, ranks=r.ranks, first_rank=r.first,
                          resources=written_amounts(r.resources.amounts()),
                          flavor=placed[i].flavor if placed else None,
                          nodes=list(placed[i].nodes) if placed else [])
                 for i, r in enumerate(spec.job_roles())]
    first = spec.job_roles()[0]
    return JobView(
        id=job.id, tenant=job.tenant, name=job.name, queue=job.queue,
        priority_class=job.priority_class, priority=job.priority, kind=spec.kind,
        ranks=spec.total_ranks, resources=written_amounts(first.resources.amounts()),
        roles=roles, state=job.state,
        reason=job.reason,
        created_at=job.created_at, queued_at=job.queued_at, admitted_at=job.admitted_at,
        started_at=job.started_at, finished_at=job.finished_at, attempt=job.attempt,
        restarts=job.restarts, max_restarts=spec.max_restarts, exit_code=job.exit_code,
        placement=job.placement, stopping=job.stop_reason,
        held=is_held(job.not_before),
        queue_position=position if job.state == JobState.QUEUED else None,
        waiting=(waiting_view(waiting, space) if waiting and job.state == JobState.QUEUED
                 else None),
        estimated_start=estimated_start if job.state == JobState.QUEUED else None,
    )


def attempt_view(a: AttemptRecord) -> AttemptView:
    return AttemptView(hold=a.hold, attempt=a.attempt, flavor=a.flavor,
                       admitted_at=a.admitted_at, started_at=a.started_at, ended_at=a.ended_at,
                       nodes=list(a.nodes), ranks=a.ranks, gpus=a.gpus, cpus=a.cpus,
                       outcome=a.outcome, cause=a.cause)


def cause_view(cause: CauseRecord) -> AttemptCauseView:
    return AttemptCauseView(attempt=cause.attempt, at=cause.at, category=cause.category,
                            code=cause.code, message=cause.message, lines=list(cause.lines),
                            nodes=list(cause.nodes), exit_code=cause.exit_code)


def waiting_view(why: Waiting, space: ResourceSpace = DEFAULT_SPACE) -> WaitingView:
    """The numbers of gpu, cpu and memory, and of every other resource one of them has (so
    a resource the job asks for shows, with 0 left of it); unlimited amounts left out."""
    given = [v for v in (why.requested, why.available, why.borrowable) if v is not None]
    shown = {i for i in range(len(space))
             if i < 3 or any(0 < v[i] < UNLIMITED for v in given)}

    def amounts(r: Resources | None) -> dict[str, float] | None:
        return None if r is None else _amounts(space, r, shown)

    return WaitingView(code=why.code, message=why.message, inadmissible=why.inadmissible,
                       starving=why.starving, flavor=why.flavor,
                       requested=amounts(why.requested), available=amounts(why.available),
                       borrowable=amounts(why.borrowable))


def event_view(e: EventRecord) -> EventView:
    return EventView(id=e.id, job_id=e.job_id, at=e.at, kind=e.kind, from_state=e.from_state,
                     to_state=e.to_state, reason=e.reason, actor=e.actor)


def report_view(report: dict[str, Any]) -> CheckReportView:
    """A stored check report (`HealthReport.to_json` with ``at``)."""
    return CheckReportView(check_set=report["set"], passed=report["passed"], at=report["at"],
                           duration_s=report["duration_s"],
                           results=[check_view(r) for r in report["results"]])


def check_view(result: dict[str, Any]) -> CheckView:
    return CheckView(**{k: result[k] for k in CheckView.model_fields})


def node_event_view(e: NodeEventRecord) -> NodeEventView:
    results = (e.detail or {}).get("results", [])
    return NodeEventView(id=e.id, at=e.at, kind=e.kind, from_state=e.from_state,
                         to_state=e.to_state, reason=e.reason, actor=e.actor,
                         checks=[check_view(r) for r in results])


def _amounts(space: ResourceSpace, values: Sequence[int], shown: Collection[int] = range(3)
             ) -> dict[str, float]:
    """Amounts by resource name, as written (GPUs, CPUs, bytes, units); unlimited ones left
    out, and zeros too but for the resources ``shown`` (gpu, cpu and memory)."""
    return {name: float(written(name, v)) for i, (name, v) in enumerate(
        zip(space.names, values, strict=True)) if v < UNLIMITED and (v or i in shown)}


def written_amounts(amounts: dict[str, int]) -> dict[str, float]:
    """A request by resource name, as written."""
    return {name: float(written(name, v)) for name, v in amounts.items()}


def _isolation(settings: ServerSettings, cluster: ClusterConfig) -> Isolation:
    source = settings.config or "default cluster"
    if cluster.executor == "local":
        return decide(cluster, source=source)
    # Ranks run as the user of Ray's workers, with no sandbox: isolation is Ray's deployment's.
    if len(cluster.tenants) > 1 and not cluster.isolation.single_trust:
        raise IsolationError(source, "isolation", 'with executor = "ray" every job runs as the '
                             "user of Ray's workers, with no sandbox: give one tenant, or set "
                             "isolation.single_trust = true")
    return Isolation(single_trust=cluster.isolation.single_trust)


def _ray_executor(settings: ServerSettings, cluster: ClusterConfig, hidden: set[str],
                  ) -> tuple[Executor, Callable[[], Sequence[Node]]]:
    """The Ray executor, connected (RayUnavailable when it cannot be), with its nodes."""
    from stoker.control.ray_executor import RayExecutor

    assert cluster.ray is not None
    jobs = Path(cluster.ray.shared_dir) / "jobs"
    try:
        jobs.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(settings.config, "ray.shared_dir",
                          f"cannot create {jobs}: {e.strerror}") from None
    executor = RayExecutor(cluster, jobs, settings.ray_address, hidden,
                           cluster.isolation.pass_env, cluster.isolation.fault_injection)
    executor.connect()
    return executor, executor.nodes


def make_state_dirs(state: Path) -> None:
    """The state directory and ``jobs/`` can be entered by the tenants' users (to reach their
    own job's directory) but not listed; everything else in it is the server's alone."""
    (state / "jobs").mkdir(parents=True, exist_ok=True)
    for path in (state, state / "jobs"):
        if path.stat().st_uid == os.geteuid():
            path.chmod(0o711)
    for entry in os.scandir(state):  # the database, its journal, the server's log
        if entry.is_file(follow_symlinks=False) and entry.stat().st_uid == os.geteuid():
            os.chmod(entry.path, 0o600)


def database_url(settings: ServerSettings, cluster: ClusterConfig) -> str:
    """``--db``, else the config's ``[store] url``, else SQLite in the state directory;
    checked (DatabaseError without the URL's password when it is not a usable URL)."""
    url = settings.db or cluster.store.url or settings.db_url()
    parse_url(url)
    return url


ONE_SQLITE_SERVER = ("a SQLite store allows one server; several servers need PostgreSQL "
                     "(--db postgresql+psycopg://USER@HOST:PORT/DB)")


def sqlite_locks(state: Path, url: str) -> list[IO[str]]:
    """Exclusive locks on the state directory and on the database file."""
    locks = [_lock(state / "server.lock", ONE_SQLITE_SERVER)]
    database = parse_url(url).database
    if database and database != ":memory:":
        path = Path(database).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            locks.append(_lock(path.with_name(path.name + ".server-lock"), ONE_SQLITE_SERVER,
                               what=f"the database {path}"))
        except BaseException:
            locks[0].close()
            raise
    return locks


def _lock(path: Path, why: str = "", shared: bool = False, what: str | None = None) -> IO[str]:
    """Hold a lock on ``path`` for the life of the process: exclusive (SQLite: one server),
    or shared (PostgreSQL: servers of one database share a state directory)."""
    handle = path.open("a")
    try:
        fcntl.flock(handle, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        if shared:
            raise StokerError(f"a stoker server with a SQLite store uses {path.parent}; "
                              "servers on PostgreSQL cannot share it") from None
        where = what or str(path.parent)
        raise StokerError(f"another stoker server uses {where}" + (f": {why}" if why else "")
                          ) from None
    if not shared:
        handle.write(f"{os.getpid()}\n")
        handle.flush()
    return handle
