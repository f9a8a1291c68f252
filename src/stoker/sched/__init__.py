"""The scheduling policy: pure functions over a snapshot. No I/O, no clock, no threads.

``schedule(snapshot, policy) -> Decisions`` is the one entry point; `stoker.sched.types`
documents every field, `stoker.sched.config` builds queues, cohorts, nodes and the policy from
a `ClusterConfig`.
"""

from stoker.sched.cycle import schedule
from stoker.sched.types import (
    UNLIMITED,
    Admit,
    Cohort,
    Decisions,
    FlavorQuota,
    JobId,
    Node,
    PendingJob,
    Policy,
    Preempt,
    Queue,
    Resources,
    RunningJob,
    Snapshot,
)

__all__ = [
    "UNLIMITED",
    "Admit",
    "Cohort",
    "Decisions",
    "FlavorQuota",
    "JobId",
    "Node",
    "PendingJob",
    "Policy",
    "Preempt",
    "Queue",
    "Resources",
    "RunningJob",
    "Snapshot",
    "schedule",
]
