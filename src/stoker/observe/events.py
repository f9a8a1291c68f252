"""The run's event log: RUN_DIR/events.jsonl, one JSON object per line, appended by any process.

Failures, restarts and their causes, checkpoints committed or skipped, guard actions. Every
record has ``time`` (unix seconds), ``event`` (a short name) and, when known, ``rank``.
Each line is one ``write`` on a file opened with O_APPEND, so lines from concurrent processes
(the ranks, the launcher) never interleave.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

EVENTS_FILE = "events.jsonl"


class EventLog:
    """Appends events to ``run_dir/events.jsonl``; ``rank`` is added to every record it writes."""

    def __init__(self, run_dir: str | Path, rank: int | None = None) -> None:
        self.path = Path(run_dir) / EVENTS_FILE
        self.rank = rank

    def emit(self, event: str, **fields: Any) -> dict[str, Any]:
        record: dict[str, Any] = {"time": time.time(), "event": event}
        if self.rank is not None:
            record["rank"] = self.rank
        record.update(fields)
        line = (json.dumps(record, default=str) + "\n").encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
        return record


def read_events(run_dir: str | Path, event: str | None = None) -> list[dict[str, Any]]:
    """Every record of ``run_dir/events.jsonl`` (only those named ``event`` if given)."""
    return [r for r in _records(Path(run_dir) / EVENTS_FILE) if event is None or
            r.get("event") == event]


def _records(path: Path) -> Iterator[dict[str, Any]]:
    if not path.is_file():
        return
    for line in path.read_text().splitlines():
        if line.strip():
            yield json.loads(line)
