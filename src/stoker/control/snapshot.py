"""The scheduler's view of the store: a pure function from records to a `sched.types.Snapshot`.

No I/O here: the caller reads the store, the cluster config and the executor, and passes what
they said. The simulator's tests can feed the same records to compare both.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from stoker.control.states import ACTIVE
from stoker.control.store import JobRecord
from stoker.sched import Node, PendingJob, Resources, RunningJob, Snapshot
from stoker.sched.config import build_cohorts, build_queues, pending_job, resource_space
from stoker.sched.fit import never_fits
from stoker.sched.types import role_parts
from stoker.spec.api import JobState
from stoker.spec.cluster import ClusterConfig
from stoker.spec.job import JobRole, JobSpec

_SPECS: dict[tuple[int, float], JobSpec] = {}
_MAX_SPECS = 100_000


def job_spec(record: JobRecord) -> JobSpec:
    """The job spec stored with a job (validated when it was submitted), parsed once: a job's
    spec never changes, and every cycle needs those of all queued and running jobs."""
    key = (record.id, record.created_at)
    spec = _SPECS.get(key)
    if spec is None:
        spec = JobSpec.model_validate(record.spec["job"])
        if len(_SPECS) >= _MAX_SPECS:
            _SPECS.clear()
        _SPECS[key] = spec
    return spec


def per_rank(cluster: ClusterConfig, spec: JobSpec | JobRole) -> Resources:
    """What each rank of ``spec`` (a job without roles, or one role) holds, over the cluster's
    resources; a resource the cluster no longer has (its config changed since the job was
    admitted) is left out."""
    space = resource_space(cluster)
    return space.vector({k: v for k, v in spec.resources.amounts().items() if k in space.index})


def unknown_resources(cluster: ClusterConfig, spec: JobSpec) -> list[str]:
    """The resources ``spec`` (any of its roles) asks for that the cluster does not have."""
    known = resource_space(cluster).index
    return [name for role in spec.job_roles() for name in role.resources.amounts()
            if name not in known]


@dataclass(frozen=True)
class PlacedRole:
    """Where one role of an admitted job runs: its flavor and its ranks' nodes."""

    role: JobRole
    flavor: str
    nodes: tuple[str, ...]


def placed_roles(record: JobRecord, spec: JobSpec) -> list[PlacedRole]:
    """Each role of an admitted job with its flavor and nodes, from its placement: the
    roles' ranks are ``placement["nodes"]`` in role order, their flavors in
    ``placement["roles"]`` (a job without roles: the placement's own flavor)."""
    placement = record.placement or {}
    nodes = tuple(placement.get("nodes", ()))
    flavor = placement.get("flavor", "")
    roles = spec.job_roles()
    if len(roles) == 1:
        return [PlacedRole(roles[0], flavor, nodes)]
    flavors = [r.get("flavor", flavor) for r in placement.get("roles", ())]
    return [PlacedRole(r, flavors[i] if i < len(flavors) else flavor,
                       nodes[r.first:r.first + r.ranks]) for i, r in enumerate(roles)]


def expected_ends(records: Iterable[JobRecord]) -> dict[int, float]:
    """When each admitted job with a ``max_run_time`` will have been stopped at the latest:
    the scheduler's start estimates replay these ends (jobs without one never end there)."""
    ends = {}
    for record in records:
        limit = job_spec(record).max_run_time
        since = record.started_at or record.admitted_at
        if record.state in ACTIVE and limit is not None and since is not None:
            ends[record.id] = since + limit
    return ends


def service(spec: JobSpec, seconds: float) -> float:
    """What ``seconds`` of a job's run count as attained service (the "las" order): GPU-seconds
    of every rank of every role; CPU-seconds for a job without any GPU."""
    if spec.roles is None:
        r = spec.resources
        return seconds * spec.ranks * (r.gpu_count or r.cpu_count)
    roles = spec.job_roles()
    gpus = sum(role.ranks * role.resources.gpu_count for role in roles)
    return seconds * (gpus or sum(role.ranks * role.resources.cpu_count for role in roles))


def running_jobs(cluster: ClusterConfig, record: JobRecord, spec: JobSpec, progress: float,
                 now: float) -> list[RunningJob]:
    """An admitted job as the scheduler sees it: one `RunningJob` per role, each with the
    job's id and that role's flavor, nodes and request, and its service over every attempt,
    this one included (as the simulator counts it)."""
    ran = max(0.0, now - record.started_at) if record.started_at is not None else 0.0
    attained = record.attained_s + service(spec, ran)
    return [RunningJob(
        id=record.id, queue=record.queue, priority=record.priority, flavor=placed.flavor,
        nodes=placed.nodes, per_rank=per_rank(cluster, placed.role),
        created_at=record.queued_at, started_at=record.admitted_at or record.queued_at,
        progress=progress, attained_service=attained,
        preempting=record.stop_reason is not None, tenant=record.tenant,
    ) for placed in placed_roles(record, spec)]


def build_snapshot(now: float, cluster: ClusterConfig, nodes: Sequence[Node],
                   jobs: Iterable[JobRecord], progress: Mapping[int, float] | None = None,
                   nominated: Collection[int | str] = (),
                   tenant_usage: Mapping[tuple[str, str], float] | None = None,
                   suspects: Mapping[int, Collection[str]] | None = None) -> Snapshot:
    """Running = jobs holding resources (admitted, starting, running, stopping); pending =
    queued jobs past their restart backoff. ``progress``: seconds since each running job's
    last checkpoint (default: since it was admitted). ``nominated``: jobs the previous cycle
    nominated for preemption, so the room their victims free goes to them. ``tenant_usage``:
    admission fair sharing's usage per (queue, tenant) (`stoker.sched.usage`). ``suspects``:
    per job, the nodes its infrastructure failures were blamed on; its retry avoids them while
    it could still run without them (`avoiding`)."""
    progress = progress or {}
    running: list[RunningJob] = []
    pending: list[PendingJob] = []
    for record in jobs:
        spec = job_spec(record)
        if record.state in ACTIVE and record.placement:
            since = record.admitted_at or now
            running.extend(running_jobs(cluster, record, spec,
                                        progress.get(record.id, now - since), now))
        elif record.state == JobState.QUEUED and record.not_before <= now:
            if unknown_resources(cluster, spec):
                continue  # the cluster no longer has what it asks for: the reconciler fails it
            if record.priority_class not in ("", spec.priority_class or
                                             cluster.default_priority_class):  # changed since
                spec = spec.model_copy(update={"priority_class": record.priority_class})
            if spec.priority_class not in (None, *cluster.priority_classes):
                spec = spec.model_copy(update={"priority_class": None})  # class since removed
            job = pending_job(cluster, spec, record.id, record.queued_at, record.attained_s,
                              record.id in nominated, tenant=record.tenant)
            blamed = (suspects or {}).get(record.id)
            if blamed:
                queue = cluster.queues.get(job.queue)
                flavors = set(queue.flavor_quotas()) if queue is not None else set()
                job = job._replace(avoid=avoiding(job, blamed, nodes, flavors,
                                                  cluster.topology))
            pending.append(job)
    return Snapshot(now=now, queues=build_queues(cluster), nodes=tuple(nodes),
                    running=tuple(running), pending=tuple(pending),
                    cohorts=build_cohorts(cluster), topology=cluster.topology,
                    tenant_usage=tenant_usage, resources=resource_space(cluster))


def avoiding(job: PendingJob, suspects: Collection[str], nodes: Sequence[Node],
             queue_flavors: Collection[str], topology: Sequence[str]) -> frozenset[str]:
    """The suspected nodes ``job`` avoids: all of them, unless some role could then never be
    placed on its queue's flavors (a cluster of one node, or the only nodes of a GPU model):
    then none, so a retry is never stranded by its own failures."""
    for part in role_parts(job):
        usable = set(queue_flavors) if part.flavors is None else (set(queue_flavors)
                                                                  & set(part.flavors))
        if never_fits(part.ranks, part.per_rank, nodes, usable, topology, part.topology,
                      part.topology_required, avoid=suspects) is not None:
            return frozenset()
    return frozenset(suspects)
