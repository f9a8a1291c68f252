"""SenseTime Helios traces (`cluster_log.csv`, SC'21).

Columns: job_id, user, vc, gpu_num, cpu_num, node_num, state, submit_time, start_time,
end_time, duration (s), queue (s). Times are 'YYYY-MM-DD HH:MM:SS'. A job of G GPUs on N nodes
becomes N ranks of G/N GPUs (one rank per GPU when G is not a multiple of N). Jobs of every end
state are kept: cancelled and failed jobs held their GPUs too.
"""

from __future__ import annotations

from pathlib import Path

from stoker.sim.loaders import _csv
from stoker.sim.trace import SkipReport, Trace, TraceJob, rebase

COLUMNS = ("job_id", "gpu_num", "submit_time", "duration")


def load(path: str | Path) -> Trace:
    report = SkipReport()
    jobs = [job for row in _csv.rows(path, COLUMNS) if (job := _job(row, report))]
    return Trace(str(path), "helios", rebase(jobs), report)


def _job(row: dict[str, str], report: SkipReport) -> TraceJob | None:
    report.rows += 1
    try:
        gpus = _csv.integer(row, "gpu_num")
        nodes = _csv.integer(row, "node_num", 1)
        duration = _csv.number(row, "duration")
        arrival = _csv.timestamp(row["submit_time"], "submit_time")
        cpus = _csv.number(row, "cpu_num", 0)
    except _csv.BadValue as e:
        report.skip(f"unparseable value in column '{e.column}'")
        return None
    if gpus <= 0:
        report.skip("CPU-only job (gpu_num == 0)")
        return None
    if duration <= 0:
        report.skip("zero or negative duration")
        return None
    ranks, per_rank = split_gpus(gpus, max(nodes, 1))
    return TraceJob(
        id=row["job_id"], arrival=arrival, duration=duration, ranks=ranks,
        gpus_per_rank=per_rank, user=row.get("user", ""), vc=row.get("vc", ""),
        cpus_per_rank=cpus / ranks,
    )


def split_gpus(gpus: int, nodes: int) -> tuple[int, int]:
    """(ranks, GPUs per rank): one rank per node when the GPUs divide evenly, else per GPU."""
    if nodes <= gpus and gpus % nodes == 0:
        return nodes, gpus // nodes
    return gpus, 1
