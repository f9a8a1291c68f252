"""What the running jobs hold: free node capacity and each queue's usage, kept between cycles.

A cycle starts from the capacity every node has left and the quota every queue uses, given the
running jobs. Summing that up costs every running rank, every cycle; instead it is kept (for one
node layout) and updated by the jobs that started or stopped since the last cycle, found by
object identity: running jobs are immutable, and the ones kept are referenced, so an identity is
never reused while it is kept. Every kept value is an exactly rounded sum (``math.fsum``) over the
jobs that hold it, so it depends only on the set of running jobs, never on their order or on the
cycles before: keeping it is a memo, and `schedule` stays a pure function of its snapshot.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import fsum
from operator import itemgetter

from stoker.sched.nodes import Layout, Placement, Pool, Vec, key_of
from stoker.sched.types import Resources, RunningJob

_COLUMNS = (itemgetter(0), itemgetter(1), itemgetter(2))


class Held:
    """The running jobs' hold on nodes and quota (see the module docstring)."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.ids: set[int] = set()
        self.jobs: dict[int, tuple[RunningJob, Placement]] = {}  # id -> (job, its nodes)
        self.on_node: dict[int, dict[int, tuple[Resources, int]]] = {}  # node -> job id -> ranks
        self.free: list[Vec] = layout.capacity_of.copy()  # vectors replaced, never changed
        self.pools: dict[str, Pool] = {f: pool.copy() for f, pool in layout.pools.items()}
        self.by_queue: dict[tuple[str, str], dict[int, Vec]] = {}  # (queue, flavor) -> id -> total
        self.usage: dict[tuple[str, str], Vec] = {}

    def update(self, running: Sequence[RunningJob]) -> None:
        """Make the held state that of ``running``."""
        ids = set(map(id, running))
        if ids == self.ids:
            return
        gone, added = self.ids - ids, ids - self.ids
        nodes: set[int] = set()
        queues: set[tuple[str, str]] = set()
        for k in gone:
            job, placement = self.jobs.pop(k)
            for i, _ in placement:
                del self.on_node[i][k]
                nodes.add(i)
            key = (job.queue, job.flavor)
            del self.by_queue[key][k]
            queues.add(key)
        index = self.layout.index
        for job in running:
            k = id(job)
            if k not in added:
                continue
            added.discard(k)  # a job listed twice is held once
            counts: dict[int, int] = {}
            for name in job.nodes:
                at = index.get(name)
                if at is not None:
                    counts[at] = counts.get(at, 0) + 1
            placement = list(counts.items())
            self.jobs[k] = (job, placement)
            for at, count in placement:
                self.on_node.setdefault(at, {})[k] = (job.per_rank, count)
                nodes.add(at)
            key = (job.queue, job.flavor)
            n = len(job.nodes)
            self.by_queue.setdefault(key, {})[k] = [job.per_rank[r] * n for r in range(3)]
            queues.add(key)
        self.ids = ids
        self._refresh_nodes(nodes)
        for key in queues:
            totals = self.by_queue[key].values()
            self.usage[key] = [fsum(map(column, totals)) for column in _COLUMNS]

    def _refresh_nodes(self, nodes: set[int]) -> None:
        layout = self.layout
        pools: set[str] = set()
        for i in nodes:
            held = self.on_node.get(i, {}).values()
            cap = layout.capacity_of[i]
            free = [cap[r] - fsum(p[r] * count for p, count in held) for r in range(3)]
            flavor = layout.pool_of[i]
            if flavor is not None:
                pool = self.pools[flavor]
                old, new = key_of(self.free[i][pool.primary]), key_of(free[pool.primary])
                if new != old:
                    pool.move(i, old, new)
                pools.add(flavor)
            self.free[i] = free
        for flavor in pools:
            frees = [self.free[i] for i in layout.members[flavor]]
            self.pools[flavor].total = [fsum(map(column, frees)) for column in _COLUMNS]


_kept: list[Held] = []


def held(layout: Layout, running: Sequence[RunningJob]) -> Held:
    """The Held state of ``running`` on ``layout``, from the one kept by the last cycle. The
    caller owns it (a cycle running at the same time builds its own) until it calls `keep`."""
    try:
        state = _kept.pop()
    except IndexError:
        state = None
    if state is None or state.layout is not layout:
        state = Held(layout)
    state.update(running)
    return state


def keep(state: Held) -> None:
    """Keep ``state`` for the next cycle (it must not be changed any more by this one)."""
    _kept.clear()
    _kept.append(state)
