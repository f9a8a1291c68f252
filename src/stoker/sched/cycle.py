"""One scheduling cycle: order the pending jobs, check quota, place, preempt."""

from __future__ import annotations

from stoker.sched.types import Decisions, Policy, Snapshot


def schedule(snapshot: Snapshot, policy: Policy = Policy()) -> Decisions:
    """Decide which pending jobs to admit (and where) and which running jobs to preempt."""
    raise NotImplementedError("the scheduler lands in the next commit")
