"""Build the scheduler's static inputs (queues, cohorts, nodes, policy) from a ClusterConfig."""

from __future__ import annotations

from stoker.sched.types import (
    ALL_UNLIMITED,
    UNLIMITED,
    AdmissionFairSharing,
    Cohort,
    FlavorQuota,
    Node,
    PendingJob,
    Policy,
    Queue,
    Resources,
)
from stoker.spec.cluster import (
    AdmissionFairSharingConfig,
    Amounts,
    ClusterConfig,
    NodeConfig,
    Quota,
)
from stoker.spec.job import JobSpec


def resources(amounts: Amounts | None, missing: float = UNLIMITED) -> Resources:
    """Amounts -> Resources; a resource left out becomes ``missing``."""
    if amounts is None:
        return ALL_UNLIMITED
    return Resources(*(missing if v is None else float(v)
                       for v in (amounts.gpus, amounts.cpus, amounts.memory)))


def flavor_quotas(quotas: dict[str, Quota]) -> tuple[FlavorQuota, ...]:
    return tuple(
        FlavorQuota(flavor=flavor, nominal=resources(q),
                    borrowing_limit=resources(q.borrowing_limit),
                    lending_limit=resources(q.lending_limit))
        for flavor, q in quotas.items()
    )


def build_queues(cfg: ClusterConfig) -> tuple[Queue, ...]:
    return tuple(
        Queue(name=name, quotas=flavor_quotas(q.quotas), cohort=q.cohort, strategy=q.strategy,
              within_queue=q.preemption.within_queue,
              reclaim_within_cohort=q.preemption.reclaim_within_cohort,
              borrow_within_cohort=q.preemption.borrow_within_cohort,
              borrow_max_priority=q.preemption.borrow_max_priority, fair_weight=q.fair_weight,
              when_can_borrow=q.when_can_borrow, when_can_preempt=q.when_can_preempt,
              flavor_preference=q.flavor_preference)
        for name, q in cfg.queues.items()
    )


def build_cohorts(cfg: ClusterConfig) -> tuple[Cohort, ...]:
    return tuple(
        Cohort(name=name, parent=c.parent, quotas=flavor_quotas(c.quotas),
               fair_weight=c.fair_weight)
        for name, c in cfg.cohorts.items()
    )


def build_node(cfg: ClusterConfig, node: NodeConfig, name: str) -> Node:
    capacity = Resources(node.gpus, UNLIMITED if node.cpus is None else node.cpus,
                         UNLIMITED if node.memory is None else float(node.memory))
    return Node(name=name, flavor=node.flavor, capacity=capacity,
                domains=tuple(node.labels[level] for level in cfg.topology))


def build_nodes(cfg: ClusterConfig) -> tuple[Node, ...]:
    """The explicit ``[[nodes]]`` (autodetection is I/O: the control plane adds that node)."""
    return tuple(build_node(cfg, n, name) for n in cfg.nodes for name in n.names())


def build_policy(cfg: ClusterConfig) -> Policy:
    s = cfg.scheduler
    afs = cfg.admission_fair_sharing
    return Policy(order=s.order, fair_sharing=s.fair_sharing, starvation_age=s.starvation_age,
                  victim_order=s.victim_order,
                  hold_quota_without_victims=s.hold_quota_without_victims,
                  admission_fair_sharing=admission_fair_sharing(afs) if afs.enabled else None)


def admission_fair_sharing(cfg: AdmissionFairSharingConfig) -> AdmissionFairSharing:
    """The scheduler's settings (memory weighed per byte) from the config's (per GiB)."""
    w = cfg.resource_weights
    return AdmissionFairSharing(half_life=cfg.half_life, sampling_interval=cfg.sampling_interval,
                                weights=Resources(w.gpus, w.cpus, w.memory / 2**30))


def pending_job(cfg: ClusterConfig, spec: JobSpec, job_id: str | int, created_at: float,
                attained_service: float = 0.0, nominated: bool = False,
                tenant: str = "") -> PendingJob:
    """The scheduler's view of a submitted job spec; ``nominated``: the previous cycle
    nominated it (see `PendingJob`)."""
    r = spec.resources
    return PendingJob(
        id=job_id, queue=spec.queue, priority=cfg.priority(spec.priority_class),
        created_at=created_at, ranks=spec.ranks,
        per_rank=Resources(r.gpus, r.cpus, float(r.memory)),
        flavors=cfg.flavors_for_model(spec.placement.gpu_model),
        topology=spec.placement.topology,
        topology_required=spec.placement.topology_mode == "required",
        expected_duration=spec.max_run_time, attained_service=attained_service,
        nominated=nominated, tenant=tenant,
    )
