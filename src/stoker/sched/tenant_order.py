"""Admission fair sharing's order within a queue (Kueue KEP-4136), for one cycle.

Kueue orders a ClusterQueue's workloads by their LocalQueue's usage, then priority, then age.
Here a queue's jobs are split by tenant: each tenant's jobs wait in a heap of their own, in the
queue's usual order (urgency, priority, the policy's order, age), and only each tenant's best
job is in the queue's heap, keyed ``(urgency, (usage, -priority), ...)``. An admission adds the
entry penalty to its tenant's usage at once, so the keys of that tenant's jobs in the queue's
heap (at most two: see `pushed_back`) go stale; usage only grows within a cycle, so a stale key
is too small and is re-keyed when it reaches the top (`fresh_head`). Each step costs O(log n).
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from typing import Any

from stoker.sched.order import SEQ
from stoker.sched.types import AdmissionFairSharing, PendingJob

# The cycle's heap key: (urgency, -priority or (usage, -priority), order value, created, seq).
Key = tuple[int, Any, float, float, int]
TenantKey = tuple[str, str]  # (queue, tenant)


class TenantOrder:
    def __init__(self, config: AdmissionFairSharing, usage: Mapping[TenantKey, float] | None,
                 pending: Sequence[PendingJob]) -> None:
        self.config = config
        self.usage: dict[TenantKey, float] = dict(usage or {})
        self.pending = pending
        self.rest: dict[TenantKey, list[Key]] = {}  # each tenant's jobs not in the queue heap
        self.listed: dict[TenantKey, int] = {}  # how many of its jobs are in the queue heap

    def heads(self, keys: list[Key]) -> list[Key]:
        """A queue's keys -> the key of each tenant's best job, usage first; the rest wait."""
        by_tenant: dict[TenantKey, list[Key]] = {}
        pending = self.pending
        for key in keys:
            job = pending[key[SEQ]]
            by_tenant.setdefault((job.queue, job.tenant), []).append(key)
        heads = []
        for tenant, own in by_tenant.items():
            heapq.heapify(own)
            heads.append(self._keyed(tenant, heapq.heappop(own)))
            self.rest[tenant] = own
            self.listed[tenant] = 1
        return heads

    def _keyed(self, tenant: TenantKey, key: Key) -> Key:
        urgency, priority, value, created, seq = key
        return (urgency, (self.usage.get(tenant, 0.0), priority), value, created, seq)

    def _tenant(self, key: Key) -> TenantKey:
        job = self.pending[key[SEQ]]
        return (job.queue, job.tenant)

    def fresh_head(self, waiting: list[Key]) -> None:
        """Re-key the queue heap's top until its tenant's usage in the key is current."""
        while waiting:
            urgency, (used, priority), value, created, seq = waiting[0]
            tenant = self._tenant(waiting[0])
            now = self.usage.get(tenant, 0.0)
            if now <= used:
                return
            heapq.heapreplace(waiting, (urgency, (now, priority), value, created, seq))

    def popped(self, waiting: list[Key], key: Key) -> None:
        """``key`` left the queue heap: its tenant's next job takes its place."""
        tenant = self._tenant(key)
        self.listed[tenant] -= 1
        rest = self.rest[tenant]
        if not self.listed[tenant] and rest:
            heapq.heappush(waiting, self._keyed(tenant, heapq.heappop(rest)))
            self.listed[tenant] = 1

    def pushed_back(self, key: Key) -> None:
        """``key`` went back into the queue heap (deferred to the next pass)."""
        self.listed[self._tenant(key)] += 1

    def remaining(self, queue: str, waiting: list[Key]) -> list[Key]:
        """Every job of ``queue`` not yet considered."""
        out = list(waiting)
        for (name, _), rest in self.rest.items():
            if name == queue:
                out.extend(rest)
        return out

    def admitted(self, job: PendingJob, total: Sequence[float]) -> None:
        """Kueue's entry penalty: the admitted job's tenant counts as using more at once."""
        tenant = (job.queue, job.tenant)
        self.usage[tenant] = (self.usage.get(tenant, 0.0)
                              + self.config.penalty_factor * self.config.score(total))
