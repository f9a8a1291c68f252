"""job.toml validation: the examples load; sizes and durations parse; mistakes name their key."""

from __future__ import annotations

from pathlib import Path

import pytest

from stoker.sched.config import pending_job
from stoker.spec.cluster import load_cluster
from stoker.spec.errors import ConfigError
from stoker.spec.job import load_job, parse_bytes, parse_seconds

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("path", sorted((EXAMPLES / "jobs").glob("*.toml")), ids=lambda p: p.name)
def test_examples_load_and_fit_the_example_cluster(path: Path) -> None:
    cluster = load_cluster(EXAMPLES / "cluster.toml")
    spec = load_job(path)
    cluster.check_job(spec, str(path))
    job = pending_job(cluster, spec, "id", 0.0)
    assert job.ranks == spec.job_roles()[0].ranks and job.queue == spec.queue
    assert len(job.roles) == len(spec.job_roles()) - 1
    if spec.train_config is not None:
        assert Path(spec.train_config).is_absolute() and Path(spec.train_config).is_file()


def test_train_job_fields() -> None:
    spec = load_job(EXAMPLES / "jobs" / "urgent.toml")
    assert spec.kind == "train" and spec.priority_class == "high"
    assert spec.placement.topology == "node" and spec.placement.topology_mode == "required"
    assert "train.steps=50" in spec.overrides


@pytest.mark.parametrize(("text", "value"), [
    ("8GiB", 8 * 2**30), ("512MB", 512 * 10**6), ("1.5Gi", int(1.5 * 2**30)), ("100", 100),
    (4096, 4096),
])
def test_parse_bytes(text: str | int, value: int) -> None:
    assert parse_bytes(text) == value


@pytest.mark.parametrize(("text", "value"), [
    ("90m", 5400.0), ("2h", 7200.0), ("1d", 86400.0), ("30s", 30.0), ("45", 45.0), (7, 7),
])
def test_parse_seconds(text: str | int, value: float) -> None:
    assert parse_seconds(text) == value


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "job.toml"
    path.write_text('name = "j"\nqueue = "q"\n' + body)
    return path


@pytest.mark.parametrize(("body", "key"), [
    ('command = ["x"]\ntrain_config = "t.toml"\n', "train_config"),
    ("", "train_config"),
    ("command = []\n", "command"),
    ('command = ["x"]\noverrides = ["a.b=1"]\n', "overrides"),
    ('train_config = "t.toml"\noverrides = ["nonsense"]\n', "overrides"),
    ('command = ["x"]\nranks = 0\n', "ranks"),
    ('command = ["x"]\nmax_run_time = "soon"\n', "max_run_time"),
    ('command = ["x"]\n[resources]\nmemory = "lots"\n', "resources.memory"),
    ('command = ["x"]\n[resources]\ngpus = -1\n', "resources.gpus"),
    ('command = ["x"]\n[placement]\ntopology_mode = "maybe"\n', "placement.topology_mode"),
    ('command = ["x"]\nenv = { "1BAD" = "v" }\n', "env.1BAD"),
    ('command = ["x"]\nmax_restart = 3\n', "max_restart"),
])
def test_rejected_jobs_name_the_key(tmp_path: Path, body: str, key: str) -> None:
    path = write(tmp_path, body)
    with pytest.raises(ConfigError) as info:
        load_job(path)
    assert info.value.key == key, info.value
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_bad_name(tmp_path: Path) -> None:
    path = tmp_path / "job.toml"
    path.write_text('name = "no spaces"\nqueue = "q"\ncommand = ["x"]\n')
    with pytest.raises(ConfigError) as info:
        load_job(path)
    assert info.value.key == "name"
