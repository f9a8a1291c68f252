"""Metric sinks (issue 14 item 4): one short CPU run with every sink on, resumed once, each sink
read back with its own reader and compared with metrics.jsonl; a missing package and an unknown
sink refused before anything starts."""

from __future__ import annotations

import importlib.util
import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from stoker.observe.metrics import read_metrics
from stoker.observe.sinks import SINK_MODULES, run_id
from stoker.spec import loading
from stoker.spec.errors import ConfigError
from stoker.spec.train import TrainConfig
from train_helpers import EXAMPLE, train_in_process

FIRST, STEPS = 4, 6  # the first attempt's steps, and the resume's end
ALL_SINKS = 'telemetry.sinks=["jsonl", "tensorboard", "wandb", "mlflow"]'
SMALL = [
    "model.dim=64", "model.n_layers=2", "model.n_heads=2", "model.n_kv_heads=2",
    "model.ffn_hidden=128", "train.seq_len=32", "train.global_batch_size=8",
    "train.micro_batch_size=8", "train.eval_interval=0", "train.log_interval=2",
    "telemetry.peak_flops=1e11", "telemetry.live=false", "checkpoint.async=false",
    "parallel.strategy=none", "optim.lr=0.002", ALL_SINKS,
]


def require_sink_packages() -> None:
    """tensorboard, wandb and mlflow (the dev extra has them): else skip (fail under CI=true)."""
    missing = [m for m in SINK_MODULES.values() if importlib.util.find_spec(m) is None]
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and the sink tests need {', '.join(missing)} (pip install "
                        "-e '.[dev]')", pytrace=False)
        pytest.skip(f"missing: {', '.join(missing)}")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_sink_packages()
    """Steps 1-4 (saved at 4), then resumed to step 6: a second attempt in the same run dir."""
    run_dir = tmp_path_factory.mktemp("sinks") / "run"
    train_in_process(run_dir, [*SMALL, f"train.steps={FIRST}"])
    train_in_process(run_dir, [*SMALL, f"train.steps={STEPS}"], resume="auto")
    return run_dir


def jsonl(run: Path, key: str) -> dict[int, float]:
    """Step -> the number at ``key`` in metrics.jsonl (``rank_step_times/0``: an item's path)."""
    out = {}
    for record in read_metrics(run / "metrics.jsonl"):
        value: Any = record
        for part in key.split("/"):
            value = value[int(part)] if isinstance(value, list) else value[part]
        out[record["step"]] = float(value)
    return out


def test_every_step_logged_and_no_sink_failed(run: Path) -> None:
    assert jsonl(run, "attempt") == {s: 1 if s <= FIRST else 2 for s in range(1, STEPS + 1)}
    assert "sink_error" not in (run / "events.jsonl").read_text()


def test_tensorboard_events_equal_metrics(run: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 2  # an attempt each
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    for key in ("loss", "lr", "grad_norm", "tokens_per_s", "mfu", "peak_mem_bytes"):
        logged = {e.step: e.value for e in acc.Scalars(key)}
        assert logged == pytest.approx(jsonl(run, key), rel=1e-6), key
    assert {e.step for e in acc.Scalars("rank_step_times/0")} == set(range(1, STEPS + 1))
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["optim.lr"].number_value == pytest.approx(0.002)
    assert hparams["model.preset"].string_value == "tiny"


def wandb_records(path: Path) -> list[Any]:
    """The records of a W&B run file: the LevelDB log format (32 KiB blocks of chunks, each
    with a 7-byte header: CRC, length, type) after W&B's 7-byte file header, each record one of
    wandb's own protobuf ``Record``s."""
    from wandb.proto.wandb_internal_pb2 import Record

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, pieces, records = 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pieces += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            records.append(Record.FromString(pieces))
            pieces = b""
    return records


def test_wandb_offline_runs_hold_metrics_and_config(run: Path) -> None:
    """One offline run per attempt, both with the run dir's id (``wandb sync`` makes them one)."""
    run_files = sorted((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(run_files) == 2
    loss = {}
    for run_file in run_files:
        records = wandb_records(run_file)
        assert records[-1].WhichOneof("record_type") == "exit"  # finished
        (meta,) = [r.run for r in records if r.HasField("run")]
        assert meta.run_id == run_id(run.resolve())
        config = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                  for item in meta.config.update}
        assert config["optim"]["lr"] == pytest.approx(0.002)
        for r in records:
            if r.HasField("history"):
                items = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in r.history.item}
                loss[r.history.step.num] = items["loss"]
                assert "rank_step_times/0" in items and "step_time_s" in items
    assert loss == jsonl(run, "loss")


def test_mlflow_store_holds_metrics_and_params(run: Path) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{run.resolve() / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    assert experiment is not None
    (found,) = client.search_runs([experiment.experiment_id])  # the resume found it again
    assert found.info.status == "FINISHED"
    assert found.data.params["optim.lr"] == "0.002"
    for key in ("loss", "grad_norm", "rank_step_times/0"):
        history = client.get_metric_history(found.info.run_id, key)
        assert {m.step: m.value for m in history} == pytest.approx(jsonl(run, key)), key


def test_unknown_sink_is_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"telemetry\.sinks: unknown sink 'neptune'"):
        loading.load(TrainConfig, EXAMPLE, ['telemetry.sinks=["neptune"]'])


def test_missing_package_is_one_line_naming_the_extra(tmp_path: Path) -> None:
    """`stoker train` with wandb hidden (an import of it fails as if not installed): exit 2,
    one line, before the run dir exists."""
    hide = ("import sys, runpy; sys.modules['wandb'] = None; "
            "runpy.run_module('stoker', run_name='__main__')")
    run_dir = tmp_path / "run"
    done = subprocess.run([sys.executable, "-c", hide, "train", str(EXAMPLE), "--run-dir",
                           str(run_dir), "--set", 'telemetry.sinks=["jsonl", "wandb"]'],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"error: {EXAMPLE}: telemetry.sinks: 'wandb' needs `pip install stoker[wandb]` (the "
        "'wandb' package is not installed)"]
    assert not run_dir.exists()
