"""Victim search: the fewest running jobs whose removal lets a pending job fit.

Follows Kueue's classical and fair-sharing preemption: candidates are removed one by one, in
victim order, until the preemptor fits in quota and on nodes; then, in reverse order, every
victim whose return still leaves room is spared.

Victim order is Kueue's grouping, then an order within each group. Jobs already being preempted
come first; then jobs of other queues whose quota the preemptor has a better claim to through the
cohort tree (hierarchical reclaim), then other queues' borrowers, then the preemptor's own
queue. Within a group, ``VictimOrder``: "stoker" (the default) loses the least work: lower
priority, then the least progress since the last checkpoint, then the most recently started;
"kueue": lower priority, then the most recently started (admitted).
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from operator import add, sub

from stoker.sched.nodes import Nodes, Placement, ranks_fitting
from stoker.sched.quota import QuotaAccount, QuotaTree
from stoker.sched.types import PreemptReason, RunningJob, VictimOrder

# A job's preemption rank, lower is preempted first: its priority, then the policy's order
# (`stoker.sched.cycle._Cycle._rank`).
Rank = tuple[int, float]


class Victim:
    """A running job as a preemption candidate."""

    __slots__ = ("account", "gone", "job", "key", "nodes", "per_rank", "placement", "rank",
                 "total")

    def __init__(self, job: RunningJob, account: QuotaAccount | None, placement: Placement,
                 rank: Rank, order: VictimOrder = "stoker") -> None:
        self.job = job
        self.account = account
        self.placement = placement
        self.nodes = [i for i, _ in placement]  # the indices of its nodes
        self.per_rank = per_rank = job.per_rank
        n = len(job.nodes)
        self.total = [p * n for p in per_rank]
        self.rank = rank
        self.gone = False
        progress = job.progress if order == "stoker" else 0.0
        self.key = (not job.preempting, rank, progress, -job.started_at)


def victim_key(v: Victim) -> tuple[bool, Rank, float, float]:
    return v.key


class Candidates:
    """The running jobs of one queue on one flavor, in victim order, with running totals.

    What a cycle changes (the victims it chose) is undone by `reset`, so a later cycle over the
    same running jobs reuses the candidates (`SchedulerCache.take_victims`)."""

    __slots__ = ("account", "freed", "gone", "gone_freed", "jobs", "largest", "preempting",
                 "ranks", "taken", "victims")

    def __init__(self, account: QuotaAccount | None, victims: list[Victim], size: int,
                 jobs: Sequence[RunningJob] = ()) -> None:
        self.account = account
        self.jobs = jobs  # the running jobs they were made of, in snapshot order
        victims.sort(key=victim_key)  # the ones being preempted already sort first
        first = 0
        while first < len(victims) and victims[first].job.preempting:
            first += 1
        self.preempting = victims[:first]
        self.victims = victims[first:]
        self.ranks = [v.rank for v in self.victims]
        last = [0] * size
        self.freed: list[list[int]] = [last]
        for v in self.victims:
            last = list(map(add, last, v.total))
            self.freed.append(last)
        totals = [v.total for v in victims]
        self.largest = (list(map(max, *totals)) if len(totals) > 1
                        else list(totals[0]) if totals else [0] * size)
        # Victims chosen this cycle: their positions, sorted, and their running totals.
        self.gone: list[int] = []
        self.gone_freed: list[list[int]] = [[0] * size]
        self.taken: list[Victim] = []

    def reusable(self, account: QuotaAccount | None, jobs: Sequence[RunningJob]) -> bool:
        """Whether these are the candidates of ``jobs`` (the same objects) on ``account``."""
        mine = self.jobs
        return self.account is account and len(mine) == len(jobs) and all(
            a is b for a, b in zip(mine, jobs, strict=True))

    def reset(self) -> None:
        """Forget the victims chosen in an earlier cycle."""
        if self.taken:
            for v in self.taken:
                v.gone = False
            self.taken = []
            self.gone = []
            self.gone_freed = self.gone_freed[:1]

    def take(self, v: Victim) -> None:
        """Mark ``v`` as chosen this cycle: it is no candidate any more."""
        v.gone = True
        self.taken.append(v)
        if v.job.preempting:
            return
        at = bisect_left(self.victims, v.key, key=victim_key)
        n = bisect_left(self.gone, at)
        self.gone.insert(n, at)
        del self.gone_freed[n + 1:]  # the running totals from there on change
        for i in self.gone[n:]:
            self.gone_freed.append(list(map(add, self.gone_freed[-1], self.victims[i].total)))

    def freed_before(self, cut: int) -> list[int]:
        """What the victims before position ``cut`` hold, less those already chosen."""
        total, gone = self.freed[cut], self.gone_freed[bisect_left(self.gone, cut)]
        return list(map(sub, total, gone))

    def select(self, mine: Rank, created: float, mode: str) -> Selection:
        """Those a job of rank ``mine`` may preempt: mode "lower", "newer" (lower, or equal
        and created later) or "any"."""
        if mode == "any":
            cut = len(self.victims)
        elif mode == "newer":
            cut = bisect_right(self.ranks, mine)
        else:
            cut = bisect_left(self.ranks, mine)
        early = [v for v in self.preempting if mode == "any" or v.rank < mine
                 or (mode == "newer" and v.rank == mine and v.job.created_at > created)]
        return Selection(self, cut, early, mine, created, mode == "newer")


class Selection:
    """A lazily filtered prefix of a Candidates list, and a bound on what it can free."""

    __slots__ = ("cached", "cands", "created", "cut", "early", "mine", "newer")

    def __init__(self, cands: Candidates, cut: int, early: list[Victim], mine: Rank,
                 created: float, newer: bool) -> None:
        self.cands = cands
        self.cut = cut
        self.early = early
        self.mine = mine
        self.created = created
        self.newer = newer
        self.cached: dict[bool, list[int]] = {}

    def __iter__(self) -> Iterator[Victim]:
        yield from self.stopping()
        yield from self.running()

    def stopping(self) -> Iterator[Victim]:
        """The candidates already being preempted."""
        for v in self.early:
            if not v.gone:
                yield v

    def running(self) -> Iterator[Victim]:
        """The other candidates."""
        for v in islice(self.cands.victims, self.cut):
            if v.gone or (self.newer and v.rank == self.mine
                          and v.job.created_at <= self.created):
                continue
            yield v

    def empty(self) -> bool:
        return not self.early and self.cut == 0

    def bound(self, borrowed_only: bool = False) -> list[int]:
        """At most what preempting all of them frees; with ``borrowed_only``, at most what
        their queue borrows (plus one job: victims are taken only while it borrows)."""
        cached = self.cached.get(borrowed_only)
        if cached is not None:
            return cached
        out = self.cands.freed_before(self.cut)
        for v in self.early:
            if not v.gone:
                out = list(map(add, out, v.total))
        account = self.cands.account
        if borrowed_only and account is not None:
            usage, nominal = account.usage, account.nominal
            for r in range(len(out)):
                borrowed = max(0, usage[r] - nominal[r])
                out[r] = min(out[r], borrowed + self.cands.largest[r])
        self.cached[borrowed_only] = out
        return out


def merged(selections: Sequence[Selection]) -> Iterator[Victim]:
    """All selected candidates in victim order."""
    if len(selections) == 1:
        return iter(selections[0])
    return heapq.merge(*selections, key=victim_key)


def ordered(groups: Sequence[Sequence[Selection]]) -> Iterator[Victim]:
    """Kueue's candidate order: the jobs already being preempted of every group, then the
    others, group by group (hierarchical reclaim, other queues, the preemptor's own queue),
    each in victim order."""
    present = [group for group in groups if group]
    if len(present) == 1 and (len(present[0]) == 1 or not any(s.early for s in present[0])):
        return merged(present[0])
    return _grouped(groups)


def _grouped(groups: Sequence[Sequence[Selection]]) -> Iterator[Victim]:
    for group in groups:
        yield from _merge([sel.stopping() for sel in group])
    for group in groups:
        yield from _merge([sel.running() for sel in group])


def _merge(iterators: list[Iterator[Victim]]) -> Iterator[Victim]:
    if len(iterators) == 1:
        return iterators[0]
    return heapq.merge(*iterators, key=victim_key)


class OtherQueue:
    """Another queue of the preemptor's cohort tree, as the preemptor sees it: ``path``, its
    account and the cohorts above it below the lowest cohort it shares with the preemptor; and
    whether the preemptor has the better claim to the quota it borrows there (``advantage``:
    the preemptor's request fits in the quota of its own side of that cohort)."""

    __slots__ = ("advantage", "path")

    def __init__(self, path: list[QuotaAccount], advantage: bool) -> None:
        self.path = path
        self.advantage = advantage

    def borrows(self, resources: Sequence[int]) -> bool:
        """Whether it still takes quota from the shared cohort: its account and every cohort on
        its side uses more than its own quota (Kueue: not within nominal)."""
        return all(a.over(resources) for a in self.path)


Chosen = list[tuple[Victim, PreemptReason]]


class Simulation:
    """Removes and restores candidates in the quota tree and the node state, and tells whether
    the preemptor fits (quota first, then nodes).

    Checks whose answer is known are skipped. Removing victims only lowers usage, so once the
    quota fits it fits until a victim is restored. Removing victims only adds free capacity,
    so after a failed check the preemptor (one rank or a gang) can newly fit only if a node
    freed since holds one of its ranks (whether a placement exists depends only on how many
    ranks each node holds); restoring a victim takes capacity only from its own nodes, so a
    placement found stays valid unless it uses one of them.
    """

    def __init__(self, nodes: Nodes, quota_fits: Callable[[bool], bool],
                 place: Callable[[], Placement | None], per_rank: Sequence[int],
                 ranks: int, failed: bool = False) -> None:
        self.nodes = nodes
        self.quota_fits = quota_fits
        self.place = place
        self.per_rank = per_rank
        self.ranks = ranks
        # The last node check failed (still true: capacity only grew); ``failed``: the caller
        # knows that the preemptor does not fit on the nodes as they are.
        self.failed = failed
        self.quota_ok = False  # the quota fits (and will until a victim is restored)
        self.freed: list[int] = []  # nodes given capacity since that check
        self.found: Placement | None = None  # a placement valid in the current node state
        self.found_on: set[int] = set()

    def remove(self, v: Victim) -> None:
        if v.account is not None:
            v.account.remove(v.total)
        self.nodes.give(v.placement, v.per_rank)
        if self.failed:
            self.freed.extend(v.nodes)

    def restore(self, v: Victim) -> None:
        self.quota_ok = False
        if v.account is not None:
            v.account.add(v.total)
        self.nodes.take(v.placement, v.per_rank)
        if self.found is not None and not self.found_on.isdisjoint(v.nodes):
            self.found = None

    def fits(self, allow_borrowing: bool) -> Placement | None:
        if not self.quota_ok:
            if not self.quota_fits(allow_borrowing):
                return None
            self.quota_ok = True
        if self.found is not None:
            return self.found
        if self.failed:
            free, per_rank = self.nodes.free, self.per_rank
            if not any(ranks_fitting(free[i], per_rank) for i in self.freed):
                self.freed.clear()
                return None
        placement = self.place()
        self.failed = placement is None
        self.freed.clear()
        self.found = placement
        self.found_on = {i for i, _ in placement} if placement is not None else set()
        return placement

    def fill_back(self, chosen: Chosen, allow_borrowing: bool, placement: Placement
                  ) -> tuple[Chosen, Placement]:
        """Spare every victim (latest first, except the last) that is not needed after all.

        ``placement`` is where the preemptor fits with every chosen victim gone.
        """
        kept = chosen[-1:]
        if len(chosen) == 1:
            self.restore(chosen[0][0])
            return kept, placement
        for v, reason in reversed(chosen[:-1]):
            self.restore(v)
            spared = self.fits(allow_borrowing)
            if spared is not None:
                placement = spared
                continue
            self.remove(v)
            kept.append((v, reason))
        for v, _ in kept:
            self.restore(v)
        return kept, placement

    def undo(self, chosen: Chosen) -> None:
        for v, _ in chosen:
            self.restore(v)


def borrowing_in(account: QuotaAccount | None, resources: Sequence[int]) -> bool:
    if account is None or account.parent is None:
        return False
    usage, nominal = account.usage, account.nominal
    return any(usage[r] > nominal[r] for r in resources)


def minimal(sim: Simulation, own: QuotaAccount, candidates: Iterable[Victim],
            others: dict[QuotaAccount, OtherQueue], resources: Sequence[int],
            allow_borrowing: bool, threshold: int | None) -> tuple[Chosen, Placement] | None:
    """Kueue's minimalPreemptions, with node fit added to quota fit.

    A job of another queue is taken only while that queue still borrows from the cohort the two
    share. With ``allow_borrowing`` (the preemptor may end above its nominal quota) only jobs
    the preemptor has the hierarchical advantage over, or of priority below the
    borrow-within-cohort ``threshold``, are taken.
    """
    chosen: Chosen = []
    for v in candidates:
        reason: PreemptReason = "within_queue"
        if v.account is not own:
            other = others.get(v.account) if v.account is not None else None
            if other is None or not other.borrows(resources):
                continue
            if other.advantage:
                reason = "reclaim"
            elif threshold is not None and v.job.priority < threshold:
                reason = "borrow"
            elif allow_borrowing:
                continue
            else:
                reason = "reclaim"
        sim.remove(v)
        chosen.append((v, reason))
        placement = sim.fits(allow_borrowing)
        if placement is not None:
            return sim.fill_back(chosen, allow_borrowing, placement)
    sim.undo(chosen)
    return None


def fair(sim: Simulation, tree: QuotaTree, own: QuotaAccount, total: Sequence[int],
         selections: Sequence[Selection], resources: Sequence[int], threshold: int | None
         ) -> tuple[Chosen, Placement] | None:
    """Kueue's fair-sharing preemption: take from the queue with the highest share first.

    A job of another queue is a victim only if the preemptor's queue, with the new job, ends
    with a share no higher than the victim's queue without the victim (rule S2-a), or strictly
    below the victim queue's share before (S2-b), or if the victim is below the
    borrow-within-cohort priority threshold. ``selections`` holds one selection per queue.
    """
    queues: dict[int, Iterator[Victim]] = {}
    accounts: dict[int, QuotaAccount] = {}
    for sel in selections:
        account = sel.cands.account
        if account is not None:
            queues[id(account)] = iter(sel)
            accounts[id(account)] = account
    shares = {k: tree.queue_share(a) for k, a in accounts.items()}
    mine = tree.queue_share(own, total)
    chosen: Chosen = []
    while queues:
        k = max(queues, key=shares.__getitem__)
        v = next(queues[k], None)
        if v is None:
            del queues[k]
            continue
        if v.account is own:
            sim.remove(v)
            chosen.append((v, "within_queue"))
            shares[k] = tree.queue_share(own)
            mine = tree.queue_share(own, total)
        else:
            if not borrowing_in(v.account, resources):
                del queues[k]
                continue
            after = tree.queue_share(accounts[k], [-t for t in v.total])
            below = threshold is not None and v.job.priority < threshold
            if not (below or mine <= after or mine < shares[k]):
                continue
            sim.remove(v)
            shares[k] = after
            chosen.append((v, "fair_share"))
        placement = sim.fits(True)
        if placement is not None:
            return sim.fill_back(chosen, True, placement)
    sim.undo(chosen)
    return None
