"""The CLI's Slurm and kubectl habits against one real server: ``-o json|yaml|wide`` on every
listing, ``--watch``, ``jobs -a`` with start/end/elapsed, ``hold``/``release`` (across a
server restart), ``requeue`` and ``job N --priority``.

The CLI runs in-process (`stoker.cli.main.main`, as the ``stoker`` script does), but for
``--watch``, which is interrupted with SIGINT as a user's Ctrl-C would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml

from stoker.cli import jobs_cmd
from stoker.cli.main import main
from stoker.cli.output import duration
from stoker.server.process import ServerProcess, kill_jobs
from test_e2e_control import CLUSTER, TOKENS, get, job, release, submit, wait, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("habits")
    config = root / "cluster.toml"
    config.write_text(CLUSTER)
    proc = ServerProcess(root / "state", config, env=TOKENS,
                         args=["--grace-period", "2", "--backoff", "0.5"])
    width = jobs_cmd.console._width  # None: from the terminal (COLUMNS); restored as it was
    jobs_cmd.console.width = 300  # wide tables unclipped
    try:
        yield proc.start()
    finally:
        jobs_cmd.console._width = width
        proc.stop()
        kill_jobs(root / "state")


Run = tuple[int, str, str]


def cli(server: ServerProcess, capsys: pytest.CaptureFixture[str], *args: str,
        token: str = "alice-t") -> Run:
    """``stoker ARGS`` in this process: (exit code, stdout, stderr)."""
    argv = sys.argv
    sys.argv = ["stoker", *args, "--server", server.url, "--token", token]
    try:
        main()
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    finally:
        sys.argv = argv
    out, err = capsys.readouterr()
    return code, out, err


def ok(run: Run) -> str:
    assert run[0] == 0, run
    return run[1]


def refused(run: Run, *words: str) -> None:
    """Exit 2 with one line naming each of ``words``, no traceback."""
    code, _, err = run
    assert code == 2 and len(err.strip().splitlines()) == 1, run
    assert all(w in err for w in words) and "Traceback" not in err, err


def test_every_listing_prints_json_yaml_and_wide(server: ServerProcess,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    done = submit(server, "alice-t", job(server, "quick", "alice", 0))
    wait(server, done, {"SUCCEEDED"})
    node = get_nodes(server)[0]["name"]
    listings: list[tuple[list[str], str]] = [
        (["jobs"], "alice-t"), (["jobs", "-a"], "alice-t"), (["job", str(done)], "alice-t"),
        (["queues"], "alice-t"), (["nodes"], "admin-t"), (["node", node], "admin-t"),
        (["audit"], "admin-t")]
    for args, token in listings:
        as_json = json.loads(ok(cli(server, capsys, *args, "-o", "json", token=token)))
        as_yaml = yaml.safe_load(ok(cli(server, capsys, *args, "-o", "yaml", token=token)))
        assert as_yaml == as_json, args  # the objects as the API gives them
        ok(cli(server, capsys, *args, "-o", "wide", token=token))
    finished = json.loads(ok(cli(server, capsys, "jobs", "-a", "-o", "json")))
    assert [j["id"] for j in finished] == [done] and finished[0]["state"] == "SUCCEEDED"
    table = ok(cli(server, capsys, "jobs", "-a"))
    for column in ("START", "END", "ELAPSED"):
        assert column in table, table
    wide = ok(cli(server, capsys, "jobs", "-a", "-o", "wide"))
    assert "NODES" in wide and "KIND" in wide and "NODES" not in table
    assert "LEND LIMIT" in ok(cli(server, capsys, "queues", "-o", "wide"))
    assert "LEND LIMIT" not in ok(cli(server, capsys, "queues"))
    assert "LABELS" in ok(cli(server, capsys, "nodes", "-o", "wide", token="admin-t"))
    refused(cli(server, capsys, "jobs", "-o", "xml"), "xml")
    refused(cli(server, capsys, "jobs", "--watch", "-o", "json"), "--watch")
    refused(cli(server, capsys, "jobs", "--watch", "--interval", "soon"), "--interval")
    assert [duration(s) for s in (5, 185, 3720, 187200)] == ["5s", "3m05s", "1h02m", "2d04h"]


def get_nodes(server: ServerProcess) -> list[dict[str, Any]]:
    with server.client("admin-t") as c:
        return c.nodes()


def test_watch_redraws_until_ctrl_c(server: ServerProcess) -> None:
    env = {**os.environ, "STOKER_SERVER": server.url, "STOKER_TOKEN": "alice-t",
           "COLUMNS": "200", "PYTHONFAULTHANDLER": "1"}
    before = api_gets(server)
    # The child takes Ctrl-C as from a terminal: one started from a shell's background job
    # (as CI may run this suite) would inherit SIGINT ignored, and Python keeps it ignored.
    ignored = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "stoker", "queues", "--watch", "-n",
                                 "0.2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env)
    finally:
        signal.signal(signal.SIGINT, ignored)
    # Ctrl-C once it has drawn and redrawn (the server counted its GETs): the interpreter's
    # start can take many seconds on a busy machine, and a Ctrl-C during it is not this test's.
    deadline, polls = time.monotonic() + 120, 1
    while api_gets(server) - before - polls < 2:  # each poll counts the one before it
        assert time.monotonic() < deadline and proc.poll() is None, proc.poll()
        polls += 1
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:  # where it is stuck: faulthandler's stacks on SIGABRT
        proc.send_signal(signal.SIGABRT)
        out, err = proc.communicate(timeout=30)
        raise AssertionError(f"still running 30 s after SIGINT:\n{err}") from None
    assert proc.returncode == 0, err
    assert "QUEUE" in out and "Traceback" not in err


def api_gets(server: ServerProcess) -> float:
    """The server's count of answered GETs, from its own /metrics (counted once answered)."""
    text = httpx.get(f"{server.url}/metrics", headers={"Authorization": "Bearer admin-t"},
                     timeout=30).text
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith('stoker_api_requests_total{method="GET",status="200"}'))


def test_hold_keeps_a_job_queued_across_a_restart_until_released(
        server: ServerProcess, capsys: pytest.CaptureFixture[str]) -> None:
    big = submit(server, "alice-t", job(server, "big", "alice", 60, resources={"cpus": 4}))
    wait(server, big, {"RUNNING"})
    small = submit(server, "alice-t", job(server, "small", "alice", 0))
    assert "held" in ok(cli(server, capsys, "hold", str(small), "--reason", "data not ready"))
    refused(cli(server, capsys, "hold", str(big)), "409", "only a queued job")
    release(server, big)
    wait(server, big, {"SUCCEEDED"})
    server.stop()  # the hold is in the store
    server.start()
    time.sleep(1.0)  # five scheduling cycles with room for it
    held = get(server, small)
    assert held["state"] == "QUEUED" and held["held"] and held["queue_position"] is None
    assert "held by alice: data not ready" in held["reason"]
    listed = ok(cli(server, capsys, "jobs"))
    assert "(held)" in listed and "data not ready" in listed
    refused(cli(server, capsys, "release", str(small), token="bob-t"), "404")
    ok(cli(server, capsys, "release", str(small)))
    assert not wait(server, small, {"SUCCEEDED"})["held"]
    refused(cli(server, capsys, "release", str(small)), "409", "not held")


def test_requeue_puts_a_running_job_back_and_can_hold_it(
        server: ServerProcess, capsys: pytest.CaptureFixture[str]) -> None:
    long = submit(server, "alice-t", job(server, "long", "alice", 60))
    wait(server, long, {"RUNNING"})
    ok(cli(server, capsys, "requeue", str(long), "--reason", "node maintenance"))
    wait_for("the second attempt", lambda: get(server, long)["attempt"] == 2
             and get(server, long)["state"] == "RUNNING")
    j = get(server, long)
    moves = [e["to_state"] for e in j["events"] if e["kind"] == "transition"]
    assert "PREEMPTED" in moves and j["restarts"] == 0
    assert any(e["kind"] == "requeue" and "node maintenance" in e["reason"]
               for e in j["events"])
    attempts = json.loads(ok(cli(server, capsys, "job", str(long), "-o", "json")))["attempts"]
    assert [(a["hold"], a["attempt"], a["outcome"]) for a in attempts] == \
        [(1, 1, "PREEMPTED"), (2, 2, None)]
    first, second = attempts
    assert first["started_at"] <= first["ended_at"] <= second["admitted_at"]
    assert first["nodes"] and first["cpus"] == 1 and first["gpus"] == 0
    shown = ok(cli(server, capsys, "job", str(long)))
    assert "attempts" in shown and "OUTCOME" in shown and "PREEMPTED" in shown
    ok(cli(server, capsys, "requeue", str(long), "--hold", token="admin-t"))
    back = wait(server, long, {"QUEUED"})
    time.sleep(0.6)
    assert get(server, long)["state"] == "QUEUED" and back["held"]
    refused(cli(server, capsys, "requeue", str(long)), "409")
    audit = json.loads(ok(cli(server, capsys, "audit", "-o", "json", token="admin-t")))
    assert any(a["action"] == "requeue" and a["target"] == str(long) for a in audit)
    ok(cli(server, capsys, "cancel", str(long)))


def test_priority_owner_lowers_admin_changes(server: ServerProcess,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    big = submit(server, "alice-t", job(server, "filler", "alice", 60, resources={"cpus": 4}))
    queued = submit(server, "alice-t", job(server, "prio", "alice", 0))
    out = ok(cli(server, capsys, "job", str(queued), "--priority", "low", "-o", "json"))
    assert json.loads(out)["priority_class"] == "low"
    refused(cli(server, capsys, "job", str(queued), "--priority", "high"), "403", "admin")
    refused(cli(server, capsys, "job", str(queued), "--priority", "urgent"), "422", "urgent")
    ok(cli(server, capsys, "job", str(queued), "--priority", "high", token="admin-t"))
    assert get(server, queued)["priority"] == 1000
    audit = json.loads(ok(cli(server, capsys, "audit", "-o", "json", token="admin-t")))
    assert [a["detail"]["to"] for a in audit if a["action"] == "priority"] == ["low", "high"]
    for j in (big, queued):
        ok(cli(server, capsys, "cancel", str(j)))


def test_quota_changes_only_the_fields_given(server: ServerProcess,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    def quota(*args: str) -> dict[str, Any]:
        out = ok(cli(server, capsys, "quota", "alice", "cpu", *args, "-o", "json",
                     token="admin-t"))
        got: dict[str, Any] = json.loads(out)
        assert (got["queue"], got["flavor"]) == ("alice", "cpu")
        return got["quota"]

    assert quota("--lending-limit", "cpus=1") == \
        {"cpu": 2, "borrowing_limit": {"cpu": 2}, "lending_limit": {"cpu": 1}}
    assert quota("cpu=3", "memory=1GiB") == {"cpu": 3, "memory": 2**30,
                                             "borrowing_limit": {"cpu": 2},
                                             "lending_limit": {"cpu": 1}}
    table = ok(cli(server, capsys, "quota", "alice", "cpu", "--borrowing-limit", "cpu=1",
                   token="admin-t"))
    assert "BORROW LIMIT" in table and "1GiB" in table
    row = next(r for r in map(str.split, table.splitlines()) if r[:1] == ["cpu"])
    assert row == ["cpu", "3", "1", "1"], table
    assert [q["nominal"] for q in get_queues(server) if q["queue"] == "alice"
            and q["resource"] == "cpu"] == [3]
    refused(cli(server, capsys, "quota", "alice", "cpu", token="admin-t"), "amounts")
    refused(cli(server, capsys, "quota", "alice", "cpu", "--lending-limit", "cpu=9",
                token="admin-t"), "422", "lending")
    refused(cli(server, capsys, "quota", "nosuch", "cpu", "cpu=1", token="admin-t"), "404")
    refused(cli(server, capsys, "quota", "alice", "cpu", "cpu=1"), "403")
    assert quota("cpu=2", "--borrowing-limit", "cpu=2", "--replace") == \
        {"cpu": 2, "borrowing_limit": {"cpu": 2}}  # as the cluster.toml says, again


def get_queues(server: ServerProcess) -> list[dict[str, Any]]:
    with server.client("admin-t") as c:
        return c.queues()


def test_jobs_lists_one_page_and_says_how_many_more(
        server: ServerProcess, capsys: pytest.CaptureFixture[str]) -> None:
    for i in range(3):
        submit(server, "alice-t", job(server, f"page-{i}", "alice", 0))
    every = json.loads(ok(cli(server, capsys, "jobs", "-a", "--limit", "0", "-o", "json")))
    assert len(every) >= 3 and [j["id"] for j in every] == sorted(j["id"] for j in every)
    code, out, err = cli(server, capsys, "jobs", "-a", "--limit", "2", "-o", "json")
    assert code == 0 and [j["id"] for j in json.loads(out)] == [j["id"] for j in every[-2:]]
    assert f"{len(every) - 2} older jobs not shown" in err
    table = ok(cli(server, capsys, "jobs", "-a", "-l", "1"))
    assert f"{len(every) - 1} older jobs not shown" in table and "page-2" in table
    assert "not shown" not in ok(cli(server, capsys, "jobs", "-a"))  # the default: 200
    refused(cli(server, capsys, "jobs", "--limit", "-1"), "--limit")
    refused(cli(server, capsys, "jobs", "--limit", "10001"), "--limit")
