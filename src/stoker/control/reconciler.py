"""The reconciler: one loop that makes the executor's processes match the store.

Each cycle: watch the running jobs' processes (exits become transitions), carry out pending
stops (SIGTERM, a grace period, SIGKILL), build a snapshot, call `stoker.sched.schedule`, apply
its decisions (admit -> ADMITTED, preempt -> stop), and start the admitted jobs. Every state
change is a store transition with its event; nothing lives only in memory, so after a crash
`recover()` adopts the processes still running and the next cycle carries on. What the
scheduler keeps between cycles (why jobs wait, the nominated jobs, admission fair sharing's
usage) is written to the store when it changes and read back by `recover()`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from stoker.control import failure
from stoker.control.depends import WAITING, verdicts
from stoker.control.evidence import attempt_log, oom_kills
from stoker.control.executor import Executor, NotReserved
from stoker.control.failure_rate import WINDOW_S as FAILURE_WINDOW_S
from stoker.control.failure_rate import failure_rate, rate_env
from stoker.control.health_gate import GangVerdict, PrestartGate
from stoker.control.health_watch import PeriodicChecks, outcome
from stoker.control.jobenv import FAULT_PREFIX
from stoker.control.launch import (
    RUN,
    assign_role_devices,
    devices_in_use,
    exit_path,
    job_dir,
    plan_launch,
    process_count,
    set_aside_run,
)
from stoker.control.nodes import node_record, with_cordons
from stoker.control.quotas import with_overrides
from stoker.control.run_telemetry import flagged_at_end
from stoker.control.sched_state import StoredState
from stoker.control.snapshot import (
    build_snapshot,
    job_spec,
    per_rank,
    service,
    unknown_resources,
)
from stoker.control.states import ACTIVE, is_held
from stoker.control.store import CauseRecord, CheckOutcome, JobRecord, Store
from stoker.sched import (
    Admit,
    Decisions,
    JobId,
    Node,
    PendingJob,
    SchedulerCache,
    Snapshot,
    Waiting,
    schedule,
)
from stoker.sched.config import build_policy
from stoker.sched.usage import UsageTracker
from stoker.spec.api import JobState
from stoker.spec.cluster import ClusterConfig
from stoker.spec.errors import ConfigError
from stoker.spec.job import JobSpec
from stoker.train.exitcodes import EXIT_PREEMPTED, describe
from stoker.train.launch import FAILURE_GRACE_ENV

log = logging.getLogger(__name__)

Q, A, S, R = JobState.QUEUED, JobState.ADMITTED, JobState.STARTING, JobState.RUNNING
ACTOR = "reconciler"


@dataclass(frozen=True)
class ControlSettings:
    grace_period_s: float = 30.0
    # After a failure (a process of the gang died, or the gang was declared hung) the others
    # cannot finish a collective, so they get this instead (SIGTERM, then SIGKILL).
    failure_grace_s: float = 3.0
    backoff_base_s: float = 5.0
    backoff_max_s: float = 300.0
    resume: bool = True  # start training jobs with ``--resume auto``
    # Exit codes meaning "preempted, resumable" (the training runtime's, after SIGTERM).
    preempted_exit_codes: frozenset[int] = frozenset({EXIT_PREEMPTED})

    def backoff(self, restarts: int) -> float:
        return float(min(self.backoff_max_s, self.backoff_base_s * 2 ** max(0, restarts)))

    def grace(self, stop_reason: str | None) -> float:
        """Seconds from SIGTERM to SIGKILL for a stop of this reason."""
        return self.failure_grace_s if stop_reason == "failure" else self.grace_period_s


@dataclass
class CycleStats:
    seconds: float = 0.0
    admitted: int = 0
    preempted: int = 0
    pending: int = 0
    running: int = 0


class Reconciler:
    def __init__(self, store: Store, executor: Executor, cluster: ClusterConfig,
                 nodes: Sequence[Node], jobs_dir: Path,
                 settings: ControlSettings = ControlSettings(),
                 clock: Callable[[], float] = time.time,
                 node_source: Callable[[], Sequence[Node]] | None = None) -> None:
        """``node_source``: the cluster's nodes now (Ray's), read again every cycle; without
        it the nodes are ``nodes`` for good."""
        self.store = store
        self.executor = executor
        self.cluster = cluster
        self.nodes = tuple(nodes)
        self.node_source = node_source
        self._nodes_read = 0.0
        self.jobs_dir = jobs_dir
        self.settings = settings
        self.clock = clock
        self.policy = build_policy(cluster)
        # Kept in memory and, when it changes, in the store (`restore` reads it back).
        afs = self.policy.admission_fair_sharing
        self.tenant_usage = None if afs is None else UsageTracker(afs)
        self.waiting: dict[int, Waiting] = {}  # why each pending job waits, by the last cycle
        self.stored = StoredState(store)
        self._restored = False
        self.cycles = 0  # cycles run
        self.sched_cache = SchedulerCache()
        self.last = CycleStats()
        self.on_cycle: Callable[[CycleStats], None] | None = None
        self._overrides_key: tuple[Any, ...] | None = None
        self._nominated: frozenset[int | str] = frozenset()  # by the last cycle: they go first
        self._suspects: dict[tuple[int, int], frozenset[str]] = {}  # (job, restarts) -> nodes
        self._effective = cluster
        self._killed: set[tuple[int, int]] = set()
        self._unplaced: set[JobId] = set()  # admitted without all their roles: warned once
        self._vanished: dict[tuple[int, int, int], str] = {}  # how, where the executor knows
        self._node_lost: dict[tuple[int, int], str] = {}  # attempts that lost a node: why
        self._lost_nodes: dict[tuple[int, int], str] = {}  # ... and which node
        self._oom_at_start: dict[tuple[int, int], int] = {}  # the kernel's OOM kills then
        self._wake = threading.Event()
        self.prestart = (PrestartGate(cluster.health, jobs_dir / ".health", self.wake)
                         if cluster.health.prestart else None)
        # On Ray the checks would have to run on the node itself: not done yet.
        self.checks = (PeriodicChecks(cluster.health, jobs_dir / ".health", self.wake, clock)
                       if cluster.health.periodic and cluster.executor != "ray" else None)

    # --- the loop -----------------------------------------------------------------------------

    def run(self, stop: threading.Event, interval: float) -> None:
        """Reconcile every ``interval`` seconds (sooner after `wake`) until ``stop`` is set;
        an error in one cycle is logged and the next cycle goes on."""
        while not stop.is_set():
            try:
                self.step()
            except Exception:
                log.exception("reconcile cycle failed")
            self.pause(interval)

    @property
    def nominated(self) -> frozenset[int | str]:
        """The jobs the last cycle nominated (they wait for their victims and go first)."""
        return self._nominated

    def wake(self) -> None:
        """Run the next cycle now (a job was submitted or cancelled)."""
        self._wake.set()

    def pause(self, seconds: float) -> None:
        """Wait between cycles: ``seconds``, or until `wake`."""
        self._wake.wait(seconds)
        self._wake.clear()

    def close(self) -> None:
        """Stop the health checks (those running are abandoned)."""
        if self.prestart is not None:
            self.prestart.close()
        if self.checks is not None:
            self.checks.close()

    def restore(self) -> None:
        """Take the scheduler's state back from the store (as the last leader left it)."""
        self._nominated = frozenset(self.stored.load(self.tenant_usage))
        self.waiting = dict(self.stored.waiting)
        self._restored = True

    def step(self) -> Decisions:
        started = time.perf_counter()
        if not self._restored:
            self.restore()
        now = self.clock()
        self.refresh_nodes(sync=True)
        if self.checks is not None:
            for node, result in self.checks.finished():
                self._record_check(node, result)
        for job in self._readable(self.store.list_jobs(states=(S, R)), now):
            self._watch(job, now)
        for job in self._readable(self.store.list_jobs(states=ACTIVE), now):
            self._stop(job, now)
        snapshot = self.snapshot(now)
        if self.tenant_usage is not None:
            self.tenant_usage.update(now, snapshot.running)
            snapshot = replace(snapshot, tenant_usage=self.tenant_usage.scores())
        decisions = schedule(snapshot, self.policy, self.sched_cache)
        self._nominated = frozenset(decisions.nominated)
        self._apply(decisions, now, {j.id: j for j in snapshot.pending})
        for job in self.store.list_jobs(states=(A,)):
            self._launch(job, now)
        self.stored.save(self.waiting, decisions.nominated, self.tenant_usage)
        self._watch_nodes(now)
        self.cycles += 1
        self.last = CycleStats(time.perf_counter() - started, len(decisions.admit),
                               len(decisions.preempt), len(snapshot.pending),
                               len({j.id for j in snapshot.running}))  # a job, not its roles
        if self.on_cycle is not None:
            self.on_cycle(self.last)
        return decisions

    # --- node health ----------------------------------------------------------------------------

    def _record_check(self, node: str, result: CheckOutcome) -> None:
        health = self.cluster.health
        self.store.record_check(node, result, health.passes_to_return, health.failures_to_flag,
                                ACTOR)

    def _watch_nodes(self, now: float) -> None:
        """Draining nodes whose last job ended become drained; due health checks start."""
        names = {n.name for n in self.nodes}
        records = [r for r in self.store.nodes() if r.name in names]
        busy = {node for job in self.store.list_jobs(states=ACTIVE) if job.placement
                for node in job.placement["nodes"]}
        for record in records:
            if record.drain and record.drained_at is None and record.name not in busy:
                self.store.mark_drained(record.name, ACTOR)
        if self.checks is not None:
            self.checks.start(records, busy, now)

    # --- the scheduler's view -------------------------------------------------------------------

    def effective_cluster(self) -> ClusterConfig:
        """The cluster config with the admin's quota overrides (re-read every cycle)."""
        overrides = self.store.quotas()
        key = tuple((o.queue, o.flavor, o.updated_at) for o in overrides)
        if key != self._overrides_key:
            self._effective = self.cluster
            for override in overrides:  # one by one: a bad one (after a config change) is skipped
                try:
                    self._effective = with_overrides(self._effective, [override])
                except ConfigError as e:
                    log.warning("quota override of %s/%s no longer applies: %s",
                                override.queue, override.flavor, e)
            self._overrides_key = key
        return self._effective

    def refresh_nodes(self, sync: bool = False, max_age: float = 0.0) -> tuple[Node, ...]:
        """Read the nodes from ``node_source`` again (if older than ``max_age`` seconds); with
        ``sync`` the store learns of new ones and the event log of those that joined or left.
        When the source fails, the last nodes read stay."""
        if self.node_source is None or time.monotonic() - self._nodes_read < max_age:
            return self.nodes
        try:
            nodes = tuple(self.node_source())
        except Exception as e:
            log.warning("cannot read the cluster's nodes: %s", e)
            return self.nodes
        self._nodes_read = time.monotonic()
        before, after = {n.name for n in self.nodes}, {n.name for n in nodes}
        self.nodes = nodes
        if sync and before != after:
            self.store.sync_nodes([node_record(self.cluster, n) for n in nodes])
            for name in sorted(after - before):
                self.store.log_event("node", f"node {name} joined", ACTOR)
            for name in sorted(before - after):
                self.store.log_event("node", f"node {name} left", ACTOR)
        return nodes

    def current_nodes(self) -> list[Node]:
        return with_cordons(self.nodes, self.store.nodes())

    def snapshot(self, now: float) -> Snapshot:
        jobs = self._dependencies(self._readable(self.store.list_jobs(states=(*ACTIVE, Q)), now),
                                  now)
        progress = {job.id: self._progress(job, now) for job in jobs if job.state in ACTIVE}
        return build_snapshot(now, self.effective_cluster(), self.current_nodes(), jobs,
                              progress, self._nominated, suspects=self.suspects(jobs))

    def _dependencies(self, jobs: Sequence[JobRecord], now: float) -> list[JobRecord]:
        """``jobs`` without the queued ones whose dependencies have not all SUCCEEDED
        (`stoker.control.depends`): those that wait say for which job in their ``reason``
        (unless held), those whose dependency ended FAILED or CANCELLED are CANCELLED."""
        blocked = verdicts(jobs, self.store)
        for job in jobs:
            why = blocked.get(job.id)
            if why is not None and why.broken:
                self.store.transition(job.id, (Q,), (JobState.CANCELLED,), why.reason, ACTOR,
                                      {"finished_at": now}, {"after_ok": why.on},
                                      version=job.version)
            elif is_held(job.not_before) or job.state != Q:
                continue
            elif why is not None and job.reason != why.reason:
                self.store.annotate(job.id, (Q,), "waiting", why.reason, ACTOR,
                                    {"reason": why.reason}, {"after_ok": why.on},
                                    version=job.version)
            elif why is None and job.reason.startswith(WAITING) and job_spec(job).after_ok:
                self.store.annotate(job.id, (Q,), "waiting", "dependencies succeeded", ACTOR,
                                    {"reason": "dependencies succeeded"}, version=job.version)
        return [job for job in jobs if job.id not in blocked]

    def suspects(self, jobs: Sequence[JobRecord]) -> dict[int, frozenset[str]]:
        """For each queued job that failed before: the nodes its infrastructure failures were
        blamed on (its retries avoid them; `stoker.control.snapshot.avoiding`). Read from the
        store once per failure (a job's causes change only when it fails again)."""
        out = {}
        for job in jobs:
            if job.state != Q or not job.restarts:
                continue
            key = (job.id, job.restarts)
            nodes = self._suspects.get(key)
            if nodes is None:
                nodes = frozenset(n for c in self.store.causes(job.id)
                                  if c.category == failure.INFRA for n in c.nodes)
                if len(self._suspects) > 10_000:
                    self._suspects.clear()
                self._suspects[key] = nodes
            if nodes:
                out[job.id] = nodes
        return out

    def _readable(self, jobs: Sequence[JobRecord], now: float) -> list[JobRecord]:
        """The jobs whose stored spec still parses; the others (stored by an older version
        that checked less) are FAILED with the reason, so none holds quota it cannot use."""
        good = []
        for job in jobs:
            try:
                spec = job_spec(job)
            except ValueError as e:
                why = str(e).splitlines()[1:3] or [str(e)]
                self.store.transition(job.id, (Q, *ACTIVE), (JobState.FAILED,),
                                      f"cannot start: its stored spec is invalid "
                                      f"({' '.join(w.strip() for w in why)})", ACTOR,
                                      {"finished_at": now, "placement": None})
                continue
            unknown = unknown_resources(self.cluster, spec) if job.state == Q else []
            if unknown:  # the cluster config changed since it was submitted
                self.store.transition(job.id, (Q,), (JobState.FAILED,),
                                      f"cannot start: this cluster has no {unknown[0]} any "
                                      "more", ACTOR, {"finished_at": now})
                continue
            good.append(job)
        return good

    def _progress(self, job: JobRecord, now: float) -> float:
        """Seconds of work a preemption would lose: since the last checkpoint or the start."""
        since = job.started_at or job.admitted_at or now
        checkpoints = job_dir(self.jobs_dir, job.id) / RUN / "checkpoints"
        try:  # the job's own directory: links it planted are not followed
            with os.scandir(checkpoints) as entries:
                latest = max((e.stat(follow_symlinks=False).st_mtime for e in entries),
                             default=0.0)
        except OSError:
            latest = 0.0
        return max(0.0, now - max(since, latest))

    # --- applying decisions ---------------------------------------------------------------------

    def _apply(self, decisions: Decisions, now: float,
               pending: Mapping[JobId, PendingJob]) -> None:
        self.waiting = {int(job): why for job, why in decisions.waiting.items()}
        for p in decisions.preempt:
            job = self.store.get_job(int(p.job))
            if job is None or job.state not in ACTIVE or job.stop_reason is not None:
                continue
            self.store.annotate(job.id, ACTIVE, "preempt",
                                f"preempted ({p.reason.replace('_', ' ')}) for job {p.by}", ACTOR,
                                {"stop_reason": "preempt", "stop_requested_at": now},
                                {"by": p.by, "reason": p.reason}, version=job.version)
        for a in decisions.admit:
            placed = self._placement(a, pending[a.job])
            if placed is None:
                continue
            placement, where = placed
            borrowing = ", borrowing" if a.borrowing else ""
            admitted = self.store.transition(
                int(a.job), (Q,), (A,), f"admitted to queue {a.queue}{where}{borrowing}",
                ACTOR, {"placement": placement, "admitted_at": now})
            if admitted is not None and self.tenant_usage is not None:
                self.tenant_usage.admitted(pending[a.job])

    def _placement(self, a: Admit, job: PendingJob) -> tuple[dict[str, Any], str] | None:
        """The placement stored for an admission, and where it put the job in words. A job
        with several roles: ``nodes`` has every rank's node, the roles' in role order, and ``roles``
        each role's name, flavor and ranks. None: the admission does not place every role
        (a scheduler that does not know roles yet): the job stays queued."""
        placement: dict[str, Any] = {"flavor": a.flavor, "nodes": list(a.nodes),
                                     "borrowing": a.borrowing}
        if not job.roles and not a.roles:
            return placement, f" on {a.flavor} ({', '.join(a.nodes)})"
        record = self.store.get_job(int(a.job))
        if record is None:
            return None
        roles = job_spec(record).job_roles()
        placed = ((a.flavor, a.nodes), *((r.flavor, r.nodes) for r in a.roles))
        if len(placed) != len(roles) or any(len(nodes) != role.ranks
                                            for role, (_, nodes) in zip(roles, placed,
                                                                        strict=False)):
            if a.job not in self._unplaced:
                self._unplaced.add(a.job)
                log.warning("job %s: admitted with %d of its %d roles placed; left queued",
                            a.job, len(placed), len(roles))
            return None
        placement["nodes"] = [node for _, nodes in placed for node in nodes]
        placement["roles"] = [{"name": role.name, "flavor": flavor, "ranks": role.ranks}
                              for role, (flavor, _) in zip(roles, placed, strict=True)]
        where = ": " + "; ".join(f"{role.name} on {flavor} ({', '.join(nodes)})"
                                 for role, (flavor, nodes) in zip(roles, placed, strict=True))
        return placement, where

    def _code(self, job: JobRecord) -> bytes | None:
        """The job's code archive, for a [task] job submitted with its code."""
        sha = (job.spec.get("code") or {}).get("sha256")
        if sha is None:
            return None
        archive = self.store.code_archive(sha)
        if archive is None:
            raise RuntimeError(f"its code archive {sha[:12]} is not in the store")
        return archive

    def _failure_env(self, spec: JobSpec, nodes: Sequence[str], now: float) -> Mapping[str, str]:
        """A training job's view of the cluster's failure rate, fixed for the attempt (read by
        ``checkpoint.interval = "auto"``); none when the store cannot tell."""
        if spec.kind != "train":
            return {}
        since = now - FAILURE_WINDOW_S
        try:
            rate = failure_rate(self.store.causes_since(since), self.store.processes_since(since),
                                now, FAILURE_WINDOW_S)
        except Exception:  # a rate is an optimisation: never a reason not to start
            log.exception("cannot read the cluster's failure rate")
            return {}
        return rate_env(rate, len(set(nodes)))

    def _grace_env(self, spec: JobSpec) -> Mapping[str, str]:
        """A training job's launcher (`stoker train`) stops its gang after a failed rank within
        the same failure grace as the control plane."""
        if spec.kind != "train":
            return {}
        return {FAILURE_GRACE_ENV: f"{self.settings.failure_grace_s:g}"}

    def _launch(self, job: JobRecord, now: float) -> None:
        if job.stop_reason is not None or job.placement is None:
            return
        spec = job_spec(job)
        nodes = {n.name: n for n in self.nodes}
        missing = [n for n in job.placement["nodes"] if n not in nodes]
        if missing:
            self.store.transition(job.id, (A,), (Q,), f"node {missing[0]} is gone; requeued",
                                  ACTOR, {"placement": None, "queued_at": now},
                                  version=job.version)
            return
        checked = self._prestart_checked(job, now)
        if checked is None:
            return
        in_use = devices_in_use(self.store.live_processes())
        ranks = assign_role_devices(nodes, job.placement["nodes"],
                                    [(r.ranks, per_rank(self.cluster, r))
                                     for r in spec.job_roles()], in_use)
        attempt = job.attempt + 1
        try:
            plan = plan_launch(job, spec, attempt, self.jobs_dir, ranks, self.settings.resume,
                               per_rank=self.executor.per_rank,
                               stoker_env={**self._failure_env(spec, job.placement["nodes"], now),
                                           **self._grace_env(spec)},
                               code=self._code(job))
        except Exception as e:  # whatever the cause, the job must not keep its quota
            log.exception("cannot plan job %d", job.id)
            self._fail(job, spec, None, f"cannot start: {_why(e)}", now, from_states=(A,))
            return
        # The intent is durable before any process exists: after a crash here, `recover`
        # finds a STARTING job without processes and kills whatever was started for it.
        starting = self.store.transition(
            job.id, (A,), (S,), f"starting attempt {attempt}{checked}", ACTOR,
            {"attempt": attempt, "started_at": now, "exit_code": None}, version=job.version)
        if starting is None:
            return
        self._oom_at_start[(job.id, attempt)] = oom_kills()
        if spec.kind == "train" and not self.settings.resume and attempt > 1:
            with contextlib.suppress(OSError):  # else `stoker train` refuses, naming the dir
                set_aside_run(self.jobs_dir, job.id, attempt)
        try:
            records = self.executor.launch(plan)
        except NotReserved as e:  # nothing started: the job waits for its next admission
            self.store.transition(job.id, (S,), (Q,), f"{_why(e)}; requeued", ACTOR,
                                  {"placement": None, "queued_at": now, "attempt": job.attempt,
                                   "not_before": now + self.settings.backoff_base_s},
                                  version=starting.version)
            return
        except Exception as e:
            log.exception("cannot start job %d", job.id)
            self._fail(starting, spec, None, f"cannot start: {_why(e)}", now)
            return
        try:
            self.store.add_processes(records)
        except Exception:  # e.g. this server is no longer the leader: leave nothing behind
            for record in records:
                self.executor.kill(record)
            raise
        faults = any(k.startswith(FAULT_PREFIX) for k in spec.env)
        if faults and self.cluster.isolation.fault_injection:
            self.store.annotate(job.id, (S, R), "fault-injection",
                                "the test-only fault hook (STOKER_FAULT) is active", ACTOR)

    def _prestart_checked(self, job: JobRecord, now: float) -> str | None:
        """"" when no pre-start checks are configured, a note when they passed on the job's
        nodes, None while they run or when they failed: then the nodes to blame are cordoned
        and the job goes back to the queue, to be placed elsewhere."""
        if self.prestart is None:
            return ""
        assert job.placement is not None
        verdict = self.prestart.verdict(job.id, job.attempt + 1, job.placement["nodes"])
        if verdict is None:
            return None
        if verdict.passed:
            self._record_prestart(verdict, {}, job.id)
            seconds = max(r.duration_s for r in verdict.reports) + verdict.gang.duration_s
            return f" (pre-start health checks passed in {seconds:.1f} s)"
        bad = verdict.bad_nodes()
        self._record_prestart(verdict, bad, job.id)
        wait = {} if bad else {"not_before": now + self.settings.backoff_base_s}
        cause = failure.health_check(sorted(bad), verdict.reason())
        self.store.transition(job.id, (A,), (Q,),
                              f"pre-start health check failed: {verdict.reason()}; requeued",
                              ACTOR, {"placement": None, "queued_at": now, **wait},
                              detail={"cause": cause.to_json()}, version=job.version)
        return None

    def _record_prestart(self, verdict: GangVerdict, bad: Mapping[str, str], job: int) -> None:
        """Each node's pre-start outcome into its health: a failed one (its own checks, or
        blamed by the gang's all-reduce) cordons it."""
        now = self.clock()
        gang = {"gang": {"allreduce": verdict.gang.line(), "passed": verdict.gang.passed}}
        for report in verdict.reports:
            result = outcome(report, now)
            why = bad.get(report.node)
            if why is not None:
                result = CheckOutcome(result.check_set, False, f"before job {job}: {why}",
                                      {**result.report, **gang})
            self._record_check(report.node, result)

    # --- watching processes ---------------------------------------------------------------------

    def _watch(self, job: JobRecord, now: float) -> None:
        spec = job_spec(job)
        procs = self.store.processes(job.id, job.attempt)
        if len(procs) < process_count(spec, self.executor.per_rank):
            return  # an interrupted launch; `recover` deals with it
        outcomes: dict[int, int | None] = {}
        for proc in procs:
            if proc.ended_at is not None:
                outcomes[proc.index] = proc.exit_code
                continue
            status = self.executor.status(
                proc, exit_path(self.jobs_dir, job.id, job.attempt, proc.index))
            if status.state == "alive":
                continue
            if status.reason is not None:
                self._vanished[(job.id, job.attempt, proc.index)] = status.reason
            if status.lost_node is not None:
                job = self._lost(status.lost_node, job, proc.index, status.reason or "")
            self.executor.kill(proc)  # whatever of its process group is left
            self.store.end_process(job.id, job.attempt, proc.index, status.exit_code,
                                   status.ended_at or now)
            outcomes[proc.index] = status.exit_code
        if not outcomes:
            if job.state == S:
                self.store.transition(job.id, (S,), (R,),
                                      f"all {len(procs)} processes running", ACTOR,
                                      version=job.version)
            return
        if len(outcomes) < len(procs):
            failed = [(i, c) for i, c in sorted(outcomes.items()) if c != 0]
            if failed and job.stop_reason is None:
                index, code = failed[0]
                self.store.annotate(job.id, (S, R), "failure",
                                    f"{self._describe(job, index, code)}; stopping the other "
                                    "ranks",
                                    ACTOR, {"stop_reason": "failure", "stop_requested_at": now,
                                            "exit_code": code}, version=job.version)
            return
        self._finish(job, spec, outcomes, now)

    def _finish(self, job: JobRecord, spec: JobSpec, outcomes: Mapping[int, int | None],
                now: float) -> None:
        """Every process of the attempt has ended: decide the job's next state."""
        self.executor.release(job.id, job.attempt)
        try:
            self._decide(job, spec, outcomes, now)
        finally:
            self._node_lost.pop((job.id, job.attempt), None)
            self._lost_nodes.pop((job.id, job.attempt), None)
            self._oom_at_start.pop((job.id, job.attempt), None)
            for key in [k for k in self._vanished if k[:2] == (job.id, job.attempt)]:
                del self._vanished[key]

    def _decide(self, job: JobRecord, spec: JobSpec, outcomes: Mapping[int, int | None],
                now: float) -> None:
        changes = self._stopped(job, spec, now)
        lost = self._node_lost.get((job.id, job.attempt))
        if lost is not None and job.stop_reason in (None, "failure"):
            # The other ranks' failures (their peers gone) follow from it.
            self._fail(job, spec, None, lost, now, changes, cause=self._cause(job, spec, outcomes))
            return
        bad = [(i, c) for i, c in sorted(outcomes.items()) if c != 0]
        code = bad[0][1] if bad else 0
        stop = job.stop_reason
        # A stop we asked for decides the outcome, whatever the exit codes: a job that exits 0
        # on SIGTERM has handled the signal, it has not finished its work.
        if stop == "cancel":
            self.store.transition(job.id, (S, R), (JobState.CANCELLED,), "cancelled", ACTOR,
                                  changes | {"finished_at": now, "exit_code": code},
                                  version=job.version)
        elif stop == "preempt" or (stop is None and bad and all(
                c in self.settings.preempted_exit_codes for _, c in bad)):
            why = f"preempted; requeued (exit code {code})"
            self.store.transition(job.id, (S, R), (JobState.PREEMPTED, Q), why, ACTOR,
                                  changes | {"queued_at": now, "placement": None,
                                             "exit_code": code}, version=job.version)
        elif stop == "timeout":
            self.store.transition(job.id, (S, R), (JobState.FAILED,),
                                  f"max run time of {spec.max_run_time:g}s exceeded", ACTOR,
                                  changes | {"finished_at": now, "exit_code": code},
                                  version=job.version)
        elif not bad:
            self.store.transition(job.id, (S, R), (JobState.SUCCEEDED,),
                                  "every process exited with code 0", ACTOR,
                                  changes | {"finished_at": now, "exit_code": 0},
                                  version=job.version)
        elif stop == "failure":  # the first process that failed, not those stopped after it
            self._fail(job, spec, job.exit_code, "a process failed and the gang was stopped",
                       now, changes, cause=self._cause(job, spec, outcomes))
        else:
            self._fail(job, spec, code, self._describe(job, bad[0][0], code), now, changes,
                       cause=self._cause(job, spec, outcomes))

    def _cause(self, job: JobRecord, spec: JobSpec, outcomes: Mapping[int, int | None]
               ) -> failure.Cause | None:
        """Why the attempt failed, from what its processes left (`stoker.control.failure`)."""
        key = (job.id, job.attempt)
        stop_at = job.stop_requested_at
        processes = []
        for proc in self.store.processes(job.id, job.attempt):
            stopped = (stop_at is not None and proc.ended_at is not None
                       and proc.ended_at >= stop_at)
            processes.append(failure.ProcessEvidence(
                proc.index, proc.node, outcomes.get(proc.index, proc.exit_code),
                attempt_log(self.jobs_dir, job.id, proc.index, job.attempt), stopped,
                self._vanished.get((job.id, job.attempt, proc.index))))
        before = self._oom_at_start.get(key)
        lost = self._node_lost.get(key)
        evidence = failure.AttemptEvidence(
            processes, self._lost_nodes.get(key), lost or "",
            0 if before is None else max(0, oom_kills() - before),
            any(r.resources.memory is not None for r in spec.job_roles()),
            self._stragglers(job, spec))
        try:
            return failure.classify(evidence)
        except Exception:  # a cause is a diagnosis: never let it stop the transition
            log.exception("cannot classify the failure of job %d attempt %d", *key)
            return None

    def _stragglers(self, job: JobRecord, spec: JobSpec) -> tuple[tuple[int, str], ...]:
        """A training job's ranks still flagged as stragglers, each with its node."""
        nodes = (job.placement or {}).get("nodes") or []
        if spec.kind != "train" or not nodes:
            return ()
        return tuple((rank, nodes[rank]) for rank in flagged_at_end(self.jobs_dir, job.id)
                     if 0 <= rank < len(nodes))

    def _describe(self, job: JobRecord, index: int, code: int | None) -> str:
        how = self._vanished.get((job.id, job.attempt, index))
        if code is None and how is not None:
            return f"process {index} vanished: {how}"
        return _describe(index, code)

    def _lost(self, node: str, job: JobRecord, index: int, why: str) -> JobRecord:
        """A node died under a rank: the attempt fails for that reason, and the node is
        cordoned, so nothing is placed on it before an admin has looked (it may come back
        under the same name). Returns the job as it now is."""
        record = next((r for r in self.store.nodes() if r.name == node), None)
        if record is None or not record.cordoned:
            self.store.set_cordon(node, True, f"died under job {job.id} attempt {job.attempt} "
                                  f"({why})", ACTOR)
        what = f"process {index} vanished: {why}"
        self._lost_nodes.setdefault((job.id, job.attempt), node)
        if self._node_lost.setdefault((job.id, job.attempt), what) != what:
            return job
        updated = self.store.annotate(job.id, (S, R), "node-lost",
                                      f"{what}; stopping the other ranks", ACTOR,
                                      {"stop_reason": job.stop_reason or "failure",
                                       "stop_requested_at": job.stop_requested_at or
                                       self.clock()})
        return updated or job

    def _fail(self, job: JobRecord, spec: JobSpec, code: int | None, why: str, now: float,
              changes: dict[str, Any] | None = None,
              from_states: tuple[JobState, ...] = (S, R),
              cause: failure.Cause | None = None) -> None:
        """FAILED; and back to QUEUED (after a backoff) when restarts are left and the
        ``cause`` is not the user's. An infrastructure cause makes its nodes suspect."""
        changes = (changes or self._stopped(job, spec, now)) | {"exit_code": code}
        detail = None
        record = None
        if cause is not None:
            why = why if cause.category == failure.UNKNOWN else _cause_reason(cause)
            detail = {"cause": cause.to_json()}
            record = CauseRecord(job.id, job.attempt, now, cause.category, cause.code,
                                 cause.message, list(cause.lines), list(cause.nodes),
                                 cause.exit_code if cause.exit_code is not None else code)
        retried = cause is None or cause.retried
        if retried and job.restarts < spec.max_restarts:
            delay = self.settings.backoff(job.restarts)
            done = self.store.transition(
                job.id, from_states, (JobState.FAILED, Q),
                f"{why}; restart {job.restarts + 1}/{spec.max_restarts} in {delay:g}s", ACTOR,
                changes | {"restarts": job.restarts + 1, "not_before": now + delay,
                           "queued_at": now, "placement": None},
                detail=detail, version=job.version, cause=record)
        else:
            left = (f" (no restarts left of {spec.max_restarts})" if spec.max_restarts
                    else "") if retried else " (a user error: not retried)"
            done = self.store.transition(job.id, from_states, (JobState.FAILED,), why + left,
                                         ACTOR, changes | {"finished_at": now}, detail=detail,
                                         version=job.version, cause=record)
        if done is not None and cause is not None and cause.category == failure.INFRA:
            self._suspect(job, cause)

    def _suspect(self, job: JobRecord, cause: failure.Cause) -> None:
        """The nodes an infrastructure failure points at become suspect. With periodic checks
        on they are cordoned by the health system too, so every job goes elsewhere until the
        checks clear them; without, nothing would ever clear them, so they stay schedulable
        (suspect, counted towards the repair flag). Either way the job's own retries avoid
        them while it fits elsewhere (`suspects`)."""
        health = self.cluster.health
        for node in cause.nodes:
            self.store.suspect_node(
                node, f"job {job.id} attempt {job.attempt} failed there: {cause.message}",
                health.failures_to_flag, ACTOR,
                {"job": job.id, "attempt": job.attempt, "cause": cause.code},
                cordon=health.periodic)

    def _stopped(self, job: JobRecord, spec: JobSpec, now: float) -> dict[str, Any]:
        """Changes common to every end of an attempt: service attained, stop cleared."""
        ran = max(0.0, now - (job.started_at or now))
        return {"attained_s": job.attained_s + service(spec, ran), "stop_reason": None,
                "stop_requested_at": None, "term_sent_at": None}

    # --- stopping -------------------------------------------------------------------------------

    def _stop(self, job: JobRecord, now: float) -> None:
        spec = job_spec(job)
        if (job.stop_reason is None and spec.max_run_time is not None and job.state in (S, R)
                and job.started_at is not None and now - job.started_at > spec.max_run_time):
            updated = self.store.annotate(
                job.id, (S, R), "timeout", f"max run time of {spec.max_run_time:g}s exceeded",
                ACTOR, {"stop_reason": "timeout", "stop_requested_at": now},
                version=job.version)
            if updated is None:
                return
            job = updated
        if job.stop_reason is None:
            return
        if job.state == A:  # nothing started yet
            if job.stop_reason == "cancel":
                self.store.transition(job.id, (A,), (JobState.CANCELLED,), "cancelled", ACTOR,
                                      {"finished_at": now, "stop_reason": None},
                                      version=job.version)
            else:
                self.store.transition(job.id, (A,), (Q,), "preempted before it started",
                                      ACTOR, {"placement": None, "stop_reason": None,
                                              "stop_requested_at": None, "queued_at": now},
                                      version=job.version)
            return
        live = [p for p in self.store.processes(job.id, job.attempt) if p.ended_at is None]
        if job.term_sent_at is None:
            # Recorded before sending, so a restarted server never sends a second SIGTERM
            # (a training job takes a second SIGTERM as "exit at once").
            sent = self.store.annotate(job.id, (S, R), "signal",
                                       f"SIGTERM sent to {len(live)} processes", ACTOR,
                                       {"term_sent_at": now}, version=job.version)
            if sent is not None:
                for proc in live:
                    self.executor.terminate(proc)
        elif now - job.term_sent_at >= (grace := self.settings.grace(job.stop_reason)) and live:
            for proc in live:
                self.executor.kill(proc)
            if (job.id, job.attempt) not in self._killed:
                self._killed.add((job.id, job.attempt))
                self.store.annotate(job.id, (S, R), "signal",
                                    f"SIGKILL after a grace period of {grace:g}s", ACTOR)

    # --- after a control-plane restart ----------------------------------------------------------

    def recover(self) -> None:
        """Adopt the processes of active jobs that still run; requeue jobs whose launch was
        cut short; kill every other process a previous incarnation left behind; take the
        scheduler's state back from the store."""
        self.restore()
        orphans = self.executor.orphans()
        known: set[tuple[int, int]] = set()  # the attempts adopted
        now = self.clock()
        for job in self.store.list_jobs(states=(S, R)):
            procs = self.store.processes(job.id, job.attempt)
            if len(procs) < process_count(job_spec(job), self.executor.per_rank):
                for orphan in orphans:
                    if orphan.job_id == job.id:
                        self.executor.kill_orphan(orphan)
                target = JobState.CANCELLED if job.stop_reason == "cancel" else Q
                self.store.transition(job.id, (S,), (target,),
                                      "launch interrupted by a control-plane restart", ACTOR,
                                      {"placement": None, "queued_at": now, "stop_reason": None,
                                       "stop_requested_at": None, "term_sent_at": None})
                continue
            known.add((job.id, job.attempt))
            live = [p for p in procs if p.ended_at is None]
            self.store.annotate(job.id, (S, R), "adopt",
                                f"control plane restarted; watching {len(live)} processes "
                                "again", ACTOR, detail={"pids": [p.pid for p in live]})
        for orphan in orphans:
            if (orphan.job_id, orphan.attempt) not in known:
                self.executor.kill_orphan(orphan)
                what = f"process {orphan.pid}" if orphan.pid else (
                    f"rank {orphan.index}" if orphan.index >= 0 else "the reservation")
                self.store.log_event("orphan", f"killed {what} left by job "
                                     f"{orphan.job_id} attempt {orphan.attempt}", ACTOR)


def _cause_reason(cause: failure.Cause) -> str:
    """The job's reason for a failed attempt: the cause, and for a user's error the last
    lines of the log that show it."""
    text = f"{cause.category} failure ({cause.code}): {cause.message}"
    if cause.category == failure.USER and cause.lines:
        text += " | " + " | ".join(line.strip() for line in cause.lines[-3:])
    return text


def _why(error: Exception) -> str:
    return str(error).replace("\0", "\\0") or type(error).__name__


def _describe(index: int, code: int | None) -> str:
    if code is None:
        return f"process {index} vanished"
    if code > 0 and describe(code) == f"exit code {code}":
        return f"process {index} exited with code {code}"
    return f"process {index} exited with code {code} ({describe(code)})" if code > 0 \
        else f"process {index} {describe(code)}"
