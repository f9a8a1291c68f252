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

A queue's quota that leaves a resource out (UNLIMITED) does not limit it, and lends none of it:
such an account keeps its whole (unlimited) subtree as guaranteed, so it never counts as quota
its cohort could lend to others (Kueue: a resource a ClusterQueue does not cover adds nothing to
its cohort). A cohort owns none of a resource its own quota leaves out.

Amounts are lists of integers indexed by resource (the snapshot's `ResourceSpace`: 0 gpu, 1 cpu,
2 memory, then the others), so sums and comparisons are exact.

A queue with several resource groups charges a job on flavor F's nodes to F's account for the
resources of F's group and to the first flavor of each other group for theirs: `Combined`
makes those accounts one, so the cycle sees one account per flavor either way.
"""

from __future__ import annotations

from collections.abc import Sequence

from stoker.sched.types import UNLIMITED, Cohort, FlavorQuota, Queue

Vec = list[int]
Indices = Sequence[int]


class Account:
    """One queue's or cohort's quota and usage of one flavor."""

    __slots__ = ("borrow", "children", "guaranteed", "height", "lend", "limited", "name",
                 "nominal", "parent", "subtree", "usage")

    def __init__(self, name: str, quota: FlavorQuota | None, parent: Account | None,
                 size: int) -> None:
        self.name = name
        self.parent = parent
        self.children: list[Account] = []
        unlimited = [UNLIMITED] * size
        self.nominal: Vec = list(quota.nominal) if quota else [0] * size
        self.borrow: Vec = list(quota.borrowing_limit or unlimited) if quota else unlimited
        self.lend: Vec = list(quota.lending_limit or unlimited) if quota else unlimited
        self.subtree: Vec = [0] * size
        self.guaranteed: Vec = [0] * size
        self.usage: Vec = [0] * size
        self.height = 0
        # Resources this account can ever run short of; usage is tracked for these only.
        self.limited: tuple[int, ...] = tuple(range(size))
        if parent is not None:
            parent.children.append(self)

    def accounts(self) -> list[Account]:
        """The accounts whose usage this one is (itself)."""
        return [self]

    def root(self) -> Account:
        node = self
        while node.parent is not None:
            node = node.parent
        return node

    def available(self, r: int) -> int:
        """How much more of resource ``r`` this account may use, borrowing included."""
        parent = self.parent
        if parent is None:
            return self.subtree[r] - self.usage[r]
        if parent.parent is None:  # the root's, without a call
            from_parent = parent.subtree[r] - parent.usage[r]
        else:
            from_parent = parent.available(r)
        g = self.guaranteed[r]
        used = self.usage[r]
        if self.borrow[r] < UNLIMITED:
            stored = self.subtree[r] - g
            room = stored - (used - g if used > g else 0) + self.borrow[r]
            if room < from_parent:
                from_parent = room
        return (g - used if g > used else 0) + from_parent

    def most(self, r: int) -> int:
        """The most of resource ``r`` this account could ever use: `available` with nothing
        of its tree in use (Kueue's maximum capacity of a queue)."""
        if self.parent is None:
            return self.subtree[r]
        from_parent = self.parent.most(r)
        g = self.guaranteed[r]
        if self.borrow[r] < UNLIMITED:
            from_parent = min(self.subtree[r] - g + self.borrow[r], from_parent)
        return g + from_parent

    def add(self, amount: Sequence[int], resources: Indices = ()) -> None:
        """Use ``amount`` (of ``resources`` only, if given)."""
        for r in resources or self.limited:
            v = amount[r]
            node: Account | None = self
            while node is not None and v > 0:
                usage = node.usage
                local = node.guaranteed[r] - usage[r]
                usage[r] += v
                if local > 0:
                    v -= local
                node = node.parent

    def remove(self, amount: Sequence[int], resources: Indices = ()) -> None:
        for r in resources or self.limited:
            v = amount[r]
            node: Account | None = self
            while node is not None and v > 0:
                usage = node.usage
                stored = usage[r] - node.guaranteed[r]
                usage[r] -= v
                if stored < v:
                    v = stored
                node = node.parent

    def fits(self, amount: Sequence[int], allow_borrowing: bool = True,
             resources: Indices = ()) -> bool:
        for r in resources or self.limited:
            v = amount[r]
            if v <= 0:
                continue
            if not allow_borrowing and self.usage[r] + v > self.nominal[r]:
                return False
            if v > self.available(r):
                return False
        return True

    def needs_borrowing(self, amount: Sequence[int], resources: Indices = ()) -> bool:
        for r in resources or self.limited:
            if amount[r] > 0 and self.usage[r] + amount[r] > self.nominal[r]:
                return True
        return False

    def borrowing(self, resources: Indices = ()) -> bool:
        if self.parent is None:
            return False
        usage, nominal = self.usage, self.nominal
        for r in resources or self.limited:  # noqa: SIM110 (a loop is faster than any())
            if usage[r] > nominal[r]:
                return True
        return False

    def over(self, resources: Sequence[int]) -> bool:
        """Whether this subtree uses more than its own quota of any of ``resources``."""
        usage, subtree = self.usage, self.subtree
        for r in resources:  # noqa: SIM110 (a loop is faster than any())
            if usage[r] > subtree[r]:
                return True
        return False

    def lowest_fitting(self, r: int, v: int) -> tuple[int, bool]:
        """Kueue's FindHeightOfLowestSubtreeThatFits: the height of the lowest subtree (this
        account, or a cohort above it) whose own quota holds ``v`` more of resource ``r``, and
        whether that subtree lies below the root of the tree."""
        if self.parent is None or self.usage[r] + v <= self.subtree[r]:
            return 0, self.parent is not None
        remaining = v - max(0, self.guaranteed[r] - self.usage[r])
        node = self.parent
        while node.parent is not None and node.usage[r] + remaining > node.subtree[r]:
            remaining -= max(0, node.guaranteed[r] - node.usage[r])
            node = node.parent
        return node.height, node.parent is not None

    def borrow_level(self, amount: Sequence[int], resources: Indices = ()) -> int:
        """How far up the tree ``amount`` borrows: 0 within the nominal quota, else the height
        of the lowest subtree that holds it (the highest over the resources)."""
        level = 0
        for r in resources or self.limited:
            if amount[r] > 0:
                level = max(level, self.lowest_fitting(r, amount[r])[0])
        return level

    def advantage(self, amount: Sequence[int], covered: Indices = ()) -> list[bool]:
        """For each cohort above this queue's account (parent first): whether ``amount`` fits in
        the quota of this account or of a cohort below that one (Kueue's hierarchical
        advantage over the other queues under that cohort)."""
        resources = [r for r in covered or self.limited if amount[r] > 0]
        fits = all(self.usage[r] + amount[r] <= self.subtree[r] for r in resources)
        remaining = [max(0, amount[r] - max(0, self.guaranteed[r] - self.usage[r]))
                     for r in range(len(amount))]
        out = []
        node = self.parent
        while node is not None:
            out.append(fits)
            fits = fits or all(node.usage[r] + remaining[r] <= node.subtree[r]
                               for r in resources)
            for r in resources:
                remaining[r] = max(0, remaining[r]
                                   - max(0, node.guaranteed[r] - node.usage[r]))
            node = node.parent
        return out

    def short(self, amount: Sequence[int], resources: Indices = ()) -> list[int]:
        """The resources of ``amount`` that do not fit."""
        return [r for r in resources or self.limited
                if amount[r] > 0 and amount[r] > self.available(r)]


class Combined:
    """The accounts a queue with several resource groups charges a job on one flavor's nodes
    to: that flavor's own, for the resources its group covers, and the first flavor's of each
    other group, for theirs. It answers as one `Account` (a resource no group covers is
    unlimited); the parts stay shared with the queue's other flavors."""

    __slots__ = ("limited", "name", "owners", "parent", "parts", "primary")

    def __init__(self, parts: list[tuple[Account, tuple[int, ...]]]) -> None:
        self.parts = parts  # (account, the resources it is charged for)
        self.primary = parts[0][0]
        self.name = self.primary.name
        self.parent = self.primary.parent
        size = len(self.primary.nominal)
        owners: list[Account | None] = [None] * size
        for account, resources in parts:
            for r in resources:
                owners[r] = account
        self.owners = owners  # the account each resource is charged to (None: unlimited)
        self.limited = tuple(r for r, a in enumerate(owners) if a is not None)

    def accounts(self) -> list[Account]:
        """The accounts whose usage this one is (its parts')."""
        return [a for a, _ in self.parts]

    def root(self) -> Account:
        return self.primary.root()

    def available(self, r: int) -> int:
        owner = self.owners[r]
        return UNLIMITED if owner is None else owner.available(r)

    def most(self, r: int) -> int:
        owner = self.owners[r]
        return UNLIMITED if owner is None else owner.most(r)

    def add(self, amount: Sequence[int], resources: Indices = ()) -> None:
        for account, covered in self.parts:
            account.add(amount, covered)

    def remove(self, amount: Sequence[int], resources: Indices = ()) -> None:
        for account, covered in self.parts:
            account.remove(amount, covered)

    def fits(self, amount: Sequence[int], allow_borrowing: bool = True,
             resources: Indices = ()) -> bool:
        return all(a.fits(amount, allow_borrowing, covered) for a, covered in self.parts)

    def needs_borrowing(self, amount: Sequence[int], resources: Indices = ()) -> bool:
        return any(a.needs_borrowing(amount, covered) for a, covered in self.parts)

    def borrowing(self, resources: Indices = ()) -> bool:
        return any(a.borrowing(covered) for a, covered in self.parts)

    def short(self, amount: Sequence[int], resources: Indices = ()) -> list[int]:
        return sorted(r for a, covered in self.parts for r in a.short(amount, covered))

    def over(self, resources: Sequence[int]) -> bool:
        return any(a.over([r for r in resources if r in covered]) for a, covered in self.parts)

    def lowest_fitting(self, r: int, v: int) -> tuple[int, bool]:
        owner = self.owners[r]
        return (0, self.parent is not None) if owner is None else owner.lowest_fitting(r, v)

    def borrow_level(self, amount: Sequence[int], resources: Indices = ()) -> int:
        return max(a.borrow_level(amount, covered) for a, covered in self.parts)

    def advantage(self, amount: Sequence[int], covered: Indices = ()) -> list[bool]:
        """Per cohort above: whether every part's resources fit below it."""
        each = [a.advantage(amount, part) for a, part in self.parts]
        return [all(column) for column in zip(*each, strict=False)]

    def _each(self, field: str, default: int) -> Vec:
        return [default if a is None else getattr(a, field)[r] for r, a in enumerate(self.owners)]

    @property
    def usage(self) -> Vec:
        return self._each("usage", 0)

    @property
    def nominal(self) -> Vec:
        return self._each("nominal", UNLIMITED)

    @property
    def borrow(self) -> Vec:
        return self._each("borrow", UNLIMITED)

    @property
    def subtree(self) -> Vec:
        return self._each("subtree", UNLIMITED)

    @property
    def guaranteed(self) -> Vec:
        return self._each("guaranteed", 0)


QuotaAccount = Account | Combined

def _finish(node: Account) -> None:
    """Compute subtree and guaranteed quota, and the height, bottom-up."""
    for child in node.children:
        _finish(child)
    node.height = max((child.height + 1 for child in node.children), default=0)
    for r in range(len(node.nominal)):
        total = node.nominal[r] + sum(c.subtree[r] - c.guaranteed[r] for c in node.children)
        node.subtree[r] = total
        if node.nominal[r] >= UNLIMITED:  # not limited, and nothing of it to lend
            node.guaranteed[r] = total
        else:
            node.guaranteed[r] = max(0, total - node.lend[r]) if node.lend[r] < UNLIMITED else 0


class QuotaTree:
    """All accounts: ``queues[name][flavor]`` (what a job on that flavor's nodes is charged to:
    an `Account`, or a `Combined` one in a queue with several resource groups), each queue's
    own accounts per flavor (``own``) and the cohort accounts above them."""

    def __init__(self, queues: Sequence[Queue], cohorts: Sequence[Cohort], size: int = 3
                 ) -> None:
        self.size = size  # how many resources
        self.cohort_parent = {c.name: c.parent for c in cohorts}
        self.cohort_quota = {c.name: {q.flavor: q for q in c.quotas} for c in cohorts}
        self.cohort_weight = {c.name: c.fair_weight for c in cohorts}
        self.cohorts: dict[tuple[str, str], Account] = {}
        self.own: dict[str, dict[str, Account]] = {}
        self.weights: dict[str, float] = {}
        self._lendable_cache: dict[str, Vec] = {}
        self._shared_cache: dict[str, list[int]] = {}
        for queue in queues:
            self.weights[queue.name] = queue.fair_weight
            self.own[queue.name] = {
                fq.flavor: Account(queue.name, fq, self._cohort(queue.cohort, fq.flavor), size)
                for fq in queue.quotas
            }
        for c in cohorts:  # cohort quota is shared even if no queue below uses that flavor
            for flavor in self.cohort_quota[c.name]:
                self._cohort(c.name, flavor)
        roots = {a.root() for accounts in self.own.values() for a in accounts.values()}
        roots |= {a.root() for a in self.cohorts.values()}
        for root in roots:
            _finish(root)
        for accounts in self.own.values():
            for a in accounts.values():
                a.limited = tuple(r for r in range(size) if a.available(r) < UNLIMITED // 2)
        self.queues: dict[str, dict[str, Account | Combined]] = {
            q.name: self._combined(q) if len(q.groups) > 1 else dict(self.own[q.name])
            for q in queues}
        self.accounts = [a for accounts in self.own.values() for a in accounts.values()]
        self.accounts += self.cohorts.values()

    def _combined(self, queue: Queue) -> dict[str, Account | Combined]:
        """Per flavor, what a job on its nodes is charged to (see `Combined`)."""
        own = self.own[queue.name]
        groups = [[f for f in flavors if f in own] for flavors in queue.groups]
        firsts = [flavors[0] if flavors else None for flavors in groups]
        out: dict[str, Account | Combined] = {}
        for flavor in own:
            parts = []
            for flavors, first in zip(groups, firsts, strict=True):
                charged = flavor if flavor in flavors else first
                if charged is None:
                    continue
                account = own[charged]
                covered = tuple(r for r in range(self.size) if account.nominal[r] < UNLIMITED)
                if covered:
                    parts.append((account, covered))
            parts.sort(key=lambda part: part[0] is not own[flavor])  # the flavor's own first
            out[flavor] = Combined(parts) if parts else own[flavor]
        return out

    def reset(self) -> None:
        """No usage anywhere (as built)."""
        for a in self.accounts:
            a.usage = [0] * self.size

    def _cohort(self, name: str | None, flavor: str, seen: frozenset[str] = frozenset()
                ) -> Account | None:
        if name is None or name in seen:
            return None
        key = (name, flavor)
        if key not in self.cohorts:
            parent = self._cohort(self.cohort_parent.get(name), flavor, seen | {name})
            quota = self.cohort_quota.get(name, {}).get(flavor)
            account = self.cohorts[key] = Account(name, quota, parent, self.size)
            account.nominal = [0 if v >= UNLIMITED else v for v in account.nominal]
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

    def account(self, queue: str, flavor: str) -> Account | Combined | None:
        return self.queues.get(queue, {}).get(flavor)

    # --- fair sharing: weighted dominant-resource share ---

    def share(self, account: Account | Combined, extra: Sequence[int] | None = None
              ) -> tuple[float, ...]:
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
            shared = self._shared(account.name)
            while node is not None and node.parent is not None:
                path.append(self._weighted(self._cohort_accounts(node.name), lendable, shared,
                                           self.cohort_weight.get(node.name, 1.0)))
                node = node.parent
            path.reverse()
            path.append(self.queue_share(account, None))
            return tuple(path)
        finally:
            if extra is not None:
                account.remove(extra)

    def queue_share(self, account: Account | Combined, extra: Sequence[int] | None = None
                    ) -> float:
        """The weighted dominant-resource share of ``account``'s queue, with ``extra`` (which
        may be negative) added to ``account``."""
        accounts = self.own[account.name].values()
        lendable = self._lendable(account.name)
        owners = account.owners if isinstance(account, Combined) else None
        worst = 0.0
        for r in self._shared(account.name):
            charged = account if owners is None else owners[r]
            borrowed = 0
            for a in accounts:
                over = a.usage[r] - a.subtree[r]
                if extra is not None and a is charged:
                    over += extra[r]
                if over > 0:
                    borrowed += over
            if borrowed > 0:
                worst = max(worst, borrowed / lendable[r])
        weight = self.weights[account.name]
        if worst == 0.0:
            return 0.0
        return worst / weight if weight > 0 else float("inf")

    def _weighted(self, accounts: Sequence[Account], lendable: Vec, shared: Sequence[int],
                  weight: float) -> float:
        worst = 0.0
        for r in shared:
            borrowed = sum(max(0, a.usage[r] - a.subtree[r]) for a in accounts)
            if borrowed > 0:
                worst = max(worst, borrowed / lendable[r])
        if worst == 0.0:
            return 0.0
        return worst / weight if weight > 0 else float("inf")

    def _lendable(self, queue: str) -> Vec:
        """What the trees of ``queue``'s flavors hold in total, per resource."""
        cached = self._lendable_cache.get(queue)
        if cached is None:
            cached = [0] * self.size
            for flavor_account in self.own[queue].values():
                top = flavor_account.root()
                for r in range(self.size):
                    cached[r] += top.subtree[r]
            self._lendable_cache[queue] = cached
        return cached

    def _shared(self, queue: str) -> list[int]:
        """The resources a share of ``queue`` is taken of: those its trees hold some of, and
        limit (a resource no one limits has no share to speak of)."""
        shared = self._shared_cache.get(queue)
        if shared is None:
            lendable = self._lendable(queue)
            shared = self._shared_cache[queue] = [r for r, v in enumerate(lendable)
                                                  if 0 < v < UNLIMITED // 2]
        return shared

    def _cohort_accounts(self, name: str) -> list[Account]:
        return [a for (cohort, _), a in self.cohorts.items() if cohort == name]
