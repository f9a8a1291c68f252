"""The policies a simulation compares. All of them run through `stoker.sched.schedule`.

Baselines (one shared queue over the whole cluster, trace priorities ignored, as in the
literature they come from; placement best-fit over every node the job may use, whatever its GPU
model, ties to the lowest node index: see `shared_queue`):
  fifo           strict first come, first served: the earliest job waiting blocks every later
                 one until it starts (head-of-line blocking); no preemption
  fifo-backfill  first come, first served with greedy backfill: a job that does not fit is
                 passed over and later jobs that fit start (this was `fifo` before); no preemption
  sjf            shortest job first with the trace's true durations as an oracle, with backfill;
                 no preemption
  srtf           shortest remaining time first with the trace's true durations as an oracle,
                 preemptive: a waiting job preempts running jobs with more time left
  las            Tiresias' discretised 2D-LAS: levels of attained GPU-seconds, FIFO by arrival
                 within a level, a job of a lower level preempts running jobs of a higher one;
                 demoted at the next scheduling event after crossing a level
Stoker's own (the cluster's queues, quotas, cohorts, priorities and preemption policies):
  stoker       the cluster config's [scheduler] settings (by default each queue's jobs by least
               attained service, `order = "las"`)
  stoker-kueue the same with Kueue's order within each queue (priority, then age: `order =
               "fifo"`), Stoker's default before
  stoker-fair  the same with fair sharing (weighted dominant-resource share) switched on
  stoker-afs   the same with admission fair sharing switched on (Kueue's usage-based order of
               the tenants, here the trace's users, within each queue), with the settings of
               the cluster config's [admission_fair_sharing] (its defaults without one)
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from stoker.sched import UNLIMITED, FlavorQuota, Policy, Queue
from stoker.sched.config import admission_fair_sharing, build_policy
from stoker.sim.cluster import SimCluster
from stoker.spec.errors import ConfigError

SHARED_QUEUE = "all"
SHARED_FLAVOR = "any"  # the baselines' one pool of every node (see `shared_queue`)


@dataclass(frozen=True)
class SimPolicy:
    name: str
    policy: Policy
    shared_queue: bool
    strict: bool = False  # the shared queue is StrictFIFO (head-of-line blocking)
    # A requeued (preempted or failed) job keeps its arrival, so its place in the queue (Tiresias
    # and SRTF order by arrival within a level or remaining time); False: it queues as if new.
    keep_arrival: bool = False
    # Under "las": schedule when a running job crosses a level, so it is demoted at once (the
    # live control plane runs a cycle every few seconds); False: at the next event (Tiresias).
    wake_at_level: bool = True

    @property
    def uses_priorities(self) -> bool:
        return not self.shared_queue


POLICIES = ("fifo", "fifo-backfill", "sjf", "srtf", "las", "stoker", "stoker-kueue",
            "stoker-fair", "stoker-afs")
# The preemptive baselines let every waiting job look for victims in every cycle (the live
# scheduler bounds it per queue, `Policy.max_preemption_attempts`; Tiresias and SRTF do not).
UNBOUNDED = 1 << 62


def resolve(name: str, cluster: SimCluster,
            las_thresholds: tuple[float, ...] | None = None) -> SimPolicy:
    """The named policy; `las_thresholds` (GPU-seconds) replaces the scheduler's LAS levels."""
    base = build_policy(cluster.config)
    if las_thresholds is not None:
        base = replace(base, las_thresholds=las_thresholds)
    if name == "fifo":
        return SimPolicy(name, Policy(order="fifo", preemption=False), True, strict=True)
    if name == "fifo-backfill":
        return SimPolicy(name, Policy(order="fifo", preemption=False), True)
    if name == "sjf":
        return SimPolicy(name, Policy(order="sjf", preemption=False), True)
    if name == "srtf":
        return SimPolicy(name, Policy(order="srtf", max_preemption_attempts=UNBOUNDED), True,
                         keep_arrival=True)
    if name == "las":
        return SimPolicy(name, Policy(order="las", las_thresholds=base.las_thresholds,
                                      max_preemption_attempts=UNBOUNDED), True,
                         keep_arrival=True, wake_at_level=False)
    if name == "stoker":
        return SimPolicy(name, base, False)
    if name == "stoker-kueue":
        return SimPolicy(name, replace(base, order="fifo"), False)
    if name == "stoker-fair":
        return SimPolicy(name, replace(base, fair_sharing=True), False)
    if name == "stoker-afs":
        afs = admission_fair_sharing(cluster.config.admission_fair_sharing, cluster.space)
        return SimPolicy(name, replace(base, admission_fair_sharing=afs), False)
    raise ConfigError("--policy", None, f"unknown policy {name!r} (known: {', '.join(POLICIES)})")


def shared_queue(cluster: SimCluster, strict: bool = False) -> Queue:
    """The baselines' one queue, without limit over one flavor, `SHARED_FLAVOR`, that every
    node of the cluster is put in (`stoker.sim.engine.Simulator`); lower LAS levels may preempt
    within it; `strict`: StrictFIFO.

    One flavor-less pool rather than the cluster's flavors: a queue tries its flavors in order
    (Kueue's flavor assignment, kept for the live scheduler and the `stoker` policies), so with
    several GPU models the baselines would take the first model with room and best-fit only
    within it, and the node list's order would move the results. In one pool the scheduler's
    best-fit looks at every node at once (least free GPUs that hold the job, ties to the lowest
    node index); a job limited to some GPU models avoids the nodes of the others
    (`PendingJob.avoid`)."""
    unlimited = (UNLIMITED,) * len(cluster.space)
    return Queue(name=SHARED_QUEUE, quotas=(FlavorQuota(SHARED_FLAVOR, unlimited),),
                 within_queue="LowerPriority",
                 strategy="StrictFIFO" if strict else "BestEffortFIFO")
