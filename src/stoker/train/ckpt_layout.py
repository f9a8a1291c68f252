"""Where a run's checkpoints live: ``RUN_DIR/checkpoints/step-NNNNNNNN/`` (no torch here, so
the control plane can list them without importing the runtime)."""

from __future__ import annotations

from pathlib import Path

CHECKPOINTS = "checkpoints"
STEP_PREFIX = "step-"


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
