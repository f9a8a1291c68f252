"""The scheduling policy: pure functions over a snapshot. No I/O, no clock, no threads.

``schedule(snapshot, policy) -> Decisions`` is the one entry point; `stoker.sched.types`
documents every field, `stoker.sched.config` builds queues, cohorts, nodes and the policy from
a `ClusterConfig`. What a cycle derives from the nodes, the queues and the running jobs is kept
for the next cycle (`stoker.sched.nodes.layout`, `stoker.sched.held`, `stoker.sched.quota.take`)
as a memo: the same snapshot gives the same decisions whatever ran before, and a cycle costs
what changed and what is pending, not the size of the cluster.
"""

from stoker.sched.cycle import schedule
from stoker.sched.types import (
    UNLIMITED,
    AdmissionFairSharing,
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
    "AdmissionFairSharing",
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
