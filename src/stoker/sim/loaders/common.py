"""Checks every loader shares."""

from __future__ import annotations

from dataclasses import dataclass, replace

from stoker.sim.trace import SkipReport, TraceJob, TraceNode


@dataclass
class ModelCapacity:
    largest_node: int = 0
    total: int = 0


def capacity_by_model(nodes: list[TraceNode]) -> dict[str, ModelCapacity]:
    out: dict[str, ModelCapacity] = {}
    for node in nodes:
        cap = out.setdefault(node.model, ModelCapacity())
        cap.largest_node = max(cap.largest_node, node.gpus)
        cap.total += node.gpus
    return out


def drop_unsatisfiable(
    jobs: list[TraceJob], nodes: list[TraceNode], report: SkipReport
) -> list[TraceJob]:
    """Leave out jobs no set of these nodes could ever hold, counting each reason."""
    capacity = capacity_by_model(nodes)
    kept = []
    for job in jobs:
        reason = unsatisfiable(job, capacity)
        if reason:
            report.skip(reason)
        else:
            kept.append(job)
    return kept


def unsatisfiable(job: TraceJob, capacity: dict[str, ModelCapacity]) -> str | None:
    """Why `job` can never run on a cluster of this capacity, or None if it can."""
    caps = [c for m, c in capacity.items() if not job.gpu_models or m in job.gpu_models]
    if not caps:
        return "unsatisfiable: no node has an allowed GPU model"
    if job.gpus_per_rank > max(c.largest_node for c in caps) and not _splittable(job):
        return "unsatisfiable: a rank needs more GPUs than any allowed node has"
    if job.gpus > max(c.total for c in caps):
        return "unsatisfiable: needs more GPUs of one model than the cluster has"
    return None


def _splittable(job: TraceJob) -> bool:
    return job.multi_node and job.ranks == 1


def gang_shape(gpus: int, largest_node: int) -> tuple[int, int]:
    """(ranks, GPUs per rank) of a `gpus`-GPU request on nodes of at most `largest_node` GPUs:
    one rank when it fits a node, else the fewest equal ranks of whole GPUs that each fit a node
    (per rank: the largest divisor of `gpus` not above `largest_node`), so exactly `gpus` GPUs
    are held: 8 on 4-GPU nodes is 2 x 4, 6 on 4-GPU nodes is 2 x 3, 5 on 4-GPU nodes is 5 x 1."""
    if largest_node <= 0 or gpus <= largest_node:
        return 1, gpus
    per_rank = next(k for k in range(largest_node, 0, -1) if gpus % k == 0)
    return gpus // per_rank, per_rank


def split_to_fit(job: TraceJob, largest_node: int) -> TraceJob:
    """`job` as a multi-node gang (`gang_shape`) when the trace allows it (`multi_node`, one
    rank) and no node of `largest_node` GPUs holds it; otherwise unchanged. CPUs and memory are
    shared evenly among the ranks."""
    if not _splittable(job) or job.gpus_per_rank <= largest_node or largest_node <= 0:
        return job
    ranks, per_rank = gang_shape(job.gpus_per_rank, largest_node)
    return replace(job, ranks=ranks, gpus_per_rank=per_rank,
                   cpus_per_rank=job.cpus_per_rank / ranks,
                   memory_mib_per_rank=job.memory_mib_per_rank // ranks)


def largest_node(nodes: list[TraceNode], models: tuple[str, ...] = ()) -> int:
    """GPUs of the largest node of one of `models` (empty: any model); 0 when there is none."""
    return max((n.gpus for n in nodes if not models or n.model in models), default=0)
