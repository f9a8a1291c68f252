"""Alibaba GPU cluster trace 2023 (`openb_pod_list_*.csv` + `openb_node_list_gpu_node.csv`).

One pod is one single-rank job of `num_gpu` GPUs; `gpu_milli` < 1000 (only with one GPU) is a
share of a GPU. Arrival = creation_time, run time = deletion_time - scheduled_time. A pod that
asks for more GPUs than every node it may use has runs as a multi-node gang (`multi_node`; the
simulator splits it with `common.split_to_fit` on the cluster it is given), as the reference
simulator does, instead of being dropped.

A pod list that carries only the requests (`name`, `num_gpu`, ...) takes its times from another
list (`times_from`, `stoker sim --times-from`): each pod's `creation_time`, `deletion_time` and
`scheduled_time` by its name; a pod the other list does not name is skipped and counted.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from stoker.sim.loaders import _csv
from stoker.sim.loaders.common import drop_unsatisfiable
from stoker.sim.trace import SkipReport, Trace, TraceJob, TraceNode, rebase
from stoker.spec.errors import ConfigError

TIME_COLUMNS = ("creation_time", "deletion_time", "scheduled_time")
REQUEST_COLUMNS = ("name", "num_gpu")
POD_COLUMNS = REQUEST_COLUMNS + TIME_COLUMNS
NODE_COLUMNS = ("sn", "gpu", "model")
NODE_LIST = "openb_node_list_gpu_node.csv"
QOS_PRIORITY = {"BE": 0, "Burstable": 1, "LS": 2, "Guaranteed": 2}


def load(path: str | Path, node_list: str | Path | None = None,
         times_from: str | Path | None = None) -> Trace:
    """Read the pod list; the node list defaults to `openb_node_list_gpu_node.csv` beside it.
    With `times_from`, the pods' times come from that pod list (joined by name), not this one."""
    report = SkipReport()
    pods = (_csv.rows(path, POD_COLUMNS) if times_from is None
            else _with_times(path, times_from, report))
    jobs = [job for row in pods if (job := _job(row, report))]
    if node_list is None and (Path(path).parent / NODE_LIST).is_file():
        node_list = Path(path).parent / NODE_LIST
    nodes = load_nodes(node_list) if node_list is not None else None
    if nodes is not None:
        jobs = drop_unsatisfiable(jobs, nodes, report)
    return Trace(str(path), "alibaba", rebase(jobs), report, nodes)


def load_nodes(path: str | Path) -> list[TraceNode]:
    """GPU nodes of the node list (rows with gpu == 0 are CPU-only and left out)."""
    nodes = []
    for row in _csv.rows(path, NODE_COLUMNS):
        try:
            gpus = _csv.integer(row, "gpu")
            cpus = _csv.number(row, "cpu_milli", 0) / 1000
            memory = _csv.integer(row, "memory_mib", 0)
        except _csv.BadValue as e:
            raise ConfigError(str(path), e.column, f"not a number in row {row['sn']!r}") from None
        if gpus > 0:
            nodes.append(TraceNode(row["sn"], gpus, row["model"], cpus, memory))
    return nodes


def _with_times(path: str | Path, times_from: str | Path,
                report: SkipReport) -> Iterator[dict[str, str]]:
    """The rows of `path` with each pod's times from `times_from`; pods without are skipped."""
    times: dict[str, dict[str, str]] = {}
    for row in _csv.rows(times_from, ("name", *TIME_COLUMNS)):
        if row["name"] in times:
            raise ConfigError(str(times_from), "name", f"pod {row['name']!r} is listed twice")
        times[row["name"]] = {column: row[column] for column in TIME_COLUMNS}
    missing = f"no times in {times_from} (--times-from)"
    for row in _csv.rows(path, REQUEST_COLUMNS):
        found = times.get(row["name"])
        if found is None:
            report.rows += 1
            report.skip(missing)
            continue
        yield row | found


def _job(row: dict[str, str], report: SkipReport) -> TraceJob | None:
    report.rows += 1
    try:
        gpus = _csv.integer(row, "num_gpu")
        if gpus == 0:
            report.skip("CPU-only task (num_gpu == 0)")
            return None
        if row["scheduled_time"] == "":
            report.skip("never scheduled in the trace (no scheduled_time)")
            return None
        if row["deletion_time"] == "":
            report.skip("no deletion_time: run time unknown")
            return None
        duration = _csv.number(row, "deletion_time") - _csv.number(row, "scheduled_time")
        milli = _csv.integer(row, "gpu_milli", 1000)
        arrival = _csv.number(row, "creation_time")
        cpus = _csv.number(row, "cpu_milli", 0) / 1000
        memory = _csv.integer(row, "memory_mib", 0)
    except _csv.BadValue as e:
        report.skip(f"unparseable value in column '{e.column}'")
        return None
    if duration <= 0:
        report.skip("zero or negative duration")
        return None
    if gpus < 0 or not 0 < milli <= 1000:
        report.skip("invalid GPU request (num_gpu < 0 or gpu_milli outside 1..1000)")
        return None
    if gpus > 1:
        milli = 1000
    if milli < 1000:
        report.note("fractional GPU request (gpu_milli < 1000)")
    models = tuple(m for m in row.get("gpu_spec", "").split("|") if m)
    return TraceJob(
        id=row["name"], arrival=arrival, duration=duration, ranks=1, gpus_per_rank=gpus,
        gpu_milli=milli, gpu_models=models, priority=QOS_PRIORITY.get(row.get("qos", ""), 0),
        cpus_per_rank=cpus, memory_mib_per_rank=memory, multi_node=True,
    )
