"""The job CLI (`stoker submit | jobs | job | logs | cancel | queues | nodes | quota`) against a
real server, run as the user runs it: `python -m stoker ...` in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stoker.ports import free_port
from stoker.server.process import ServerProcess, kill_jobs

TOKENS = {"STOKER_ADMIN_TOKEN": "admin-t", "STOKER_TOKEN": "tenant-t"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("cli")
    proc = ServerProcess(root / "state", None, env=TOKENS, args=["--interval", "0.2"])
    with proc:
        yield proc
    kill_jobs(root / "state")


def stoker(server: ServerProcess | None, *args: str, token: str = "tenant-t",
           url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STOKER_TOKEN": token, "COLUMNS": "200",
           "STOKER_SERVER": url or (server.url if server else "")}
    return subprocess.run([sys.executable, "-m", "stoker", *args], capture_output=True,
                          text=True, env=env, timeout=120)


def test_submit_list_show_logs(server: ServerProcess, tmp_path: Path) -> None:
    job_file = tmp_path / "job.toml"
    job_file.write_text(f"""
name = "hello"
queue = "default"
command = ["{sys.executable}", "-c", "print('hi from the job')"]
""")
    out = stoker(server, "submit", str(job_file))
    assert out.returncode == 0, out.stderr
    assert "submitted job 1 (hello) to queue default" in out.stdout
    deadline = time.monotonic() + 60
    while "SUCCEEDED" not in (shown := stoker(server, "jobs", "--all")).stdout:
        assert time.monotonic() < deadline, shown.stdout
    assert "hello" in shown.stdout
    detail = stoker(server, "job", "1").stdout
    assert "QUEUED -> ADMITTED" in detail and "every process exited with code 0" in detail
    logs = stoker(server, "logs", "1", "-f")
    assert logs.returncode == 0 and "hi from the job" in logs.stdout
    again = stoker(server, "cancel", "1")
    assert again.returncode == 2 and "409" in again.stderr and "Traceback" not in again.stderr


def test_a_training_job_file_is_submitted_as_written(server: ServerProcess,
                                                     tmp_path: Path) -> None:
    """The demo's config through `stoker submit` (its data cache stays inside the job's
    directory, as the server requires of a job's outputs)."""
    example = Path(__file__).resolve().parent.parent / "examples" / "tiny.toml"
    job_file = tmp_path / "train.toml"
    job_file.write_text(f'name = "demo"\nqueue = "default"\nranks = 1\n'
                        f'train_config = "{example}"\n')
    out = stoker(server, "submit", str(job_file))
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.split("submitted job ")[1].split()[0]
    assert stoker(server, "cancel", job_id).returncode == 0


def test_queues_nodes_and_quota(server: ServerProcess) -> None:
    queues = stoker(server, "queues")
    assert queues.returncode == 0 and "default" in queues.stdout
    denied = stoker(server, "nodes")
    assert denied.returncode == 2 and "403" in denied.stderr
    nodes = stoker(server, "nodes", token="admin-t")
    assert nodes.returncode == 0 and "local" in nodes.stdout and "healthy" in nodes.stdout
    quota = stoker(server, "quota", "default", "cpu", "cpus=3", token="admin-t")
    assert quota.returncode == 0 and "NOMINAL" in quota.stdout
    assert ["cpu", "3", "-", "-"] in [line.split() for line in quota.stdout.splitlines()]


def test_errors_are_one_line_exit_2(server: ServerProcess, tmp_path: Path) -> None:
    down = stoker(None, "jobs", url=f"http://127.0.0.1:{free_port()}")
    assert down.returncode == 2 and "cannot reach the stoker server" in down.stderr
    bad_token = stoker(server, "jobs", token="nope")
    assert bad_token.returncode == 2 and "401" in bad_token.stderr
    bad_job = tmp_path / "bad.toml"
    bad_job.write_text('name = "x"\nqueue = "default"\ncommand = ["true"]\nranks = 0\n')
    invalid = stoker(server, "submit", str(bad_job))
    assert invalid.returncode == 2 and "ranks" in invalid.stderr
    for out in (down, bad_token, invalid):
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_job_shows_why_each_attempt_failed(server: ServerProcess, tmp_path: Path) -> None:
    job_file = tmp_path / "job.toml"
    code = "def load():\\n    raise ValueError('[/bad] shard 3 is empty')\\nload()"
    job_file.write_text(f"""
name = "broken"
queue = "default"
max_restarts = 2
command = ["{sys.executable}", "-c", "{code}"]
""")
    out = stoker(server, "submit", str(job_file))
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.split()[2]
    deadline = time.monotonic() + 60
    while "FAILED" not in (detail := stoker(server, "job", job_id)).stdout:
        assert time.monotonic() < deadline, detail.stdout + detail.stderr
    assert detail.returncode == 0, detail.stderr
    assert "failed attempts" in detail.stdout and "user_exception" in detail.stdout
    assert "ValueError: [/bad] shard 3 is empty" in detail.stdout  # shown as it is
    assert "a user error: not retried" in detail.stdout and "restarts 0/2" in detail.stdout
