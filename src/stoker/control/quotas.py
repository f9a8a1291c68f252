"""Quotas as the scheduler sees them: the cluster config with the admin's overrides applied,
and each queue's usage against them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from stoker.control.store import QuotaRecord
from stoker.sched import UNLIMITED, Queue, RunningJob
from stoker.spec import loading
from stoker.spec.cluster import RESOURCES, ClusterConfig


def with_overrides(cluster: ClusterConfig, overrides: Iterable[QuotaRecord],
                   source: str = "quota override") -> ClusterConfig:
    """``cluster`` with each override replacing one queue's quota of one flavor.

    Re-validated as a whole, so an override that breaks a rule (lending above nominal,
    borrowing without a cohort, unknown flavor) raises a ConfigError and changes nothing.
    """
    data = cluster.model_dump(mode="json", by_alias=True, exclude_none=True)
    for override in overrides:
        queue = data["queues"].get(override.queue)
        if queue is None:
            continue  # the queue left the config since; the override no longer applies
        queue["quotas"][override.flavor] = override.quota
    return loading.validate(ClusterConfig, data, source)


@dataclass(frozen=True)
class FlavorUsage:
    queue: str
    flavor: str
    resource: str
    nominal: float | None
    borrowing_limit: float | None
    lending_limit: float | None
    used: float

    @property
    def borrowed(self) -> float:
        return max(0.0, self.used - (self.nominal or 0.0)) if self.nominal is not None else 0.0


def usage(queues: Sequence[Queue], running: Iterable[RunningJob]) -> list[FlavorUsage]:
    """Per queue, flavor and limited resource: the quota and what running jobs hold of it."""
    used: dict[tuple[str, str], list[float]] = {}
    for job in running:
        total = used.setdefault((job.queue, job.flavor), [0.0] * len(RESOURCES))
        for i, amount in enumerate(job.per_rank):
            total[i] += amount * len(job.nodes)
    rows: list[FlavorUsage] = []
    for queue in queues:
        for quota in queue.quotas:
            held = used.get((queue.name, quota.flavor), [0.0] * len(RESOURCES))
            shown = [i for i in range(len(RESOURCES))
                     if _limit(quota.nominal[i]) is not None or held[i]]
            for i in shown or [RESOURCES.index("cpus")]:  # an unlimited, idle queue: one row
                resource, nominal = RESOURCES[i], _limit(quota.nominal[i])
                rows.append(FlavorUsage(queue.name, quota.flavor, resource, nominal,
                                        _limit(quota.borrowing_limit[i]),
                                        _limit(quota.lending_limit[i]), held[i]))
    return rows


def _limit(value: float) -> float | None:
    return None if value >= UNLIMITED else value
