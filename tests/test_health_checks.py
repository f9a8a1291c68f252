"""Node health checks on this machine's own CPU, gloo and disk: a healthy machine passes every
time, each injected fault fails exactly its check, and bad input is one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stoker.health.faults import ENV, faults_for, parse
from stoker.health.result import CheckResult
from stoker.health.runner import run_checks
from stoker.spec.cluster import load_cluster
from stoker.spec.errors import ConfigError
from stoker.spec.health import HealthConfig

CONFIG = HealthConfig()


def failed(results: tuple[CheckResult, ...]) -> set[str]:
    return {r.name for r in results if not r.passed}


@pytest.mark.slow
def test_healthy_machine_passes_repeatedly(tmp_path: Path) -> None:
    for _ in range(3):
        report = run_checks("n0", "prestart", CONFIG, tmp_path, gang_ranks=2, faults_text="")
        assert report.passed, report.reason()
        assert [r.name for r in report.results] == ["device", "matmul", "disk_free",
                                                    "disk_write", "allreduce"]
        assert all(r.duration_s >= 0 for r in report.results)
        allreduce = report.results[-1]
        assert allreduce.value is not None and allreduce.value > 0
    assert not list(tmp_path.iterdir()), "the write probe leaves nothing behind"


@pytest.mark.parametrize(("faults", "check"), [
    ("n0:slow_matmul=1000", "matmul"),
    ("n0:fill_disk", "disk_free"),
    ("*:hot_device", "device"),
])
def test_each_fault_fails_its_check(tmp_path: Path, faults: str, check: str) -> None:
    report = run_checks("n0", "prestart", CONFIG, tmp_path, gang_ranks=1, faults_text=faults)
    assert failed(report.results) == {check}
    assert check in report.reason() and "injected" in report.reason()


def test_faults_are_per_node(tmp_path: Path) -> None:
    report = run_checks("n1", "prestart", CONFIG, tmp_path, faults_text="n0:slow_matmul=1000")
    assert report.passed, report.reason()


@pytest.mark.slow
def test_broken_collective_fails_the_allreduce(tmp_path: Path) -> None:
    report = run_checks("n0", "prestart", CONFIG, tmp_path, gang_ranks=2,
                        faults_text="n0:fail_collective")
    assert failed(report.results) == {"allreduce"}
    assert "injected" in report.failures[0].detail


def test_light_set_is_device_state_only(tmp_path: Path) -> None:
    report = run_checks("n0", "light", CONFIG, tmp_path, faults_text="*:slow_matmul=1000")
    assert [r.name for r in report.results] == ["device"] and report.passed


def test_cpu_device_state_checks_claimed_cores(tmp_path: Path) -> None:
    report = run_checks("n0", "light", CONFIG, tmp_path, cpus=100_000, faults_text="")
    assert not report.passed and "claimed" in report.reason()


def test_fault_spec_parsing() -> None:
    assert parse("n0:slow_matmul=20; *:fill_disk") == {"n0": {"slow_matmul": 20.0},
                                                      "*": {"fill_disk": 1.0}}
    assert faults_for("n0", "*:slow_matmul=2;n0:slow_matmul=5").value("slow_matmul") == 5.0
    for bad in ("slow_matmul", "n0:melt_gpu", "n0:slow_matmul=fast"):
        with pytest.raises(ConfigError, match=ENV):
            parse(bad)


def stoker(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stoker", "health", "check", *args],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def test_cli_reports_json_and_exit_code(tmp_path: Path) -> None:
    result = stoker("--ranks", "1", "--path", str(tmp_path), "--node", "n0", "--json",
                    env={ENV: "n0:slow_matmul=1000"})
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["node"] == "n0" and report["passed"] is False
    assert [r["name"] for r in report["results"] if not r["passed"]] == ["matmul"]


@pytest.mark.parametrize(("args", "env", "key"), [
    (["--set", "everything"], {}, "--set"),
    ([], {ENV: "n0:melt_gpu"}, ENV),
])
def test_cli_bad_input_is_one_line(args: list[str], env: dict[str, str], key: str) -> None:
    result = stoker("--ranks", "1", *args, env=env)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert key in line and "Traceback" not in result.stderr


def test_cluster_health_section(tmp_path: Path) -> None:
    base = '[flavors.cpu]\n[autodetect]\ncpu_flavor = "cpu"\n[queues.q.quotas.cpu]\ncpus = 4\n'
    good = tmp_path / "good.toml"
    good.write_text(base + '[health]\nmin_free = "2GiB"\npasses_to_return = 2\n')
    health = load_cluster(good).health
    assert health.min_free == 2 << 30 and health.passes_to_return == 2
    bad = tmp_path / "bad.toml"
    bad.write_text(base + '[health]\nmin_write_mbps = -1\n')
    with pytest.raises(ConfigError, match=r"health\.min_write_mbps"):
        load_cluster(bad)
