"""What the running jobs hold: free node capacity and each queue's usage, kept between cycles.

A cycle starts from the capacity every node has left and the quota every queue uses, given the
running jobs. Summing that up costs every running rank, every cycle; instead it is kept (for one
node layout) and updated by the jobs that started or stopped since the last cycle, found by
walking the running list against the last one (`_difference`), or as sets when they differ
much. Jobs are matched by object identity (running jobs are immutable, and the ones kept are
referenced, so an identity is never reused while kept), then, for jobs rebuilt as new objects,
by what decides their hold (id, queue, flavor, nodes, per-rank resources). A gang's group
capacities (`Pool.group_capacity`) are kept too, per rank shape. Every kept value is a sum of
integer amounts over the jobs that hold it, or a count: exact, so it depends only on the set of
running jobs, never on their order or on the cycles before: keeping it is a memo, and
`schedule` stays a pure function of its snapshot. (A job listed twice holds once.)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from itertools import compress, islice
from itertools import count as counting
from operator import is_not, sub

from stoker.sched.nodes import Layout, Placement, Pool, Vec, ranks_fitting
from stoker.sched.types import Resources, RunningJob


class Held:
    """The running jobs' hold on nodes and quota (see the module docstring)."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.last: list[RunningJob] = []  # the running jobs of the last update
        self.count: Counter[int] = Counter()  # how often each is listed there
        self.jobs: dict[int, tuple[RunningJob, Placement]] = {}  # id -> (job, its nodes)
        self.on_node: dict[int, dict[int, tuple[Resources, int]]] = {}  # node -> job id -> ranks
        self.free: list[Vec] = layout.capacity_of.copy()  # vectors replaced, never changed
        self.pools: dict[str, Pool] = {f: pool.copy() for f, pool in layout.pools.items()}
        self.taken = {flavor: [0] * layout.size for flavor in layout.pools}  # on each pool
        self.usage: dict[tuple[str, str], Vec] = {}  # (queue, flavor) -> its jobs' totals

    def update(self, running: Sequence[RunningJob]) -> None:
        """Make the held state that of ``running``."""
        found = self._changes(running)
        self.last = list(running)
        if found is None:
            return
        gone, added, current = found
        if gone and added:
            self._rekey(current, gone, added)
        nodes: set[int] = set()
        tally = _Tally()
        for k in gone:
            job, placement = self.jobs.pop(k)
            tally.count(job, placement, -1, self.layout.pool_of, nodes)
            for at, _ in placement:
                del self.on_node[at][k]
        index = self.layout.index
        for k in added:
            job = current[k]
            counts: dict[int, int] = {}
            for name in job.nodes:
                node = index.get(name)
                if node is not None:
                    counts[node] = counts.get(node, 0) + 1
            placement = list(counts.items())
            self.jobs[k] = (job, placement)
            for at, count in placement:
                self.on_node.setdefault(at, {})[k] = (job.per_rank, count)
            tally.count(job, placement, 1, self.layout.pool_of, nodes)
        self._settle(tally)
        self._refresh_nodes(nodes)

    def _changes(self, running: Sequence[RunningJob]
                 ) -> tuple[set[int], set[int], dict[int, RunningJob]] | None:
        """The jobs no longer running and the jobs started (by identity), and the started
        ones by identity; None if nothing changed. A job listed twice counts once."""
        moved = _difference(self.last, running)
        if moved is None:  # too different: compare as sets
            listed = Counter(map(id, running))
            gone = self.count.keys() - listed.keys()
            added = listed.keys() - self.count.keys()
            self.count = listed
            current: dict[int, RunningJob] = {}
            for job in reversed(running):  # callers append jobs that started: found at once
                if id(job) in added:
                    current[id(job)] = job
                    if len(current) == len(added):
                        break
        else:
            out, into = moved
            delta = Counter(map(id, into))
            delta.subtract(map(id, out))
            current = {id(job): job for job in into}
            gone, added = set(), set()
            for k, d in delta.items():
                if not d:
                    continue
                before = self.count.get(k, 0)
                after = before + d
                if after:
                    self.count[k] = after
                else:
                    del self.count[k]
                if not before:
                    added.add(k)
                elif not after:
                    gone.add(k)
        return (gone, added, current) if gone or added else None

    def _rekey(self, current: dict[int, RunningJob], gone: set[int], added: set[int]) -> None:
        """Jobs rebuilt as new objects holding the same (a caller that updates progress each
        cycle) are kept under their new identity instead of being taken off and put back."""
        was = {_hold(self.jobs[k][0]): k for k in gone}
        for k in list(added):
            old = was.pop(_hold(current[k]), None)
            if old is None:
                continue
            placement = self.jobs.pop(old)[1]
            self.jobs[k] = (current[k], placement)
            for at, _ in placement:
                on = self.on_node[at]
                on[k] = on.pop(old)
            gone.discard(old)
            added.discard(k)

    def _settle(self, tally: _Tally) -> None:
        """Add what the jobs counted in ``tally`` hold to the pools and the queues' usage."""
        for (flavor, per_rank), ranks in tally.on_pools.items():
            if ranks:
                _add(self.taken[flavor], per_rank, ranks)
        usage = self.usage
        for (queue, flavor, per_rank), ranks in tally.by_queue.items():
            if not ranks:
                continue
            key = (queue, flavor)
            total = usage.get(key)
            if total is None:
                total = usage[key] = [0] * len(per_rank)
            _add(total, per_rank, ranks)
            if not any(total):
                del usage[key]

    def _refresh_nodes(self, nodes: set[int]) -> None:
        layout = self.layout
        pools: set[str] = set()
        for i in nodes:
            free = layout.capacity_of[i].copy()  # a new vector: the old one never changes
            for p, count in self.on_node.get(i, {}).values():
                _add(free, p, -count)
            flavor = layout.pool_of[i]
            if flavor is not None:
                pool = self.pools[flavor]
                was = self.free[i]
                old, new = pool.key(was[pool.primary]), pool.key(free[pool.primary])
                if new != old:
                    pool.move(i, old, new)
                g = layout.group[i]
                for shape, caps in pool.cache.items():
                    n = caps.get(g, 0) + ranks_fitting(free, shape) - ranks_fitting(was, shape)
                    if n:
                        caps[g] = n
                    else:
                        caps.pop(g, None)
                pools.add(flavor)
            self.free[i] = free
        for flavor in pools:
            self.pools[flavor].total = list(map(sub, layout.pools[flavor].total,
                                                self.taken[flavor]))


class _Tally:
    """Ranks held, by rank shape: on each pool, and by each queue on each flavor (summed first,
    then added once per shape: a shape's ranks are many jobs' when a cycle starts afresh)."""

    __slots__ = ("by_queue", "on_pools")

    def __init__(self) -> None:
        self.on_pools: dict[tuple[str, Resources], int] = {}
        self.by_queue: dict[tuple[str, str, Resources], int] = {}

    def count(self, job: RunningJob, placement: Placement, sign: int,
              pool_of: list[str | None], nodes: set[int]) -> None:
        """Count (``sign`` 1) or take away (-1) what ``job`` holds; add its nodes to
        ``nodes``."""
        per_rank, on_pools = job.per_rank, self.on_pools
        for at, ranks in placement:
            nodes.add(at)
            flavor = pool_of[at]
            if flavor is not None:
                key = (flavor, per_rank)
                on_pools[key] = on_pools.get(key, 0) + sign * ranks
        mine = (job.queue, job.flavor, per_rank)
        self.by_queue[mine] = self.by_queue.get(mine, 0) + sign * len(job.nodes)


LOOK_AHEAD = 8  # how far `_difference` looks for a job taken out or put in
MOST_MOVED = 64  # beyond this many jobs out of place, comparing as sets is cheaper


def _difference(old: list[RunningJob], new: Sequence[RunningJob]
                ) -> tuple[list[RunningJob], list[RunningJob]] | None:
    """The jobs of ``old`` not in their place in ``new``, and those of ``new`` not in their
    place in ``old`` (by identity), when the two lists differ by a few jobs taken out, put in or
    replaced (what a caller that keeps its running jobs in a list does); None when they differ
    more. Runs of the same objects are skipped at C speed."""
    out: list[RunningJob] = []
    into: list[RunningJob] = []
    i = j = 0
    n, m = len(new), len(old)
    while i < n and j < m:
        same = next(compress(counting(), map(is_not, islice(new, i, None), islice(old, j, None))),
                    min(n - i, m - j))
        i += same
        j += same
        if i == n or j == m:
            break
        d = next((d for d in range(j + 1, min(m, j + LOOK_AHEAD)) if old[d] is new[i]), None)
        if d is not None:
            out.extend(old[j:d])
            j = d
            continue
        e = next((e for e in range(i + 1, min(n, i + LOOK_AHEAD)) if new[e] is old[j]), None)
        if e is not None:
            into.extend(new[i:e])
            i = e
        else:  # one job in place of another
            out.append(old[j])
            into.append(new[i])
            i += 1
            j += 1
        if len(out) + len(into) > MOST_MOVED:
            return None
    out.extend(old[j:])
    into.extend(new[i:])
    return None if len(out) + len(into) > MOST_MOVED else (out, into)


def _add(v: Vec, amount: Resources, times: int) -> None:
    """``v += times * amount`` (exact: integers)."""
    r = 0
    for p in amount:  # indexing is faster here than enumerate
        if p:
            v[r] += p * times
        r += 1  # noqa: SIM113 (faster than enumerate here)


def _hold(job: RunningJob) -> tuple[object, ...]:
    """What decides a running job's hold."""
    return (job.id, job.queue, job.flavor, job.nodes, job.per_rank)
