"""The generic CSV format, for traces from any other source.

Required columns:
  id         job name (unique)
  arrival    submit time: seconds (a number) or an ISO date-time ('2024-01-31 08:00:00')
  duration   run time in seconds when running uninterrupted
  gpus       GPUs of the whole job (>= 1; rows with 0 are skipped as CPU-only)
Optional columns:
  ranks      gang size; `gpus` must divide evenly (default: 1 rank holding all GPUs)
  gpu_milli  share of one GPU in 1..1000 for single-GPU jobs (default 1000)
  gpu_model  allowed GPU models, '|'-separated (default: any)
  user, vc   owner and virtual cluster / team (`tenant` is read as vc); used to map to queues
  priority   an integer, higher first
"""

from __future__ import annotations

from pathlib import Path

from stoker.sim.loaders import _csv
from stoker.sim.trace import SkipReport, Trace, TraceJob, rebase

COLUMNS = ("id", "arrival", "duration", "gpus")


def load(path: str | Path) -> Trace:
    report = SkipReport()
    jobs = [job for row in _csv.rows(path, COLUMNS) if (job := _job(row, report))]
    return Trace(str(path), "generic", rebase(jobs), report)


def _arrival(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return _csv.timestamp(text, "arrival")


def _job(row: dict[str, str], report: SkipReport) -> TraceJob | None:
    report.rows += 1
    try:
        arrival = _arrival(row["arrival"])
        duration = _csv.number(row, "duration")
        gpus = _csv.integer(row, "gpus")
        ranks = _csv.integer(row, "ranks", 1)
        milli = _csv.integer(row, "gpu_milli", 1000)
        priority = _csv.integer(row, "priority", 0)
    except _csv.BadValue as e:
        report.skip(f"unparseable value in column '{e.column}'")
        return None
    if gpus <= 0:
        report.skip("CPU-only job (gpus == 0)")
        return None
    if duration <= 0:
        report.skip("zero or negative duration")
        return None
    if ranks <= 0 or gpus % ranks:
        report.skip("gpus is not a multiple of ranks")
        return None
    if not 0 < milli <= 1000 or (milli < 1000 and gpus > 1):
        report.skip("gpu_milli outside 1..1000 or below 1000 on a multi-GPU job")
        return None
    if milli < 1000:
        report.note("fractional GPU request (gpu_milli < 1000)")
    return TraceJob(
        id=row["id"], arrival=arrival, duration=duration, ranks=ranks, gpus_per_rank=gpus // ranks,
        gpu_milli=milli, gpu_models=tuple(m for m in row.get("gpu_model", "").split("|") if m),
        user=row.get("user", ""), vc=row.get("vc", "") or row.get("tenant", ""),
        priority=priority,
    )
