"""Accounting: GPU-hours and CPU-hours of the jobs' allocations over a window, by tenant,
queue, flavor or job, split by how each allocation ended, with their cost.

The store keeps one `AttemptRecord` per allocation and flavor (what `parts` gives at
admission). An allocation counts from its admission to its release (its GPUs are reserved
for it all that time), clipped to the window; one still held counts up to now. By its
outcome it is *productive* (succeeded, or still held), lost to *preemption*, lost to a
*failure*, or *other* (cancelled, or requeued before it ran). Pure functions: no I/O, no clock.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from stoker.control.store import AttemptRecord
from stoker.spec.api import JobState
from stoker.spec.job import JobSpec

OUTCOMES = ("productive", "preempted", "failed", "other")
GROUPS = ("tenant", "queue", "flavor", "job")
CPU_PRICE = "cpu"  # the key of [prices] that prices a CPU-hour; any other names a flavor


@dataclass(frozen=True)
class Part:
    """What one allocation holds on one flavor."""

    flavor: str
    ranks: int
    gpus: float
    cpus: float
    nodes: tuple[str, ...]


def parts(spec: Mapping[str, Any], placement: Mapping[str, Any] | None) -> list[Part]:
    """An admitted job's allocation per flavor, from its stored spec (``{"job": ...}``) and
    placement (``flavor``, ``nodes`` one per rank in role order, ``roles`` with each role's
    flavor). A spec that no longer parses holds nothing that can be counted."""
    placement = placement or {}
    nodes = [str(n) for n in placement.get("nodes") or []]
    try:
        roles = JobSpec.model_validate(spec["job"]).job_roles()
    except Exception:
        return [Part(str(placement.get("flavor") or ""), len(nodes), 0.0, 0.0,
                     tuple(dict.fromkeys(nodes)))]
    flavors = [str(r.get("flavor") or "") for r in placement.get("roles") or []]
    if len(flavors) != len(roles):
        flavors = [str(placement.get("flavor") or "")] * len(roles)
    found: dict[str, Part] = {}
    first = 0
    for role, flavor in zip(roles, flavors, strict=True):
        mine = nodes[first:first + role.ranks]
        first += role.ranks
        had = found.get(flavor, Part(flavor, 0, 0.0, 0.0, ()))
        found[flavor] = Part(flavor, had.ranks + role.ranks,
                             had.gpus + role.ranks * role.resources.gpu_count,
                             had.cpus + role.ranks * role.resources.cpu_count,
                             tuple(dict.fromkeys((*had.nodes, *mine))))
    return list(found.values())


def outcome_class(outcome: str | None) -> str:
    """How an allocation that ended in ``outcome`` (None: still held) counts."""
    if outcome is None or outcome == JobState.SUCCEEDED.value:
        return "productive"
    return {JobState.PREEMPTED.value: "preempted",
            JobState.FAILED.value: "failed"}.get(outcome, "other")


def held_s(a: AttemptRecord, start: float | None, end: float) -> float:
    """Seconds ``a`` was held within [``start``, ``end``) (one still held: up to ``end``)."""
    lo = a.admitted_at if start is None else max(a.admitted_at, start)
    hi = end if a.ended_at is None else min(a.ended_at, end)
    return max(0.0, hi - lo)


@dataclass
class Tally:
    """GPU- and CPU-seconds by outcome class, the allocations counted and their cost."""

    gpu_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0.0))
    cpu_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0.0))
    holds: set[tuple[int, int]] = field(default_factory=set)
    cost: float = 0.0

    def add(self, a: AttemptRecord, seconds: float, prices: Mapping[str, float]) -> None:
        kind = outcome_class(a.outcome)
        self.gpu_s[kind] += seconds * a.gpus
        self.cpu_s[kind] += seconds * a.cpus
        self.holds.add((a.job_id, a.hold))
        self.cost += cost(seconds * a.gpus, seconds * a.cpus, a.flavor, prices)


def cost(gpu_s: float, cpu_s: float, flavor: str, prices: Mapping[str, float]) -> float:
    """What GPU- and CPU-seconds on ``flavor`` cost: its GPU-hour price (none: free) and the
    CPU-hour price."""
    gpu = prices.get(flavor, 0.0) if flavor != CPU_PRICE else 0.0
    return (gpu_s * gpu + cpu_s * prices.get(CPU_PRICE, 0.0)) / 3600.0


KEYS: dict[str, Callable[[AttemptRecord], str]] = {
    "tenant": lambda a: a.tenant,
    "queue": lambda a: a.queue,
    "flavor": lambda a: a.flavor,
    "job": lambda a: str(a.job_id),
}


def account(attempts: Iterable[AttemptRecord], by: str, start: float | None, end: float,
            prices: Mapping[str, float]) -> dict[str, Tally]:
    """Each group's tally (by ``by``, one of `GROUPS`) over [``start``, ``end``), the groups
    with nothing held in the window left out, in the order of their keys (jobs by id)."""
    key = KEYS[by]
    groups: dict[str, Tally] = defaultdict(Tally)
    for a in attempts:
        seconds = held_s(a, start, end)
        if seconds > 0:
            groups[key(a)].add(a, seconds, prices)
    order: Callable[[str], Any] = int if by == "job" else str
    return {k: groups[k] for k in sorted(groups, key=order)}


def total(tallies: Sequence[Tally]) -> Tally:
    out = Tally()
    for t in tallies:
        for kind in OUTCOMES:
            out.gpu_s[kind] += t.gpu_s[kind]
            out.cpu_s[kind] += t.cpu_s[kind]
        out.holds |= t.holds
        out.cost += t.cost
    return out
