"""Checks every loader shares."""

from __future__ import annotations

from dataclasses import dataclass

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
    if job.gpus_per_rank > max(c.largest_node for c in caps):
        return "unsatisfiable: a rank needs more GPUs than any allowed node has"
    if job.gpus > max(c.total for c in caps):
        return "unsatisfiable: needs more GPUs of one model than the cluster has"
    return None
