"""Free node capacity, indexed for best-fit, and topology-aware gang placement.

Each flavor's schedulable nodes form a `Pool` whose nodes sit in buckets by free amount of the
pool's primary resource (whole GPUs; else a vendor's resource; else whole CPUs for CPU-only
nodes), so a one-node placement looks at a handful of buckets instead of every node. Amounts
are integer vectors over the snapshot's resources, so every comparison is exact. A gang that
needs several nodes is packed into the fewest topology domains: the smallest domain (best fit)
at the lowest allowed level that holds it, then, level by level, the largest sub-domains first
with the last one chosen best-fit (of equally good ones, the first: the lowest node index).

What depends on the nodes alone (names, flavors, topology groups, the pools of an idle cluster)
is a `Layout`, memoized on the snapshot's nodes (the same node objects give the same layout), so
a cycle costs what its running and pending jobs cost, not what the node count does.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterable, Sequence
from operator import ge, le, lt

from stoker.sched.types import DEFAULT_SPACE, UNLIMITED, Node, ResourceSpace
from stoker.spec.resources import BYTES, bucket_unit

MANY = 1 << 62
_ENDLESS = UNLIMITED // 2  # this much free or more: the pool's last bucket (`Pool.key`)
Vec = list[int]
Placement = list[tuple[int, int]]  # (node index, ranks on it)


def ranks_fitting(free: Sequence[int], per_rank: Sequence[int]) -> int:
    """How many ranks of ``per_rank`` fit in ``free``."""
    k = MANY
    r = 0
    for p in per_rank:  # indexing is faster here than zip or enumerate
        if p > 0:
            n = free[r] // p
            if n < k:
                k = n
        r += 1  # noqa: SIM113 (faster than enumerate here)
    return k if k > 0 else 0


def times(per_rank: Sequence[int], ranks: int) -> Vec:
    """What ``ranks`` ranks of ``per_rank`` need."""
    return [p * ranks for p in per_rank]


GROUP_SIZE = 16
MAX_SHAPES = 16  # rank shapes whose group capacities a pool keeps


class Pool:
    """The schedulable nodes of one flavor, bucketed by free primary resource.

    Nodes also fall in *groups* (one innermost topology domain, cut in chunks of GROUP_SIZE
    nodes), whose capacity for a given rank shape is computed once and then kept up to date node
    by node as capacity is charged: a gang spanning nodes then looks at groups, not at every
    node.

    In a cycle's copy, a charged node's bucket and group capacities are brought up to date only
    when they are next read (`flush_buckets`, `flush_caps`): a victim search gives a node
    capacity and takes it back many times, what cancels out then costs nothing, and group
    capacities are only read for gangs.
    """

    __slots__ = ("buckets", "cache", "dirty", "free", "group_of", "groups", "keys", "moved",
                 "primary", "total", "unit")

    def __init__(self, primary: int, size: int, unit: int = 1) -> None:
        self.primary = primary
        self.unit = unit  # how much of the primary resource one bucket spans
        self.buckets: dict[int, list[int]] = {}  # sorted node indices
        self.keys: list[int] = []
        self.total: Vec = [0] * size
        self.groups: dict[Group, list[int]] = {}
        self.cache: dict[tuple[int, ...], dict[Group, int]] = {}  # per rank shape
        # A cycle's copy: nodes charged since their bucket was last right, with that bucket;
        # nodes charged since the group capacities were last right, with what they had free
        # then; and the cycle's free vectors and node groups.
        self.moved: dict[int, int] = {}
        self.dirty: dict[int, Vec] = {}
        self.free: list[Vec] = []
        self.group_of: list[Group] = []

    def flush_buckets(self) -> None:
        """Put the nodes charged since in their buckets."""
        if not self.moved:
            return
        free, primary, unit = self.free, self.primary, self.unit
        for i, old in self.moved.items():
            amount = free[i][primary]
            new = MANY if amount >= _ENDLESS else amount // unit  # self.key(amount), inlined
            if new != old:
                self.move(i, old, new)
        self.moved.clear()

    def flush_caps(self) -> None:
        """Bring the group capacities up to date with the nodes charged since."""
        if not self.dirty:
            return
        free = self.free
        for i, was in self.dirty.items():
            f = free[i]
            if f == was:  # given back as much as was taken
                continue
            g = self.group_of[i]
            for shape, caps in self.cache.items():
                n = caps.get(g, 0) + ranks_fitting(f, shape) - ranks_fitting(was, shape)
                if n:
                    caps[g] = n
                else:
                    caps.pop(g, None)
        self.dirty.clear()

    def key(self, amount: int) -> int:
        """The bucket of a node with ``amount`` of the primary resource free."""
        return MANY if amount >= _ENDLESS else amount // self.unit

    def copy(self, free: list[Vec] | None = None, group_of: list[Group] | None = None) -> Pool:
        """A copy to charge in one cycle, on the cycle's ``free`` vectors (the groups are
        shared: they never change)."""
        pool = Pool.__new__(Pool)
        pool.primary, pool.unit, pool.groups = self.primary, self.unit, self.groups
        pool.buckets = {k: bucket.copy() for k, bucket in self.buckets.items()}
        pool.keys = self.keys.copy()
        pool.total = self.total.copy()
        pool.cache = {shape: caps.copy() for shape, caps in self.cache.items()}
        pool.moved, pool.dirty = {}, {}
        pool.free = free if free is not None else []
        pool.group_of = group_of if group_of is not None else []
        return pool

    def insert(self, i: int, free: Vec, group: Group) -> None:
        k = self.key(free[self.primary])
        bucket = self.buckets.get(k)
        if bucket is None:
            bucket = self.buckets[k] = []
            insort(self.keys, k)
        insort(bucket, i)
        total = self.total
        for r, f in enumerate(free):
            total[r] += f
        self.groups.setdefault(group, []).append(i)

    def move(self, i: int, old: int, new: int) -> None:
        """Move node ``i`` from bucket ``old`` to bucket ``new``."""
        bucket = self.buckets[old]
        del bucket[bisect_left(bucket, i)]
        if not bucket:
            del self.buckets[old]
            del self.keys[bisect_left(self.keys, old)]
        target = self.buckets.get(new)
        if target is None:
            target = self.buckets[new] = []
            insort(self.keys, new)
        insort(target, i)

    def max_free(self) -> int:
        """An upper bound of the free primary resource on any one node (as loose as a bucket:
        what the next bucket starts at)."""
        self.flush_buckets()
        return (self.keys[-1] + 1) * self.unit if self.keys else 0

    def best_node(self, need: Sequence[int], free: list[Vec]) -> int | None:
        """The node with the least free primary resource that holds ``need`` (best fit)."""
        start = bisect_left(self.keys, self.key(need[self.primary]))
        for k in self.keys[start:]:
            for i in self.buckets[k]:
                if all(map(ge, free[i], need)):
                    return i
        return None

    def rank_bound(self, per_rank: Sequence[int]) -> int:
        """At most how many ranks of ``per_rank`` fit in the pool (from the buckets alone)."""
        p = per_rank[self.primary]
        if p <= 0:
            return MANY
        total = 0
        unit = self.unit
        for k in self.keys[bisect_left(self.keys, self.key(p)):]:
            total += len(self.buckets[k]) * (((k + 1) * unit - 1) // p)
        return total

    def group_capacity(self, per_rank: Sequence[int], free: list[Vec]) -> dict[Group, int]:
        """How many ranks of ``per_rank`` each group holds (groups holding none left out),
        computed with ``free`` the first time and kept up to date by `Nodes.charge` after."""
        shape = tuple(per_rank)
        caps = self.cache.get(shape)
        if caps is None:
            while len(self.cache) >= MAX_SHAPES:  # forget the oldest
                del self.cache[next(iter(self.cache))]
            caps = self.cache[shape] = {
                g: n for g, members in self.groups.items()
                if (n := sum(ranks_fitting(free[i], per_rank) for i in members))}
        return caps

    def copy_caps(self, kept: Pool, per_rank: Sequence[int], base: list[Vec],
                  free: list[Vec], changed: Iterable[int], group: list[Group]) -> dict[Group, int]:
        """This pool's group capacities for ``per_rank`` from those of ``kept`` (the pool this
        one was copied from, whose nodes were ``base``), adjusted for the nodes ``changed``
        since (now ``free``)."""
        caps = kept.group_capacity(per_rank, base).copy()
        for i in changed:
            g = group[i]
            n = caps.get(g, 0) + ranks_fitting(free[i], per_rank) - ranks_fitting(base[i],
                                                                                  per_rank)
            if n:
                caps[g] = n
            else:
                caps.pop(g, None)
        self.cache[tuple(per_rank)] = caps
        return caps


Group = tuple[tuple[str, ...], int]  # (innermost domain path, chunk)


class Layout:
    """What the scheduler derives from the nodes alone: names, flavors, topology groups, the
    largest node of each flavor, and each flavor's Pool with every node free."""

    def __init__(self, nodes: Sequence[Node], topology: tuple[str, ...],
                 space: ResourceSpace = DEFAULT_SPACE) -> None:
        self.space = space
        self.size = size = len(space)
        self.names = [n.name for n in nodes]
        self.index = {n.name: i for i, n in enumerate(nodes)}
        self.capacity_of: list[Vec] = [list(n.capacity) for n in nodes]  # never charged
        self.domains = [n.domains for n in nodes]
        self.depth = len(topology)
        self.levels = {name: i for i, name in enumerate(topology)} | {"node": len(topology)}
        self.capacity: dict[str, Vec] = {}  # per flavor: the largest node, for "never fits"
        self.healthy: dict[str, Vec] = {}  # the same over schedulable nodes only
        for n in nodes:
            for largest in (self.capacity, self.healthy) if n.schedulable else (self.capacity,):
                cap = largest.setdefault(n.flavor, [0] * size)
                largest[n.flavor] = list(map(max, cap, n.capacity))
        self.group: list[Group] = []
        self.prefixes: dict[Group, tuple[tuple[str, ...], ...]] = {}  # its domain at each level
        counts: dict[tuple[str, ...], int] = {}
        for domains in self.domains:
            k = counts.get(domains, 0)
            counts[domains] = k + 1
            group = (domains, k // GROUP_SIZE)
            self.group.append(group)
            if group not in self.prefixes:
                self.prefixes[group] = tuple(domains[: lvl + 1] for lvl in range(len(domains)))
        self.pools: dict[str, Pool] = {}
        self.members: dict[str, list[int]] = {}  # the nodes of each pool
        self.pool_of: list[str | None] = []  # None: not schedulable
        for i, n in enumerate(nodes):
            if not n.schedulable:
                self.pool_of.append(None)
                continue
            pool = self.pools.get(n.flavor)
            if pool is None:
                primary = self._primary(self.capacity[n.flavor])
                pool = self.pools[n.flavor] = Pool(primary, size,
                                                   bucket_unit(space.names[primary]))
            pool.insert(i, self.capacity_of[i], self.group[i])
            self.members.setdefault(n.flavor, []).append(i)
            self.pool_of.append(n.flavor)

    def _primary(self, largest: Vec) -> int:
        """The resource a flavor's nodes are bucketed by: GPUs, else the first vendor's
        resource they have, else CPUs, else the first they limit."""
        names = self.space.names
        vendors = [r for r in range(3, self.size) if names[r] not in BYTES]
        candidates: list[int] = [0, *vendors, 1, *range(2, self.size)]
        for r in candidates:
            if 0 < largest[r] < UNLIMITED:
                return r
        return 1


class Nodes:
    """Free capacity of every node, and a Pool per flavor, for one cycle: a copy of what the
    running jobs leave free (``free``, whose vectors are never changed, and ``pools``). Group
    capacities a gang needs are computed in ``pools`` (so later cycles start with them)."""

    def __init__(self, static: Layout, free: list[Vec], pools: dict[str, Pool]) -> None:
        self.names = static.names
        self.index = static.index
        self.domains = static.domains
        self.depth = static.depth
        self.levels = static.levels
        self.capacity = static.capacity
        self.healthy = static.healthy
        self.group = static.group
        self.prefixes = static.prefixes
        self._base = free.copy()
        self.free: list[Vec] = free.copy()  # copy-on-write: a vector is copied when charged
        self._kept = pools
        self.pools = {flavor: pool.copy(self.free, static.group) for flavor, pool in pools.items()}
        self._pool_of = static.pool_of
        self._changed: list[int] = []  # nodes charged this cycle

    def pool_of(self, i: int) -> Pool | None:
        flavor = self._pool_of[i]
        return None if flavor is None else self.pools[flavor]

    def charge(self, i: int, per_rank: Sequence[int], count: int) -> None:
        """Take ``count`` ranks of ``per_rank`` on node ``i`` (negative count gives back)."""
        f = was = self.free[i]
        if f is self._base[i]:  # the base vector never changes: it serves as `dirty`'s copy
            f = self.free[i] = f.copy()
            self._changed.append(i)
        flavor = self._pool_of[i]
        if flavor is None:
            for r, p in enumerate(per_rank):
                if p:
                    f[r] -= p * count
            return
        pool = self.pools[flavor]
        moved = pool.moved
        if i not in moved:
            amount = was[pool.primary]
            moved[i] = MANY if amount >= _ENDLESS else amount // pool.unit  # pool.key(amount)
        if pool.cache and i not in pool.dirty:
            pool.dirty[i] = was if was is not f else f.copy()
        t = pool.total
        r = 0
        for p in per_rank:  # indexing is faster here than enumerate
            if p:
                d = p * count
                f[r] -= d
                t[r] -= d
            r += 1  # noqa: SIM113 (faster than enumerate here)

    def take(self, placement: Iterable[tuple[int, int]], per_rank: Sequence[int]) -> None:
        for i, count in placement:
            self.charge(i, per_rank, count)

    def give(self, placement: Iterable[tuple[int, int]], per_rank: Sequence[int]) -> None:
        for i, count in placement:
            self.charge(i, per_rank, -count)

    def holds(self, placement: Iterable[tuple[int, int]], per_rank: Sequence[int]) -> bool:
        """Whether the free capacity still holds ``placement``."""
        free = self.free
        return all(ranks_fitting(free[i], per_rank) >= count for i, count in placement)

    # --- placement ---

    def place(self, flavor: str, ranks: int, per_rank: Sequence[int], level: int | None,
              required: bool) -> Placement | None:
        """Where ``ranks`` ranks of ``per_rank`` fit on ``flavor``'s nodes, or None.

        ``level`` indexes the topology (``self.depth`` is the node itself); ``required``
        forbids spreading beyond one domain of that level.
        """
        pool = self.pools.get(flavor)
        if pool is None:
            return None
        need = times(per_rank, ranks)
        if any(map(lt, pool.total, need)):
            return None
        if ranks == 1 or all(map(le, need, self.healthy[flavor])):  # one node may hold all
            pool.flush_buckets()
            one = pool.best_node(need, self.free)
            if one is not None:
                return [(one, ranks)]
            if ranks == 1 or pool.rank_bound(per_rank) < ranks:
                return None
        # Else no node can: the buckets are not needed (the group capacities below are
        # exact), so the changes since they were last right may still cancel out.
        if required and level == self.depth:
            return None
        pool.flush_caps()
        caps = pool.cache.get(tuple(per_rank))
        if caps is None:
            changed = [i for i in self._changed if self._pool_of[i] == flavor]
            caps = pool.copy_caps(self._kept[flavor], per_rank, self._base, self.free, changed,
                                  self.group)
        if sum(caps.values()) < ranks:
            return None
        start = self.depth - 1 if level is None or level >= self.depth else level
        for lvl in range(start, -1, -1):
            domain = self._best_domain(caps, ranks, lvl)
            if domain is not None:
                groups = [g for g in caps if self.prefixes[g][lvl] == domain]
                return self._spread(self._candidates(pool, groups, per_rank), ranks, lvl + 1)
            if required:
                return None
        return self._spread(self._candidates(pool, list(caps), per_rank), ranks, 0)

    def _best_domain(self, caps: dict[Group, int], ranks: int, lvl: int
                     ) -> tuple[str, ...] | None:
        """The domain at ``lvl`` with the least capacity that still holds ``ranks``."""
        by_domain: dict[tuple[str, ...], int] = {}
        prefixes = self.prefixes
        for g, cap in caps.items():
            key = prefixes[g][lvl]
            by_domain[key] = by_domain.get(key, 0) + cap
        fitting = [(cap, key) for key, cap in by_domain.items() if cap >= ranks]
        return min(fitting)[1] if fitting else None

    def _candidates(self, pool: Pool, groups: list[Group], per_rank: Sequence[int]
                    ) -> list[tuple[int, int]]:
        out = []
        for g in groups:
            for i in pool.groups[g]:
                n = ranks_fitting(self.free[i], per_rank)
                if n > 0:
                    out.append((i, n))
        return out

    def _spread(self, cands: list[tuple[int, int]], ranks: int, lvl: int) -> Placement:
        """Place ``ranks`` on ``cands`` using the fewest domains at ``lvl`` and below."""
        if lvl >= self.depth:
            groups = [(n, i, [(i, n)]) for i, n in cands]
        else:
            by_domain: dict[str, list[tuple[int, int]]] = {}
            for i, n in cands:
                by_domain.setdefault(self.domains[i][lvl], []).append((i, n))
            groups = [(sum(n for _, n in members), members[0][0], members)
                      for members in by_domain.values()]
        groups.sort(key=lambda g: (-g[0], g[1]))
        out: Placement = []
        remaining = ranks
        j = 0
        while remaining > 0:
            # The smallest group that holds the rest closes the placement (best fit; of equal
            # ones the first, which starts at the lowest node index) ...
            last = j
            while last + 1 < len(groups) and groups[last + 1][0] >= remaining:
                last += 1
            while last > j and groups[last - 1][0] == groups[last][0]:
                last -= 1
            cap, _, members = groups[last]
            if cap >= remaining:
                take = remaining
            else:  # ... otherwise the largest group is filled and we go on.
                cap, _, members = groups[j]
                take = cap
                j += 1
            if lvl >= self.depth:
                out.append((members[0][0], take))
            else:
                out.extend(self._spread(members, take, lvl + 1))
            remaining -= take
        return out
