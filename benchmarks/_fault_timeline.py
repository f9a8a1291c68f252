"""Where each fault of a soak's job went: seconds from the fault to each milestone.

    .venv/bin/python benchmarks/_fault_timeline.py STATE_DIR JOB_ID FAULTS_JSON

For each injected fault (``{"kind", "time"}``, as `soak.py` records them), from the store's
events and process table and the run's own files: the last step the failed attempt finished,
when the control plane noticed (its "failure"/"node-lost" annotation or the attempt's end),
SIGTERM, each process's end, the failed attempt's end (FAILED -> QUEUED), the next admission,
launch, the next attempt's training start (its "start" event, after the checkpoint load) and
its first step. Every figure is seconds after the fault.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stoker.control.sql_store import SqlStore
from stoker.control.store import EventRecord
from stoker.spec.api import JobState


def _records(path: Path) -> list[dict[str, Any]]:
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(x) for x in lines if x.strip()]


def _first(events: Sequence[EventRecord], after: float, **match: Any) -> float | None:
    for e in events:
        if e.at >= after and all(getattr(e, k) == v for k, v in match.items()):
            return e.at
    return None


def timelines(state_dir: Path, job_id: int, faults: Sequence[dict[str, Any]]
              ) -> list[dict[str, Any]]:
    """One dict per injected fault: milestone -> seconds after the fault (None: not seen)."""
    store = SqlStore.open(f"sqlite:///{state_dir}/stoker.db")
    try:
        events = sorted(store.events(job_id), key=lambda e: e.at)
        processes = store.processes(job_id)
    finally:
        store.engine.dispose()
    run = state_dir / "jobs" / str(job_id) / "run"
    steps = sorted(float(r["time"]) for r in _records(run / "metrics.jsonl") if "loss" in r)
    starts = sorted(float(r["time"]) for r in _records(run / "events.jsonl")
                    if r.get("event") == "start")
    out = []
    for fault in faults:
        if not fault.get("injected"):
            continue
        t = float(fault["time"])
        failed = _first(events, t, to_state=JobState.FAILED)
        noticed = min((e.at for e in events if e.at >= t and (
            e.kind in ("failure", "node-lost") or e.to_state == JobState.FAILED)), default=None)
        attempt = max((p.attempt for p in processes if p.create_time <= t), default=0)
        ended = {p.index: (p.ended_at, p.exit_code) for p in processes if p.attempt == attempt}
        launched = _first(events, t, to_state=JobState.STARTING)
        rel = {
            "last_step": max((s for s in steps if s <= (failed or t)), default=None),
            "noticed": noticed,
            "sigterm": _first(events, t, kind="signal"),
            "failed": failed,
            "admitted": _first(events, t, to_state=JobState.ADMITTED),
            "launched": launched,
            "train_start": next((s for s in starts if launched and s >= launched), None),
            "first_step": next((s for s in steps if launched and s >= launched), None),
        }
        row: dict[str, Any] = {"kind": fault["kind"], "attempt": attempt}
        row |= {k: None if v is None else round(v - t, 2) for k, v in rel.items()}
        row["processes"] = {i: (None if at is None else round(at - t, 2), code)
                            for i, (at, code) in sorted(ended.items())}
        out.append(row)
    return out


def main() -> None:
    state, job, faults = Path(sys.argv[1]), int(sys.argv[2]), json.loads(Path(sys.argv[3])
                                                                          .read_text())
    faults = faults.get("faults", faults) if isinstance(faults, dict) else faults
    for row in timelines(state, job, faults):
        print(json.dumps(row))


if __name__ == "__main__":
    main()
