"""What the control plane reads of a training job's run: where its metrics file is (inside
the job's directory), how many steps it trains, and its progress (step, loss, throughput, ETA)
from the metrics index.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from stoker.control.launch import RUN
from stoker.control.metrics_index import MetricsBook, MetricsIndex, MetricsSlice
from stoker.control.states import TERMINAL
from stoker.control.store import JobRecord
from stoker.spec import loading
from stoker.spec.api import CheckpointView, ProgressView
from stoker.spec.train import TrainConfig
from stoker.train.ckpt_layout import list_steps, step_dir
from stoker.train.ckpt_manifest import TornCheckpoint, read_manifest

RECENT = 20  # steps averaged for throughput, MFU and the ETA
_MAX_CONFIGS = 4096


@dataclass(frozen=True)
class TrainRun:
    root: PurePosixPath  # the run directory, relative to the jobs directory
    metrics: PurePosixPath  # likewise
    steps: int


_RUNS: dict[tuple[int, float], TrainRun | None] = {}


def train_run(job: JobRecord) -> TrainRun | None:
    """The job's run (None: not a training job, or a stored config that no longer parses)."""
    key = (job.id, job.created_at)
    if key not in _RUNS:
        if len(_RUNS) >= _MAX_CONFIGS:
            _RUNS.clear()
        _RUNS[key] = _parse(job)
    return _RUNS[key]


def _parse(job: JobRecord) -> TrainRun | None:
    train = job.spec.get("train") if isinstance(job.spec, dict) else None
    if not isinstance(train, dict):
        return None
    try:
        cfg = loading.validate(TrainConfig, train, None)
    except Exception:  # a config of an older version: no run to read
        return None
    name = PurePosixPath(cfg.telemetry.metrics_file)  # relative, checked at submission
    root = PurePosixPath(str(job.id), RUN)
    return TrainRun(root, root / name, cfg.train.steps)


class RunMetrics:
    """Every training job's metrics, through one incremental index per job."""

    def __init__(self, jobs_dir: Path, keep: int = 256) -> None:
        self.jobs_dir = jobs_dir
        self.book = MetricsBook(keep)

    def index(self, job: JobRecord) -> MetricsIndex:
        return self.book.index((job.id, job.created_at))

    def read(self, job: JobRecord, run: TrainRun, since: int, revision: str | None,
             limit: int, fields: list[str] | None) -> MetricsSlice:
        return self.index(job).read(self.jobs_dir, run.metrics, since, revision, limit, fields)

    def progress(self, job: JobRecord) -> ProgressView | None:
        """Where a training job stands (None: not a training job, or no step recorded)."""
        run = train_run(job)
        if run is None:
            return None
        try:
            recent = self.index(job).tail(self.jobs_dir, run.metrics, RECENT)
        except PermissionError:
            return None
        return progress(recent, run.steps, job.state in TERMINAL)


    def checkpoints(self, job: JobRecord) -> list[CheckpointView]:
        """The run's checkpoint directories, oldest first, from their manifests alone."""
        run = train_run(job)
        if run is None:
            return []
        root = self.jobs_dir / run.root
        found = []
        try:
            for step in list_steps(root):
                try:
                    m = read_manifest(step_dir(root, step))
                except TornCheckpoint:
                    found.append(CheckpointView(step=step, committed=False))
                    continue
                found.append(CheckpointView(step=step, committed=True, bytes=m.total_bytes,
                                            created=m.created))
        except PermissionError:
            return []
        return found


def progress(recent: list[dict[str, Any]], steps: int, over: bool) -> ProgressView | None:
    """From the last records: the current step, its loss, the latest eval loss among them,
    mean tokens/s, MFU and step time over them, and the ETA (steps left x mean step time)."""
    if not recent:
        return None
    last = recent[-1]

    def mean(key: str) -> float | None:
        values = [r[key] for r in recent if isinstance(r.get(key), int | float)]
        return sum(values) / len(values) if values else None

    step_time = mean("step_time_s")
    step = int(last["step"])
    left = max(0, steps - step)
    eta = None if over or step_time is None else left * step_time
    evals = [r["eval_loss"] for r in recent if isinstance(r.get("eval_loss"), int | float)]
    at = last.get("time")
    return ProgressView(step=step, steps=steps, loss=_number(last.get("loss")),
                        eval_loss=evals[-1] if evals else None,
                        tokens_per_s=mean("tokens_per_s"), mfu=mean("mfu"),
                        step_time_s=step_time, eta_s=eta,
                        updated_at=at if isinstance(at, int | float) else None)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None
