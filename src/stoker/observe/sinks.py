"""Metric sinks beside metrics.jsonl: TensorBoard, Weights & Biases (offline) and MLflow.

    sinks = open_sinks(cfg, run_dir, events)   # rank 0; None when [telemetry] sinks adds none
    sinks.log(record)                          # each metrics.jsonl record, as it is written
    sinks.close()

``[telemetry] sinks`` names them. metrics.jsonl is written whatever the list says: the summary,
resume, the dashboard and the control plane read it. Each sink gets the resolved config once
(as hyperparameters) and every record's numbers, flattened to scalars named by their path
(``rank_step_times/1``; a nested ``{"straggler": {"relative": [..]}}`` gives
``straggler/relative/0``), so a field added to the record reaches every sink.

Each backend is an optional package installed through the extra of its name (``pip install
stoker[wandb]``); `check_installed` refuses a missing one before any process starts. The
backends are written to by one background thread fed by a queue: the step loop only enqueues.
A sink that fails is dropped with a ``sink_error`` event; the run and metrics.jsonl go on.

Where each writes, and what a resumed run (same run dir) does:

- ``tensorboard``: RUN_DIR/tensorboard/ (``torch.utils.tensorboard.SummaryWriter``). A new
  events file per attempt, opened with ``purge_step`` at its first step, so TensorBoard hides
  the earlier attempt's records of the steps redone.
- ``wandb``: an offline run under RUN_DIR/wandb/ (no network, no login; ``wandb sync`` uploads
  it). Its id is fixed by the run dir, so every attempt's offline run syncs into one W&B run;
  W&B keeps the first value of a step logged twice.
- ``mlflow``: one MLflow run, in ``MLFLOW_TRACKING_URI`` when set, else in
  RUN_DIR/mlflow.db (SQLite: MLflow 3 refuses its file store by default), found again on resume
  by its ``stoker.run_dir`` tag. Redone steps are added to the metric history (MLflow keeps
  every value); parameters are written when the run is created.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from stoker.spec.errors import ConfigError

if TYPE_CHECKING:
    from stoker.observe.events import EventLog
    from stoker.spec.train import TrainConfig

SINK_MODULES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
NOT_SCALARS = ("step", "time")  # the x axis, and a unix time the backends stamp themselves
CLOSE_TIMEOUT_S = 120.0
MLFLOW_RUN_TAG = "stoker.run_dir"


class Sink(Protocol):
    def log_config(self, config: dict[str, Any]) -> None: ...

    def log(self, step: int, scalars: dict[str, float]) -> None: ...

    def flush(self) -> None:
        """Write what ``log`` buffered: called when the queue is empty (once per log step)."""

    def close(self) -> None: ...


def check_installed(sinks: Iterable[str], source: str | None = None) -> None:
    """A ConfigError naming the extra to install for the first sink whose package is missing."""
    for name in sinks:
        module = SINK_MODULES.get(name)
        if module is None:
            continue
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise ConfigError(source, "telemetry.sinks", f"{name!r} needs `pip install "
                              f"stoker[{name}]` (the {module!r} package is not installed)")


def scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """A metrics record's numbers, nested dicts and lists flattened to ``a/b/0`` names."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if key not in NOT_SCALARS:
            _flatten(key, value, out)
    return out


def _flatten(name: str, value: Any, out: dict[str, float]) -> None:
    if isinstance(value, bool | int | float):
        out[name] = float(value)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _flatten(f"{name}/{key}", item, out)
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _flatten(f"{name}/{i}", item, out)


def flat_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 3e-3}}`` -> ``{"optim.lr": 3e-3}``; values other than numbers, strings
    and booleans (lists, None) as their string."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_config(value, f"{name}."))
        else:
            out[name] = value if isinstance(value, bool | int | float | str) else str(value)
    return out


# ---------------------------------------------------------------------- the backends


class TensorBoardSink:
    """RUN_DIR/tensorboard/; the writer opens at the first step this attempt logs."""

    def __init__(self, run_dir: Path) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary
        from torch.utils.tensorboard import SummaryWriter

        self._open = SummaryWriter
        self.Summary = Summary
        self.log_dir = run_dir / "tensorboard"
        self.config: dict[str, Any] = {}
        self.writer: Any = None

    def log_config(self, config: dict[str, Any]) -> None:
        self.config = flat_config(config)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        if self.writer is None:
            self.writer = self._open(str(self.log_dir), purge_step=step)
            self._write_hparams()
        # One event for the step's scalars: add_scalar writes one per scalar, at 3.5x the CPU.
        values = [self.Summary.Value(tag=k, simple_value=v) for k, v in scalars.items()]
        self.writer._get_file_writer().add_summary(self.Summary(value=values), step)

    def flush(self) -> None:
        pass  # the writer's own thread writes the events file

    def _write_hparams(self) -> None:
        """The config in the HPARAMS tab, in this run (``add_hparams`` would make another)."""
        from torch.utils.tensorboard.summary import hparams

        file_writer = self.writer._get_file_writer()
        for summary in hparams(self.config, {}):  # type: ignore[no-untyped-call]
            file_writer.add_summary(summary)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class WandbSink:
    """An offline W&B run under RUN_DIR/wandb/, its id fixed by the run dir."""

    def __init__(self, run_dir: Path) -> None:
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        self.wandb = wandb
        self.run_dir = run_dir
        self.run: Any = None

    def log_config(self, config: dict[str, Any]) -> None:
        where = self.run_dir.resolve()
        self.run = self.wandb.init(
            mode="offline", dir=str(where), id=run_id(where), name=where.name,
            project=os.environ.get("WANDB_PROJECT", "stoker"), config=config,
            settings=self.wandb.Settings(silent=True, console="off"))

    def log(self, step: int, scalars: dict[str, float]) -> None:
        self.run.log(scalars, step=step)

    def flush(self) -> None:
        pass  # wandb-core writes the run file

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()


class MlflowSink:
    """One MLflow run per run dir: in MLFLOW_TRACKING_URI, else RUN_DIR/mlflow.db."""

    def __init__(self, run_dir: Path, experiment: str) -> None:
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient

        for logger in ("mlflow", "alembic"):  # not a line per table the new store creates
            logging.getLogger(logger).setLevel(logging.WARNING)

        self.Metric, self.Param = Metric, Param
        self.metrics: list[Metric] = []
        where = run_dir.resolve()
        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{where / 'mlflow.db'}"
        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = (found.experiment_id if found is not None else
                         self.client.create_experiment(experiment))
        runs = self.client.search_runs(
            [experiment_id], filter_string=f"tags.`{MLFLOW_RUN_TAG}` = '{where}'", max_results=1)
        self.new = not runs
        self.run_id = (self.client.create_run(experiment_id, run_name=where.name,
                                              tags={MLFLOW_RUN_TAG: str(where)}).info.run_id
                       if self.new else runs[0].info.run_id)
        if not self.new:
            self.client.update_run(self.run_id, status="RUNNING")

    def log_config(self, config: dict[str, Any]) -> None:
        if not self.new:  # parameters cannot change: a resume's are the first attempt's
            return
        params = [self.Param(k, str(v)) for k, v in flat_config(config).items()]
        for i in range(0, len(params), 100):  # MLflow's limit per batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def log(self, step: int, scalars: dict[str, float]) -> None:
        stamp = int(time.time() * 1000)
        self.metrics += [self.Metric(k, v, stamp, step) for k, v in scalars.items()]

    def flush(self) -> None:
        """One transaction per 1,000 metrics (MLflow's limit): a log step's records together
        cost a fifth of what one call per record does."""
        metrics, self.metrics = self.metrics, []
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])

    def close(self) -> None:
        self.flush()
        self.client.set_terminated(self.run_id)


def run_id(run_dir: Path) -> str:
    """A W&B run id that is the same for every attempt in one run dir."""
    return hashlib.sha1(str(run_dir).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------- the thread


class Sinks:
    """The sinks, opened and written to by one thread; ``log`` only enqueues."""

    def __init__(self, openers: dict[str, Callable[[], Sink]], config: dict[str, Any],
                 on_error: Callable[[str, str], None]) -> None:
        self.openers = openers
        self.config = config
        self.on_error = on_error
        self.queue: queue.Queue[tuple[int, dict[str, float]] | None] = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="stoker-sinks", daemon=True)
        self.thread.start()

    def log(self, record: Mapping[str, Any]) -> None:
        self.queue.put((int(record["step"]), scalars(record)))

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Write what is queued, close every sink; gives up on a sink stuck past ``timeout``."""
        self.queue.put(None)
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.on_error("all", f"still writing after {timeout:.0f} s: not waited for")

    def _run(self) -> None:
        sinks = self._open_all()
        while (items := self._next()) is not None:
            for name, sink in list(sinks.items()):
                try:
                    for item in items:
                        sink.log(*item)
                    sink.flush()
                except Exception as e:
                    self._failed(name, e)
                    del sinks[name]
        for name, sink in sinks.items():
            try:
                sink.close()
            except Exception as e:
                self._failed(name, e)

    def _next(self) -> list[tuple[int, dict[str, float]]] | None:
        """Every queued record (waiting for one), or None once ``close`` asked to stop."""
        first = self.queue.get()
        if first is None:
            return None
        items = [first]
        while not self.queue.empty():  # this thread is the only reader
            item = self.queue.get()
            if item is None:
                self.queue.put(None)  # stop once these are written
                break
            items.append(item)
        return items

    def _open_all(self) -> dict[str, Sink]:
        sinks: dict[str, Sink] = {}
        for name, open_sink in self.openers.items():
            try:
                sink = open_sink()
                sink.log_config(self.config)
                sinks[name] = sink
            except Exception as e:
                self._failed(name, e)
        return sinks

    def _failed(self, name: str, error: Exception) -> None:
        self.on_error(name, f"{type(error).__name__}: {error}"[:2000])


def open_sinks(cfg: TrainConfig, run_dir: Path, events: EventLog) -> Sinks | None:
    """Rank 0's sinks for ``[telemetry] sinks``, or None when it names only jsonl."""

    def on_error(sink: str, error: str) -> None:
        events.emit("sink_error", sink=sink, error=error)

    return open_named(cfg.telemetry.sinks, run_dir, cfg.train.name,
                      cfg.model_dump(by_alias=True), on_error)


def open_named(sinks: Iterable[str], run_dir: Path, experiment: str, config: dict[str, Any],
               on_error: Callable[[str, str], None] = lambda sink, error: None
               ) -> Sinks | None:
    """The sinks named (jsonl aside: its writer is the caller's), or None when there are none;
    a sink dropped is reported to ``on_error`` and on stderr."""
    names = [n for n in sinks if n in SINK_MODULES]
    if not names:
        return None
    check_installed(names)
    openers: dict[str, Callable[[], Sink]] = {
        "tensorboard": lambda: TensorBoardSink(run_dir),
        "wandb": lambda: WandbSink(run_dir),
        "mlflow": lambda: MlflowSink(run_dir, experiment),
    }

    def dropped(sink: str, error: str) -> None:
        on_error(sink, error)
        print(f"warning: telemetry sink {sink!r} dropped: {error}", file=sys.stderr)

    return Sinks({n: openers[n] for n in names}, config, dropped)
