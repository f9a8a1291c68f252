"""The scheduler's state between cycles, kept in the store as well as in the leader's memory.

Why each queued job waits, which jobs the last cycle nominated, and admission fair sharing's
usage would otherwise live only in the leader's reconciler: a restarted server would start
from nothing, and another server's API would not know them. `StoredState` remembers what it
last wrote (or read), so a cycle writes only what changed, in one transaction, and a cycle
that changed nothing writes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from stoker.control.store import SchedulerChanges, Store, UsageRecord
from stoker.sched import JobId, Waiting
from stoker.sched.types import AdmissionFairSharing
from stoker.sched.usage import TenantKey, UsageTracker

Nominations = dict[int, tuple[int, ...]]


def usage_records(tracker: UsageTracker) -> dict[TenantKey, UsageRecord]:
    """The tracker as rows: one per (queue, tenant) with usage or a penalty."""
    return {key: UsageRecord(key[0], key[1], _floats(tracker.consumed.get(key, ())),
                             _floats(tracker.penalties.get(key, ())), tracker.last_sample)
            for key in tracker.consumed.keys() | tracker.penalties.keys()}


def restore_usage(tracker: UsageTracker, records: Iterable[UsageRecord]) -> None:
    """Put stored rows back in ``tracker``: it decays them from their last sample on."""
    records = list(records)
    tracker.consumed = {(r.queue, r.tenant): list(r.usage) for r in records if any(r.usage)}
    tracker.penalties = {(r.queue, r.tenant): list(r.penalty) for r in records
                         if any(r.penalty)}
    samples = [r.sampled_at for r in records if r.sampled_at is not None]
    tracker.last_sample = max(samples) if samples else None


def stored_scores(store: Store, config: AdmissionFairSharing) -> dict[TenantKey, float]:
    """The tenants' usage scores as the leader last stored them."""
    tracker = UsageTracker(config)
    restore_usage(tracker, store.tenant_usage())
    return tracker.scores()


class StoredState:
    """The last written (or read) scheduler state of one reconciler, to write only changes."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.waiting: dict[int, Waiting] = {}
        self.nominations: Nominations = {}
        self.usage: dict[TenantKey, UsageRecord] = {}

    def load(self, tracker: UsageTracker | None) -> Nominations:
        """Read what the store holds (into ``tracker`` too); the stored nominations."""
        self.waiting = self.store.waiting()
        self.nominations = self.store.nominations()
        records = self.store.tenant_usage()
        self.usage = {(r.queue, r.tenant): r for r in records}
        if tracker is not None:
            restore_usage(tracker, records)
        return dict(self.nominations)

    def save(self, waiting: Mapping[int, Waiting],
             nominated: Mapping[JobId, Iterable[JobId]], tracker: UsageTracker | None) -> None:
        """Write what differs from the last state written, in one transaction."""
        nominations = {int(job): tuple(int(v) for v in victims)
                       for job, victims in nominated.items()}
        usage = usage_records(tracker) if tracker is not None else self.usage
        changes = SchedulerChanges(
            waiting={job: why for job, why in waiting.items() if self.waiting.get(job) != why},
            not_waiting=[job for job in self.waiting if job not in waiting],
            nominations=nominations if nominations != self.nominations else None,
            usage=[r for key, r in usage.items() if self.usage.get(key) != r],
            usage_gone=[key for key in self.usage if key not in usage])
        self.store.save_scheduler(changes)
        self.waiting, self.nominations, self.usage = dict(waiting), nominations, usage


def _floats(values: Iterable[float]) -> tuple[float, ...]:
    return tuple(float(v) for v in values)
