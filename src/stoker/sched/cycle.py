"""One scheduling cycle: order the pending jobs, check quota, place, preempt.

The cycle merges the queues' heads in one heap: jobs the last cycle nominated first, then
starving jobs, then (as Kueue's entry ordering) by how far up the cohort tree a job must borrow
(0: within its queue's nominal quota), then priority, then the policy's order; under fair sharing
the least weighted dominant-resource share replaces the borrowing level. Under admission fair
sharing a queue's own order puts its tenants' decayed usage before priority (see
`stoker.sched.tenant_order`); the order between queues is unchanged. It runs in two passes. The
first admits only jobs that fit in their queue's nominal quota; a job that could only be
admitted by borrowing stops its queue there until the second pass, which lets jobs borrow. So
the room a job reclaimed from borrowing queues by preemption goes to it, not to a (maybe
higher-priority) borrowing job of the victims' queue that it would preempt again: a ping-pong.

Flavors (Kueue's flavor assignment). A job tries its queue's flavors in order: on each it fits
(quota, then a placement on free nodes), or victims could make room, or neither; the queue's
flavor fungibility says where the search stops and which flavor wins (`stoker.sched.types`,
Queue). Kueue chooses the flavor of each queue's head against the state at the start of the
cycle; so does this cycle for each queue's first job, and if the earlier admissions of the cycle
took that flavor's room, the job waits for the next cycle instead of taking another flavor. The
jobs after it are heads of Kueue's later cycles: their flavors are chosen when they come up.

Preemption. Kueue considers it only for a job whose request fits in its queue's nominal quota,
unless the queue may preempt while borrowing (borrow_within_cohort) or the quota it lacks lies in
a sub-cohort below the root (hierarchical reclaim: it may take back what other queues borrow of
its side of the tree, and then borrow within it). A bounded number of jobs per queue and cycle
search for victims. A job that needs victims is *nominated*: it is charged now (its quota, and
the free node capacity it will use) so later jobs cannot take its room, but is admitted only in a
later cycle, once the victims have stopped; later victim searches count its victims as gone. A
job that needs preemption but finds no victims may hold the quota it could use for the rest of
the cycle when its queue cannot always reclaim (``Policy.hold_quota_without_victims``).

Multi-role jobs (Kueue's pod sets, `PendingJob.roles`). Each role's flavor is chosen in turn, as
for a job of its own, against the quota and nodes the earlier roles took; the job is admitted
only if every role fits now, and otherwise everything its earlier roles took is given back.
Such a job does not preempt (nor gets a flavor chosen at the start of the cycle); it is ordered
by its first role's request. Running, it is one `RunningJob` per role.

Free node capacity only ever shrinks within a cycle, so a gang shape that failed to place once is
not tried again, and a queue whose remaining jobs cannot fit anywhere is dropped at once.
"""

from __future__ import annotations

import heapq
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import replace
from enum import Enum
from operator import le
from typing import Literal, NamedTuple

from stoker.sched import preempt
from stoker.sched.cache import SchedulerCache
from stoker.sched.nodes import Nodes, Placement, times
from stoker.sched.order import SEQ, QueueKey, queue_keys
from stoker.sched.quota import Account, QuotaAccount
from stoker.sched.tenant_order import TenantOrder
from stoker.sched.types import (
    UNLIMITED,
    Admit,
    Decisions,
    JobId,
    PendingJob,
    Policy,
    Preempt,
    Queue,
    Resources,
    ResourceSpace,
    RoleAdmit,
    RunningJob,
    Snapshot,
    WaitCode,
    Waiting,
    role_parts,
)

INF = float("inf")


class Outcome(Enum):
    """What considering a job did."""

    ADMIT = "admit"
    WAIT = "wait"  # left waiting, maybe nominated, its reason recorded
    DEFER = "defer"  # left for the borrowing pass


_ADMIT, _WAIT, _DEFER = Outcome.ADMIT, Outcome.WAIT, Outcome.DEFER
_NO_NODES = "no nodes free"
_HeapKey = tuple[int, object, int, float, float, int]  # QueueKey, borrowing level or share 2nd


class _Option(NamedTuple):
    """What one flavor offers a job: a fit (``placement``: where; None: left to the borrowing
    pass), or, with ``preempt``, room that victims could make. ``borrow``: how far up the
    cohort tree the fit borrows (0: within the queue's nominal quota)."""
    flavor: str
    borrow: int
    placement: Placement | None
    preempt: bool = False


class _Assignment(NamedTuple):
    """Kueue's flavor assignment of one job against the cycle's state as it is (nothing is
    charged): ``mode`` "fit" (``fit``: the flavor the queue's fungibility settles on, how far
    it borrows, and where, or None when a borrowing fit is left to the borrowing pass),
    "preempt" (no fit; victims could make room on ``preemptible``) or "no-fit". A fit may
    have ``preemptible`` flavors too: the caller weighs them by the queue's fungibility.
    ``why``: each flavor that is no fit, and why; ``open_flavors``: those not held for a
    starving job."""
    mode: Literal["fit", "preempt", "no-fit"]
    fit: _Option | None
    preemptible: list[str]
    why: dict[str, str]
    open_flavors: list[str]


class _Plan(NamedTuple):
    """The flavor chosen for a queue's head as the cycle started (Kueue's nomination)."""
    seq: int
    flavor: str
    placement: Placement


class _Found(NamedTuple):
    """Victims that make room on a flavor; ``borrow``: how far the job then borrows (when
    flavors are compared); ``own``: some are of its own queue (Kueue's Preempt mode; else it
    only reclaims)."""
    flavor: str
    chosen: preempt.Chosen
    placement: Placement
    borrow: int
    own: bool

    def better_than(self, other: _Found, by_borrowing: bool) -> bool:
        """BorrowingOverPreemption: reclaiming before preempting in the own queue, then less
        borrowing; PreemptionOverBorrowing (``by_borrowing``): the other way round."""
        if by_borrowing:
            return (self.borrow, self.own) < (other.borrow, other.own)
        return (self.own, self.borrow) < (other.own, other.borrow)


class _Hold(NamedTuple):
    """Quota a job that found no victims holds for the rest of the cycle: at most ``cap`` of
    usage on ``account``."""
    account: QuotaAccount
    amount: list[int]
    cap: list[int]


def schedule(snapshot: Snapshot, policy: Policy = Policy(),
             cache: SchedulerCache | None = None) -> Decisions:
    """Decide which pending jobs to admit (and where) and which running jobs to preempt.

    ``cache``: the caller's `SchedulerCache`, kept across its cycles so that a cycle costs what
    changed rather than the size of the cluster; the decisions are the same without it.
    """
    if cache is None:
        cache = SchedulerCache()
    cycle = _Cycle(snapshot, policy, cache)
    decisions = cycle.run()
    cache.keep(snapshot.queues, snapshot.cohorts, cycle.quota, cycle.held,
               (cycle.victim_key, cycle.kept_victims | cycle.victims))
    return decisions


class _QueueState:
    """A queue's pending jobs not yet considered this cycle (a heap: next job first)."""

    __slots__ = ("accounts", "attempts", "blocked_by", "checked", "done", "flavors", "hold",
                 "hold_applied", "ids", "least", "most", "most_ranks", "plan", "queue", "root",
                 "scope", "waiting")

    def __init__(self, queue: Queue, accounts: dict[str, QuotaAccount], root: str | None,
                 size: int) -> None:
        self.queue = queue
        self.accounts = accounts
        self.root = root  # the cohort tree it shares quota in
        self.scope = root if root is not None else f"queue:{queue.name}"  # what quota it uses
        self.waiting: list[QueueKey] = []
        self.ids: list[JobId] = []  # every pending job's id, in snapshot order
        self.done: list[JobId] = []  # those taken off ``waiting`` (considered, not deferred)
        self.attempts = 0
        self.checked = -1  # the cycle's change count when it was last found not hopeless
        self.blocked_by: JobId | None = None
        self.least: Resources = (UNLIMITED,) * size  # the least of each any job asks per rank
        self.most: Resources = (0,) * size  # the most of each resource per rank any job asks
        self.most_ranks = 0  # the most ranks any job asks
        self.flavors = list(accounts)
        self.plan: _Plan | None = None  # its head's flavor, chosen as the cycle started
        self.hold: _Hold | None = None
        self.hold_applied = False


class _Cycle:
    def __init__(self, snapshot: Snapshot, policy: Policy, cache: SchedulerCache) -> None:
        self.snap = snapshot
        self.policy = policy
        self.now = snapshot.now
        self.space = snapshot.resources
        self.quota = cache.take_quota(snapshot.queues, snapshot.cohorts, snapshot.resources)
        self._charge_running(snapshot, cache)
        self._running: dict[tuple[str, str], list[RunningJob]] | None = None
        self.victims: dict[tuple[str, str], preempt.Candidates] = {}
        # What ranks victims (with the layout and quota tree: what their candidates depend on).
        self.victim_key = (policy.order if policy.order in ("las", "srtf") else None,
                           policy.las_thresholds, policy.victim_order, len(self.space))
        self.kept_victims = cache.take_victims(self.held.layout, self.quota, self.victim_key)
        self.queues: dict[str, _QueueState] = {
            q.name: _QueueState(q, self.quota.queues[q.name], self.quota.root_of(q.cohort),
                                len(self.space))
            for q in snapshot.queues}
        self.trees: dict[str, list[_QueueState]] = {}
        for qs in self.queues.values():
            if qs.root is not None:
                self.trees.setdefault(qs.root, []).append(qs)
        self.failed_shapes: set[tuple[object, ...]] = set()  # could not be placed
        self.hopeless: set[tuple[object, ...]] = set()  # found no victims
        self.failed_like: dict[tuple[object, ...], Waiting] = {}  # what failed: why
        self.changes = 0  # admissions, nominations, holds and used-up preemption attempts
        self._searched_for: JobId | None = None  # the job whose preemption attempt was counted
        self._neighbour_cache: dict[tuple[str, str],
                                    list[tuple[str, QuotaAccount, list[QuotaAccount], int]]] = {}
        # (quota scope, flavor) -> victims nominated this cycle, still charged to their queues
        self.departing: dict[tuple[str, str], dict[QuotaAccount, list[int]]] = {}
        # ... and the accounts whose usage their removal changes (theirs and those above)
        self.departing_touch: dict[tuple[str, str], dict[Account, None]] = {}
        # flavor -> (starving job, None: held on every queue, or the cohort tree it holds)
        self.reserved: dict[str, tuple[JobId, str | None]] = {}
        self.admit: list[Admit] = []
        self.preempt: list[Preempt] = []
        self.preempted: set[JobId] = set()
        self.waiting: dict[JobId, Waiting] = {}
        self.nominated: dict[JobId, tuple[JobId, ...]] = {}
        afs = policy.admission_fair_sharing
        self.tenants = (None if afs is None
                        else TenantOrder(afs, snapshot.tenant_usage, snapshot.pending))

    # --- setup ---

    def _charge_running(self, snapshot: Snapshot, cache: SchedulerCache) -> None:
        """Start from what the running jobs leave free and the quota they use."""
        static = cache.layout(snapshot.nodes, snapshot.topology, snapshot.resources)
        self.held = cache.take_held(static, snapshot.running)
        self.nodes = Nodes(static, self.held.free, self.held.pools)
        usage = self.held.usage
        for (queue, flavor) in sorted(usage):  # the same sums in the same order
            account = self.quota.account(queue, flavor)
            if account is not None:
                account.add(usage[(queue, flavor)])

    @property
    def running(self) -> dict[tuple[str, str], list[RunningJob]]:
        """The running jobs by queue and flavor, in snapshot order (victim candidates)."""
        if self._running is None:
            self._running = {}
            for job in self.snap.running:
                self._running.setdefault((job.queue, job.flavor), []).append(job)
        return self._running

    def _rank(self, job: PendingJob | RunningJob) -> preempt.Rank:
        """Preemption rank: priority, then (under LAS) less attained service or (under SRTF)
        less remaining work (a pending job's expected duration, a running job's expected
        remaining time; unknown: ranks last)."""
        order = self.policy.order
        if order == "las":
            return (job.priority, -bisect_right(self.policy.las_thresholds,
                                                job.attained_service))
        if order == "srtf":
            left = (job.expected_duration if isinstance(job, PendingJob)
                    else job.expected_remaining)
            return (job.priority, -INF if left is None else -left)
        return (job.priority, 0)

    def _fill_queues(self) -> None:
        """Put each pending job in its queue's heap, keyed by its place in the queue
        (`stoker.sched.order`)."""
        pending = self.snap.pending
        keyed: dict[str, tuple[list[QueueKey], set[Resources], list[JobId]]] = {
            name: ([], set(), self.queues[name].ids) for name in self.queues}
        for key, job in zip(queue_keys(pending, self.policy, self.now), pending, strict=True):
            bucket = keyed.get(job.queue)
            if bucket is None:
                self.waiting[job.id] = Waiting("UnknownQueue", f"unknown queue {job.queue!r}")
                continue
            bucket[0].append(key)
            bucket[1].add(job.per_rank)
            bucket[2].append(job.id)
            qs = self.queues[job.queue]
            if job.ranks > qs.most_ranks:
                qs.most_ranks = job.ranks
            if job.roles:
                for role in job.roles:
                    bucket[1].add(role.per_rank)
        for name, (keys, shapes, _) in keyed.items():
            if self.tenants is not None:
                keys = self.tenants.heads(keys)
            heapq.heapify(keys)  # only the jobs considered are ever ordered fully
            qs = self.queues[name]
            qs.waiting = keys
            if keys:
                per_rank = list(shapes)  # the distinct rank shapes
                qs.least = tuple(map(min, *per_rank)) if len(per_rank) > 1 else per_rank[0]
                qs.most = tuple(map(max, *per_rank)) if len(per_rank) > 1 else per_rank[0]

    # --- the cycle ---

    def run(self) -> Decisions:
        self._fill_queues()
        self._plan_heads()
        self._pass(nominal_only=True)
        self._pass(nominal_only=False)
        self._explain_rest()
        return Decisions(admit=self.admit, preempt=self.preempt, waiting=self.waiting,
                         nominated=self.nominated)

    def _pass(self, nominal_only: bool) -> None:
        """Consider the queues' jobs in heap order. With ``nominal_only``, a job that could
        only be admitted by borrowing is left (with the rest of its queue) for the next pass."""
        heap: list[tuple[_HeapKey, int, _QueueState]] = []
        for n, qs in enumerate(self.queues.values()):
            if qs.waiting and qs.blocked_by is None:
                held = qs.hold is not None
                if held:
                    self._release_hold(qs)  # a queue's own jobs never see its hold
                if not self._hopeless(qs):
                    heap.append((self._heap_key(qs), n, qs))
                if held:
                    self._apply_hold(qs)
        heapq.heapify(heap)
        pending = self.snap.pending
        tenants = self.tenants
        while heap:
            _, n, qs = heapq.heappop(heap)
            if qs.hold is not None:
                self._release_hold(qs)
            while True:
                if tenants is not None:
                    tenants.fresh_head(qs.waiting)
                key = heapq.heappop(qs.waiting)
                if tenants is not None:
                    tenants.popped(qs.waiting, key)
                job = pending[key[SEQ]]
                outcome = self._consider(qs, job, key[SEQ], nominal_only)
                if outcome is _DEFER:
                    heapq.heappush(qs.waiting, key)
                    if tenants is not None:
                        tenants.pushed_back(key)
                    break
                qs.done.append(job.id)
                if outcome is _WAIT and qs.queue.strategy == "StrictFIFO":
                    qs.blocked_by = pending[key[SEQ]].id
                    break
                if not qs.waiting or self._hopeless(qs):
                    break
                if heap:  # the last queue left goes on without ordering
                    heapq.heappush(heap, (self._heap_key(qs), n, qs))
                    break
            if qs.hold is not None:
                self._apply_hold(qs)

    def _heap_key(self, qs: _QueueState) -> _HeapKey:
        if self.tenants is not None:
            self.tenants.fresh_head(qs.waiting)
        key = qs.waiting[0]
        job = self.snap.pending[key[SEQ]]
        total = _total(job)
        accounts = (qs.accounts.values() if job.flavors is None
                    else [a for f, a in qs.accounts.items() if f in job.flavors])
        if self.policy.fair_sharing:
            second: object = min((self.quota.share(a, total) for a in accounts), default=(INF,))
        else:
            second = _borrow_level(accounts, total)
        # Priority from the job: the usage of tenants of different queues is not compared.
        return (key[0], second, -job.priority, key[2], key[3], key[SEQ])

    def _can_preempt(self, qs: _QueueState) -> bool:
        q = qs.queue
        if not self.policy.preemption or qs.attempts >= self.policy.max_preemption_attempts:
            return False
        return (self._within(q) != "Never"
                or (q.cohort is not None and q.reclaim_within_cohort != "Never"))

    def _within(self, q: Queue) -> str:
        if self.policy.order == "srtf" and q.within_queue == "Never":
            return "LowerPriority"
        return q.within_queue

    def _hopeless(self, qs: _QueueState) -> bool:
        """True when no remaining job of the queue can fit and the queue cannot preempt."""
        if qs.checked == self.changes:  # nothing was admitted, nominated or held since
            return False
        if self._can_preempt(qs):
            qs.checked = self.changes
            return False
        need = qs.least
        for flavor, account in qs.accounts.items():
            hold = self.reserved.get(flavor)
            if hold is not None and (hold[1] is None or hold[1] == qs.scope):
                continue
            pool = self.nodes.pools.get(flavor)
            if pool is None:
                continue
            r = pool.primary
            if pool.max_free() < need[r] or account.available(r) < need[r]:
                continue
            qs.checked = self.changes
            return False
        return True

    def _consider(self, qs: _QueueState, job: PendingJob, seq: int, nominal_only: bool) -> Outcome:
        """Try to admit ``job`` (the ``seq``-th pending job): on the flavor its queue's flavor
        fungibility chooses, borrowing only in the second pass (else defer it); else maybe
        nominate it or reserve for it. Returns _ADMIT, _WAIT or _DEFER."""
        plan, qs.plan = qs.plan, None
        age = self.policy.starvation_age
        starving = age is not None and self.now - job.created_at >= age
        if job.roles:
            return self._consider_roles(qs, job, nominal_only, starving)
        # A job like one that already failed this cycle fails alike: state only shrinks.
        newer = self._within(qs.queue) == "LowerOrNewerEqualPriority"  # victims by age too
        like = (qs.queue.name, job.ranks, job.per_rank, job.flavors, job.topology,
                job.topology_required, self._rank(job), starving,
                job.nominated, job.created_at if newer else None, job.avoid)
        reason = self.failed_like.get(like)
        if reason is not None:
            self.waiting[job.id] = reason
            return _WAIT
        where = self._where(qs, job)
        if where is None:
            return _WAIT
        flavors, level = where
        total = _total(job)
        if plan is not None and plan.seq == seq:
            return self._consider_planned(qs, job, plan, level, total, nominal_only, starving)
        outcome = self._assign(qs, job, flavors, level, total, nominal_only, starving)
        if outcome is _WAIT and job.id not in self.nominated:
            self.failed_like[like] = self.waiting[job.id]
        return outcome

    def _where(self, qs: _QueueState, job: PendingJob, prefix: str = "", whose: str = "job"
               ) -> tuple[list[str], int | None] | None:
        """The queue's flavors ``job`` may use and its topology level; None (its reason
        recorded) when no flavor matches or the level is unknown."""
        flavors = _allowed_flavors(qs, job)
        if not flavors:
            self.waiting[job.id] = Waiting("NoMatchingFlavor", f"{prefix}no flavor of the "
                                           f"queue matches the {whose}'s GPU model")
            return None
        level = None
        if job.topology is not None:
            level = self.nodes.levels.get(job.topology)
            if level is None:
                self.waiting[job.id] = Waiting("UnknownTopology", f"{prefix}unknown topology "
                                               f"level {job.topology!r}")
                return None
        return flavors, level

    # --- flavors (Kueue's flavor assignment) ---

    def _plan_heads(self) -> None:
        """Kueue's nomination: choose the flavor of each queue's head (the first job the cycle
        takes from it) against the state as the cycle starts."""
        pending = self.snap.pending
        for qs in self.queues.values():
            if not qs.waiting:
                continue
            if self.tenants is not None:
                self.tenants.fresh_head(qs.waiting)
            seq = qs.waiting[0][4]
            qs.plan = self._plan(qs, pending[seq], seq)

    def _plan(self, qs: _QueueState, job: PendingJob, seq: int) -> _Plan | None:
        """The fit chosen for ``job`` now, or None when it has none or a flavor where victims
        make room could still win (decided when the job comes up)."""
        flavors = _allowed_flavors(qs, job)
        level = None if job.topology is None else self.nodes.levels.get(job.topology, -1)
        if not flavors or level == -1 or job.roles:
            return None
        a = self.assign_flavors(qs, job, flavors, level, _total(job), False)
        fit, preemptible = a.fit, a.preemptible
        if fit is None or fit.placement is None:
            return None
        q = qs.queue
        if preemptible and (q.when_can_preempt == "MayStopSearch" or (
                fit.borrow and q.flavor_preference == "PreemptionOverBorrowing")):
            return None
        return _Plan(seq, fit.flavor, fit.placement)

    def _consider_planned(self, qs: _QueueState, job: PendingJob, plan: _Plan,
                          level: int | None, total: list[int], nominal_only: bool,
                          starving: bool) -> Outcome:
        """Admit a queue's head on the flavor chosen for it as the cycle started. If the
        cycle's earlier admissions took that flavor's room it waits for the next cycle (Kueue
        skips it) rather than taking another flavor."""
        flavor = plan.flavor
        account = qs.accounts[flavor]
        hold = self.reserved.get(flavor)
        code: WaitCode
        if hold is not None and (hold[1] is None or hold[1] == qs.scope):
            code = "HeldForStarvingJob"
        elif not account.fits(total):
            code = "WaitingForQuota"
        elif nominal_only and not job.nominated and account.needs_borrowing(total):
            qs.plan = plan
            return _DEFER
        else:
            placement: Placement | None = plan.placement
            if not self.nodes.holds(plan.placement, job.per_rank):
                placement = self._place(flavor, job, level)
            if placement is not None:
                self._admit(qs, job, flavor, placement, total)
                return _ADMIT
            code = "WaitingForNodes"
        self.waiting[job.id] = self._numbers(
            code, f"{flavor}: no longer fits after this cycle's earlier admissions (its flavor "
                  "was chosen as the cycle started)", qs, [flavor], total)
        if starving:
            self._reserve(qs, job, [flavor], code == "WaitingForNodes")
        return _WAIT

    def assign_flavors(self, qs: _QueueState, job: PendingJob, flavors: list[str],
                       level: int | None, total: list[int], defer_borrowing: bool
                       ) -> _Assignment:
        """The flavor assignment of ``job`` now (see `_Assignment`); with ``defer_borrowing``
        a fit that borrows is not placed on nodes (the borrowing pass does it)."""
        why: dict[str, str] = {}
        open_flavors: list[str] = []
        options = self._scan(qs, job, flavors, level, total, why, open_flavors,
                             defer_borrowing)
        fit, preemptible = self._settle(qs.queue, options)
        mode: Literal["fit", "preempt", "no-fit"] = (
            "fit" if fit is not None else "preempt" if preemptible else "no-fit")
        return _Assignment(mode, fit, preemptible, why, open_flavors)

    def _scan(self, qs: _QueueState, job: PendingJob, flavors: list[str], level: int | None,
              total: list[int], why: dict[str, str], open_flavors: list[str],
              defer_borrowing: bool) -> list[_Option]:
        """What each of ``flavors`` offers ``job``, in the queue's order, up to the first fit
        the queue's fungibility stops at. Fills ``why`` (each flavor that is no fit: why) and
        ``open_flavors`` (those not held for a starving job). With ``defer_borrowing`` a fit
        that borrows is not placed on nodes (the borrowing pass does it)."""
        q = qs.queue
        stop_borrowing = q.when_can_borrow == "MayStopSearch"
        can_preempt: bool | None = None  # looked up once needed
        reserved = self.reserved
        options = []
        for flavor in flavors:
            hold = reserved.get(flavor) if reserved else None
            if hold is not None and (hold[1] is None or hold[1] == qs.scope):
                why[flavor] = f"capacity held for starving job {hold[0]}"
                continue
            open_flavors.append(flavor)
            account = qs.accounts[flavor]
            if account.fits(total, allow_borrowing=False):
                borrow = 0
            elif account.fits(total):
                borrow = account.borrow_level(total)
            else:
                why[flavor] = f"quota of queue {q.name} exhausted"
                if can_preempt is None:
                    can_preempt = self._can_preempt(qs)
                if can_preempt and self._may_preempt_for(qs, account, total):
                    options.append(_Option(flavor, 0, None, True))
                continue
            if borrow and defer_borrowing:
                options.append(_Option(flavor, borrow, None))
                if stop_borrowing:
                    break
                continue
            placement = self._place(flavor, job, level)
            if placement is None:
                why[flavor] = _NO_NODES
                if can_preempt is None:
                    can_preempt = self._can_preempt(qs)
                if can_preempt:  # victims could free nodes; the quota has room
                    options.append(_Option(flavor, borrow, None, True))
                continue
            options.append(_Option(flavor, borrow, placement))
            if not borrow or stop_borrowing:
                break
        return options

    @staticmethod
    def _settle(q: Queue, options: list[_Option]) -> tuple[_Option | None, list[str]]:
        """The fit the queue's fungibility settles on among ``options`` before any victims are
        looked for (the one it stopped at, else the one borrowing least; None: no fit), and the
        flavors where victims could make room."""
        best = None
        preemptible = []
        for option in options:
            if option.preempt:
                preemptible.append(option.flavor)
            elif not option.borrow or q.when_can_borrow == "MayStopSearch":
                return option, preemptible
            elif best is None or option.borrow < best.borrow:
                best = option
        return best, preemptible

    def _assign(self, qs: _QueueState, job: PendingJob, flavors: list[str], level: int | None,
                total: list[int], nominal_only: bool, starving: bool) -> Outcome:
        """Admit ``job`` on the flavor its queue's fungibility chooses, or nominate it for the
        victims of the best flavor where they make room; else explain why it waits."""
        q = qs.queue
        fit, preemptible, why, open_flavors = self.assign_flavors(
            qs, job, flavors, level, total, nominal_only and not job.nominated)[1:]
        if (preemptible and (fit is None or q.when_can_preempt == "MayStopSearch" or (
                fit.borrow and q.flavor_preference == "PreemptionOverBorrowing"))
                and not self._fits_ever(job, flavors, self.nodes.healthy)):
            preemptible = []  # victims would free nothing it could use
        searched: list[str] = []
        if (preemptible and q.when_can_preempt == "MayStopSearch"
                and self._attempt(qs, job, level)):
            # The first flavor where victims make room ends the search there.
            found = self._search_victims(qs, job, preemptible, level, total, first=True)
            if found is not None:
                return self._nominate(qs, job, found, total)
            searched, preemptible = preemptible, []
        if fit is not None:
            if fit.placement is None:
                return _DEFER  # it borrows: the borrowing pass places it
            if (fit.borrow and preemptible and q.flavor_preference == "PreemptionOverBorrowing"
                    and self._attempt(qs, job, level)):
                found = self._search_victims(qs, job, preemptible, level, total,
                                             below=fit.borrow)
                if found is not None:
                    return self._nominate(qs, job, found, total)
            self._admit(qs, job, fit.flavor, fit.placement, total)
            return _ADMIT
        if not self._fits_ever(job, flavors, self.nodes.healthy):
            self.waiting[job.id] = self._never_fits(job, flavors)
            return _WAIT
        if open_flavors and self._attempt(qs, job, level):
            if preemptible:
                found = self._search_victims(qs, job, preemptible, level, total)
                if found is not None:
                    return self._nominate(qs, job, found, total)
                searched += preemptible
            if self._within(q) != "LowerOrNewerEqualPriority":
                self.hopeless.add(self._shape(qs, job, level))
        if searched:
            self._hold_without_victims(qs, searched, total)
        self.waiting[job.id] = self._explain(qs, job, flavors, open_flavors, why, total)
        if starving:
            self._reserve(qs, job, open_flavors, _NO_NODES in why.values())
        return _WAIT

    def _explain(self, qs: _QueueState, job: PendingJob, flavors: list[str],
                 open_flavors: list[str], why: dict[str, str], total: list[int],
                 prefix: str = "") -> Waiting:
        """Why ``job``, which fits on some node, was neither admitted nor nominated."""
        asked = f"no nodes free for {job.ranks} x {_fmt(job, self.space)}"
        message = "; ".join(f"{prefix}{f}: {asked if why[f] is _NO_NODES else why[f]}"
                            for f in flavors)
        code = self._wait_code(qs, job, flavors, open_flavors, why, total)
        if code == "ExceedsMaxQuota":
            message = self._exceeds_message(qs, flavors, total, prefix)
        return self._numbers(code, message, qs, open_flavors or flavors, total)

    def _exceeds_message(self, qs: _QueueState, flavors: list[str], total: list[int],
                         prefix: str = "") -> str:
        describe = self.space.describe
        return "; ".join(f"{prefix}{f}: asks {describe(total)}, more than queue "
                         f"{qs.queue.name} can ever get "
                         f"({describe(_most(qs.accounts[f], len(total)))})" for f in flavors)

    def _exceeds_max(self, qs: _QueueState, job: PendingJob) -> Waiting | None:
        """ExceedsMaxQuota for a job (of one role) that asks more than its queue could ever
        get on each of its flavors, whatever this cycle's usage; None for any other."""
        if job.roles:
            return None
        total = _total(job)
        flavors = _allowed_flavors(qs, job)
        if not flavors or not _exceeds_quota(qs, flavors, total):
            return None
        return self._numbers("ExceedsMaxQuota", self._exceeds_message(qs, flavors, total),
                             qs, flavors, total)

    # --- multi-role jobs (Kueue's pod sets) ---

    def _consider_roles(self, qs: _QueueState, job: PendingJob, nominal_only: bool,
                        starving: bool) -> Outcome:
        """Admit every role of ``job`` or none: each role's flavor is chosen in turn, as for a
        job of its own, against the quota and nodes the earlier roles took. No preemption: a
        role that does not fit now makes the whole job wait (or, in the first pass, borrow
        later: the job is deferred)."""
        parts = role_parts(job)
        taken: list[tuple[str, Placement, PendingJob, list[int]]] = []
        failed_before = self.failed_shapes.copy()  # what tentative roles made fail, undone
        outcome = _ADMIT
        for n, part in enumerate(parts):
            found = self._fit_role(qs, part, nominal_only and not job.nominated, starving,
                                   f"role {n + 1} of {len(parts)}: " if n else "")
            if isinstance(found, Outcome):
                outcome = found
                break
            flavor, placement, total = found
            qs.accounts[flavor].add(total)
            self.nodes.take(placement, part.per_rank)
            taken.append((flavor, placement, part, total))
        if outcome is not _ADMIT:
            for flavor, placement, part, total in reversed(taken):
                self.nodes.give(placement, part.per_rank)
                qs.accounts[flavor].remove(total)
            self.failed_shapes = failed_before
            return outcome
        self.changes += 1
        if self.tenants is not None:
            self.tenants.admitted(job, [sum(t[3][r] for t in taken)
                                        for r in range(len(self.space))])
        names = self.nodes.names
        (flavor, placement, _, _), rest = taken[0], taken[1:]
        self.admit.append(Admit(
            job=job.id, queue=qs.queue.name, flavor=flavor, nodes=_expand(placement, names),
            borrowing=any(qs.accounts[f].borrowing() for f, *_ in taken),
            roles=tuple(RoleAdmit(f, _expand(p, names)) for f, p, _, _ in rest)))
        return _ADMIT

    def _fit_role(self, qs: _QueueState, part: PendingJob, defer_borrowing: bool,
                  starving: bool, prefix: str) -> tuple[str, Placement, list[int]] | Outcome:
        """Where one role of a multi-role job fits now (flavor, placement, its total), or
        _DEFER (it would borrow, in the first pass) or _WAIT (with its reason recorded)."""
        where = self._where(qs, part, prefix, "role")
        if where is None:
            return _WAIT
        flavors, level = where
        total = _total(part)
        fit, _, why, open_flavors = self.assign_flavors(qs, part, flavors, level, total,
                                                        False)[1:]
        if fit is not None and fit.placement is not None:
            if fit.borrow and defer_borrowing:
                return _DEFER
            return fit.flavor, fit.placement, total
        if not self._fits_ever(part, flavors, self.nodes.healthy):
            never = self._never_fits(part, flavors)
            self.waiting[part.id] = replace(never, message=prefix + never.message)
            return _WAIT
        self.waiting[part.id] = self._explain(qs, part, flavors, open_flavors, why, total,
                                              prefix)
        if starving:
            self._reserve(qs, part, open_flavors, _NO_NODES in why.values())
        return _WAIT

    def _may_preempt_for(self, qs: _QueueState, account: QuotaAccount, total: list[int]) -> bool:
        """Kueue looks for victims for a request above its queue's nominal quota only when the
        queue may preempt while borrowing (borrow_within_cohort; reclaim under fair sharing),
        or when the quota it lacks lies in a sub-cohort below the root (hierarchical reclaim)."""
        q = qs.queue
        nominal = account.nominal
        if all(total[r] <= nominal[r] for r in account.limited):
            return True
        if q.borrow_within_cohort != "Never" or (self.policy.fair_sharing
                                                 and q.reclaim_within_cohort != "Never"):
            return True
        return all(total[r] <= account.nominal[r] or account.lowest_fitting(r, total[r])[1]
                   for r in account.short(total))

    def _admit(self, qs: _QueueState, job: PendingJob, flavor: str, placement: Placement,
               total: list[int]) -> None:
        """Charge ``job`` to ``flavor`` and its nodes, and admit it."""
        account = qs.accounts[flavor]
        account.add(total)
        self.nodes.take(placement, job.per_rank)
        self.changes += 1
        if self.tenants is not None:
            self.tenants.admitted(job, total)
        self.admit.append(Admit(job=job.id, queue=qs.queue.name, flavor=flavor,
                                nodes=_expand(placement, self.nodes.names),
                                borrowing=account.borrowing()))

    def _place(self, flavor: str, job: PendingJob, level: int | None) -> Placement | None:
        shape = (flavor, job.ranks, job.per_rank, level, job.topology_required, job.avoid)
        if shape in self.failed_shapes:
            return None
        placement = self._place_now(flavor, job, level, job.topology_required)
        if placement is None:
            self.failed_shapes.add(shape)
        return placement

    def _place_now(self, flavor: str, job: PendingJob, level: int | None,
                   required: bool) -> Placement | None:
        """Where ``job``'s gang fits on ``flavor``'s free nodes now, none of them one it must
        avoid (those are masked as full for the one search)."""
        if not job.avoid:
            return self.nodes.place(flavor, job.ranks, job.per_rank, level, required)
        index, free = self.nodes.index, self.nodes.free
        masked = [(i, list(free[i])) for i in sorted(index[n] for n in job.avoid if n in index)]
        for i, amount in masked:
            self.nodes.charge(i, amount, 1)
        try:
            return self.nodes.place(flavor, job.ranks, job.per_rank, level, required)
        finally:
            for i, amount in masked:
                self.nodes.charge(i, amount, -1)

    def _fits_ever(self, job: PendingJob, flavors: list[str], largest: dict[str, list[int]]
                   ) -> bool:
        """Whether one rank fits on the largest node of any of ``flavors``."""
        for flavor in flavors:
            cap = largest.get(flavor)
            if cap is not None and all(map(le, job.per_rank, cap)):
                return True
        return False

    def _never_fits(self, job: PendingJob, flavors: list[str]) -> Waiting:
        """Why no schedulable node holds one rank: none does, or only unschedulable ones."""
        names = ", ".join(flavors)
        if self._fits_ever(job, flavors, self.nodes.capacity):
            return Waiting("NodeUnhealthy", f"only unschedulable (cordoned or unhealthy) nodes "
                                            f"of flavor {names} hold one rank of "
                                            f"{_fmt(job, self.space)}")
        return Waiting("NeverFits", f"never fits: no node of flavor {names} holds one rank of "
                                    f"{_fmt(job, self.space)}")

    def _wait_code(self, qs: _QueueState, job: PendingJob, flavors: list[str],
                   open_flavors: list[str], why: dict[str, str], total: list[int]) -> WaitCode:
        """The code for a job that fits on some node but was neither admitted nor nominated."""
        if _exceeds_quota(qs, flavors, total):
            return "ExceedsMaxQuota"
        if not open_flavors:
            return "HeldForStarvingJob"
        short = [f for f in open_flavors if why.get(f) is _NO_NODES]
        if not short:
            return "WaitingForQuota"
        if job.topology is not None and any(
                self._place_now(f, job, None, False) is not None
                for f in short):
            return "TopologyPlacementFailed"
        return "WaitingForNodes"

    def _numbers(self, code: WaitCode, message: str, qs: _QueueState, flavors: list[str],
                 total: list[int] | None) -> Waiting:
        """``code`` and ``message`` with the quota numbers of the first of ``flavors`` (and
        the job's request, unless one reason serves a whole queue)."""
        if not flavors:
            return Waiting(code, message)
        flavor = flavors[0]
        account = qs.accounts[flavor]
        usage, quota, size = account.usage, account.nominal, len(self.space)
        nominal = tuple([max(0, quota[r] - usage[r]) for r in range(size)])
        borrow = tuple([max(0, account.available(r) - nominal[r]) for r in range(size)])
        return Waiting(code, message, flavor, None if total is None else tuple(total), nominal,
                       borrow)

    def _reserve(self, qs: _QueueState, job: PendingJob, flavors: list[str],
                 node_short: bool) -> None:
        """Hold the flavors a starving job waits on, so capacity drains to it.

        Short of nodes: nothing else is admitted to those flavors. Short of quota: nothing
        else of the job's cohort tree (or of its own queue, without a cohort) is.
        """
        scope = None if node_short else qs.scope
        for flavor in flavors:
            self.reserved.setdefault(flavor, (job.id, scope))
        self.changes += 1
        why = self.waiting[job.id]
        self.waiting[job.id] = replace(why, message=f"{why.message} (starving: capacity held "
                                                    "for it)", starving=True)

    # --- preemption ---

    def _candidates(self, queue: str, flavor: str) -> preempt.Candidates:
        key = (queue, flavor)
        cands = self.victims.get(key)
        if cands is None:
            account = self.quota.account(queue, flavor)
            jobs = self.running.get(key, [])
            kept = self.kept_victims.get(key)
            if kept is not None and kept.reusable(account, jobs):
                kept.reset()
                cands = self.victims[key] = kept
                return cands
            order = self.policy.victim_order
            rank = self._rank if self.policy.order in ("las", "srtf") else None
            cands = self.victims[key] = preempt.Candidates(account, [
                preempt.Victim(job, account, self._placement_of(job),
                               (job.priority, 0) if rank is None else rank(job), order)
                for job in jobs], len(self.space), jobs)
        return cands

    def _placement_of(self, job: RunningJob) -> Placement:
        kept = self.held.jobs.get(id(job))  # what its hold was computed with, if it is held
        if kept is not None and kept[0] is job:
            return kept[1]
        counts: dict[int, int] = {}
        for name in job.nodes:
            i = self.nodes.index.get(name)
            if i is not None:
                counts[i] = counts.get(i, 0) + 1
        return list(counts.items())

    def _shape(self, qs: _QueueState, job: PendingJob, level: int | None) -> tuple[object, ...]:
        """What decides a victim search's outcome: the same shape failing again is certain,
        as state only shrinks."""
        return (qs.queue.name, self._rank(job), job.ranks,
                job.per_rank, job.flavors, level, job.topology_required, job.avoid)

    def _attempt(self, qs: _QueueState, job: PendingJob, level: int | None) -> bool:
        """Whether ``job`` may look for victims: its queue may preempt, has attempts left and
        no like job found none this cycle. Counts the attempt (once per job)."""
        if self._searched_for == job.id:
            return True
        if not self._can_preempt(qs) or (
                self._within(qs.queue) != "LowerOrNewerEqualPriority"
                and self._shape(qs, job, level) in self.hopeless):
            return False
        self._searched_for = job.id
        qs.attempts += 1
        self.changes += 1
        return True

    def _search_victims(self, qs: _QueueState, job: PendingJob, flavors: list[str],
                        level: int | None, total: list[int], first: bool = False,
                        below: int | None = None) -> _Found | None:
        """The victims on the best of ``flavors`` by the queue's flavor preference (``first``:
        on the first flavor that has any); ``below``: only where the job then borrows less than
        that."""
        compare = below is not None or (not first and len(flavors) > 1)
        by_borrowing = qs.queue.flavor_preference == "PreemptionOverBorrowing"
        best: _Found | None = None
        may_reclaim = qs.queue.cohort is not None and qs.queue.reclaim_within_cohort != "Never"
        for flavor in flavors:
            # Once it preempts in its own queue without borrowing, only reclaiming beats that:
            # the later flavors are searched for other queues' jobs alone.
            must_reclaim = best is not None and best.own and not best.borrow
            if must_reclaim and not may_reclaim:
                break
            found = self._victims_on(qs, job, flavor, level, total, compare, must_reclaim)
            if found is None or (below is not None and found.borrow >= below):
                continue
            if best is None or found.better_than(best, by_borrowing):
                best = found
            if first or (not best.own and not best.borrow):
                break
        return best

    def _victims_on(self, qs: _QueueState, job: PendingJob, flavor: str, level: int | None,
                    total: list[int], compare: bool, must_reclaim: bool) -> _Found | None:
        """The victims that make room for ``job`` on ``flavor``; with ``compare``, also how far
        it then borrows. ``must_reclaim``: only other queues' jobs."""
        # Victims chosen earlier in the cycle in this quota tree count as gone for the search
        # (Kueue: a cycle's preemption targets are removed before a later entry is checked),
        # so a second preemptor does not take more victims than it needs.
        # Taken out one by one, they are put back at once: the usage of every account they
        # touched is restored to what it was (a tree's usage depends only on its queues').
        departing = self.departing.get((qs.scope, flavor))
        before = None
        if departing:
            before = [(a, a.usage.copy()) for a in self.departing_touch[(qs.scope, flavor)]]
            for account, amount in departing.items():
                account.remove(amount)
        try:
            found = self._find_victims(qs, job, flavor, level, total, must_reclaim)
            if found is None:
                return None
            chosen, placement = found
            account = qs.accounts[flavor]
            borrow = _borrow_after(account, total, chosen) if compare else 0
        finally:
            if before is not None:
                for a, usage in before:
                    a.usage[:] = usage
        own = any(v.account is qs.accounts[flavor] for v, _ in chosen)
        return _Found(flavor, chosen, placement, borrow, own)

    def _nominate(self, qs: _QueueState, job: PendingJob, found: _Found,
                  total: list[int]) -> Outcome:
        """Preempt ``found``'s victims for ``job``, which waits for them to stop."""
        self._commit_nomination(qs, job, found.flavor, total, found.placement,
                                [v for v, _ in found.chosen])
        for v, reason in found.chosen:
            self.victims[(v.job.queue, v.job.flavor)].take(v)
            if not v.job.preempting and v.job.id not in self.preempted:
                self.preempted.add(v.job.id)  # a multi-role job: once, whichever role
                self.preempt.append(Preempt(job=v.job.id, by=job.id, reason=reason))
        self.nominated[job.id] = tuple(dict.fromkeys(v.job.id for v, _ in found.chosen))
        self.waiting[job.id] = self._numbers(
            "WaitingForVictims", f"waiting for {len(found.chosen)} preempted job(s) to stop", qs,
            [found.flavor], total)
        return _WAIT

    def _eligible(self, qs: _QueueState, job: PendingJob, flavor: str, total: list[int],
                  others_only: bool = False
                  ) -> tuple[list[preempt.Selection], list[preempt.Selection],
                             list[preempt.Selection], dict[QuotaAccount, preempt.OtherQueue]]:
        """Candidates of the job's own queue; of the other queues of its cohort tree whose
        quota it has the better claim to (hierarchical reclaim); of the other borrowing queues;
        and how the job sees each of those queues. ``others_only``: no candidates of its own
        queue."""
        q = qs.queue
        mine = self._rank(job)
        within = self._within(q)
        own = []
        if within != "Never" and not others_only:
            mode = "newer" if within == "LowerOrNewerEqualPriority" else "lower"
            sel = self._candidates(q.name, flavor).select(mine, job.created_at, mode)
            if not sel.empty():
                own.append(sel)
        claimed: list[preempt.Selection] = []
        borrowed: list[preempt.Selection] = []
        others: dict[QuotaAccount, preempt.OtherQueue] = {}
        if q.cohort is None or q.reclaim_within_cohort == "Never" or qs.root is None:
            return own, claimed, borrowed, others
        account = qs.accounts[flavor]
        advantage: list[bool] | None = None
        mode = "lower" if q.reclaim_within_cohort == "LowerPriority" else "any"
        for name, theirs, path, distance in self._neighbours(qs, flavor):
            if not theirs.borrowing():
                continue  # Kueue reclaims only from queues above their nominal quota
            sel = self._candidates(name, flavor).select(mine, job.created_at, mode)
            if sel.empty():
                continue
            if advantage is None:
                advantage = account.advantage(total)
            seen = preempt.OtherQueue(path, advantage[distance])
            others[theirs] = seen
            (claimed if seen.advantage else borrowed).append(sel)
        return own, claimed, borrowed, others

    def _neighbours(self, qs: _QueueState, flavor: str
                    ) -> list[tuple[str, QuotaAccount, list[QuotaAccount], int]]:
        """The other queues of ``qs``'s cohort tree with quota of ``flavor`` and jobs running
        on it: name, account, the path from it up to the lowest cohort shared with ``qs`` (not
        included), and that cohort's distance above ``qs``."""
        key = (qs.queue.name, flavor)
        kept = self._neighbour_cache.get(key)
        if kept is not None:
            return kept
        above: dict[QuotaAccount, int] = {}
        node = qs.accounts[flavor].parent
        while node is not None:
            above[node] = len(above)
            node = node.parent
        out = []
        running = self.running
        for other in self.trees[qs.root] if qs.root is not None else ():
            theirs = other.accounts.get(flavor)
            if other is qs or theirs is None or (other.queue.name, flavor) not in running:
                continue
            path = [theirs]
            node = theirs.parent
            while node is not None and node not in above:
                path.append(node)
                node = node.parent
            if node is not None:
                out.append((other.queue.name, theirs, path, above[node]))
        self._neighbour_cache[key] = out
        return out

    def _find_victims(self, qs: _QueueState, job: PendingJob, flavor: str, level: int | None,
                      total: list[int], must_reclaim: bool
                      ) -> tuple[preempt.Chosen, Placement] | None:
        own, claimed, borrowed, others = self._eligible(qs, job, flavor, total, must_reclaim)
        account = qs.accounts[flavor]
        short = account.short(total) or [r for r, v in enumerate(total) if v > 0]
        threshold = _threshold(qs.queue, job)
        plan = self._plan_search(account, short, threshold, own, claimed, borrowed)
        if not plan or not self._could_fit(account, flavor, total, own + claimed + borrowed):
            return None

        def quota_fits(allow_borrowing: bool) -> bool:
            return account.fits(total, allow_borrowing)

        def place() -> Placement | None:
            return self._place_now(flavor, job, level, job.topology_required)

        # A shape that failed to place this cycle fails on today's nodes too (they only shrink).
        failed = ((flavor, job.ranks, job.per_rank, level, job.topology_required, job.avoid)
                  in self.failed_shapes)
        sim = preempt.Simulation(self.nodes, quota_fits, place, job.per_rank, job.ranks, failed)
        size = len(total)
        own_freed = _freed(own, size)
        others_freed = _freed(claimed + borrowed, size, borrowed_only=True)
        for allow_borrowing, groups in plan:
            if not _quota_bound(account, total, own_freed, others_freed, allow_borrowing):
                continue
            if groups is None:  # fair sharing
                return preempt.fair(sim, self.quota, account, total, own + claimed + borrowed,
                                    short, threshold)
            found = preempt.minimal(sim, account, preempt.ordered(groups), others, short,
                                    allow_borrowing, threshold)
            if found is not None:
                return found
        return None

    def _could_fit(self, account: QuotaAccount, flavor: str, total: list[int],
                   selections: list[preempt.Selection]) -> bool:
        """Whether removing every candidate could possibly make room on the nodes."""
        pool = self.nodes.pools.get(flavor)
        if not selections or pool is None:
            return False
        freed = _freed(selections, len(total))
        return all(v <= t + f for v, t, f in zip(total, pool.total, freed, strict=True) if v > 0)

    def _plan_search(self, account: QuotaAccount, short: list[int], threshold: int | None,
                     own: list[preempt.Selection], claimed: list[preempt.Selection],
                     borrowed: list[preempt.Selection]
                     ) -> list[tuple[bool, list[list[preempt.Selection]] | None]]:
        """Kueue's classical strategy: the searches to run in turn, each whether the preemptor
        may borrow and its candidate groups (None: fair sharing's search); none that has no
        candidates to take.

        Without borrow_within_cohort, other queues' borrowers are taken only if the preemptor
        then stays within its nominal quota, unless it has the hierarchical claim on their
        quota; with it, those of priority below the threshold are taken while it borrows.
        """
        def groups(allow_borrowing: bool) -> list[list[preempt.Selection]]:
            if allow_borrowing and threshold is None:
                # `preempt.minimal` passes over the other borrowers' jobs then: leave them out.
                return [claimed, own]
            return [claimed, borrowed, own]

        if not claimed and not borrowed:
            attempts: tuple[bool, ...] = (True,)
        elif self.policy.fair_sharing:
            return [(True, None)]
        else:
            usage, nominal = account.usage, account.nominal
            under_nominal = all(usage[r] < nominal[r] for r in short)
            if threshold is None and not under_nominal:
                attempts = (True,)
            elif threshold is None and not claimed:
                attempts = (False, True)
            elif borrowed:
                attempts = (True, False)
            else:  # without borrowing: the same candidates, and a stricter fit
                attempts = (True,)
        return [(allow_borrowing, taken) for allow_borrowing in attempts
                if any(taken := groups(allow_borrowing))]

    def _hold_without_victims(self, qs: _QueueState, flavors: list[str],
                              total: list[int]) -> None:
        """Kueue's reservation for a head that needs preemption but found no victims, when its
        queue cannot always reclaim: the quota it could use on the least-borrowing of
        ``flavors`` (up to its nominal quota, or its borrowing limit if it must borrow) stays
        charged for the rest of the cycle, so other queues cannot borrow it. The queue's own
        later jobs do not see it (`_apply_hold`)."""
        q = qs.queue
        if (not self.policy.hold_quota_without_victims or qs.hold is not None
                or q.cohort is None or q.reclaim_within_cohort == "Any"):
            return
        account = min((qs.accounts[f] for f in flavors), key=lambda a: a.borrow_level(total))
        if account.needs_borrowing(total):
            cap = [n + b if b < UNLIMITED else UNLIMITED
                   for n, b in zip(account.nominal, account.borrow, strict=True)]
        else:
            cap = list(account.nominal)
        amount = [max(0, min(v, c - u)) for v, c, u in zip(total, cap, account.usage, strict=True)]
        if any(amount[r] > 0 for r in account.limited):
            qs.hold = _Hold(account, amount, cap)
            self.changes += 1

    def _apply_hold(self, qs: _QueueState) -> None:
        """Charge the queue's hold (no more than its cap leaves room for now)."""
        hold = qs.hold
        if hold is None or qs.hold_applied:
            return
        usage, amount, cap = hold.account.usage, hold.amount, hold.cap
        for r in hold.account.limited:
            room = cap[r] - usage[r]
            if amount[r] > room:
                amount[r] = room if room > 0 else 0
        hold.account.add(amount)
        qs.hold_applied = True

    def _release_hold(self, qs: _QueueState) -> None:
        """Lift the queue's hold while its own jobs are considered."""
        hold = qs.hold
        if hold is not None and qs.hold_applied:
            hold.account.remove(hold.amount)
            qs.hold_applied = False

    def _commit_nomination(self, qs: _QueueState, job: PendingJob, flavor: str,
                           total: list[int], placement: Placement,
                           victims: list[preempt.Victim]) -> None:
        """Charge the nominated job now: its quota, and the free capacity it will use.

        The victims keep their quota (for admissions this cycle: nothing is admitted into room
        that is not free yet) and their nodes until they stop, so only the part of the job's
        placement that their release does not cover comes out of today's free capacity.
        """
        qs.accounts[flavor].add(total)
        self.changes += 1
        departing = self.departing.setdefault((qs.scope, flavor), {})
        touch = self.departing_touch.setdefault((qs.scope, flavor), {})
        size = len(total)
        for v in victims:
            if v.account is not None:
                if v.account not in departing:
                    for account in v.account.accounts():
                        node: Account | None = account
                        while node is not None:
                            touch[node] = None
                            node = node.parent
                gone = departing.setdefault(v.account, [0] * size)
                for r in range(size):
                    gone[r] += v.total[r]
        freed: dict[int, list[int]] = {}
        for v in victims:
            for i, count in v.placement:
                f = freed.setdefault(i, [0] * size)
                for r in range(size):
                    f[r] += v.per_rank[r] * count
        for i, count in placement:
            f = freed.get(i, [0] * size)
            extra = [max(0, job.per_rank[r] * count - f[r]) for r in range(size)]
            self.nodes.charge(i, extra, 1)

    def _explain_rest(self) -> None:
        if not self.policy.explain:
            return
        for qs in self.queues.values():
            if not qs.waiting:
                continue
            self._release_hold(qs)
            reason = self._queue_reason(qs)
            self._apply_hold(qs)
            size = len(self.space)
            caps = [self.nodes.healthy.get(f, [0] * size) for f in qs.accounts]
            largest = [max((c[r] for c in caps), default=0) for r in range(size)]
            pending = self.snap.pending
            keys = (qs.waiting if self.tenants is None
                    else self.tenants.remaining(qs.queue.name, qs.waiting))
            if self.tenants is None:  # the jobs not taken off the heap, in snapshot order
                rest = dict.fromkeys(qs.ids, reason)
                for done in qs.done:
                    rest.pop(done, None)
                self.waiting.update(rest)
            else:
                self.waiting.update(dict.fromkeys([pending[k[4]].id for k in keys], reason))
            bound = times(qs.most, qs.most_ranks)  # no job asks more than this
            beyond_quota = any(bound[r] > a.most(r) for a in qs.accounts.values()
                               for r in range(size))
            if all(map(le, qs.most, largest)) and not beyond_quota:
                continue
            for key in keys:
                job = pending[key[SEQ]]
                p = job.per_rank
                if p[0] > largest[0] or p[1] > largest[1] or p[2] > largest[2]:
                    self.waiting[job.id] = self._never_fits(job, list(qs.accounts))
                elif beyond_quota and (exceeds := self._exceeds_max(qs, job)) is not None:
                    self.waiting[job.id] = exceeds

    def _queue_reason(self, qs: _QueueState) -> Waiting:
        """Why the jobs of ``qs`` the cycle did not get to wait (one reason for them all)."""
        holds = [h[0] for f in qs.accounts if (h := self.reserved.get(f)) is not None
                 and (h[1] is None or h[1] == qs.scope)]
        name = qs.queue.name
        if qs.blocked_by is not None:
            return Waiting("BlockedByStrictFIFO", f"StrictFIFO: behind job {qs.blocked_by}")
        if holds:
            return Waiting("HeldForStarvingJob", f"capacity held for starving job {holds[0]}")
        need = qs.least
        for flavor, account in qs.accounts.items():
            if all(account.available(r) >= v for r, v in enumerate(need) if v):
                return self._numbers("WaitingForNodes", f"no free nodes for queue {name}'s "
                                     "jobs", qs, [flavor], None)
        return self._numbers("WaitingForQuota", f"no room in queue {name}'s quota", qs,
                             qs.flavors, None)


def _borrow_level(accounts: Iterable[QuotaAccount], total: list[int]) -> int:
    """How far up the cohort tree a job must borrow (Kueue orders heads by it): the least on
    any of its flavors (0: one holds it within the nominal quota)."""
    least = INF
    for account in accounts:
        if not account.needs_borrowing(total):
            return 0
        if least > 1:  # 1, borrowing from the queue's own cohort, is the least there is
            parent = account.parent
            if parent is None or parent.parent is None:
                least = 1
            else:
                least = min(least, account.borrow_level(total))
    return int(least) if least < INF else 0


def _threshold(q: Queue, job: PendingJob) -> int | None:
    """Kueue's borrow-within-cohort threshold: other queues' jobs below this priority may be
    preempted while the preemptor borrows (None: none may)."""
    if q.borrow_within_cohort != "LowerPriority":
        return None
    threshold = job.priority
    if q.borrow_max_priority is not None and q.borrow_max_priority < threshold:
        threshold = q.borrow_max_priority + 1
    return threshold


def _borrow_after(account: QuotaAccount, total: list[int], chosen: preempt.Chosen) -> int:
    """How far ``total`` borrows on ``account`` once the ``chosen`` victims are gone."""
    for v, _ in chosen:
        if v.account is not None:
            v.account.remove(v.total)
    try:
        return account.borrow_level(total)
    finally:
        for v, _ in chosen:
            if v.account is not None:
                v.account.add(v.total)


def _freed(selections: list[preempt.Selection], size: int, borrowed_only: bool = False
           ) -> list[int]:
    out = [0] * size
    for sel in selections:
        b = sel.bound(borrowed_only)
        for r in range(size):
            out[r] += b[r]
    return out


def _quota_bound(account: QuotaAccount, total: list[int], own_freed: list[int],
                 cohort_freed: list[int], allow_borrowing: bool) -> bool:
    """Whether the quota could fit ``total`` once the candidates are gone (a cheap bound)."""
    usage, nominal, borrow = account.usage, account.nominal, account.borrow
    for r in range(len(total)):
        if total[r] <= 0:
            continue
        room = account.available(r) + own_freed[r] + cohort_freed[r]
        if account.parent is not None and borrow[r] < UNLIMITED:
            room = min(room, nominal[r] + borrow[r] - usage[r] + own_freed[r])
        if not allow_borrowing:
            room = min(room, nominal[r] - usage[r] + own_freed[r])
        if total[r] > room:
            return False
    return True


def _allowed_flavors(qs: _QueueState, job: PendingJob) -> list[str]:
    """The flavors of ``qs`` that ``job`` may use, in the queue's order."""
    return qs.flavors if job.flavors is None else [f for f in qs.flavors if f in job.flavors]


def _exceeds_quota(qs: _QueueState, flavors: list[str], total: list[int]) -> bool:
    """Whether ``total`` is more than ``qs`` could ever get on every one of ``flavors``."""
    return all(any(total[r] > qs.accounts[f].most(r) for r in range(len(total)))
               for f in flavors)


def _total(job: PendingJob) -> list[int]:
    return times(job.per_rank, job.ranks)


def _expand(placement: Placement, names: list[str]) -> tuple[str, ...]:
    out: list[str] = []
    for i, count in placement:
        out.extend([names[i]] * count)
    return tuple(out)


def _most(account: QuotaAccount, size: int) -> list[int]:
    return [account.most(r) for r in range(size)]


def _fmt(job: PendingJob, space: ResourceSpace) -> str:
    return f"({space.describe(job.per_rank)})"
