"""Slurm's job dependencies and job arrays against one real server: ``stoker submit
--after-ok JOB`` (and ``after_ok`` in the job file) and ``stoker submit --array 0-9``.

The CLI runs in-process (`stoker.cli.main.main`), as in `test_cli_habits`."""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stoker.cli import jobs_cmd
from stoker.server.process import ServerProcess, kill_jobs
from test_cli_habits import cli, ok, refused
from test_e2e_control import (
    CLUSTER,
    TOKENS,
    get,
    job,
    lines,
    release,
    submit,
    wait,
    wait_for,
)

pytestmark = pytest.mark.slow

# Notes its array task's environment in its working directory.
TASK = ("import os\n"
        "keys = ('STOKER_ARRAY_TASK_ID', 'STOKER_ARRAY_TASK_COUNT', 'STOKER_ARRAY_NAME')\n"
        "open('task.txt', 'w').write(' '.join(os.environ[k] for k in keys) + '\\n')\n")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("deps")
    config = root / "cluster.toml"
    config.write_text(CLUSTER)
    proc = ServerProcess(root / "state", config, env=TOKENS,
                         args=["--grace-period", "2", "--backoff", "0.5"])
    width = jobs_cmd.console._width
    jobs_cmd.console.width = 300
    try:
        yield proc.start()
    finally:
        jobs_cmd.console._width = width
        proc.stop()
        kill_jobs(root / "state")


def job_file(tmp_path: Path, spec: dict[str, Any]) -> str:
    """``spec`` as a job file (JSON strings and arrays are TOML's too)."""
    path = tmp_path / f"{spec['name']}.toml"
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in spec.items()
                            if not isinstance(v, dict))
                    + "[resources]\ncpus = 1\n")
    return str(path)


def submitted(out: str) -> int:
    m = re.search(r"submitted job (\d+)", out)
    assert m, out
    return int(m.group(1))


def test_a_dependent_job_waits_for_its_dependency_to_succeed(
        server: ServerProcess, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    first = submit(server, "alice-t", job(server, "first", "alice", 60))
    wait(server, first, {"RUNNING"})
    path = job_file(tmp_path, job(server, "then", "alice", 0))
    then = submitted(ok(cli(server, capsys, "submit", path, "--after-ok", str(first))))
    # and in the job file (the API alike): after both
    last = submit(server, "alice-t", job(server, "last", "alice", 0, after_ok=[first, then]))
    waiting = f"waiting for job {first} to succeed"
    wait_for("the wait's reason", lambda: get(server, then)["reason"] == waiting, 10)
    time.sleep(1.0)  # five cycles with room to spare: neither is admitted
    for j in (then, last):
        view = get(server, j)
        assert view["state"] == "QUEUED" and view["reason"] == waiting, view
        assert view["queue_position"] is None, view
    assert any(e["kind"] == "waiting" for e in get(server, then)["events"])
    release(server, first)
    wait(server, first, {"SUCCEEDED"})
    wait(server, then, {"SUCCEEDED"}, timeout=20)
    wait(server, last, {"SUCCEEDED"}, timeout=20)


def test_a_dependency_that_fails_or_is_cancelled_cancels_the_dependent(
        server: ServerProcess, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    gate = submit(server, "alice-t", job(server, "gate", "alice", 60))
    # fails at once (exit 3) when it runs, after the gate
    bad = submit(server, "alice-t", job(server, "bad", "alice", 0, "exit", 3, 1,
                                        after_ok=[gate]))
    after_bad = submit(server, "alice-t", job(server, "after-bad", "alice", 0, after_ok=[bad]))
    doomed = submit(server, "alice-t", job(server, "doomed", "alice", 60))
    after_doomed = submit(server, "alice-t", job(server, "after-doomed", "alice", 0,
                                                 after_ok=[doomed]))
    ok(cli(server, capsys, "cancel", str(doomed)))
    view = wait(server, after_doomed, {"CANCELLED"}, timeout=20)
    assert view["reason"] == f"dependency job {doomed} ended CANCELLED", view
    release(server, gate)
    wait(server, bad, {"FAILED"}, timeout=30)
    view = wait(server, after_bad, {"CANCELLED"}, timeout=20)
    assert view["reason"] == f"dependency job {bad} ended FAILED", view
    assert not lines(server, after_bad, "started.txt")  # it never ran
    # a job that can never succeed is refused at once
    path = job_file(tmp_path, job(server, "late", "alice", 0))
    refused(cli(server, capsys, "submit", path, "--after-ok", str(bad)), "after_ok", "FAILED")


def test_after_ok_names_only_the_submitters_own_existing_jobs(
        server: ServerProcess, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bobs = submit(server, "bob-t", job(server, "bobs", "bob", 0))
    path = job_file(tmp_path, job(server, "mine", "alice", 0))
    with server.client("admin-t") as c:
        next_id = max(j["id"] for j in c.jobs()) + 1  # the job itself, if it were taken
    for dep in (bobs, 999_999, next_id):
        refused(cli(server, capsys, "submit", path, "--after-ok", str(dep)), "after_ok",
                f"no job {dep} of yours")
    refused(cli(server, capsys, "submit", path, "--after-ok", "0"), "after_ok")
    with server.client("admin-t") as c:
        assert max(j["id"] for j in c.jobs()) == next_id - 1  # nothing was queued
    wait(server, bobs, {"SUCCEEDED"})


def test_an_array_runs_one_job_per_task_with_its_index(
        server: ServerProcess, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    spec = {"name": "sweep", "queue": "alice", "command": [sys.executable, "-c", TASK]}
    path = job_file(tmp_path, spec)
    out = ok(cli(server, capsys, "submit", path, "--array", "0-4:2"))
    ids = [int(i) for i in out.split("jobs", 1)[1].replace(",", " ").split()]
    assert len(ids) == 3, out
    for task, job_id in zip((0, 2, 4), ids, strict=True):
        view = wait(server, job_id, {"SUCCEEDED"}, timeout=30)
        assert view["name"] == f"sweep-{task}", view
        assert lines(server, job_id, "task.txt") == [f"{task} 3 sweep"]
    for bad in ("9-0", "a-b", "0-5000", "1,1", "0-9:0", "", "-1"):
        refused(cli(server, capsys, "submit", path, "--array", bad), "--array")
    assert jobs_cmd.array_indices("1-3,8,10-14:2") == [1, 2, 3, 8, 10, 12, 14]


def test_a_broken_dependency_wins_over_one_still_running() -> None:
    from stoker.control.depends import blocked
    from stoker.spec.api import JobState

    states = {1: JobState.RUNNING, 2: JobState.FAILED, 3: JobState.SUCCEEDED,
              4: JobState.PREEMPTED}
    found = blocked({10: (1, 2), 11: (3,), 12: (3, 4, 1), 13: (9,)}, states)
    assert found[10].reason == "dependency job 2 ended FAILED"
    assert 11 not in found
    assert found[12].reason == "waiting for job 4 to succeed" and not found[12].broken
    assert found[13].reason == "dependency job 9 no longer exists" and found[13].broken
