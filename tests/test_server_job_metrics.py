"""`GET /v1/jobs/{id}/metrics` on a real server: a training job's metrics.jsonl served after a
step, incrementally (a poll reads only what was appended), the latest attempt winning where a
restart redid steps, tenants kept apart, bad input a one-line 422; and the job's `progress`
and `stragglers` (from the run's events.jsonl).

The training job waits in a queue with no quota (never admitted), and the test writes its
run's metrics.jsonl where the runtime would, line by line as a run does.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import httpx
import pytest

from stoker.control.metrics_index import MetricsIndex
from stoker.observe.events import EventLog
from stoker.server.process import ServerProcess, kill_jobs

TOKENS = {"STOKER_ADMIN_TOKEN": "admin-t", "STOKER_TOKEN_ALICE": "alice-t",
          "STOKER_TOKEN_BOB": "bob-t"}
CLUSTER = """
[flavors.cpu]
[autodetect]
cpu_slots = 2
cpu_flavor = "cpu"
[tenants.alice]
token_env = "STOKER_TOKEN_ALICE"
queues = ["held"]
[tenants.bob]
token_env = "STOKER_TOKEN_BOB"
queues = ["bob"]
[queues.held.quotas.cpu]
cpus = 0
[queues.bob.quotas.cpu]
cpus = 1
"""
TRAIN = {"model": {"preset": "tiny"}, "train": {"steps": 100}}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("job-metrics")
    (root / "cluster.toml").write_text(CLUSTER)
    proc = ServerProcess(root / "state", root / "cluster.toml", env=TOKENS,
                         args=["--interval", "0.5"])
    with proc:
        yield proc
    kill_jobs(root / "state")


@pytest.fixture(scope="module")
def job(server: ServerProcess) -> int:
    with server.client("alice-t") as c:
        job_id: int = c.submit({"name": "held", "queue": "held", "resources": {"cpus": 1},
                                "train_config": "t.toml"}, TRAIN)["id"]
    return job_id


def call(server: ServerProcess, path: str, token: str | None = "alice-t") -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(server.url + path, headers=headers, timeout=30)


def metrics_file(server: ServerProcess, job_id: int) -> Path:
    run = server.state_dir / "jobs" / str(job_id) / "run"
    run.mkdir(parents=True, exist_ok=True)
    return run / "metrics.jsonl"


def record(step: int, attempt: int, loss: float = 0.0) -> dict[str, Any]:
    return {"step": step, "attempt": attempt, "loss": loss or 10.0 - step / 10,
            "tokens_per_s": 1000.0, "mfu": 0.25, "step_time_s": 0.5, "time": time.time()}


def append(path: Path, *records: dict[str, Any], torn: str = "") -> None:
    with path.open("a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records) + torn)


def test_incremental_fetch_latest_attempt_and_progress(server: ServerProcess, job: int) -> None:
    path = metrics_file(server, job)
    first = call(server, f"/v1/jobs/{job}/metrics").json()
    assert first["records"] == [] and first["last_step"] is None and not first["done"]
    append(path, *[record(s, 1) for s in range(1, 11)], torn='{"step": 11, "lo')
    page = call(server, f"/v1/jobs/{job}/metrics?since=0&limit=4").json()
    assert [r["step"] for r in page["records"]] == [1, 2, 3, 4] and page["more"]
    assert page["next_since"] == 4 and page["last_step"] == 10 and page["steps"] == 100
    page = call(server, f"/v1/jobs/{job}/metrics?since=4&revision={page['revision']}"
                "&field=loss").json()
    assert [r["step"] for r in page["records"]] == list(range(5, 11))  # the torn line waits
    assert set(page["records"][0]) == {"step", "loss"} and not page["more"]

    # A restart from the step-6 checkpoint redoes steps 7.. as attempt 2, loss 1.0.
    with path.open("a") as f:
        f.write('ss": 1}\n')  # the torn line completed: a stray attempt-1 step 11
    append(path, *[record(s, 2, loss=1.0) for s in range(7, 13)])
    again = call(server, f"/v1/jobs/{job}/metrics?since=10&revision={page['revision']}").json()
    assert again["since"] == 6  # steps 7-10 were rewritten: they come again
    assert [(r["step"], r["attempt"], r["loss"]) for r in again["records"]] == \
        [(s, 2, 1.0) for s in range(7, 13)]
    plain = call(server, f"/v1/jobs/{job}/metrics?since=10").json()
    assert [r["step"] for r in plain["records"]] == [11, 12]  # without a revision: after 10
    whole = call(server, f"/v1/jobs/{job}/metrics").json()["records"]
    assert [r["step"] for r in whole] == list(range(1, 13))
    assert [r["attempt"] for r in whole] == [1] * 6 + [2] * 6

    append(path, {**record(13, 2), "loss": math.nan})  # a diverged step: null in JSON
    nan = call(server, f"/v1/jobs/{job}/metrics?since=12").json()["records"]
    assert nan[0]["step"] == 13 and nan[0]["loss"] is None

    events = EventLog(path.parent, rank=0)  # as rank 0 writes them
    events.emit("straggler", rank=1, step=12, section="host", score=0.21, steps=3)
    events.emit("checkpoint_committed", step=12, stall_s=0.1)
    events.emit("straggler_cleared", rank=1, step=13, score=0.93)
    detail = call(server, f"/v1/jobs/{job}").json()
    assert [(s["event"], s["rank"], s["step"], s["section"]) for s in detail["stragglers"]] == \
        [("straggler", 1, 12, "host"), ("straggler_cleared", 1, 13, None)]
    progress = detail["progress"]
    assert progress["step"] == 13 and progress["steps"] == 100
    assert progress["tokens_per_s"] == 1000.0 and progress["mfu"] == 0.25
    assert progress["eta_s"] == pytest.approx((100 - 13) * 0.5)
    shown = subprocess.run([sys.executable, "-m", "stoker", "job", str(job)], text=True,
                           capture_output=True, timeout=120,
                           env={**os.environ, "STOKER_SERVER": server.url,
                                "STOKER_TOKEN": "alice-t", "COLUMNS": "200"})
    assert shown.returncode == 0, shown.stderr
    assert "13/100, ETA 44s" in shown.stdout and "1,000 tokens/s, MFU 25.0%" in shown.stdout
    assert "flagged: host at 0.21 of the fastest rank for 3 log steps" in shown.stdout


def test_tenants_tokens_and_bad_input(server: ServerProcess, job: int) -> None:
    assert call(server, f"/v1/jobs/{job}/metrics", token="bob-t").status_code == 404
    assert call(server, f"/v1/jobs/{job}/metrics", token=None).status_code == 401
    assert call(server, f"/v1/jobs/{job}/metrics", token="admin-t").status_code == 200
    for query, key in (("since=x", "since"), ("limit=0", "limit"),
                       ("revision=../etc", "revision")):
        response = call(server, f"/v1/jobs/{job}/metrics?{query}")
        assert response.status_code == 422, query
        assert response.json()["detail"][0]["loc"] == ["query", key]
    with server.client("bob-t") as c:
        command = c.submit({"name": "c", "queue": "bob",
                            "command": [sys.executable, "-c", "pass"]})["id"]
    response = call(server, f"/v1/jobs/{command}/metrics", token="bob-t")
    assert response.status_code == 404 and "not a training job" in response.json()["detail"]
    assert call(server, "/v1/jobs/999999/metrics").status_code == 404


def test_a_link_for_the_metrics_file_is_refused(server: ServerProcess) -> None:
    with server.client("alice-t") as c:
        job_id = c.submit({"name": "linked", "queue": "held", "resources": {"cpus": 1},
                           "train_config": "t.toml"}, TRAIN)["id"]
    path = metrics_file(server, job_id)
    secret = path.parent / "secret.jsonl"
    secret.write_text(json.dumps(record(1, 1)) + "\n")
    path.symlink_to(secret)
    response = call(server, f"/v1/jobs/{job_id}/metrics")
    assert response.status_code == 403 and "link" in response.json()["detail"]


def test_a_long_run_is_read_once_then_only_what_is_appended(tmp_path: Path) -> None:
    """100,000 steps: the first poll indexes the file once; a later poll after one more step
    reads that line's bytes and the record it returns, not the file again."""
    run = tmp_path / "1" / "run"
    run.mkdir(parents=True)
    path = run / "metrics.jsonl"
    line = {k: v for k, v in record(0, 1).items() if k != "step"}
    with path.open("w") as f:
        f.writelines(json.dumps({"step": s, **line}) + "\n" for s in range(1, 100_001))
    index = MetricsIndex()
    relative = PurePosixPath("1/run/metrics.jsonl")
    got = index.read(tmp_path, relative, since=99_990)
    assert [r["step"] for r in got.records] == list(range(99_991, 100_001))
    size = path.stat().st_size
    assert index.bytes_read < size * 1.01  # the file once, and the ten records
    before = index.bytes_read
    append(path, {"step": 100_001, **line})
    got = index.read(tmp_path, relative, since=100_000, revision=got.revision)
    assert [r["step"] for r in got.records] == [100_001]
    assert index.bytes_read - before < 2 * (path.stat().st_size - size) + 1
