"""Build the scheduler's static inputs (queues, cohorts, nodes, policy) from a ClusterConfig."""

from __future__ import annotations

from stoker.sched.types import (
    UNLIMITED,
    AdmissionFairSharing,
    Cohort,
    FlavorQuota,
    Node,
    PendingJob,
    Policy,
    Queue,
    Resources,
    ResourceSpace,
    Role,
)
from stoker.spec import resources as names
from stoker.spec.cluster import (
    AdmissionFairSharingConfig,
    Amounts,
    ClusterConfig,
    NodeConfig,
    Quotas,
)
from stoker.spec.job import JobRole, JobSpec, RankResources

# What a node that leaves a resource out has of it: cpu, memory and storage are not limited,
# GPUs and vendors' resources are absent.
NODE_MISSING = {names.CPU: UNLIMITED, names.MEMORY: UNLIMITED, names.STORAGE: UNLIMITED}


def resource_space(cfg: ClusterConfig) -> ResourceSpace:
    """The cluster's resources, in their fixed order."""
    return _space(cfg.resource_names())


_SPACES: dict[tuple[str, ...], ResourceSpace] = {}


def _space(resource_names: tuple[str, ...]) -> ResourceSpace:
    space = _SPACES.get(resource_names)
    if space is None:
        space = _SPACES[resource_names] = ResourceSpace(resource_names)
    return space


def resources(space: ResourceSpace, amounts: Amounts | None) -> Resources | None:
    """Amounts -> Resources; a resource left out is not limited. None stays None."""
    if amounts is None:
        return None
    return space.vector(amounts.amounts(), missing=UNLIMITED)


def flavor_quotas(space: ResourceSpace, owner: Quotas) -> tuple[FlavorQuota, ...]:
    return tuple(
        FlavorQuota(flavor=flavor, nominal=space.vector(q.amounts(), missing=UNLIMITED),
                    borrowing_limit=resources(space, q.borrowing_limit),
                    lending_limit=resources(space, q.lending_limit))
        for flavor, q in owner.flavor_quotas().items()
    )


def groups(owner: Quotas) -> tuple[tuple[str, ...], ...]:
    """The flavors of each resource group, when there are several."""
    found = owner.groups()
    return tuple(tuple(flavors) for _, flavors in found) if len(found) > 1 else ()


def build_queues(cfg: ClusterConfig) -> tuple[Queue, ...]:
    space = resource_space(cfg)
    return tuple(
        Queue(name=name, quotas=flavor_quotas(space, q), cohort=q.cohort, strategy=q.strategy,
              within_queue=q.preemption.within_queue,
              reclaim_within_cohort=q.preemption.reclaim_within_cohort,
              borrow_within_cohort=q.preemption.borrow_within_cohort,
              borrow_max_priority=q.preemption.borrow_max_priority, fair_weight=q.fair_weight,
              groups=groups(q), when_can_borrow=q.when_can_borrow,
              when_can_preempt=q.when_can_preempt, flavor_preference=q.flavor_preference)
        for name, q in cfg.queues.items()
    )


def build_cohorts(cfg: ClusterConfig) -> tuple[Cohort, ...]:
    space = resource_space(cfg)
    return tuple(
        Cohort(name=name, parent=c.parent, quotas=flavor_quotas(space, c),
               fair_weight=c.fair_weight)
        for name, c in cfg.cohorts.items()
    )


def build_node(cfg: ClusterConfig, node: NodeConfig, name: str) -> Node:
    capacity = resource_space(cfg).vector(node.amounts(), missing=NODE_MISSING)
    return Node(name=name, flavor=node.flavor, capacity=capacity,
                domains=tuple(node.labels[level] for level in cfg.topology))


def build_nodes(cfg: ClusterConfig) -> tuple[Node, ...]:
    """The explicit ``[[nodes]]`` (autodetection is I/O: the control plane adds that node)."""
    return tuple(build_node(cfg, n, name) for n in cfg.nodes for name in n.names())


def build_policy(cfg: ClusterConfig) -> Policy:
    s = cfg.scheduler
    afs = cfg.admission_fair_sharing
    return Policy(order=s.order, fair_sharing=s.fair_sharing, starvation_age=s.starvation_age,
                  victim_order=s.victim_order, las_thresholds=s.las_thresholds,
                  hold_quota_without_victims=s.hold_quota_without_victims,
                  admission_fair_sharing=(admission_fair_sharing(afs, resource_space(cfg))
                                          if afs.enabled else None))


def admission_fair_sharing(cfg: AdmissionFairSharingConfig, space: ResourceSpace
                           ) -> AdmissionFairSharing:
    """The scheduler's settings: weights of one GPU, CPU, GiB or unit of each resource."""
    weights = cfg.resource_weights.weights()
    return AdmissionFairSharing(half_life=cfg.half_life, sampling_interval=cfg.sampling_interval,
                                weights=tuple(weights.get(n, 0.0) for n in space.names),
                                units=tuple(names.bucket_unit(n) for n in space.names))


def per_rank(cfg: ClusterConfig, r: RankResources) -> Resources:
    """A rank's request as Resources over the cluster's resources (KeyError: one it lacks)."""
    return resource_space(cfg).vector(r.amounts())


def pending_job(cfg: ClusterConfig, spec: JobSpec, job_id: str | int, created_at: float,
                attained_service: float = 0.0, nominated: bool = False,
                tenant: str = "") -> PendingJob:
    """The scheduler's view of a submitted job spec; ``nominated``: the previous cycle
    nominated it (see `PendingJob`). A job with roles: its first role is the job's own gang,
    the others its `Role`s."""
    roles = spec.job_roles() if spec.roles is not None else None
    first = roles[0] if roles is not None else spec
    return PendingJob(
        id=job_id, queue=spec.queue, priority=cfg.priority(spec.priority_class),
        created_at=created_at, ranks=first.ranks, per_rank=per_rank(cfg, first.resources),
        flavors=cfg.flavors_for_model(first.placement.gpu_model),
        topology=first.placement.topology,
        topology_required=first.placement.topology_mode == "required",
        expected_duration=spec.max_run_time, attained_service=attained_service,
        nominated=nominated, tenant=tenant,
        roles=() if roles is None else tuple(role(cfg, r) for r in roles[1:]),
    )


def role(cfg: ClusterConfig, r: JobRole) -> Role:
    """A further role of a job, as the scheduler sees it."""
    return Role(ranks=r.ranks, per_rank=per_rank(cfg, r.resources),
                flavors=cfg.flavors_for_model(r.placement.gpu_model),
                topology=r.placement.topology,
                topology_required=r.placement.topology_mode == "required")
