"""Microsoft Philly trace (`cluster_job_log`, ATC'19): a JSON list of jobs.

Each job: status (Pass / Killed / Failed), vc, jobid, user, submitted_time and attempts, each
attempt with start_time, end_time and detail (one entry per machine: ip and its gpus). The run
time is the sum of the attempts' run times (the work the job did); the GPUs and ranks come from
the first attempt that ran: one rank per machine when machines hold equal GPU counts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from stoker.sim.loaders import _csv
from stoker.sim.loaders.helios import split_gpus
from stoker.sim.trace import SkipReport, Trace, TraceJob, rebase
from stoker.spec.errors import ConfigError


def load(path: str | Path) -> Trace:
    try:
        data = json.loads(_csv.open_text(path))
    except json.JSONDecodeError as e:
        raise ConfigError(str(path), None, f"invalid JSON: {e}") from None
    if not isinstance(data, list):
        raise ConfigError(str(path), None, "expected a JSON list of jobs")
    report = SkipReport()
    jobs = [job for entry in data if (job := _job(entry, report))]
    return Trace(str(path), "philly", rebase(jobs), report)


def _job(entry: Any, report: SkipReport) -> TraceJob | None:
    report.rows += 1
    if not isinstance(entry, dict) or "jobid" not in entry or "submitted_time" not in entry:
        report.skip("not a job object (no jobid / submitted_time)")
        return None
    attempts = entry.get("attempts") or []
    try:
        arrival = _csv.timestamp(str(entry["submitted_time"]), "submitted_time")
        spans = [_span(a) for a in attempts]
    except (_csv.BadValue, TypeError, AttributeError):
        report.skip("unparseable submitted_time or attempt")
        return None
    if attempts and attempts[-1].get("end_time") in (None, "None"):
        report.skip("still running when the trace ended (last attempt has no end_time)")
        return None
    ran = [(seconds, detail) for seconds, detail in spans if seconds is not None]
    if not ran:
        report.skip("no attempt with both start_time and end_time")
        return None
    machines = [len(m.get("gpus") or []) for m in ran[0][1]]
    gpus = sum(machines)
    if gpus == 0:
        report.skip("CPU-only job (no GPUs in its attempts)")
        return None
    duration = sum(seconds for seconds, _ in ran)
    if duration <= 0:
        report.skip("zero or negative duration")
        return None
    uneven = len(set(machines)) > 1
    ranks, per_rank = (gpus, 1) if uneven else split_gpus(gpus, len(machines))
    return TraceJob(
        id=str(entry["jobid"]), arrival=arrival, duration=duration, ranks=ranks,
        gpus_per_rank=per_rank, user=str(entry.get("user") or ""), vc=str(entry.get("vc") or ""),
    )


def _span(attempt: dict[str, Any]) -> tuple[float | None, list[dict[str, Any]]]:
    """(run seconds or None when a time is missing, the attempt's machines)."""
    start, end = attempt.get("start_time"), attempt.get("end_time")
    detail = attempt.get("detail") or []
    if not start or not end or start == "None" or end == "None":
        return None, detail
    return _csv.timestamp(end, "end_time") - _csv.timestamp(start, "start_time"), detail
