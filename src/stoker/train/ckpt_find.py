"""Which checkpoint a run resumes from: the newest that verifies, or the one ``--resume`` names.

Paths and manifests only (no torch.distributed.checkpoint), so that the launcher can check a
``--resume`` before any rank starts without importing what only the ranks need.
"""

from __future__ import annotations

from pathlib import Path

from stoker.observe.events import EventLog
from stoker.spec.errors import StokerError
from stoker.train.ckpt_layout import CHECKPOINTS, list_steps, step_dir
from stoker.train.ckpt_manifest import TornCheckpoint, verify


def find_latest(run_dir: Path, events: EventLog | None = None,
                checksums: bool = True) -> Path | None:
    """The newest checkpoint that verifies; newer torn ones are reported and passed over."""
    for step in reversed(list_steps(run_dir)):
        path = step_dir(run_dir, step)
        try:
            verify(path, checksums)
            return path
        except TornCheckpoint as e:
            if events is not None:
                events.emit("checkpoint_skipped", step=step, path=str(path), reason=e.reason)
    return None


def resolve_resume(run_dir: Path, resume: str | Path, events: EventLog | None = None,
                   checksums: bool = True) -> Path | None:
    """``--resume``: "auto" = newest good checkpoint of ``run_dir`` (None when there is none);
    a path = that checkpoint, or the newest good one of that run directory. ``checksums=False``
    checks sizes only (a quick look before launching; the ranks check the sums)."""
    if str(resume) == "auto":
        return find_latest(run_dir, events, checksums)
    path = Path(resume)
    if (path / CHECKPOINTS).is_dir():
        found = find_latest(path, events, checksums)
        if found is None:
            raise StokerError(f"--resume {resume}: no committed checkpoint in that run")
        return found
    if not path.is_dir():
        raise StokerError(f"--resume {resume}: no such checkpoint or run directory")
    try:
        verify(path, checksums)
    except TornCheckpoint as e:
        raise StokerError(f"--resume {resume}: {e.reason}") from None
    return path
