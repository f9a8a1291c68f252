"""A node's health state and what changes it: its checks' outcomes, an admin's cordon,
uncordon and drain. Pure functions over `NodeRecord`; the store applies each in one
transaction with the history entries it returns.

- ``healthy``: no failed check since it last returned.
- ``suspect``: a light check (device state, on a busy node) failed, or a job attempt failed
  there of an infrastructure cause (`stoker.control.failure`). The node is cordoned by the
  health system: its jobs go on, no new one is placed there.
- ``unhealthy``: a full check (pre-start, or periodic on an idle node) failed; cordoned the
  same way.
- ``draining`` / ``drained``: an admin drains it: no new jobs, the running ones finish (or
  are requeued); drained once none is left. Drain is shown over the health state, which the
  checks keep up to date underneath.

A cordon the health system set is lifted by ``passes_to_return`` consecutive passes of the full
check set, or by an admin's uncordon; an admin's own cordon only by an admin. An uncordon
returns the node: healthy, its failure count and repair flag cleared. ``failures_to_flag``
failed checks in a row flag the node for repair, until an admin uncordons it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from stoker.control.store import CheckOutcome, NodeRecord

HEALTHY, SUSPECT, UNHEALTHY = "healthy", "suspect", "unhealthy"
DRAINING, DRAINED = "draining", "drained"
SEVERITY = {HEALTHY: 0, SUSPECT: 1, UNHEALTHY: 2}
FULL_SETS = ("prestart", "periodic")  # the sets that can clear a node
ACTOR = "health"


@dataclass(frozen=True)
class Change:
    """An entry for the node's history: health entries go from one health to another, the
    admin's from one shown `state` to another."""

    kind: str  # health | check-failed | repair | cordon | uncordon | drain | undrain | drained
    from_state: str | None
    to_state: str | None
    reason: str
    detail: dict[str, Any] | None = None


def state(node: NodeRecord) -> str:
    """What `stoker nodes` shows: the drain when there is one, else the health."""
    if node.drain:
        return DRAINED if node.drained_at is not None else DRAINING
    return node.health


def after_check(node: NodeRecord, outcome: CheckOutcome, passes_to_return: int,
                failures_to_flag: int) -> tuple[NodeRecord, list[Change]]:
    checks = {**(node.last_checks or {}), outcome.check_set: outcome.report}
    node = replace(node, last_checks=checks)
    if outcome.passed:
        return _passed(node, outcome, passes_to_return)
    return _failed(node, outcome, failures_to_flag)


def _failed(node: NodeRecord, outcome: CheckOutcome, failures_to_flag: int,
            what: str | None = None, may_cordon: bool = True) -> tuple[NodeRecord, list[Change]]:
    found = SUSPECT if outcome.check_set == "light" else UNHEALTHY
    health = max(node.health, found, key=SEVERITY.__getitem__)
    what = f"{outcome.check_set} check failed: " if what is None else what
    reason = f"{what}{outcome.reason}"
    failures = node.failures + 1
    cordon: dict[str, Any] = {}
    if not may_cordon:
        pass
    elif not node.cordoned:
        cordon = {"cordoned": True, "auto_cordon": True, "cordoned_by": ACTOR,
                  "cordon_reason": reason}
    elif node.auto_cordon:
        cordon = {"cordon_reason": reason}
    after = replace(node, health=health, health_reason=reason, passes=0, failures=failures,
                    **cordon)
    kind = "health" if health != node.health else "check-failed"
    note = "; cordoned" if "cordoned" in cordon else ""
    changes = [Change(kind, node.health, health, reason + note, outcome.report)]
    if failures >= failures_to_flag and not node.repair:
        after = replace(after, repair=True)
        changes.append(Change("repair", health, health,
                              f"flagged for repair: {failures} failed checks in a row"))
    return after, changes


def after_suspicion(node: NodeRecord, reason: str, failures_to_flag: int,
                    detail: dict[str, Any] | None = None, cordon: bool = True
                    ) -> tuple[NodeRecord, list[Change]]:
    """A job attempt failed on the node of an infrastructure cause: suspect (unless already
    worse) and, with ``cordon``, cordoned by the health system until its full checks pass or an
    admin returns it. It counts as a failed check towards the repair flag."""
    return _failed(node, CheckOutcome("light", False, reason, detail or {}), failures_to_flag,
                   what="", may_cordon=cordon)


def _passed(node: NodeRecord, outcome: CheckOutcome, passes_to_return: int
            ) -> tuple[NodeRecord, list[Change]]:
    if node.health == HEALTHY or outcome.check_set not in FULL_SETS:
        return replace(node, failures=0), []  # device state alone does not clear a node
    passes = node.passes + 1
    if passes < passes_to_return:
        return replace(node, failures=0, passes=passes), []
    lift: dict[str, Any] = {}
    if node.auto_cordon:
        lift = {"cordoned": False, "auto_cordon": False, "cordoned_by": "",
                "cordon_reason": ""}
    after = replace(node, health=HEALTHY, health_reason="", passes=0, failures=0, **lift)
    reason = (f"{passes} consecutive passes of the {outcome.check_set} checks"
              f"{'; uncordoned' if lift else ''}")
    return after, [Change("health", node.health, HEALTHY, reason, outcome.report)]


def after_cordon(node: NodeRecord, cordoned: bool, reason: str, actor: str
                 ) -> tuple[NodeRecord, list[Change]]:
    why = f": {reason}" if reason else ""
    if cordoned:
        after = replace(node, cordoned=True, auto_cordon=False, cordoned_by=actor,
                        cordon_reason=reason)
        return after, [Change("cordon", state(node), state(after), f"cordoned by {actor}{why}")]
    after = replace(node, cordoned=False, auto_cordon=False, cordoned_by="", cordon_reason="",
                    health=HEALTHY, health_reason="", passes=0, failures=0, repair=False)
    return after, [Change("uncordon", state(node), state(after), f"uncordoned by {actor}{why}")]


def after_drain(node: NodeRecord, drain: bool, reason: str, actor: str
                ) -> tuple[NodeRecord, list[Change]]:
    why = f": {reason}" if reason else ""
    if drain:
        after = replace(node, drain=True, drain_reason=reason,
                        drained_at=node.drained_at if node.drain else None)
        return after, [Change("drain", state(node), state(after), f"drained by {actor}{why}")]
    after = replace(node, drain=False, drain_reason="", drained_at=None)
    return after, [Change("undrain", state(node), state(after),
                          f"drain stopped by {actor}{why}")]


def after_drained(node: NodeRecord, now: float) -> tuple[NodeRecord, list[Change]]:
    if not node.drain or node.drained_at is not None:
        return node, []
    after = replace(node, drained_at=now)
    return after, [Change("drained", DRAINING, DRAINED, "no running jobs left")]
