"""The discrete-event simulator: arrivals, completions, preemptions and node failures on a
simulated clock, with every admission and preemption decided by `stoker.sched.schedule`.

After each batch of simultaneous events (or, with ``interval`` > 0, once per scheduling interval,
like the live control plane) the simulator builds a `Snapshot` of its state (`Simulator.snapshot`)
and applies the returned decisions: a preempted or failed job loses the work done since its last
checkpoint (``checkpoint_interval`` seconds of work apart; a preempted job loses nothing with
``checkpoint_on_preempt``) and is requeued; an admitted job runs for its remaining work. Victims
stop at once: the preemptor can be admitted in another cycle at the same instant. Everything
random (node failures) comes from one seeded generator, so a seed fixes the result.
"""

from __future__ import annotations

import heapq
import math
import random
import time
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from itertools import islice

import numpy as np

from stoker.sched import (
    GPU,
    Decisions,
    Node,
    PendingJob,
    Resources,
    RunningJob,
    SchedulerCache,
    Snapshot,
    schedule,
)
from stoker.sched.fit import never_fits
from stoker.sched.usage import UsageTracker
from stoker.sim.cluster import SimCluster
from stoker.sim.loaders.common import split_to_fit
from stoker.sim.metrics import JobOutcome, RunResult, Usage
from stoker.sim.policies import SHARED_FLAVOR, SHARED_QUEUE, SimPolicy, shared_queue
from stoker.sim.trace import TraceJob

# Event kinds, in the order they apply at one instant: capacity comes back and is freed before
# it is taken away, and before new jobs arrive.
REPAIR, COMPLETE, FAIL, ARRIVE, WAKE = range(5)
MAX_CYCLES_PER_INSTANT = 8
# Under strict FIFO the scheduler is shown the queue's first jobs only (`Simulator._candidates`);
# a baseline's queue no longer than SHORT_QUEUE is shown whole (choosing costs more than it saves).
STRICT_PREFIX = 64
SHORT_QUEUE = 64


@dataclass(frozen=True)
class SimOptions:
    checkpoint_interval: float = 1800.0  # seconds of work between checkpoints; inf: never
    restart_overhead: float = 0.0  # seconds added to a job each time it restarts
    node_mtbf: float | None = None  # mean seconds between failures of one node; None: none
    repair_time: float = 4 * 3600.0  # seconds a failed node is down
    seed: int = 0
    interval: float = 0.0  # 0: schedule after every batch of simultaneous events
    whole_gpus: bool = False  # round fractional GPU requests up to one GPU
    checkpoint_on_preempt: bool = True  # a preempted job saves a checkpoint as it stops

# What a skipped trace job is counted under, by `stoker.sched.fit.Unfit.why`.
_SKIPPED = {
    "no_flavor": "no node of an allowed GPU model in the cluster",
    "rank": "a rank needs more GPUs than any node of the cluster has",
    "gang": "needs more GPUs of one model than the cluster has",
    "domain": "needs more GPUs of one model than the cluster has",
}


Shape = tuple[float, int, tuple[str, ...] | None]  # GPUs per rank, ranks, allowed flavors


class SimJob:
    """A job's mutable simulation state."""

    __slots__ = ("attained", "avoid", "created_at", "epoch", "flavor", "flavors", "gpus", "idx",
                 "nodes", "nominated", "outcome", "pending_obj", "pending_since", "per_rank",
                 "per_rank_gpus", "priority", "queue", "queued", "ranks", "remaining",
                 "running_obj", "sched_flavors", "shape", "start", "user")

    def __init__(self, idx: int, job: TraceJob, tenant: str, queue: str, priority: int,
                 flavors: tuple[str, ...] | None, whole_gpus: bool, size: int = 3) -> None:
        milli = job.gpus_per_rank * 1000
        if job.gpu_milli < 1000 and not whole_gpus:
            milli = job.gpu_milli
        per_rank_gpus = milli / 1000
        self.idx = idx
        self.queue = queue
        self.user = job.user or tenant  # admission fair sharing's tenant within the queue
        self.priority = priority
        self.flavors = flavors  # the cluster's flavors of its allowed GPU models (None: any)
        self.sched_flavors = flavors  # what the scheduler is told (None in the baselines' pool)
        self.avoid: frozenset[str] = frozenset()  # in the pool: the nodes of other GPU models
        self.ranks = job.ranks
        self.per_rank: Resources = (milli,) + (0,) * (size - 1)  # thousandths of a GPU
        self.per_rank_gpus = per_rank_gpus
        self.gpus = per_rank_gpus * job.ranks
        self.shape: Shape = (per_rank_gpus, job.ranks, flavors)  # see `Simulator._room`
        self.remaining = job.duration
        self.attained = 0.0
        self.created_at = job.arrival
        self.pending_since = job.arrival
        self.queued = 0  # when it was queued, as a count of the jobs queued before
        self.epoch = 0
        self.start = -1.0
        self.flavor = ""
        self.nodes: tuple[int, ...] = ()
        self.nominated = False  # in the last cycle's Decisions.nominated
        self.pending_obj: PendingJob | None = None
        self.running_obj: RunningJob | None = None
        self.outcome = JobOutcome(job.id, tenant, self.gpus, job.arrival, job.duration)

    def pending(self) -> PendingJob:
        if self.pending_obj is None:
            self.pending_obj = PendingJob(
                id=self.idx, queue=self.queue, priority=self.priority, created_at=self.created_at,
                ranks=self.ranks, per_rank=self.per_rank, flavors=self.sched_flavors,
                expected_duration=self.remaining, attained_service=self.attained,
                nominated=self.nominated, tenant=self.user, avoid=self.avoid)
        return self.pending_obj


class Simulator:
    def __init__(self, cluster: SimCluster, jobs: list[TraceJob], tenants: list[str],
                 policy: SimPolicy, options: SimOptions = SimOptions(),
                 on_progress: Callable[[int, int], None] | None = None) -> None:
        self.cluster = cluster
        self.policy = policy
        self.options = options
        self.on_progress = on_progress
        self.queues = ((shared_queue(cluster, policy.strict),) if policy.shared_queue
                       else cluster.queues)
        self.cohorts = () if policy.shared_queue else cluster.cohorts
        # The baselines put every node in one flavor-less pool (`shared_queue`).
        self.node_list: list[Node] = (
            [replace(n, flavor=SHARED_FLAVOR) for n in cluster.nodes] if policy.shared_queue
            else list(cluster.nodes))
        self.node_index = {n.name: i for i, n in enumerate(self.node_list)}
        self.nodes_view: tuple[Node, ...] = tuple(self.node_list)
        self.space = cluster.space
        self.capacity = np.array([n.capacity[GPU] / 1000 for n in self.node_list], dtype=float)
        self.free = self.capacity.copy()
        self.up = np.ones(len(self.node_list), dtype=bool)
        flavors = sorted({n.flavor for n in cluster.nodes})  # the GPU models' flavors
        self.flavor_names = flavors
        self.node_flavor = np.array([flavors.index(n.flavor) for n in cluster.nodes])
        self.on_node: list[set[int]] = [set() for _ in self.node_list]
        self.skipped: Counter[str] = Counter()
        order = sorted(range(len(jobs)), key=lambda i: jobs[i].arrival)
        self.jobs = self._admissible([jobs[i] for i in order], [tenants[i] for i in order])
        self.pending: dict[int, SimJob] = {}
        self.pending_view: dict[int, PendingJob] = {}  # what the scheduler sees, same order
        self.by_shape: dict[Shape, dict[int, SimJob]] = {}  # the pending jobs, in queue order
        self.queued = 0
        # The waiting reasons of jobs a cycle never got to are not used here.
        self.sched_policy = replace(policy.policy, explain=False)
        self.nominated: set[int] = set()  # pending jobs the last cycle nominated
        self.sched_cache = SchedulerCache()
        self.running: dict[int, SimJob] = {}
        self.demand: Counter[tuple[float, tuple[str, ...] | None]] = Counter()
        self.events: list[tuple[float, int, int, int, int]] = []
        self.live_events = 0  # events other than FAIL: while none remain, nothing can change
        self.seq = 0
        self.rng = random.Random(options.seed)
        self.usage = Usage()
        self.busy = 0.0
        self.up_gpus = float(self.capacity.sum())
        self.finished = 0
        self.node_failures = 0
        self.sched_calls = 0
        self.sched_seconds = 0.0
        self.measured_at = 0.0
        self.started = False
        self.next_arrival = 0  # self.jobs is sorted by arrival
        self.batches = 0
        self.freed = False
        self.flavor_masks: dict[tuple[str, ...], np.ndarray] = {}
        # The running jobs' objects in `running` order, kept while only some start and stop
        # (None: build anew); the started ones not in it yet, in the order they started.
        self.running_view: list[RunningJob] | None = None
        self.started_since: list[SimJob] = []
        self.fragmented = 0.0
        self.free_while_pending = 0.0
        afs = policy.policy.admission_fair_sharing
        self.tenant_usage = None if afs is None else UsageTracker(afs)

    # --- setup ---

    def _admissible(self, jobs: list[TraceJob], tenants: list[str]) -> list[SimJob]:
        """SimJobs for the jobs this cluster can ever hold (`stoker.sched.fit`); the rest are
        counted as skipped."""
        out: list[SimJob] = []
        size = len(self.space)
        pooled = self.policy.shared_queue
        avoid: dict[tuple[str, ...], frozenset[str]] = {}  # per allowed flavors, in the pool
        largest: dict[tuple[str, ...] | None, int] = {}  # GPUs of the largest allowed node
        for job, tenant in zip(jobs, tenants, strict=True):
            flavors = self.cluster.flavors_for(job.gpu_models)
            if job.multi_node:
                if flavors not in largest:
                    largest[flavors] = max(
                        (int(n.capacity[GPU] // 1000) for n in self.cluster.nodes
                         if flavors is None or n.flavor in flavors), default=0)
                job = split_to_fit(job, largest[flavors])  # a gang across nodes if need be
            queue = SHARED_QUEUE if pooled else tenant
            priority = job.priority if self.policy.uses_priorities else 0
            sim = SimJob(len(out), job, tenant, queue, priority, flavors, self.options.whole_gpus,
                         size)
            if pooled:
                sim.sched_flavors = None
                if flavors is not None:
                    if flavors not in avoid:
                        avoid[flavors] = frozenset(n.name for n in self.cluster.nodes
                                                   if n.flavor not in flavors)
                    sim.avoid = avoid[flavors]
            unfit = never_fits(sim.ranks, sim.per_rank, self.cluster.nodes, flavors)
            if unfit is None:
                out.append(sim)
            else:
                self.skipped[_SKIPPED[unfit.why]] += 1
        return out

    # --- the event loop ---

    def run(self) -> RunResult:
        """Simulate until every job has finished (or none of the rest can ever start)."""
        began = time.perf_counter()
        while self._advance():
            pass
        if self.on_progress is not None:
            self.on_progress(self.finished, len(self.jobs))
        return self._result(time.perf_counter() - began)

    def run_until(self, until: float) -> None:
        """Simulate every instant before `until`, then apply the events at `until` but leave
        its scheduling cycle to the caller (`snapshot(until)` is what the scheduler would see)."""
        while self._next_time() < until and self._advance():
            pass
        if self._next_time() == until:
            self._apply_events(until)

    def _start(self) -> None:
        self.started = True
        if self.options.node_mtbf:
            for i in range(len(self.node_list)):
                self._push(self.rng.expovariate(1 / self.options.node_mtbf), FAIL, i)

    def _next_time(self) -> float:
        if not self.started:
            self._start()
        t_event = self.events[0][0] if self.events else math.inf
        t_arrive = (self.jobs[self.next_arrival].created_at
                    if self.next_arrival < len(self.jobs) else math.inf)
        return self._tick(min(t_event, t_arrive))

    def _advance(self) -> bool:
        """Apply the next instant's events and run the scheduler; False when nothing is left."""
        if self.finished == len(self.jobs):
            return False
        now = self._next_time()
        if now == math.inf:
            return False
        arrived_before = self.next_arrival
        if self.tenant_usage is not None:  # what ran until now, before this instant's events
            self.tenant_usage.update(now, (self._running_obj(job, now, False)
                                           for job in self.running.values()))
        if self._apply_events(now):
            if self._may_admit(now, self.jobs[arrived_before:self.next_arrival]):
                self._schedule(now)
            self._measure(now)
        self.batches += 1
        if self.on_progress is not None and self.batches % 256 == 0:
            self.on_progress(self.finished, len(self.jobs))
        # Pending jobs that nothing left to happen could ever start: give up on them.
        return bool(self.running or self.live_events or self.next_arrival < len(self.jobs))

    def _apply_events(self, now: float) -> bool:
        """Apply every arrival and event up to `now`, in order; True if anything changed.
        `self.freed` tells whether anything but arrivals changed."""
        changed = False
        self.freed = False
        while True:
            t_event = self.events[0][0] if self.events else math.inf
            t_arrive = (self.jobs[self.next_arrival].created_at
                        if self.next_arrival < len(self.jobs) else math.inf)
            arrive_first = t_arrive < t_event or (
                t_arrive == t_event < math.inf and self.events[0][1] > ARRIVE)
            if arrive_first and t_arrive <= now:
                self._enqueue(self.jobs[self.next_arrival], t_arrive)
                self.next_arrival += 1
                changed = True
            elif t_event <= now:
                handled = self._handle(heapq.heappop(self.events))
                changed = changed or handled
                self.freed = self.freed or handled
            else:
                return changed

    def _tick(self, t: float) -> float:
        step = self.options.interval
        return math.ceil(t / step) * step if step > 0 else t

    def _push(self, t: float, kind: int, idx: int, epoch: int = 0) -> None:
        self.seq += 1
        if kind != FAIL:
            self.live_events += 1
        heapq.heappush(self.events, (t, kind, self.seq, idx, epoch))

    def _handle(self, event: tuple[float, int, int, int, int]) -> bool:
        """Apply one event; False when it turned out stale (nothing changed)."""
        t, kind, _, idx, epoch = event
        if kind != FAIL:
            self.live_events -= 1
        if kind == COMPLETE:
            job = self.running.get(idx)
            if job is None or job.epoch != epoch:
                return False
            self._complete(job, t)
            return True
        if kind == FAIL:
            return self._fail_node(idx, t)
        if kind == REPAIR:
            self._repair_node(idx, t)
            return True
        # WAKE: a running job crossed a LAS level (`SimPolicy.wake_at_level`), or a pending job
        # its starvation age.
        job = self.jobs[idx]
        return job.epoch == epoch and (idx in self.running or idx in self.pending)

    # --- job transitions ---

    def _enqueue(self, job: SimJob, now: float, requeued: bool = False) -> None:
        if not (requeued and self.policy.keep_arrival):
            job.created_at = now
        job.pending_since = now
        job.pending_obj = None
        self.pending[job.idx] = job
        self.pending_view[job.idx] = job.pending()
        self.by_shape.setdefault(job.shape, {})[job.idx] = job
        job.queued = self.queued
        self.queued += 1
        self.demand[(job.per_rank_gpus, job.flavors)] += 1
        age = self.policy.policy.starvation_age
        if age is not None:
            self._push(now + age, WAKE, job.idx, job.epoch)

    def _admit(self, job: SimJob, flavor: str, node_names: tuple[str, ...], now: float) -> None:
        del self.pending[job.idx]
        del self.pending_view[job.idx]
        same = self.by_shape[job.shape]
        del same[job.idx]
        if not same:
            del self.by_shape[job.shape]
        self._drop_demand(job)
        nodes = tuple(self.node_index[name] for name in node_names)
        need = job.per_rank_gpus
        for i in nodes:
            self.free[i] -= need
            if self.free[i] < -1e-9 or not self.up[i]:
                name = self.node_list[i].name
                raise RuntimeError(f"scheduler placed job {job.idx} on node {name} beyond its "
                                   "free capacity or while it is down")
            self.on_node[i].add(job.idx)
        job.start, job.flavor, job.nodes = now, flavor, nodes
        job.outcome.waited += now - job.pending_since
        job.running_obj = None
        self.running[job.idx] = job
        self.started_since.append(job)
        self.busy += job.gpus
        self._push(now + job.remaining, COMPLETE, job.idx, job.epoch)
        policy = self.policy
        if policy.policy.order == "las" and policy.policy.preemption and policy.wake_at_level:
            for threshold in self.policy.policy.las_thresholds:
                if threshold > job.attained:
                    crossing = now + (threshold - job.attained) / job.gpus
                    if crossing < now + job.remaining:
                        self._push(crossing, WAKE, job.idx, job.epoch)

    def _release(self, job: SimJob, now: float) -> float:
        """Free the job's GPUs; return the seconds it ran in this attempt."""
        del self.running[job.idx]
        if job in self.started_since:
            self.started_since.remove(job)
        elif self.running_view is not None and job.running_obj is not None:  # in the view
            self.running_view.remove(job.running_obj)  # found by identity first: C speed
        for i in job.nodes:
            self.free[i] += job.per_rank_gpus
            self.on_node[i].discard(job.idx)
        self.busy -= job.gpus
        ran = now - job.start
        job.outcome.used_gpu_seconds += job.gpus * ran
        job.attained += job.gpus * ran
        job.epoch += 1
        job.nodes = ()
        return ran

    def _complete(self, job: SimJob, now: float) -> None:
        if job.outcome.finish >= 0:
            raise RuntimeError(f"job {job.outcome.id} completed twice")
        self._release(job, now)
        job.remaining = 0.0
        job.outcome.finish = now
        self.finished += 1
        self._record(now)

    def _interrupt(self, job: SimJob, now: float, preempted: bool) -> None:
        """Stop a running job (preempted or its node failed): it loses the work since its last
        checkpoint (none when preempted with ``checkpoint_on_preempt``) and is requeued."""
        ran = self._release(job, now)
        interval = self.options.checkpoint_interval
        saved = math.floor(ran / interval) * interval if math.isfinite(interval) else 0.0
        if preempted and self.options.checkpoint_on_preempt:
            saved = ran
        job.remaining -= saved
        job.remaining += self.options.restart_overhead
        job.outcome.lost_gpu_seconds += job.gpus * (ran - saved)
        self._enqueue(job, now, requeued=True)

    # --- nodes ---

    def _fail_node(self, i: int, now: float) -> bool:
        if not self.up[i] or self.finished == len(self.jobs):
            return False
        self.node_failures += 1
        for idx in sorted(self.on_node[i]):
            job = self.running[idx]
            job.outcome.failures += 1
            self._interrupt(job, now, preempted=False)
        self._set_up(i, False)
        self._push(now + self.options.repair_time, REPAIR, i)
        self._record(now)
        return True

    def _repair_node(self, i: int, now: float) -> None:
        self._set_up(i, True)
        assert self.options.node_mtbf is not None
        self._push(now + self.rng.expovariate(1 / self.options.node_mtbf), FAIL, i)
        self._record(now)

    def _set_up(self, i: int, up: bool) -> None:
        self.up[i] = up
        self.up_gpus += self.capacity[i] if up else -self.capacity[i]
        self.node_list[i] = replace(self.node_list[i], schedulable=up)
        self.nodes_view = tuple(self.node_list)

    # --- scheduling ---

    def snapshot(self, now: float, pending: list[PendingJob] | None = None) -> Snapshot:
        """The scheduler's view of the simulated cluster at `now`; `pending`: the pending jobs
        it is shown (default: all of them)."""
        dynamic = (self.policy.policy.preemption and bool(self.pending)
                   and not self._no_victims(now))
        if dynamic or self.running_view is None:
            self.running_view = [self._running_obj(job, now, dynamic)
                                 for job in self.running.values()]
        else:
            self.running_view.extend(self._running_obj(job, now, False)
                                     for job in self.started_since)
        self.started_since.clear()
        running = list(self.running_view)  # the view changes; the snapshot must not
        usage = None if self.tenant_usage is None else self.tenant_usage.scores()
        return Snapshot(now=now, queues=self.queues, nodes=self.nodes_view, running=running,
                        pending=list(self.pending_view.values()) if pending is None
                        else pending,
                        cohorts=self.cohorts, topology=self.cluster.topology,
                        tenant_usage=usage, resources=self.space)

    def _no_victims(self, now: float) -> bool:
        """Under the `las` baseline: True when no pending job is at a lower level than a
        running one, so no victim search can find a victim. Then the running jobs' kept objects
        give the decisions fresh ones would: their progress (which orders victims) is never
        read, and their level (how the cycle ranks them) is at most the current one, so they
        are no victims either. Not under the `stoker*` policies with `order = "las"`: there
        priorities and quota reclaim find victims at any level."""
        policy = self.policy.policy
        if policy.order != "las" or not self.policy.shared_queue:
            return False
        levels = policy.las_thresholds
        highest = 0
        for job in self.running.values():
            attained = job.attained + job.gpus * (now - job.start)
            highest = max(highest, bisect_right(levels, attained))
        return highest == 0 or all(bisect_right(levels, job.attained) >= highest
                                   for job in self.pending.values())

    def _running_obj(self, job: SimJob, now: float, dynamic: bool) -> RunningJob:
        if job.running_obj is not None and not dynamic:
            return job.running_obj
        ran = now - job.start
        interval = self.options.checkpoint_interval
        progress = ran % interval if math.isfinite(interval) else ran
        job.running_obj = RunningJob(
            id=job.idx, queue=job.queue, priority=job.priority, flavor=job.flavor,
            nodes=tuple(self.node_list[i].name for i in job.nodes), per_rank=job.per_rank,
            created_at=job.created_at, started_at=job.start, progress=progress,
            attained_service=job.attained + job.gpus * ran, tenant=job.user,
            expected_remaining=job.remaining - ran)
        return job.running_obj

    def _may_admit(self, now: float, arrived: list[SimJob]) -> bool:
        """False only when the scheduler is certain to decide nothing: it cannot preempt,
        nothing but arrivals happened since its last cycle (which left every pending job
        unplaceable), and no new arrival physically fits in the free GPUs of its flavors."""
        if self.policy.policy.preemption or self.freed or not arrived:
            return True
        free = np.where(self.up, self.free, 0.0)
        room: dict[tuple[str, ...] | None, tuple[float, float]] = {}
        for job in arrived:
            if job.flavors not in room:
                on_allowed = free if job.flavors is None else free[self._mask(job.flavors)]
                room[job.flavors] = ((float(on_allowed.max()), float(on_allowed.sum()))
                                     if on_allowed.size else (0.0, 0.0))
            largest, total = room[job.flavors]
            if largest + 1e-9 >= job.per_rank_gpus and total + 1e-9 >= job.gpus:
                return True
        return False

    def _mask(self, flavors: tuple[str, ...]) -> np.ndarray:
        """Which nodes are of one of `flavors` (cached)."""
        mask = self.flavor_masks.get(flavors)
        if mask is None:
            allowed = [f for f, name in enumerate(self.flavor_names) if name in flavors]
            mask = self.flavor_masks[flavors] = np.isin(self.node_flavor, allowed)
        return mask

    def _schedule(self, now: float) -> None:
        """Call the scheduler until it has nothing more to do at `now`: a cycle that preempts
        frees capacity the preemptors get in the next cycle, as in the live control plane; a
        cycle shown only the head of a strict FIFO queue that admitted all of it goes on with
        the rest."""
        cycles = 0
        while cycles < MAX_CYCLES_PER_INSTANT and self.pending:
            pending, partial = self._candidates()
            if not pending:
                break
            snap = self.snapshot(now, pending)
            began = time.perf_counter()
            decisions = schedule(snap, self.sched_policy, self.sched_cache)
            self.sched_seconds += time.perf_counter() - began
            self.sched_calls += 1
            self.apply(decisions, now)
            if decisions.preempt:
                cycles += 1
            elif not (partial and len(decisions.admit) == len(pending)):
                break
        self._record(now)

    def _candidates(self) -> tuple[list[PendingJob], bool]:
        """The pending jobs a cycle may admit, in queue order, and whether some that it might
        admit once these have started are left out.

        All of them under a policy that preempts (a job that does not fit may make room).
        Otherwise a cycle admits at most as many jobs of one shape (GPUs per rank, ranks,
        flavors) as fit in the free GPUs of the nodes they may use (`_room`), and those it
        admits come first in queue order among the jobs of that shape (free room only shrinks
        within a cycle, so once one fails the later ones fail alike). So the baselines' one
        unlimited queue is shown only that many of each shape, the first in its order, and
        strict FIFO only its first jobs, none if the first cannot fit (it blocks the rest)."""
        policy = self.policy
        order = policy.policy.order
        if (policy.policy.preemption or not policy.shared_queue or order not in ("fifo", "sjf")
                or policy.policy.starvation_age is not None or self.nominated
                or len(self.pending_view) <= SHORT_QUEUE):
            return list(self.pending_view.values()), False
        free = np.where(self.up, self.free, 0.0)
        if policy.strict and order == "fifo":
            # Queue order is arrival order: a requeued job is queued again as it arrives.
            head = self.pending[next(iter(self.pending))]
            if not self._room(head.shape, free):
                return [], False
            first = list(islice(self.pending_view.values(), STRICT_PREFIX))
            return first, len(first) < len(self.pending_view)
        chosen: list[SimJob] = []
        for shape, same in self.by_shape.items():
            room = self._room(shape, free)
            if room >= len(same):
                chosen.extend(same.values())
            elif order == "fifo":  # queue order is arrival order (above): the first ones
                chosen.extend(islice(same.values(), room))
            elif room:
                chosen.extend(heapq.nsmallest(room, same.values(), key=_sjf_key))
        chosen.sort(key=_queued)
        view = self.pending_view
        return [view[job.idx] for job in chosen], False

    def _room(self, shape: Shape, free: np.ndarray) -> int:
        """How many jobs of `shape` (GPUs per rank, ranks, flavors) fit at once in `free`,
        node by node, on the nodes of its flavors: a bound (topology, quotas), never below
        what a placement finds."""
        need, ranks, flavors = shape
        if need <= 0:
            return len(self.pending)
        on_allowed = free if flavors is None else free[self._mask(flavors)]
        return int(np.floor((on_allowed + 1e-6) / need).sum()) // ranks

    def apply(self, decisions: Decisions, now: float) -> None:
        for idx in self.nominated | decisions.nominated.keys():
            job = self.pending[int(idx)]
            job.nominated = idx in decisions.nominated
            job.pending_obj = None
            self.pending_view[job.idx] = job.pending()
        self.nominated = {int(idx) for idx in decisions.nominated}
        for p in decisions.preempt:
            victim = self.running.get(int(p.job))
            if victim is not None:
                victim.outcome.preemptions += 1
                self._interrupt(victim, now, preempted=True)
        for a in decisions.admit:
            admitted = self.pending[int(a.job)]
            if self.tenant_usage is not None:
                self.tenant_usage.admitted(admitted.pending())
            self._admit(admitted, a.flavor, a.nodes, now)

    # --- measurements ---

    def _record(self, now: float) -> None:
        self.usage.record(now, self.busy, self.up_gpus)

    def _drop_demand(self, job: SimJob) -> None:
        key = (job.per_rank_gpus, job.flavors)
        self.demand[key] -= 1
        if not self.demand[key]:
            del self.demand[key]

    def _measure(self, now: float) -> None:
        """Integrate fragmentation since the last batch, then measure the new state: free GPUs
        on up nodes too few for the smallest rank of any pending job allowed there."""
        dt = now - self.measured_at
        self.usage.fragmented_gpu_seconds += self.fragmented * dt
        self.usage.free_gpu_seconds_while_pending += self.free_while_pending * dt
        self.measured_at = now
        if not self.pending:
            self.fragmented = self.free_while_pending = 0.0
            return
        smallest = np.full(len(self.flavor_names), np.inf)
        for (gpus, flavors), _ in self.demand.items():
            for f, name in enumerate(self.flavor_names):
                if (flavors is None or name in flavors) and gpus < smallest[f]:
                    smallest[f] = gpus
        free = np.where(self.up, self.free, 0.0)
        usable = free >= smallest[self.node_flavor] - 1e-9
        self.fragmented = float(free[~usable].sum())
        self.free_while_pending = float(free.sum())

    def _result(self, wall: float) -> RunResult:
        return RunResult(
            policy=self.policy.name, trace="", gpus=float(self.capacity.sum()),
            nodes=len(self.node_list), jobs=[j.outcome for j in self.jobs], usage=self.usage,
            entitlement=self.cluster.entitlement(), skipped=dict(self.skipped),
            sched_calls=self.sched_calls, sched_seconds=self.sched_seconds, wall_seconds=wall,
            node_failures=self.node_failures)


def _queued(job: SimJob) -> int:
    return job.queued


def _sjf_key(job: SimJob) -> tuple[float, float, int]:
    """Its place in an "sjf" queue of equal priorities (`stoker.sched.order`)."""
    return (job.remaining, job.created_at, job.queued)
