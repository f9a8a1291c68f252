"""A control-plane training job's telemetry for goodput: its run's metrics.jsonl (one record per
step, appended by every attempt) and the checkpoint stalls of its events.jsonl; and the
stragglers and the notable run events its events.jsonl names, for the job's detail.

The run directory belongs to the job's tenant, so the files are opened without following any
link (`safe_fs`), must be regular files, and are read up to `MAX_BYTES`; a line that is not a
record is skipped.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from stoker.control.goodput import Step, Telemetry
from stoker.control.launch import RUN
from stoker.control.safe_fs import open_beneath
from stoker.observe.events import EVENTS_FILE
from stoker.spec.api import RunEventView, StragglerView

MAX_BYTES = 64 << 20
METRICS_FILE = "metrics.jsonl"
STALL_EVENTS = ("checkpoint_committed", "checkpoint_failed")
STRAGGLER_EVENTS = ("straggler", "straggler_cleared")


def read_telemetry(jobs_dir: Path, job_id: int, train: Mapping[str, Any] | None
                   ) -> Telemetry | None:
    """The job's telemetry (None: not a training job, or no step recorded yet)."""
    if train is None:
        return None
    run = PurePosixPath(str(job_id), RUN)
    name = (train.get("telemetry") or {}).get("metrics_file") or METRICS_FILE
    relative = PurePosixPath(name)
    if relative.is_absolute():
        try:
            relative = relative.relative_to(PurePosixPath(jobs_dir) / run)
        except ValueError:
            return None
    steps = [s for r in _records(jobs_dir, run / relative) if (s := _step(r)) is not None]
    if not steps:
        return None
    events = list(_records(jobs_dir, run / EVENTS_FILE))
    stalls = [(float(r["time"]), float(r["stall_s"])) for r in events
              if r.get("event") in STALL_EVENTS and _number(r.get("time"))
              and _number(r.get("stall_s"))]
    return Telemetry(steps, stalls, straggling(events))


def straggling(events: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """The wall-time intervals in which some rank was flagged: from a `straggler` event until
    every flagged rank is cleared, or an attempt starts afresh (its ranks are judged anew);
    one still open lasts to the end."""
    intervals: list[tuple[float, float]] = []
    flagged: set[Any] = set()
    since = 0.0
    for r in events:
        kind, at = r.get("event"), r.get("time")
        if not _number(at) or kind not in (*STRAGGLER_EVENTS, "start"):
            continue
        was = bool(flagged)
        if kind == "straggler":
            flagged.add(r.get("rank"))
        elif kind == "straggler_cleared":
            flagged.discard(r.get("rank"))
        else:
            flagged.clear()
        if flagged and not was:
            since = float(at)
        elif was and not flagged:
            intervals.append((since, float(at)))
    if flagged:
        intervals.append((since, float("inf")))
    return intervals


def read_stragglers(jobs_dir: Path, job_id: int) -> list[StragglerView]:
    """The straggler events of the job's run, oldest first (a record that is not one is
    skipped)."""
    run = PurePosixPath(str(job_id), RUN)
    return [view for r in _records(jobs_dir, run / EVENTS_FILE)
            if r.get("event") in STRAGGLER_EVENTS and (view := _straggler(r)) is not None]


RUN_EVENT_LIMIT = 200  # the newest, on the job's page


def read_run_events(jobs_dir: Path, job_id: int) -> list[RunEventView]:
    """What a person wants to see of the run's events.jsonl, one line each, oldest first:
    attempts started (and from which checkpoint), restarts, failures, hangs, signals, failed
    checkpoints, loss-guard actions, schedule changes and stragglers; at most the newest
    `RUN_EVENT_LIMIT`. Committed checkpoints are the checkpoint list's, not here."""
    run = PurePosixPath(str(job_id), RUN)
    shown = [RunEventView(at=float(r["time"]), kind=str(r["event"]), text=text)
             for r in _records(jobs_dir, run / EVENTS_FILE)
             if _number(r.get("time")) and (text := _describe(r)) is not None]
    return shown[-RUN_EVENT_LIMIT:]


def _describe(r: dict[str, Any]) -> str | None:
    kind, get = r.get("event"), r.get
    match kind:
        case "start":
            how = "resuming" if get("resumed") else "from scratch"
            ranks = get("world_size")
            return f"attempt {get('attempt')} started at step {get('step')}, {how}, " \
                   f"{ranks} rank{'' if ranks == 1 else 's'}"
        case "checkpoint_loaded":
            changed = " (with a changed config)" if get("config_changed") else ""
            return f"resumed from the checkpoint of step {get('step')}{changed}"
        case "restart":
            return f"restart {get('attempt')} of at most {get('max_restarts')}"
        case "failure":
            where = "" if get("rank") is None else f" on rank {get('rank')}"
            return f"attempt {get('attempt')} failed{where}: {get('cause')} " \
                   f"(exit {get('exit_code')}) {get('message') or ''}".rstrip()
        case "hang":
            return f"no progress for {get('silent_s')} s at step {get('step')}"
        case "signal":
            return f"received {get('signal')}"
        case "checkpoint_failed":
            return f"checkpoint of step {get('step')} failed: {get('error')}"
        case "loss_guard":
            return f"loss guard at step {get('step')}: {get('action')} ({get('reason')})"
        case "schedule_changed":
            return f"the LR schedule changed at step {get('step')}" + \
                (", restarted" if get("restarted") else "")
        case "straggler":
            return f"rank {get('rank')} straggling in {get('section')} from step " \
                   f"{get('step')}: {get('score'):.2f} of the fastest rank's speed"
        case "straggler_cleared":
            return f"rank {get('rank')} no longer straggling at step {get('step')}"
        case "error":
            return f"error at step {get('step')}: {get('error')}"
    return None


def flagged_at_end(jobs_dir: Path, job_id: int) -> list[int]:
    """The ranks of the run's latest attempt still flagged as stragglers (not cleared since it
    started), in the order they were flagged."""
    flagged: dict[int, None] = {}
    for r in _records(jobs_dir, PurePosixPath(str(job_id), RUN) / EVENTS_FILE):
        kind, rank = r.get("event"), r.get("rank")
        if kind == "start":
            flagged.clear()
        elif kind in STRAGGLER_EVENTS and isinstance(rank, int):
            if kind == "straggler":
                flagged[rank] = None
            else:
                flagged.pop(rank, None)
    return list(flagged)


def _straggler(r: dict[str, Any]) -> StragglerView | None:
    if not all(_number(r.get(k)) for k in ("time", "rank", "step", "score")):
        return None
    section, steps = r.get("section"), r.get("steps")
    return StragglerView(event=r["event"], at=float(r["time"]), rank=int(r["rank"]),
                         step=int(r["step"]), score=float(r["score"]),
                         section=section if isinstance(section, str) else None,
                         steps=int(steps) if isinstance(steps, int) else None)


def _step(r: dict[str, Any]) -> Step | None:
    keys = ("step", "time", "step_time_s", "data_wait_s")
    if not all(_number(r.get(k)) for k in keys):
        return None
    return Step(int(r["step"]), float(r["time"]), float(r["step_time_s"]),
                float(r["data_wait_s"]))


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value \
        and abs(value) != float("inf")


def _records(root: Path, relative: PurePosixPath) -> Iterator[dict[str, Any]]:
    try:
        fd = open_beneath(root, relative)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return
        data = f.read(MAX_BYTES)
    for line in data.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            yield record
