"""The scheduler's input (a `Snapshot` and a `Policy`) and output (`Decisions`).

Everything here is an immutable value with no I/O. The live control plane builds a snapshot from
its store each cycle; the simulator builds one from its simulated cluster. Both call
``stoker.sched.schedule(snapshot, policy)`` and apply the decisions. Queues, cohorts and nodes
change rarely and can be built once (``stoker.sched.config`` builds them from a `ClusterConfig`)
and reused across cycles; only ``running``, ``pending`` and ``now`` need to be rebuilt:
`RunningJob` and `PendingJob` are NamedTuples (about 5x cheaper to make than frozen
dataclasses), the rest are frozen dataclasses with slots.

Times are seconds on the caller's clock (wall clock or simulated; only differences matter).

ResourceSpace
    names: the resources of one cluster, in a fixed order: ``gpu``, ``cpu``, ``memory`` first
        (indices `GPU`, `CPU`, `MEMORY`), then ``ephemeral-storage`` and vendors' resources
        (``example.com/gpu``) if the cluster has them (`stoker.spec.resources.order`).
    `vector` turns amounts by name into `Resources`; `amounts` and `describe` turn them back.

Resources
    A tuple of integers, one per resource of the snapshot's space, each in the resource's unit
    (`stoker.spec.resources`): thousandths of a GPU or CPU, bytes of memory and storage, whole
    units of anything else. Integer arithmetic is exact: what is added and taken away leaves
    nothing behind, whatever the order. ``UNLIMITED`` (10**18) means "not limited" (a quota
    or a node that leaves the resource out). Every vector of a snapshot has the length of its
    space.

FlavorQuota (Kueue: one flavor of a ClusterQueue's resource group)
    flavor: the resource flavor (a kind of node, e.g. a GPU model) the quota applies to.
    nominal: the quota this queue (or cohort) owns of that flavor; UNLIMITED for a resource
        the flavor does not limit (and for those its resource group does not cover).
    borrowing_limit: the most it may use *above* ``nominal``, borrowed from its cohort
        (UNLIMITED, or None for all: anything the cohort has spare). Meaningless without a
        cohort.
    lending_limit: the most of its *unused* nominal quota it lends to its cohort; the rest
        (``nominal - lending_limit``) is guaranteed to it. UNLIMITED (None: all): all of it can
        be lent.

Queue (Kueue: ClusterQueue)
    name: unique name; jobs name their queue.
    cohort: the cohort it shares quota with, or None (then it only ever uses ``nominal``).
    quotas: one FlavorQuota per flavor it may use, in the order the flavors are tried (see
        the flavor fungibility below).
    groups: Kueue's resource groups, as the flavors of each (in ``quotas``' order), when there
        are several; () when one group holds every flavor. A node carries one flavor: a job on
        the nodes of flavor F is charged, in F's group, to F and, in every other group, to that
        group's first flavor (which stands for what every node has of those resources).
    strategy: "BestEffortFIFO": a job that cannot be admitted is skipped and later jobs of the
        queue may go ahead; "StrictFIFO": it blocks every later job of the queue.
    within_queue: which running jobs of the *same* queue a pending job may preempt:
        "Never", "LowerPriority", or "LowerOrNewerEqualPriority" (also equal priority created
        later than the preemptor).
    reclaim_within_cohort: which jobs of *other* queues in the cohort that are borrowing (use
        more than their nominal quota) a job that fits in its own nominal quota may preempt to
        get that quota back: "Never", "LowerPriority" or "Any". In a cohort tree a queue (and
        every cohort between it and the cohort it shares with the preemptor) must be over its
        own quota; a job whose request fits the quota of its own side of that shared cohort
        (its queue, or a sub-cohort) may take it back and then borrow within its side
        (Kueue's hierarchical reclaim).
    borrow_within_cohort: "LowerPriority" lets a job that needs to *borrow* preempt
        lower-priority jobs of other borrowing queues of the cohort (only those with priority
        <= ``borrow_max_priority`` when that is set); "Never" forbids it. As in Kueue, jobs
        of other queues are candidates only if ``reclaim_within_cohort`` is not "Never".
    fair_weight: the queue's weight in fair sharing (its share is divided by it).
    when_can_borrow, when_can_preempt, flavor_preference: Kueue's flavor fungibility. Flavors
        are tried in order; each is a fit (quota and free nodes hold the job; it may borrow), a
        flavor where victims could make room, or neither. The search stops at a fit within the
        nominal quota; at a fit that borrows unless ``when_can_borrow = "TryNextFlavor"``
        (default "MayStopSearch"); at a flavor with victims only if ``when_can_preempt =
        "MayStopSearch"`` (default "TryNextFlavor"). Otherwise the best flavor tried wins:
        "BorrowingOverPreemption" (default) prefers a fit to reclaiming victims from other
        queues, and that to preempting in the job's own queue, then the one borrowing least;
        "PreemptionOverBorrowing" prefers the one borrowing least (after its victims are gone),
        then the same order. Ties: the earlier flavor.

Cohort (Kueue: Cohort, hierarchical)
    name, parent: cohorts form a tree; a queue's cohort is a leaf-ward node. Quota unused in one
        subtree is available to the rest of the tree, within each node's limits.
    quotas: quota owned by the cohort itself (shared by all below it), with its
        borrowing_limit/lending_limit towards its own parent.
    fair_weight: the cohort's weight when fair sharing compares sibling cohorts.

Node
    name: unique; decisions place ranks by node name.
    flavor: the node's resource flavor (a job on it is charged to that flavor: see Queue).
    capacity: what the node offers in total (UNLIMITED for a resource it does not limit).
    domains: the node's domain at each level of ``Snapshot.topology`` (outermost first), e.g.
        ("zone-a", "rack-3"); names need only be unique within their parent domain.
    schedulable: False for a cordoned node (its running jobs stay, nothing new lands there).

RunningJob (admitted and holding resources: starting, running, or being preempted)
    id, queue, priority: as for a pending job.
    flavor: the flavor it was admitted with; its usage counts against the queue's quota of it.
    nodes: the node of each rank (``len(nodes)`` is the number of ranks).
    per_rank: resources each rank holds.
    created_at: when the job was submitted (or last requeued); "newer" in preemption policies.
    started_at: when it was admitted.
    progress: seconds of work since its last checkpoint, i.e. what a preemption now would
        lose. Victims are chosen to minimise it (after priority).
    attained_service: GPU-seconds (or CPU-seconds for CPU-only jobs) received so far (LAS).
    expected_remaining: seconds of work it has left (the "srtf" order; None: unknown, the
        first to be preempted).
    preempting: True once a preemption was decided and the job has not yet stopped; such jobs
        are preferred as victims again and no new Preempt is issued for them.
    tenant: who submitted it ("" when the caller does not say); only the usage tracker of
        admission fair sharing (`stoker.sched.usage`) reads it.
    A running multi-role job is listed once per role, each entry with the job's id and that
    role's flavor, nodes and per_rank: each is charged like a job of its own, and preempting
    any of them preempts the job (the others are still counted as held until it stops).

PendingJob (queued, waiting for admission)
    id: the caller's job id (a DB id or a trace index; any hashable str or int).
    queue: the name of its Queue.
    priority: the integer of its priority class; higher wins.
    created_at: submission time (or requeue time after preemption/failure); FIFO order and the
        starvation age count from it.
    ranks, per_rank: the gang: ``ranks`` ranks each needing ``per_rank``. All or nothing.
    flavors: flavors it may use (GPU-model constraint); None: any flavor of its queue.
    topology, topology_required: a level of ``Snapshot.topology`` (or "node") that all ranks
        should share. Required: only such placements. Preferred: the lowest level that fits,
        falling back to fewer domains of higher levels. None: as few domains as possible.
    expected_duration: seconds; the oracle used by the "sjf" order (None sorts last).
    attained_service: service received in earlier runs, for the "las" order.
    nominated: True if the previous cycle nominated it (it is in that cycle's
        ``Decisions.nominated``: it waits for the victims it preempted). Such jobs are
        considered first, before starving ones, so the room their victims free goes to them and
        not to a job that would only be preempted again for it (a preemption ping-pong). The
        caller sets it from the previous cycle's decisions; False (the default) loses only that
        guarantee.
    tenant: who submitted it (Kueue: its LocalQueue within the queue). Under admission fair
        sharing a queue orders its jobs by their tenant's decayed usage first. "" (the
        default): one anonymous tenant.
    avoid: names of nodes the job must not be placed on (a retry after an infrastructure
        failure avoids the nodes suspected of it); empty for most jobs.
    roles: the further roles of a multi-role job (Kueue's pod sets after the first; the first
        is ``ranks``, ``per_rank``, ``flavors`` and ``topology`` above), each a `Role` with its
        own gang, flavors and topology. The job is admitted all or nothing: every role's
        flavor is chosen in turn against the quota and nodes the earlier roles took, and if
        one cannot be placed none is. A multi-role job is admitted only where all its roles
        fit now: it does not preempt (it waits, and may starve into a reservation like any
        job); it can be preempted.

Snapshot
    now: the current time on the caller's clock.
    topology: the level names, outermost first (nodes' ``domains`` follow it).
    queues, cohorts, nodes, running, pending: as above. Cohorts referenced by a queue or as a
        parent but not listed are implicit (no quota of their own, no parent).
    tenant_usage: (queue, tenant) -> the tenant's decayed, weighted historical usage in that
        queue, entry penalties included (`stoker.sched.usage.UsageTracker.scores`); read only
        under ``Policy.admission_fair_sharing``. A pair left out (or None) has used nothing.
    resources: the resources every vector of the snapshot is over (default: gpu, cpu, memory).

Policy (algorithm switches; the cluster config supplies defaults via sched.config)
    order: among jobs that fit in their queue's nominal quota, and then among those that
        borrow: "fifo" (priority, then creation time), "sjf" (priority, then expected duration),
        "las" (priority, then the Tiresias level of attained service: levels split at
        ``las_thresholds``, FIFO within a level). Under "las" a job of a lower level counts as
        higher priority than running jobs of a higher level of the same priority class, so a
        queue whose ``within_queue`` lets it preempt ("LowerPriority", ...) preempts them
        (Tiresias); "Never" stays never. ``Policy()`` is Kueue's order ("fifo"); a cluster
        config's ``[scheduler] order`` defaults to "las" (`stoker.spec.cluster`).
        "srtf" (the simulator's oracle baseline; cluster configs do not offer it): ordered as
        "sjf", and a pending job counts as higher priority than running jobs of the same
        priority class with more expected remaining time (``RunningJob.expected_remaining``),
        with ``within_queue = "Never"`` read as "LowerPriority".
    fair_sharing: order queues by weighted dominant-resource share (Kueue fair sharing) and
        let a job preempt in other queues only if it leaves its queue's share no higher than
        the victim queue's share.
    preemption: False turns every kind of preemption off (baselines).
    starvation_age: a job pending longer than this (seconds) is considered first and holds a
        reservation: while it cannot be placed, nothing else is admitted to the flavors it
        could use, so capacity drains to it. None: off.
    max_preemption_attempts: per queue and cycle, how many of its jobs that need preemption
        may search for victims (Kueue tries only each queue's head; this bounds the cycle's cost
        the same way). Kueue looks for victims only for a request within the queue's nominal
        quota, unless borrow_within_cohort (or reclaim under fair sharing) allows preempting
        while borrowing, or the quota it lacks lies in a sub-cohort (hierarchical reclaim).
    victim_order: the order victims are taken in within each of Kueue's groups (jobs being
        preempted; other queues' jobs the preemptor has a hierarchical claim on; other queues'
        borrowers; the preemptor's own queue): "stoker" loses the least work (lower priority,
        then the least progress since the last checkpoint, then the most recently started);
        "kueue" is Kueue's (lower priority, then the most recently started).
    hold_quota_without_victims: Kueue's reservation for a job that needs preemption but finds
        no victims, when its queue's ``reclaim_within_cohort`` is not "Any": for the rest of the
        cycle the quota it could use (up to its nominal quota, or its borrowing limit if it
        must borrow) stays charged to its queue, so other queues' jobs cannot borrow it. Its
        own queue's later jobs do not see the hold (Kueue would consider them in later cycles,
        with the job set aside). Off by default (a departure from Kueue): on a replayed trace it
        raised the mean wait by up to 2x (docs/architecture.md).
    explain: False leaves out the reasons for jobs the cycle never got to (a simulator that
        does not report them saves the time; the jobs it did consider keep theirs).
    admission_fair_sharing: Kueue's admission fair sharing (KEP-4136, ``admissionScope:
        UsageBasedAdmissionFairSharing`` on every queue): within a queue, jobs of the tenant
        with the least ``Snapshot.tenant_usage`` go first, *before* priority (as Kueue orders a
        ClusterQueue's heap: usage, then priority, then age); jobs the last cycle nominated and
        starving jobs still go first. Across queues nothing changes (Kueue does not compare
        usage between ClusterQueues). Each admission adds the entry penalty to its tenant's
        usage for the rest of the cycle, so one tenant's many small jobs do not all pass the
        others'. None: off.

AdmissionFairSharing (Kueue's ``admissionFairSharing`` configuration)
    half_life: seconds after which past usage counts half (``usageHalfLifeTime``); > 0.
    sampling_interval: seconds between samples of the usage held (``usageSamplingInterval``).
    weights: how much one GPU, CPU, GiB or unit of each resource of the space held counts
        (``resourceWeights``; default: GPUs only, 1 per GPU); a usage score is the weighted
        sum. Shorter than the space: the rest weigh nothing.
    units: for each weight, how many of the resource's units are one (1000 for a GPU or a CPU,
        2**30 for a GiB, 1 for a vendor's unit).
    The entry penalty of an admitted job is ``penalty_factor`` (``1 - 0.5 ** (sampling_interval
    / half_life)``, the weight one sample gives current usage) times its weighted request.

Decisions
    admit: Admit(job, queue, flavor, nodes, borrowing, roles): start ``job`` with rank i on
        nodes[i], nodes of ``flavor`` (charged as `Queue` says); ``borrowing`` if the queue is
        above its nominal quota after it; ``roles``: a `RoleAdmit` (flavor, nodes) for each of
        the job's further roles, in order.
    preempt: Preempt(job, by, reason): stop running ``job`` (SIGTERM, grace, SIGKILL) and
        requeue it; ``by`` is the pending job that needs its resources; reason is one of
        "within_queue", "reclaim", "borrow", "fair_share".
    waiting: pending job -> a `Waiting`: why it was not admitted this cycle, as data.
    nominated: pending job -> the running jobs it waits on to stop (its victims).

Waiting (why a pending job was not admitted: a code, the numbers behind it, and a sentence)
    code: one of `WaitCode`:
        WaitingForQuota: its queue's quota (with what it may borrow) has no room now.
        ExceedsMaxQuota: it asks more than its queue could ever get, every other job gone.
        WaitingForNodes: the quota has room but no free nodes hold the gang.
        TopologyPlacementFailed: free nodes hold the gang, but not within its topology.
        WaitingForVictims: nominated: it waits for the jobs it preempted to stop.
        HeldForStarvingJob: capacity it could use is held for a starving job.
        BlockedByStrictFIFO: an earlier job of its StrictFIFO queue waits.
        NeverFits: no node of its flavors holds one rank.
        NodeUnhealthy: only unschedulable (cordoned or unhealthy) nodes could hold one rank.
        NoMatchingFlavor, UnknownQueue, UnknownTopology: the job's own constraints.
    inadmissible: True for the codes nothing but a change of the cluster or of the job can
        cure (Kueue's inadmissible workloads): ExceedsMaxQuota, NeverFits, NodeUnhealthy,
        NoMatchingFlavor, UnknownQueue, UnknownTopology.
    message: the same, as a sentence for `stoker jobs`.
    flavor: the flavor the numbers are about (the first one the job could use), or None.
    requested: the whole gang's request (ranks x per rank).
    available: what the queue may still use of ``flavor`` within its nominal quota.
    borrowable: what it could borrow from its cohort on top of that, now.
    starving: it is starving and capacity is held for it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from stoker.spec import resources as names

JobId = str | int
UNLIMITED = 10**18

Strategy = Literal["StrictFIFO", "BestEffortFIFO"]
Fungibility = Literal["MayStopSearch", "TryNextFlavor"]
FlavorPreference = Literal["BorrowingOverPreemption", "PreemptionOverBorrowing"]
VictimOrder = Literal["stoker", "kueue"]
WithinQueue = Literal["Never", "LowerPriority", "LowerOrNewerEqualPriority"]
ReclaimWithinCohort = Literal["Never", "LowerPriority", "Any"]
BorrowWithinCohort = Literal["Never", "LowerPriority"]
Order = Literal["fifo", "sjf", "las", "srtf"]
PreemptReason = Literal["within_queue", "reclaim", "borrow", "fair_share"]
WaitCode = Literal["WaitingForQuota", "ExceedsMaxQuota", "WaitingForNodes",
                   "TopologyPlacementFailed", "WaitingForVictims", "HeldForStarvingJob",
                   "BlockedByStrictFIFO", "NeverFits", "NodeUnhealthy", "NoMatchingFlavor",
                   "UnknownQueue", "UnknownTopology"]
INADMISSIBLE: frozenset[str] = frozenset({"ExceedsMaxQuota", "NeverFits", "NodeUnhealthy",
                                          "NoMatchingFlavor", "UnknownQueue",
                                          "UnknownTopology"})


Resources = tuple[int, ...]
GPU, CPU, MEMORY = 0, 1, 2  # the indices of gpu, cpu and memory in every space
GPUS_ONLY = (1.0,)  # admission fair sharing's default weights: 1 per GPU


@dataclass(frozen=True, slots=True)
class ResourceSpace:
    names: tuple[str, ...] = names.BASE
    index: Mapping[str, int] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.names[:3] != names.BASE or len(set(self.names)) != len(self.names):
            raise ValueError(f"a resource space starts with {', '.join(names.BASE)} and names "
                             f"each resource once, not {self.names}")
        object.__setattr__(self, "index", {n: i for i, n in enumerate(self.names)})

    def __len__(self) -> int:
        return len(self.names)

    def vector(self, amounts: Mapping[str, int], missing: int | Mapping[str, int] = 0
               ) -> Resources:
        """Amounts by resource name -> Resources; a resource left out is ``missing`` (one
        amount for all, or per name: 0 where not given). KeyError: a name not in the space."""
        for name in amounts:
            if name not in self.index:
                raise KeyError(name)
        if isinstance(missing, int):
            return tuple(amounts.get(n, missing) for n in self.names)
        return tuple(amounts.get(n, missing.get(n, 0)) for n in self.names)

    def amounts(self, v: Sequence[int]) -> dict[str, int]:
        """The limited, non-zero amounts of ``v`` by name."""
        return {n: a for n, a in zip(self.names, v, strict=True) if 0 < a < UNLIMITED}

    def describe(self, v: Sequence[int]) -> str:
        """``v`` for people ("8 GPU, 96 CPU, 1.02e+03 GiB"), zeros and unlimited left out."""
        return ", ".join(names.describe(n, a) for n, a in self.amounts(v).items()) or "nothing"

    @property
    def unlimited(self) -> Resources:
        return (UNLIMITED,) * len(self.names)

    @property
    def zero(self) -> Resources:
        return (0,) * len(self.names)


DEFAULT_SPACE = ResourceSpace()


@dataclass(frozen=True, slots=True)
class FlavorQuota:
    flavor: str
    nominal: Resources
    borrowing_limit: Resources | None = None  # None: unlimited
    lending_limit: Resources | None = None  # None: unlimited


@dataclass(frozen=True, slots=True)
class Queue:
    name: str
    quotas: tuple[FlavorQuota, ...]
    cohort: str | None = None
    strategy: Strategy = "BestEffortFIFO"
    within_queue: WithinQueue = "Never"
    reclaim_within_cohort: ReclaimWithinCohort = "Never"
    borrow_within_cohort: BorrowWithinCohort = "Never"
    borrow_max_priority: int | None = None
    fair_weight: float = 1.0
    groups: tuple[tuple[str, ...], ...] = ()
    when_can_borrow: Fungibility = "MayStopSearch"
    when_can_preempt: Fungibility = "TryNextFlavor"
    flavor_preference: FlavorPreference = "BorrowingOverPreemption"


@dataclass(frozen=True, slots=True)
class Cohort:
    name: str
    parent: str | None = None
    quotas: tuple[FlavorQuota, ...] = ()
    fair_weight: float = 1.0


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    flavor: str
    capacity: Resources
    domains: tuple[str, ...] = ()
    schedulable: bool = True


class RunningJob(NamedTuple):
    id: JobId
    queue: str
    priority: int
    flavor: str
    nodes: tuple[str, ...]
    per_rank: Resources
    created_at: float = 0.0
    started_at: float = 0.0
    progress: float = 0.0
    attained_service: float = 0.0
    preempting: bool = False
    tenant: str = ""
    expected_remaining: float | None = None


class PendingJob(NamedTuple):
    id: JobId
    queue: str
    priority: int
    created_at: float
    ranks: int
    per_rank: Resources
    flavors: tuple[str, ...] | None = None
    topology: str | None = None
    topology_required: bool = False
    expected_duration: float | None = None
    attained_service: float = 0.0
    nominated: bool = False
    tenant: str = ""
    roles: tuple[Role, ...] = ()
    avoid: frozenset[str] = frozenset()


class Role(NamedTuple):
    """A further role of a multi-role `PendingJob` (Kueue: a pod set after the first): its own
    gang of ``ranks`` ranks each needing ``per_rank``, on ``flavors`` (None: any of the
    queue's), with its own topology constraint."""
    ranks: int
    per_rank: Resources
    flavors: tuple[str, ...] | None = None
    topology: str | None = None
    topology_required: bool = False


def role_parts(job: PendingJob) -> list[PendingJob]:
    """Each role of a (multi-role) job as a job of its own: same id, queue and priority, the
    role's gang, flavors and topology, no further roles. A single-role job: itself."""
    first = job._replace(roles=())
    return [first, *(first._replace(ranks=r.ranks, per_rank=r.per_rank, flavors=r.flavors,
                                    topology=r.topology, topology_required=r.topology_required)
                     for r in job.roles)]


@dataclass(frozen=True, slots=True)
class Snapshot:
    now: float
    queues: Sequence[Queue]
    nodes: Sequence[Node]
    running: Sequence[RunningJob]
    pending: Sequence[PendingJob]
    cohorts: Sequence[Cohort] = ()
    topology: tuple[str, ...] = ()
    tenant_usage: Mapping[tuple[str, str], float] | None = None
    resources: ResourceSpace = DEFAULT_SPACE


def decay_weight(elapsed: float, half_life: float) -> float:
    """The weight a sample taken ``elapsed`` seconds after the last one gives current usage
    (Kueue's alpha): what is older keeps ``1 - decay_weight``, half of it per half-life."""
    return 1.0 - math.pow(0.5, elapsed / half_life)


@dataclass(frozen=True, slots=True)
class AdmissionFairSharing:
    half_life: float
    sampling_interval: float = 300.0
    weights: tuple[float, ...] = GPUS_ONLY
    units: tuple[int, ...] = (1000,)  # what one weighed unit is of each resource's amounts
    # (resource, weight, unit) of each resource that weighs something
    _terms: tuple[tuple[int, float, int], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.half_life > 0 or self.sampling_interval < 0:
            raise ValueError("half_life must be > 0 and sampling_interval >= 0")
        terms = tuple((r, w, u) for r, (w, u) in enumerate(zip(self.weights, self.units,
                                                               strict=False)) if w)
        object.__setattr__(self, "_terms", terms)

    @property
    def penalty_factor(self) -> float:
        return decay_weight(self.sampling_interval, self.half_life)

    def score(self, amounts: Sequence[float]) -> float:
        """The weighted sum of an amount of each resource."""
        total = 0.0
        for r, w, unit in self._terms:
            total += w * (amounts[r] / unit)
        return total



@dataclass(frozen=True, slots=True)
class Policy:
    order: Order = "fifo"
    fair_sharing: bool = False
    preemption: bool = True
    starvation_age: float | None = None
    las_thresholds: tuple[float, ...] = (3600.0, 36000.0)
    max_preemption_attempts: int = 4
    victim_order: VictimOrder = "stoker"
    hold_quota_without_victims: bool = False
    explain: bool = True
    admission_fair_sharing: AdmissionFairSharing | None = None


@dataclass(frozen=True, slots=True)
class Admit:
    job: JobId
    queue: str
    flavor: str
    nodes: tuple[str, ...]
    borrowing: bool = False
    roles: tuple[RoleAdmit, ...] = ()


@dataclass(frozen=True, slots=True)
class RoleAdmit:
    """Where a further role of a multi-role job was admitted (`Admit.roles`, in the order of
    `PendingJob.roles`)."""
    flavor: str
    nodes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Preempt:
    job: JobId
    by: JobId
    reason: PreemptReason


@dataclass(frozen=True, slots=True)
class Waiting:
    code: WaitCode
    message: str
    flavor: str | None = None
    requested: Resources | None = None
    available: Resources | None = None
    borrowable: Resources | None = None
    starving: bool = False

    @property
    def inadmissible(self) -> bool:
        return self.code in INADMISSIBLE

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True, slots=True)
class Decisions:
    admit: list[Admit] = field(default_factory=list)
    preempt: list[Preempt] = field(default_factory=list)
    waiting: Mapping[JobId, Waiting] = field(default_factory=dict)
    nominated: Mapping[JobId, tuple[JobId, ...]] = field(default_factory=dict)
