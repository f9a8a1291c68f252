"""Admission fair sharing's memory: each tenant's decayed historical usage per queue.

Pure and clock-free like the rest of `stoker.sched`: the caller (the reconciler, the simulator)
owns a `UsageTracker`, calls `update(now, running)` each cycle and `admitted(job)` for each
admission it applies, and puts `scores()` in the next `Snapshot.tenant_usage`.

The semantics are Kueue's (KEP-4136, its LocalQueue controller): every ``sampling_interval``
the usage held now (the running jobs' requests, per (queue, tenant)) is folded in as an
exponential moving average, ``usage = (1 - a) * usage + a * held`` with ``a = 1 - 0.5 **
(elapsed / half_life)``, so a tenant that stops running anything keeps half its usage after one
half-life. An admission adds an *entry penalty* of ``penalty_factor * request`` at once (what
one sample would add for it), so a tenant cannot have many jobs admitted between two samples on
the strength of an old, low usage; the penalties are folded into the usage at the next sample.
Usage is kept per resource of the snapshot's space, in each resource's unit; `scores` weighs it
into one number.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from stoker.sched.types import AdmissionFairSharing, PendingJob, RunningJob, decay_weight

TenantKey = tuple[str, str]  # (queue, tenant)


class UsageTracker:
    """Decayed usage per (queue, tenant); see the module docstring."""

    def __init__(self, config: AdmissionFairSharing) -> None:
        self.config = config
        self.consumed: dict[TenantKey, list[float]] = {}  # decayed usage of each resource
        self.penalties: dict[TenantKey, list[float]] = {}  # entry penalties since last sample
        self.last_sample: float | None = None

    def update(self, now: float, running: Iterable[RunningJob]) -> bool:
        """Sample the usage ``running`` holds if a sampling interval has passed since the last
        sample (the first call only starts the clock); True if it sampled."""
        if self.last_sample is None:
            self.last_sample = now
            return False
        elapsed = now - self.last_sample
        if elapsed < self.config.sampling_interval or elapsed <= 0:
            return False
        self._sample(decay_weight(elapsed, self.config.half_life), held(running))
        self.last_sample = now
        return True

    def _sample(self, alpha: float, held_now: Mapping[TenantKey, list[float]]) -> None:
        keep = 1.0 - alpha
        merged: dict[TenantKey, list[float]] = {}
        size = _size(self.consumed, held_now, self.penalties)
        zero = [0.0] * size
        for key in self.consumed.keys() | held_now.keys() | self.penalties.keys():
            old = _pad(self.consumed.get(key, zero), size)
            now = _pad(held_now.get(key, zero), size)
            penalty = _pad(self.penalties.get(key, zero), size)
            value = [keep * a + alpha * b + c for a, b, c in zip(old, now, penalty, strict=True)]
            if any(v > _NEGLIGIBLE for v in value):
                merged[key] = value
        self.consumed = merged
        self.penalties = {}

    def admitted(self, job: PendingJob) -> None:
        """Charge an admission's entry penalty to its tenant until the next sample (every
        role's request, for a job with several)."""
        factor = self.config.penalty_factor
        penalty = self.penalties.setdefault((job.queue, job.tenant), [0.0] * len(job.per_rank))
        for ranks, per_rank in ((job.ranks, job.per_rank),
                                *((role.ranks, role.per_rank) for role in job.roles)):
            for r, amount in enumerate(per_rank):
                penalty[r] += factor * amount * ranks

    def scores(self) -> dict[TenantKey, float]:
        """The weighted usage of each (queue, tenant), penalties included: what
        ``Snapshot.tenant_usage`` wants."""
        out: dict[TenantKey, float] = {}
        size = _size(self.consumed, self.penalties)
        zero = [0.0] * size
        for key in self.consumed.keys() | self.penalties.keys():
            consumed = _pad(self.consumed.get(key, zero), size)
            penalties = _pad(self.penalties.get(key, zero), size)
            total = [a + b for a, b in zip(consumed, penalties, strict=True)]
            out[key] = self.config.score(total)
        return out

    # --- persistence: plain JSON-able data ---

    def state(self) -> dict[str, Any]:
        return {"last_sample": self.last_sample,
                "consumed": [[q, t, *v] for (q, t), v in sorted(self.consumed.items())],
                "penalties": [[q, t, *v] for (q, t), v in sorted(self.penalties.items())]}

    def restore(self, state: Mapping[str, Any]) -> None:
        """Take back what `state` returned (e.g. after a restart)."""
        self.last_sample = state.get("last_sample")
        self.consumed = {(q, t): [float(x) for x in v] for q, t, *v in state.get("consumed", ())}
        self.penalties = {(q, t): [float(x) for x in v]
                          for q, t, *v in state.get("penalties", ())}


def held(running: Iterable[RunningJob]) -> dict[TenantKey, list[float]]:
    """What each (queue, tenant) holds now of each resource."""
    out: dict[TenantKey, list[float]] = {}
    for job in running:
        key = (job.queue, job.tenant)
        n = len(job.nodes)
        amounts = out.get(key)
        if amounts is None:
            amounts = out[key] = [0.0] * len(job.per_rank)
        r = 0
        for a in job.per_rank:
            if a:
                amounts[r] += a * n
            r += 1  # noqa: SIM113 (faster than enumerate here)
    return out


def _size(*kept: Mapping[TenantKey, Sequence[float]]) -> int:
    """How many resources the vectors kept have (all alike, but after a change of resources)."""
    return max((max(map(len, d.values()), default=0) for d in kept), default=0)


def _pad(values: Sequence[float], size: int) -> Sequence[float]:
    """``values`` with zeros up to ``size``."""
    return values if len(values) == size else [*values, *[0.0] * (size - len(values))]


_NEGLIGIBLE = 1e-12  # a tenant whose usage has decayed below this is forgotten
