"""Quotas as the scheduler sees them: the cluster config with the admin's overrides applied,
and each queue's usage against them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from stoker.control.store import QuotaRecord
from stoker.sched import UNLIMITED, Snapshot
from stoker.sched.quota import QuotaTree
from stoker.spec import loading
from stoker.spec.cluster import ClusterConfig
from stoker.spec.errors import ConfigError
from stoker.spec.resources import CPU, written

LIMITS = ("borrowing_limit", "lending_limit")


def current_quota(cluster: ClusterConfig, queue: str, flavor: str) -> dict[str, Any]:
    """A queue's quota of one flavor as written (canonical resource names; {}: none)."""
    data = cluster.queues[queue].model_dump(mode="json", by_alias=True, exclude_none=True)
    for flavors in [data.get("quotas") or {},
                    *[g["flavors"] for g in data.get("resource_groups") or []]]:
        if flavor in flavors:
            return dict(flavors[flavor])
    return {}


def merged_quota(current: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    """``current`` with the amounts ``change`` gives replaced (in each limit too); the rest
    kept. Both with canonical resource names."""
    out = {k: (dict(v) if k in LIMITS else v) for k, v in current.items()}
    for key, value in change.items():
        if key in LIMITS:
            out[key] = {**out.get(key, {}), **value}
        else:
            out[key] = value
    return out


def with_overrides(cluster: ClusterConfig, overrides: Iterable[QuotaRecord],
                   source: str = "quota override") -> ClusterConfig:
    """``cluster`` with each override replacing one queue's quota of one flavor (in the
    resource group that holds the flavor, when the queue has groups).

    Re-validated as a whole, so an override that breaks a rule (lending above nominal,
    borrowing without a cohort, unknown flavor, a resource its group does not cover, one the
    cluster does not have) raises a ConfigError and changes nothing.
    """
    data = cluster.model_dump(mode="json", by_alias=True, exclude_none=True)
    for override in overrides:
        queue = data["queues"].get(override.queue)
        if queue is None:
            continue  # the queue left the config since; the override no longer applies
        groups = queue.get("resource_groups") or []
        holder = next((g["flavors"] for g in groups if override.flavor in g["flavors"]), None)
        if groups and holder is None:
            raise ConfigError(source, f"resource_groups.flavors.{override.flavor}",
                              f"flavor {override.flavor!r} is in none of the queue's "
                              "resource groups")
        (holder if holder is not None else queue.setdefault("quotas", {}))[
            override.flavor] = override.quota
    changed = loading.validate(ClusterConfig, data, source)
    new = set(changed.resource_names()) - set(cluster.resource_names())
    if new:
        raise ConfigError(source, f"quotas.{override.flavor}", f"this cluster has no "
                          f"{sorted(new)[0]} (its resources: "
                          f"{', '.join(cluster.resource_names())})")
    return changed


@dataclass(frozen=True)
class FlavorUsage:
    queue: str
    flavor: str
    resource: str
    nominal: float | None  # as written: GPUs, CPUs, bytes, units
    borrowing_limit: float | None
    lending_limit: float | None
    used: float

    @property
    def borrowed(self) -> float:
        return max(0.0, self.used - (self.nominal or 0.0)) if self.nominal is not None else 0.0


def usage(snapshot: Snapshot) -> list[FlavorUsage]:
    """Per queue, flavor and limited resource: the quota and what running jobs hold of it,
    charged as the scheduler charges them (a queue with several resource groups charges
    another group's resources to that group's first flavor)."""
    space = snapshot.resources
    tree = QuotaTree(snapshot.queues, snapshot.cohorts, len(space))
    for accounts in tree.own.values():
        for own in accounts.values():
            own.limited = tuple(range(len(space)))  # what is used of unlimited ones too
    for job in snapshot.running:
        account = tree.account(job.queue, job.flavor)
        if account is not None:
            account.add([a * len(job.nodes) for a in job.per_rank])
    rows: list[FlavorUsage] = []
    for queue in snapshot.queues:
        for quota in queue.quotas:
            held = tree.own[queue.name][quota.flavor].usage
            shown = [i for i in range(len(space)) if quota.nominal[i] < UNLIMITED or held[i]]
            for i in shown or [space.index[CPU]]:  # an unlimited, idle queue: one row
                name = space.names[i]

                def limit(v: tuple[int, ...] | None, i: int = i, name: str = name) -> float | None:
                    return None if v is None or v[i] >= UNLIMITED else float(written(name, v[i]))

                rows.append(FlavorUsage(queue.name, quota.flavor, name, limit(quota.nominal),
                                        limit(quota.borrowing_limit), limit(quota.lending_limit),
                                        float(written(name, held[i]))))
    return rows
