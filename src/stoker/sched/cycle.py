"""One scheduling cycle: order the pending jobs, check quota, place, preempt.

The cycle merges the queues' heads in one heap: jobs the last cycle nominated first, then
starving jobs, then (as Kueue's entry ordering) jobs that fit in their queue's nominal quota
before jobs that must borrow, then priority, then the policy's order; under fair sharing the
least weighted dominant-resource share replaces the borrowing test. Under admission fair
sharing a queue's own order puts its tenants' decayed usage before priority (see
`stoker.sched.tenant_order`); the order between queues is unchanged. It runs in two passes. The
first admits only jobs that fit in their queue's nominal quota; a job that could only be
admitted by borrowing stops its queue there until the second pass, which lets jobs borrow. So
the room a job reclaimed from borrowing queues by preemption goes to it, not to a (maybe
higher-priority) borrowing job of the victims' queue that it would preempt again: a ping-pong.

Each job tries its queue's flavors in order, one where it fits in nominal quota before one where
it borrows: quota, then a placement on nodes. A job that fits nowhere may look for victims (a
bounded number per queue and cycle). A job that needs victims is *nominated*: it is charged now
(its quota, and the free node capacity it will use) so later jobs cannot take its room, but is
admitted only in a later cycle, once the victims have stopped; later victim searches count its
victims as gone. Free node capacity only ever shrinks within a cycle, so a gang shape that failed
to place once is not tried again, and a queue whose remaining jobs cannot fit anywhere is
dropped at once.
"""

from __future__ import annotations

import heapq
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import replace
from operator import le

from stoker.sched import preempt
from stoker.sched.cache import SchedulerCache
from stoker.sched.nodes import Nodes, Placement, times
from stoker.sched.order import QueueKey, queue_keys
from stoker.sched.quota import QuotaAccount
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
    RunningJob,
    Snapshot,
    WaitCode,
    Waiting,
)

INF = float("inf")
# What considering a job did: admitted it, left it waiting (maybe nominated), or deferred it to
# the borrowing pass.
_ADMIT, _WAIT, _DEFER = "admit", "wait", "defer"
_HeapKey = tuple[int, object, int, float, float, int]  # QueueKey with borrowing or share second


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
    cache.keep(snapshot.queues, snapshot.cohorts, cycle.quota, cycle.held)
    return decisions


class _QueueState:
    """A queue's pending jobs not yet considered this cycle (a heap: next job first)."""

    __slots__ = ("accounts", "attempts", "blocked_by", "checked", "flavors", "least", "most",
                 "queue", "root", "scope", "waiting")

    def __init__(self, queue: Queue, accounts: dict[str, QuotaAccount], root: str | None,
                 size: int) -> None:
        self.queue = queue
        self.accounts = accounts
        self.root = root  # the cohort tree it shares quota in
        self.scope = root if root is not None else f"queue:{queue.name}"  # what quota it uses
        self.waiting: list[QueueKey] = []
        self.attempts = 0
        self.checked = -1  # the cycle's change count when it was last found not hopeless
        self.blocked_by: JobId | None = None
        self.least: Resources = (UNLIMITED,) * size  # the least of each any job asks per rank
        self.most: Resources = (0,) * size  # the most of each resource per rank any job asks
        self.flavors = list(accounts)


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
        # (quota scope, flavor) -> victims nominated this cycle, still charged to their queues
        self.departing: dict[tuple[str, str], dict[QuotaAccount, list[int]]] = {}
        # flavor -> (starving job, None: held on every queue, or the cohort tree it holds)
        self.reserved: dict[str, tuple[JobId, str | None]] = {}
        self.admit: list[Admit] = []
        self.preempt: list[Preempt] = []
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

    def _rank(self, priority: int, attained: float) -> tuple[int, int]:
        """Preemption rank: priority, then (under LAS) less attained service."""
        if self.policy.order != "las":
            return (priority, 0)
        return (priority, -bisect_right(self.policy.las_thresholds, attained))

    def _fill_queues(self) -> None:
        """Put each pending job in its queue's heap, keyed by its place in the queue
        (`stoker.sched.order`)."""
        pending = self.snap.pending
        keyed: dict[str, list[QueueKey]] = {name: [] for name in self.queues}
        shapes: dict[str, set[Resources]] = {name: set() for name in self.queues}
        for key in queue_keys(pending, self.policy, self.now):
            job = pending[key[4]]
            keys = keyed.get(job.queue)
            if keys is None:
                self.waiting[job.id] = Waiting("UnknownQueue", f"unknown queue {job.queue!r}")
                continue
            keys.append(key)
            shapes[job.queue].add(job.per_rank)
        for name, keys in keyed.items():
            if self.tenants is not None:
                keys = self.tenants.heads(keys)
            heapq.heapify(keys)  # only the jobs considered are ever ordered fully
            qs = self.queues[name]
            qs.waiting = keys
            if keys:
                per_rank = list(shapes[name])  # the distinct rank shapes
                qs.least = tuple(map(min, *per_rank)) if len(per_rank) > 1 else per_rank[0]
                qs.most = tuple(map(max, *per_rank)) if len(per_rank) > 1 else per_rank[0]

    # --- the cycle ---

    def run(self) -> Decisions:
        self._fill_queues()
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
            if qs.waiting and qs.blocked_by is None and not self._hopeless(qs):
                heap.append((self._heap_key(qs), n, qs))
        heapq.heapify(heap)
        pending = self.snap.pending
        tenants = self.tenants
        while heap:
            _, n, qs = heapq.heappop(heap)
            while True:
                if tenants is not None:
                    tenants.fresh_head(qs.waiting)
                key = heapq.heappop(qs.waiting)
                if tenants is not None:
                    tenants.popped(qs.waiting, key)
                outcome = self._consider(qs, pending[key[4]], nominal_only)
                if outcome is _DEFER:
                    heapq.heappush(qs.waiting, key)
                    if tenants is not None:
                        tenants.pushed_back(key)
                    break
                if outcome is _WAIT and qs.queue.strategy == "StrictFIFO":
                    qs.blocked_by = pending[key[4]].id
                    break
                if not qs.waiting or self._hopeless(qs):
                    break
                if heap:  # the last queue left goes on without ordering
                    heapq.heappush(heap, (self._heap_key(qs), n, qs))
                    break

    def _heap_key(self, qs: _QueueState) -> _HeapKey:
        if self.tenants is not None:
            self.tenants.fresh_head(qs.waiting)
        key = qs.waiting[0]
        job = self.snap.pending[key[4]]
        total = _total(job)
        accounts = (qs.accounts.values() if job.flavors is None
                    else [a for f, a in qs.accounts.items() if f in job.flavors])
        if self.policy.fair_sharing:
            second: object = min((self.quota.share(a, total) for a in accounts), default=(INF,))
        else:
            second = all(a.needs_borrowing(total) for a in accounts)
        # Priority from the job: the usage of tenants of different queues is not compared.
        return (key[0], second, -job.priority, key[2], key[3], key[4])

    def _can_preempt(self, qs: _QueueState) -> bool:
        q = qs.queue
        if not self.policy.preemption or qs.attempts >= self.policy.max_preemption_attempts:
            return False
        return (self._within(q) != "Never"
                or (q.cohort is not None and q.reclaim_within_cohort != "Never"))

    def _within(self, q: Queue) -> str:
        if self.policy.order == "las" and q.within_queue == "Never":
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

    def _consider(self, qs: _QueueState, job: PendingJob, nominal_only: bool) -> str:
        """Try to admit ``job``: on a flavor where it fits in the queue's nominal quota first,
        else (unless ``nominal_only``: then defer it) on one where it borrows. On failure maybe
        nominate it or reserve for it. Returns _ADMIT, _WAIT or _DEFER."""
        age = self.policy.starvation_age
        starving = age is not None and self.now - job.created_at >= age
        # A job like one that already failed this cycle fails alike: state only shrinks.
        newer = self._within(qs.queue) == "LowerOrNewerEqualPriority"  # victims by age too
        like = (qs.queue.name, job.ranks, job.per_rank, job.flavors, job.topology,
                job.topology_required, self._rank(job.priority, job.attained_service), starving,
                job.nominated, job.created_at if newer else None)
        reason = self.failed_like.get(like)
        if reason is not None:
            self.waiting[job.id] = reason
            return _WAIT
        flavors = qs.flavors if job.flavors is None else [f for f in qs.flavors
                                                          if f in job.flavors]
        if not flavors:
            self.waiting[job.id] = Waiting("NoMatchingFlavor", "no flavor of the queue matches "
                                           "the job's GPU model")
            return _WAIT
        level = None
        if job.topology is not None:
            level = self.nodes.levels.get(job.topology)
            if level is None:
                self.waiting[job.id] = Waiting("UnknownTopology", "unknown topology level "
                                               f"{job.topology!r}")
                return _WAIT
        total = _total(job)
        why: dict[str, str] = {}
        no_nodes = "no nodes free"
        open_flavors = []
        borrowing = []
        for flavor in flavors:
            hold = self.reserved.get(flavor)
            if hold is not None and (hold[1] is None or hold[1] == qs.scope):
                why[flavor] = f"capacity held for starving job {hold[0]}"
                continue
            open_flavors.append(flavor)
            account = qs.accounts[flavor]
            if account.fits(total, allow_borrowing=False):
                if self._admit(qs, job, flavor, level, total):
                    return _ADMIT
                why[flavor] = no_nodes
            elif account.fits(total):
                borrowing.append(flavor)
            else:
                why[flavor] = f"quota of queue {qs.queue.name} exhausted"
        if borrowing and nominal_only and not job.nominated:
            return _DEFER
        for flavor in borrowing:
            if self._admit(qs, job, flavor, level, total):
                return _ADMIT
            why[flavor] = no_nodes
        node_short = no_nodes in why.values()
        if not self._fits_ever(job, flavors, self.nodes.healthy):
            self.waiting[job.id] = self._never_fits(job, flavors)
            return _WAIT
        if open_flavors and self._can_preempt(qs):
            # The same shape at the same rank failing again is certain: state only shrinks.
            shape = (qs.queue.name, self._rank(job.priority, job.attained_service), job.ranks,
                     job.per_rank, level, job.topology_required)
            if self._within(qs.queue) == "LowerOrNewerEqualPriority" or shape not in self.hopeless:
                qs.attempts += 1
                self.changes += 1
                for flavor in open_flavors:
                    if self._nominate(qs, job, flavor, level, total):
                        return _WAIT
                self.hopeless.add(shape)
        asked = f"no nodes free for {job.ranks} x {_fmt(job, self.space)}"
        message = "; ".join(f"{f}: {asked if why[f] is no_nodes else why[f]}" for f in flavors)
        code = self._wait_code(qs, job, flavors, open_flavors, why, total, no_nodes)
        if code == "ExceedsMaxQuota":
            describe = self.space.describe
            message = "; ".join(f"{f}: asks {describe(total)}, more than queue {qs.queue.name} "
                                f"can ever get ({describe(_most(qs.accounts[f], len(total)))})"
                                for f in flavors)
        self.waiting[job.id] = self._numbers(code, message, qs, open_flavors or flavors, total)
        if starving:
            self._reserve(qs, job, open_flavors, node_short)
        self.failed_like[like] = self.waiting[job.id]
        return _WAIT

    def _admit(self, qs: _QueueState, job: PendingJob, flavor: str, level: int | None,
               total: list[int]) -> bool:
        """Place ``job`` on ``flavor``'s nodes and charge it; False if it fits on no nodes."""
        placement = self._place(flavor, job, level)
        if placement is None:
            return False
        account = qs.accounts[flavor]
        account.add(total)
        self.nodes.take(placement, job.per_rank)
        self.changes += 1
        if self.tenants is not None:
            self.tenants.admitted(job, total)
        self.admit.append(Admit(job=job.id, queue=qs.queue.name, flavor=flavor,
                                nodes=_expand(placement, self.nodes.names),
                                borrowing=account.borrowing()))
        return True

    def _place(self, flavor: str, job: PendingJob, level: int | None) -> Placement | None:
        shape = (flavor, job.ranks, job.per_rank, level, job.topology_required)
        if shape in self.failed_shapes:
            return None
        placement = self.nodes.place(flavor, job.ranks, job.per_rank, level,
                                     job.topology_required)
        if placement is None:
            self.failed_shapes.add(shape)
        return placement

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
                   open_flavors: list[str], why: dict[str, str], total: list[int],
                   no_nodes: str) -> WaitCode:
        """The code for a job that fits on some node but was neither admitted nor nominated."""
        if all(any(total[r] > qs.accounts[f].most(r) for r in range(len(total)))
               for f in flavors):
            return "ExceedsMaxQuota"
        if not open_flavors:
            return "HeldForStarvingJob"
        short = [f for f in open_flavors if why[f] is no_nodes]
        if not short:
            return "WaitingForQuota"
        if job.topology is not None and any(
                self.nodes.place(f, job.ranks, job.per_rank, None, False) is not None
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
        usage, size = account.usage, len(self.space)
        nominal = tuple(max(0, account.nominal[r] - usage[r]) for r in range(size))
        borrow = tuple(max(0, account.available(r) - nominal[r]) for r in range(size))
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
            cands = self.victims[key] = preempt.Candidates(account, [
                preempt.Victim(job, account, self._placement_of(job),
                               self._rank(job.priority, job.attained_service))
                for job in self.running.get(key, ())], len(self.space))
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

    def _eligible(self, qs: _QueueState, job: PendingJob, flavor: str
                  ) -> tuple[list[preempt.Selection], list[preempt.Selection]]:
        """Candidates of the job's own queue and of the other queues of its cohort tree."""
        q = qs.queue
        mine = self._rank(job.priority, job.attained_service)
        within = self._within(q)
        own = []
        if within != "Never":
            mode = "newer" if within == "LowerOrNewerEqualPriority" else "lower"
            sel = self._candidates(q.name, flavor).select(mine, job.created_at, mode)
            if not sel.empty():
                own.append(sel)
        others = []
        if q.cohort is not None and q.reclaim_within_cohort != "Never" and qs.root is not None:
            mode = "lower" if q.reclaim_within_cohort == "LowerPriority" else "any"
            for other in self.trees[qs.root]:
                account = other.accounts.get(flavor)
                if (other is qs or account is None or (other.queue.name, flavor) not in self.running
                        or not account.borrowing()):
                    continue  # Kueue reclaims only from queues above their nominal quota
                sel = self._candidates(other.queue.name, flavor).select(mine, job.created_at,
                                                                        mode)
                if not sel.empty():
                    others.append(sel)
        return own, others

    def _nominate(self, qs: _QueueState, job: PendingJob, flavor: str, level: int | None,
                  total: list[int]) -> bool:
        # Victims chosen earlier in the cycle in this quota tree count as gone for the search
        # (Kueue: a cycle's preemption targets are removed before a later entry is checked),
        # so a second preemptor does not take more victims than it needs.
        departing = self.departing.get((qs.scope, flavor), {})
        for account, amount in departing.items():
            account.remove(amount)
        try:
            found = self._find_victims(qs, job, flavor, level, total)
        finally:
            for account, amount in departing.items():
                account.add(amount)
        if found is None:
            return False
        chosen, placement = found
        self._commit_nomination(qs, job, flavor, total, placement, [v for v, _ in chosen])
        for v, reason in chosen:
            self.victims[(v.job.queue, v.job.flavor)].take(v)
            if not v.job.preempting:
                self.preempt.append(Preempt(job=v.job.id, by=job.id, reason=reason))
        self.nominated[job.id] = tuple(v.job.id for v, _ in chosen)
        self.waiting[job.id] = self._numbers(
            "WaitingForVictims", f"waiting for {len(chosen)} preempted job(s) to stop", qs,
            [flavor], total)
        return True

    def _find_victims(self, qs: _QueueState, job: PendingJob, flavor: str, level: int | None,
                      total: list[int]) -> tuple[preempt.Chosen, Placement] | None:
        own, others = self._eligible(qs, job, flavor)
        account = qs.accounts[flavor]
        if not self._could_fit(account, flavor, total, own + others):
            return None

        def quota_fits(allow_borrowing: bool) -> bool:
            return account.fits(total, allow_borrowing)

        def place() -> Placement | None:
            return self.nodes.place(flavor, job.ranks, job.per_rank, level,
                                    job.topology_required)

        sim = preempt.Simulation(self.nodes, quota_fits, place, job.per_rank, job.ranks)
        short = account.short(total) or [r for r, v in enumerate(total) if v > 0]
        return self._search(qs, job, sim, account, total, own, others, short)

    def _could_fit(self, account: QuotaAccount, flavor: str, total: list[int],
                   selections: list[preempt.Selection]) -> bool:
        """Whether removing every candidate could possibly make room on the nodes."""
        pool = self.nodes.pools.get(flavor)
        if not selections or pool is None:
            return False
        freed = _freed(selections, len(total))
        return all(v <= t + f for v, t, f in zip(total, pool.total, freed, strict=True) if v > 0)

    def _search(self, qs: _QueueState, job: PendingJob, sim: preempt.Simulation,
                account: QuotaAccount, total: list[int], own: list[preempt.Selection],
                others: list[preempt.Selection], short: list[int]
                ) -> tuple[preempt.Chosen, Placement] | None:
        """Kueue's GetTargets: which candidates, and whether the preemptor may borrow."""
        size = len(total)
        own_freed, others_freed = _freed(own, size), _freed(others, size, borrowed_only=True)

        def minimal(selections: list[preempt.Selection], allow_borrowing: bool,
                    threshold: int | None = None) -> tuple[preempt.Chosen, Placement] | None:
            cohort = others_freed if selections is not own else [0] * size
            if not _quota_bound(account, total, own_freed, cohort, allow_borrowing):
                return None
            candidates: Iterable[preempt.Victim] = preempt.merged(selections)
            if threshold is not None and not under_nominal:
                limit = threshold
                candidates = (v for v in candidates
                              if v.account is account or v.job.priority < limit)
            return preempt.minimal(sim, account, candidates, short, allow_borrowing, threshold)

        usage, nominal = account.usage, account.nominal
        under_nominal = all(usage[r] < nominal[r] for r in short)
        if not others:
            return minimal(own, True)
        every = own + others
        q = qs.queue
        threshold = None
        if q.borrow_within_cohort == "LowerPriority":
            threshold = job.priority
            if q.borrow_max_priority is not None and q.borrow_max_priority < threshold:
                threshold = q.borrow_max_priority + 1
        if self.policy.fair_sharing:
            if not _quota_bound(account, total, own_freed, others_freed, True):
                return None
            return preempt.fair(sim, self.quota, account, total, every, short, threshold)
        if threshold is not None:
            return minimal(every, True, threshold)
        if under_nominal:
            found = minimal(every, False)
            if found is not None:
                return found
        return minimal(own, True) if own else None

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
        size = len(total)
        for v in victims:
            if v.account is not None:
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
            reason = self._queue_reason(qs)
            size = len(self.space)
            caps = [self.nodes.healthy.get(f, [0] * size) for f in qs.accounts]
            largest = [max((c[r] for c in caps), default=0) for r in range(size)]
            pending = self.snap.pending
            keys = (qs.waiting if self.tenants is None
                    else self.tenants.remaining(qs.queue.name, qs.waiting))
            self.waiting.update(dict.fromkeys([pending[k[4]].id for k in keys], reason))
            if all(map(le, qs.most, largest)):  # every job fits some node
                continue
            for key in keys:
                job = pending[key[4]]
                if not all(map(le, job.per_rank, largest)):
                    self.waiting[job.id] = self._never_fits(job, list(qs.accounts))

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
