"""Tiresias simulator traces (SymbioticLab/Tiresias, NSDI'19): `job_id, num_gpu, submit_time,
iterations, model_name, duration, interval` (seconds). No user column: tenants come from hashing.
The trace has no node count or multi-node marker, so a job is one rank of `num_gpu` GPUs that
stays on one node when it fits one, and runs as a gang across nodes only when it is larger than
every node (`multi_node`; split by `common.split_to_fit` on the cluster it is given: 8 GPUs on
n32g4's 4-GPU nodes are 2 ranks of 4), as Tiresias' own placement consolidates a job on one node
when it can.

The cluster file beside it (e.g. `n32g4.csv`: num_switch, num_node_p_switch, num_gpu_p_node,
num_cpu_p_node, mem_p_node) is read by `load_nodes`.
"""

from __future__ import annotations

from pathlib import Path

from stoker.sim.loaders import _csv
from stoker.sim.trace import SkipReport, Trace, TraceJob, TraceNode, rebase
from stoker.spec.errors import ConfigError

COLUMNS = ("job_id", "num_gpu", "submit_time", "duration")
NODE_COLUMNS = ("num_switch", "num_node_p_switch", "num_gpu_p_node")


def load(path: str | Path) -> Trace:
    report = SkipReport()
    jobs = [job for row in _csv.rows(path, COLUMNS) if (job := _job(row, report))]
    return Trace(str(path), "tiresias", rebase(jobs), report)


def _job(row: dict[str, str], report: SkipReport) -> TraceJob | None:
    report.rows += 1
    try:
        gpus = _csv.integer(row, "num_gpu")
        arrival = _csv.number(row, "submit_time")
        duration = _csv.number(row, "duration")
    except _csv.BadValue as e:
        report.skip(f"unparseable value in column '{e.column}'")
        return None
    if gpus <= 0:
        report.skip("CPU-only job (num_gpu == 0)")
        return None
    if duration <= 0:
        report.skip("zero or negative duration")
        return None
    return TraceJob(id=row["job_id"], arrival=arrival, duration=duration, ranks=1,
                    gpus_per_rank=gpus, multi_node=True)


def load_nodes(path: str | Path) -> list[TraceNode]:
    """Expand each row (switches x nodes per switch) into nodes labelled by switch."""
    nodes: list[TraceNode] = []
    for row in _csv.rows(path, NODE_COLUMNS):
        try:
            switches = _csv.integer(row, "num_switch")
            per_switch = _csv.integer(row, "num_node_p_switch")
            gpus = _csv.integer(row, "num_gpu_p_node")
            cpus = _csv.number(row, "num_cpu_p_node", 0)
            memory = _csv.integer(row, "mem_p_node", 0)
        except _csv.BadValue as e:
            raise ConfigError(str(path), e.column, "not a whole number") from None
        for s in range(switches):
            for n in range(per_switch):
                name = f"s{s}-n{n}"
                nodes.append(TraceNode(name, gpus, "", cpus, memory * 1024,
                                       (("switch", f"s{s}"),)))
    return nodes
