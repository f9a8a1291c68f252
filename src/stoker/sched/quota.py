"""Quota accounting with Kueue's semantics: nominal quota, borrowing and lending limits, cohorts.

Each queue and cohort has one `Account` per flavor; accounts form a tree (queue -> cohort ->
parent cohort). As in Kueue's resource nodes:

- ``subtree`` is an account's own nominal quota plus what its children lend to it
  (``child.subtree - child.guaranteed``);
- ``guaranteed`` is the part of ``subtree`` it does not lend (``subtree - lending_limit``, or 0
  without a lending limit);
- ``usage`` of a queue is what its jobs use; a cohort's usage is what its children use beyond
  their guaranteed quota;
- ``available`` is the unused guaranteed quota plus what the parent has available, capped by the
  borrowing limit;
- ``height`` is 0 for a queue and one more than its highest child for a cohort: how far up the
  tree a request borrows is the height of the lowest subtree that holds it (Kueue's borrowing
  level, `Account.borrow_level`).

Amounts are 3-lists indexed by resource: 0 gpus, 1 cpus, 2 memory.
"""

from __future__ import annotations

from collections.abc import Sequence

from stoker.sched.types import UNLIMITED, Cohort, FlavorQuota, Queue

EPS = 1e-9
RESOURCES = (0, 1, 2)
Vec = list[float]


class Account:
    """One queue's or cohort's quota and usage of one flavor."""

    __slots__ = ("borrow", "children", "guaranteed", "height", "lend", "limited", "name",
                 "nominal", "parent", "subtree", "usage")

    def __init__(self, name: str, quota: FlavorQuota | None, parent: Account | None) -> None:
        self.name = name
        self.parent = parent
        self.children: list[Account] = []
        self.nominal: Vec = list(quota.nominal) if quota else [0.0, 0.0, 0.0]
        self.borrow: Vec = list(quota.borrowing_limit) if quota else [UNLIMITED] * 3
        self.lend: Vec = list(quota.lending_limit) if quota else [UNLIMITED] * 3
        self.subtree: Vec = [0.0, 0.0, 0.0]
        self.guaranteed: Vec = [0.0, 0.0, 0.0]
        self.usage: Vec = [0.0, 0.0, 0.0]
        self.height = 0
        # Resources this account can ever run short of; usage is tracked for these only.
        self.limited: tuple[int, ...] = RESOURCES
        if parent is not None:
            parent.children.append(self)

    def root(self) -> Account:
        node = self
        while node.parent is not None:
            node = node.parent
        return node

    def available(self, r: int) -> float:
        """How much more of resource ``r`` this account may use, borrowing included."""
        if self.parent is None:
            return self.subtree[r] - self.usage[r]
        from_parent = self.parent.available(r)
        g = self.guaranteed[r]
        if self.borrow[r] < UNLIMITED:
            stored = self.subtree[r] - g
            used = max(0.0, self.usage[r] - g)
            from_parent = min(stored - used + self.borrow[r], from_parent)
        return max(0.0, g - self.usage[r]) + from_parent

    def most(self, r: int) -> float:
        """The most of resource ``r`` this account could ever use: `available` with nothing
        of its tree in use (Kueue's maximum capacity of a queue)."""
        if self.parent is None:
            return self.subtree[r]
        from_parent = self.parent.most(r)
        g = self.guaranteed[r]
        if self.borrow[r] < UNLIMITED:
            from_parent = min(self.subtree[r] - g + self.borrow[r], from_parent)
        return g + from_parent

    def add(self, amount: Sequence[float]) -> None:
        for r in self.limited:
            v = amount[r]
            node: Account | None = self
            while node is not None and v > 0:
                local = node.guaranteed[r] - node.usage[r]
                node.usage[r] += v
                v = v - local if local > 0 else v
                node = node.parent

    def remove(self, amount: Sequence[float]) -> None:
        for r in self.limited:
            v = amount[r]
            node: Account | None = self
            while node is not None and v > 0:
                stored = node.usage[r] - node.guaranteed[r]
                node.usage[r] -= v
                v = min(v, stored)
                node = node.parent

    def fits(self, amount: Sequence[float], allow_borrowing: bool = True) -> bool:
        for r in self.limited:
            v = amount[r]
            if v <= 0:
                continue
            if not allow_borrowing and self.usage[r] + v > self.nominal[r] + EPS:
                return False
            if v > self.available(r) + EPS:
                return False
        return True

    def needs_borrowing(self, amount: Sequence[float]) -> bool:
        for r in self.limited:
            if amount[r] > 0 and self.usage[r] + amount[r] > self.nominal[r] + EPS:
                return True
        return False

    def borrowing(self) -> bool:
        if self.parent is None:
            return False
        return any(self.usage[r] > self.nominal[r] + EPS for r in self.limited)

    def short(self, amount: Sequence[float]) -> list[int]:
        """The resources of ``amount`` that do not fit."""
        return [r for r in self.limited
                if amount[r] > 0 and amount[r] > self.available(r) + EPS]

    def over(self, resources: Sequence[int]) -> bool:
        """Whether this subtree uses more than its own quota of any of ``resources``."""
        return any(self.usage[r] > self.subtree[r] + EPS for r in resources)

    def lowest_fitting(self, r: int, v: float) -> tuple[int, bool]:
        """Kueue's FindHeightOfLowestSubtreeThatFits: the height of the lowest subtree (this
        account, or a cohort above it) whose own quota holds ``v`` more of resource ``r``, and
        whether that subtree lies below the root of the tree."""
        if self.parent is None or self.usage[r] + v <= self.subtree[r] + EPS:
            return 0, self.parent is not None
        remaining = v - max(0.0, self.guaranteed[r] - self.usage[r])
        node = self.parent
        while node.parent is not None and node.usage[r] + remaining > node.subtree[r] + EPS:
            remaining -= max(0.0, node.guaranteed[r] - node.usage[r])
            node = node.parent
        return node.height, node.parent is not None

    def borrow_level(self, amount: Sequence[float]) -> int:
        """How far up the tree ``amount`` borrows: 0 within the nominal quota, else the height
        of the lowest subtree that holds it (the highest over the resources)."""
        level = 0
        for r in self.limited:
            if amount[r] > 0:
                level = max(level, self.lowest_fitting(r, amount[r])[0])
        return level

    def advantage(self, amount: Sequence[float]) -> list[bool]:
        """For each cohort above this queue's account (parent first): whether ``amount`` fits in
        the quota of this account or of a cohort below that one (Kueue's hierarchical
        advantage over the other queues under that cohort)."""
        resources = [r for r in self.limited if amount[r] > 0]
        fits = all(self.usage[r] + amount[r] <= self.subtree[r] + EPS for r in resources)
        remaining = [max(0.0, amount[r] - max(0.0, self.guaranteed[r] - self.usage[r]))
                     for r in RESOURCES]
        out = []
        node = self.parent
        while node is not None:
            out.append(fits)
            fits = fits or all(node.usage[r] + remaining[r] <= node.subtree[r] + EPS
                               for r in resources)
            for r in resources:
                remaining[r] = max(0.0, remaining[r]
                                   - max(0.0, node.guaranteed[r] - node.usage[r]))
            node = node.parent
        return out


def _finish(node: Account) -> None:
    """Compute subtree and guaranteed quota, and the height, bottom-up."""
    for child in node.children:
        _finish(child)
    node.height = max((child.height + 1 for child in node.children), default=0)
    for r in RESOURCES:
        total = node.nominal[r] + sum(c.subtree[r] - c.guaranteed[r] for c in node.children)
        node.subtree[r] = total
        node.guaranteed[r] = max(0.0, total - node.lend[r]) if node.lend[r] < UNLIMITED else 0.0


class QuotaTree:
    """All accounts: ``queues[name][flavor]`` and the cohort accounts above them."""

    def __init__(self, queues: Sequence[Queue], cohorts: Sequence[Cohort]) -> None:
        self.cohort_parent = {c.name: c.parent for c in cohorts}
        self.cohort_quota = {c.name: {q.flavor: q for q in c.quotas} for c in cohorts}
        self.cohort_weight = {c.name: c.fair_weight for c in cohorts}
        self.cohorts: dict[tuple[str, str], Account] = {}
        self.queues: dict[str, dict[str, Account]] = {}
        self.weights: dict[str, float] = {}
        self._lendable_cache: dict[str, Vec] = {}
        for queue in queues:
            self.weights[queue.name] = queue.fair_weight
            self.queues[queue.name] = {
                fq.flavor: Account(queue.name, fq, self._cohort(queue.cohort, fq.flavor))
                for fq in queue.quotas
            }
        for c in cohorts:  # cohort quota is shared even if no queue below uses that flavor
            for flavor in self.cohort_quota[c.name]:
                self._cohort(c.name, flavor)
        roots = {a.root() for accounts in self.queues.values() for a in accounts.values()}
        roots |= {a.root() for a in self.cohorts.values()}
        for root in roots:
            _finish(root)
        for accounts in self.queues.values():
            for a in accounts.values():
                a.limited = tuple(r for r in RESOURCES if a.available(r) < UNLIMITED / 2)
        self.accounts = [a for accounts in self.queues.values() for a in accounts.values()]
        self.accounts += self.cohorts.values()

    def reset(self) -> None:
        """No usage anywhere (as built)."""
        for a in self.accounts:
            a.usage = [0.0, 0.0, 0.0]

    def _cohort(self, name: str | None, flavor: str, seen: frozenset[str] = frozenset()
                ) -> Account | None:
        if name is None or name in seen:
            return None
        key = (name, flavor)
        if key not in self.cohorts:
            parent = self._cohort(self.cohort_parent.get(name), flavor, seen | {name})
            quota = self.cohort_quota.get(name, {}).get(flavor)
            self.cohorts[key] = Account(name, quota, parent)
        return self.cohorts[key]

    def root_of(self, cohort: str | None) -> str | None:
        """The top cohort of the tree ``cohort`` belongs to."""
        seen = set()
        while cohort is not None and cohort not in seen:
            seen.add(cohort)
            parent = self.cohort_parent.get(cohort)
            if parent is None:
                return cohort
            cohort = parent
        return cohort

    def account(self, queue: str, flavor: str) -> Account | None:
        return self.queues.get(queue, {}).get(flavor)

    # --- fair sharing: weighted dominant-resource share ---

    def share(self, account: Account, extra: Sequence[float] | None = None) -> tuple[float, ...]:
        """Shares from the top of the tree down to ``account``'s queue (lower goes first).

        Each node's share is max over resources of (usage above its quota, summed over flavors)
        / (what the whole tree holds of that resource), divided by the node's weight: Kueue's
        dominant resource share. Compared lexicographically, the tuples pick the least-served
        child at every level of the cohort tree. ``extra`` is added to ``account`` first.
        """
        if account.parent is None:
            return (0.0,)
        if account.parent.parent is None:  # a flat cohort: only the queue's own share
            return (self.queue_share(account, extra),)
        if extra is not None:
            account.add(extra)
        try:
            path: list[float] = []
            node: Account | None = account.parent
            lendable = self._lendable(account.name)
            while node is not None and node.parent is not None:
                path.append(self._weighted(self._cohort_accounts(node.name), lendable,
                                           self.cohort_weight.get(node.name, 1.0)))
                node = node.parent
            path.reverse()
            path.append(self.queue_share(account, None))
            return tuple(path)
        finally:
            if extra is not None:
                account.remove(extra)

    def queue_share(self, account: Account, extra: Sequence[float] | None = None) -> float:
        """The weighted dominant-resource share of ``account``'s queue, with ``extra`` (which
        may be negative) added to ``account``."""
        accounts = self.queues[account.name].values()
        lendable = self._lendable(account.name)
        worst = 0.0
        for r in RESOURCES:
            if lendable[r] >= UNLIMITED / 2:
                continue  # not limited anywhere in the tree: no share of it to speak of
            borrowed = 0.0
            for a in accounts:
                over = a.usage[r] - a.subtree[r]
                if extra is not None and a is account:
                    over += extra[r]
                if over > 0:
                    borrowed += over
            if borrowed > EPS and lendable[r] > 0:
                worst = max(worst, borrowed / lendable[r])
        weight = self.weights[account.name]
        if worst == 0.0:
            return 0.0
        return worst / weight if weight > 0 else float("inf")

    def _weighted(self, accounts: Sequence[Account], lendable: Vec, weight: float) -> float:
        worst = 0.0
        for r in RESOURCES:
            borrowed = sum(max(0.0, a.usage[r] - a.subtree[r]) for a in accounts)
            if borrowed > EPS and lendable[r] > 0:
                worst = max(worst, borrowed / lendable[r])
        if worst == 0.0:
            return 0.0
        return worst / weight if weight > 0 else float("inf")

    def _lendable(self, queue: str) -> Vec:
        """What the trees of ``queue``'s flavors hold in total, per resource."""
        cached = self._lendable_cache.get(queue)
        if cached is None:
            cached = [0.0, 0.0, 0.0]
            for flavor_account in self.queues[queue].values():
                top = flavor_account.root()
                for r in RESOURCES:
                    cached[r] += top.subtree[r]
            self._lendable_cache[queue] = cached
        return cached

    def _cohort_accounts(self, name: str) -> list[Account]:
        return [a for (cohort, _), a in self.cohorts.items() if cohort == name]
