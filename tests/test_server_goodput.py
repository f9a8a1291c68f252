"""Goodput on a real server (SQLite, `stoker` in subprocesses): a scripted command job fails
once (exit 3: retried, no node blamed) and then succeeds; its breakdown equals a hand count
from its own stored events; `stoker job N` and `stoker usage --goodput` show it, and the
accounting has both of its allocations; a bad --since is one
line and exit 2; /metrics has the series."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from stoker.server.process import ServerProcess, kill_jobs

TOKENS = {"STOKER_ADMIN_TOKEN": "admin-t", "STOKER_TOKEN": "tenant-t"}

SCRIPT = ("import os, sys, time\\n"
          "if not os.path.exists('tried'):\\n"
          "    open('tried', 'w').close(); time.sleep(0.3); sys.exit(3)\\n"
          "time.sleep(0.5)")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("goodput")
    proc = ServerProcess(root / "state", None, env=TOKENS,
                         args=["--interval", "0.2", "--backoff", "0.3"])
    with proc:
        yield proc
    kill_jobs(root / "state")


def stoker(server: ServerProcess, *args: str, token: str = "tenant-t"
           ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STOKER_TOKEN": token, "COLUMNS": "250", "STOKER_SERVER": server.url}
    return subprocess.run([sys.executable, "-m", "stoker", *args], capture_output=True,
                          text=True, env=env, timeout=120)


def hand_count(events: list[dict[str, object]], ranks: int) -> dict[str, float]:
    """From the events alone: the moments of each transition, in order."""
    moves = [(e["at"], e["from_state"], e["to_state"]) for e in events
             if e["kind"] == "transition"]
    at = {}
    for i, (when, a, b) in enumerate(moves):
        at.setdefault((a, b), []).append((i, float(when)))  # type: ignore[arg-type]
    submitted = at[(None, "QUEUED")][0][1]
    (_, admit1), (_, admit2) = at[("QUEUED", "ADMITTED")]
    (_, start1), (_, start2) = at[("ADMITTED", "STARTING")]
    failed = next(w for (_, w) in at.get(("RUNNING", "FAILED"), at.get(("STARTING", "FAILED"),
                                                                     [])))
    requeued = at[("FAILED", "QUEUED")][0][1]
    done = next(w for k in (("RUNNING", "SUCCEEDED"), ("STARTING", "SUCCEEDED"))
                for (_, w) in at.get(k, []))
    return {"queued": (admit1 - submitted) + (admit2 - requeued),
            "startup": ranks * (start1 - admit1), "failed": ranks * (failed - start1),
            "restart": ranks * (start2 - admit2), "productive": ranks * (done - start2),
            "allocated": ranks * ((failed - admit1) + (done - admit2))}


def test_a_job_that_fails_once_matches_the_hand_count(server: ServerProcess,
                                                       tmp_path: Path) -> None:
    job_file = tmp_path / "job.toml"
    job_file.write_text(f"""
name = "flaky"
queue = "default"
ranks = 2
max_restarts = 1
command = ["{sys.executable}", "-c", "{SCRIPT}"]
""")
    out = stoker(server, "submit", str(job_file))
    assert out.returncode == 0, out.stderr
    job_id = int(out.stdout.split()[2])
    client = server.client("tenant-t")
    deadline = time.monotonic() + 60
    while (j := client.job(job_id))["state"] not in ("SUCCEEDED", "FAILED", "CANCELLED"):
        assert time.monotonic() < deadline, j
        time.sleep(0.2)
    assert j["state"] == "SUCCEEDED" and j["restarts"] == 1, j["reason"]
    g, want = j["goodput"], hand_count(j["events"], ranks=2)
    assert g["allocated_s"] == pytest.approx(want["allocated"], abs=1e-6)
    assert g["productive_s"] == pytest.approx(want["productive"], abs=1e-6)
    assert g["queued_s"] == pytest.approx(want["queued"], abs=1e-6)
    for reason in ("startup", "failed", "restart"):
        assert g["lost"][reason] == pytest.approx(want[reason], abs=1e-6), reason
    others = {k: v for k, v in g["lost"].items() if k not in ("startup", "failed", "restart")}
    assert not any(others.values()), others
    assert g["holds"] == 2 and not g["telemetry"]
    assert g["ratio"] == pytest.approx(want["productive"] / want["allocated"])
    assert want["failed"] >= 2 * 0.3  # the failed attempt ran its 0.3 s at least

    shown = stoker(server, "job", str(job_id))
    assert shown.returncode == 0 and "goodput (rank-seconds)" in shown.stdout
    assert f"{100 * g['ratio']:.1f}%" in shown.stdout and "FAILED" in shown.stdout

    usage = stoker(server, "usage", "--goodput")
    assert usage.returncode == 0, usage.stderr
    assert "cluster all" in usage.stdout and "tenant default" in usage.stdout
    assert "queue default" in usage.stdout and "RESTART" in usage.stdout
    report = client.usage()
    cluster = next(r for r in report["rows"] if r["scope"] == "cluster")
    assert cluster["goodput"]["allocated_s"] >= g["allocated_s"] - 1e-6
    recent = stoker(server, "usage", "--goodput", "--since", "10m", token="admin-t")
    assert recent.returncode == 0 and "cluster all" in recent.stdout
    # The accounting kept both allocations as the reconciler made them, the failed one's
    # CPU-hours apart from the productive ones.
    (row,) = client.accounting("job")["rows"]
    assert row["key"] == str(job_id) and row["attempts"] == 2
    cpu = row["cpu_hours"]
    assert cpu["failed"] > 0 and cpu["productive"] > 0 and cpu["preempted"] == 0
    # 2 ranks x 1 CPU (the default) from each admission to its release
    assert cpu["failed"] * 3600 == pytest.approx(want["failed"] + want["startup"], abs=1e-6)
    assert cpu["productive"] * 3600 == pytest.approx(want["restart"] + want["productive"],
                                                     abs=1e-6)

    metrics = httpx.get(f"{server.url}/metrics",
                        headers={"Authorization": "Bearer admin-t"}).text
    assert 'stoker_goodput_ratio{scope="cluster"}' in metrics
    assert 'stoker_allocated_seconds_total{queue="default",tenant="default"}' in metrics
    assert 'stoker_lost_seconds_total{reason="failed"}' in metrics
    own = httpx.get(f"{server.url}/metrics", headers={"Authorization": "Bearer tenant-t"}).text
    assert "stoker_goodput_ratio" not in own  # cluster-wide series are the admin's


def test_a_bad_since_is_one_line_and_exit_2(server: ServerProcess) -> None:
    for bad in ("xyz", "0", "-5m"):
        out = stoker(server, "usage", "--since", bad)
        assert out.returncode == 2, (bad, out.stdout, out.stderr)
        assert len(out.stderr.strip().splitlines()) == 1 and "--since" in out.stderr, out.stderr
