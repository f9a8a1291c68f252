"""Where a run's checkpoints live: ``RUN_DIR/checkpoints/step-NNNNNNNN/`` (no torch here, so
the control plane can list them without importing the runtime)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CHECKPOINTS = "checkpoints"
STEP_PREFIX = "step-"
RUN_META = "stoker.json"  # rank 0's: the config saved under, the schedule's start (resume_check)


def step_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"{STEP_PREFIX}{step:08d}"


def list_steps(run_dir: Path) -> list[int]:
    """Steps of every checkpoint directory under ``run_dir`` (committed or not), ascending."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    steps = []
    for p in root.iterdir():
        tail = p.name.removeprefix(STEP_PREFIX)
        if p.is_dir() and p.name.startswith(STEP_PREFIX) and tail.isdigit():
            steps.append(int(tail))
    return sorted(steps)


def read_run_meta(ckpt: Path) -> dict[str, Any]:
    """A checkpoint's RUN_META ({} for one written before it existed)."""
    try:
        meta = json.loads((Path(ckpt) / RUN_META).read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}
