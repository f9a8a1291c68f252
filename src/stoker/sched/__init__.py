"""The scheduling policy: pure functions over a snapshot. No I/O, no clock, no threads.

``schedule(snapshot, policy, cache) -> Decisions`` is the one entry point; `stoker.sched.types`
documents every field, `stoker.sched.config` builds queues, cohorts, nodes and the policy from
a `ClusterConfig`. What a cycle derives from the nodes, the queues and the running jobs is kept
for the caller's next cycle in the `SchedulerCache` it owns (`stoker.sched.cache`), as a memo:
the same snapshot gives the same decisions whatever ran before and without a cache, and a cycle
costs what changed and what is pending, not the size of the cluster. Nothing is kept in module
globals.
"""

from stoker.sched.cache import SchedulerCache
from stoker.sched.cycle import schedule
from stoker.sched.eta import estimate_starts
from stoker.sched.order import queue_positions
from stoker.sched.types import (
    CPU,
    DEFAULT_SPACE,
    GPU,
    MEMORY,
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
    ResourceSpace,
    Role,
    RoleAdmit,
    RunningJob,
    Snapshot,
    Waiting,
)

__all__ = [
    "CPU",
    "DEFAULT_SPACE",
    "GPU",
    "MEMORY",
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
    "ResourceSpace",
    "Resources",
    "Role",
    "RoleAdmit",
    "RunningJob",
    "SchedulerCache",
    "Snapshot",
    "Waiting",
    "estimate_starts",
    "queue_positions",
    "schedule",
]
