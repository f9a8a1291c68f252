"""Tenants cannot reach each other or the control plane: tried as an attacker would.

A real server (run as root, as CI runs) makes a Unix user per tenant and runs every job in a
bubblewrap sandbox. One tenant's job then tries to read the server's environment, the
database, the state directory, the other tenant's job directory and logs and the admin token
file, and reports what it saw. Without root or bubblewrap these tests skip, except under
CI=true, where they fail naming what is missing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from stoker.control.isolation import managed_user, tenant_identity
from stoker.control.local_executor import LocalExecutor
from stoker.control.nodes import cluster_nodes
from stoker.control.reconciler import ControlSettings, Reconciler
from stoker.control.sql_store import SqlStore
from stoker.control.store import NewJob
from stoker.server.process import ServerProcess, kill_jobs
from stoker.spec import loading
from stoker.spec.api import JobState, JobSubmission
from stoker.spec.cluster import ClusterConfig
from stoker.spec.errors import ConfigError

pytestmark = pytest.mark.slow

SERVER_SECRET = "server-only-5ecret"
TOKENS = {"STOKER_TOKEN_ALICE": "alice-t", "STOKER_TOKEN_BOB": "bob-t",
          "SERVER_SECRET": SERVER_SECRET, "STOKER_FAULT": "raise@step=1",
          "STOKER_FAULT_OPT_IN": "1"}
ADMIN_TOKEN = "admin-from-a-file"
BOB_SECRET = "bob's private bytes"

CLUSTER = """
[flavors.cpu]
[autodetect]
cpu_slots = 4
[admin]
token_file = "{token_file}"
[tenants.alice]
token_env = "STOKER_TOKEN_ALICE"
queues = ["alice"]
[tenants.bob]
token_env = "STOKER_TOKEN_BOB"
queues = ["bob"]
[queues.alice.quotas.cpu]
cpus = 2
[queues.bob.quotas.cpu]
cpus = 2
{extra}
"""

# What alice's job tries; each probe reports what it got ("denied: ..." when refused).
ATTACK = r"""
import glob, json, os, sys
state, bob_job, token_file = sys.argv[1:4]
def read(path):
    try:
        with open(path, "rb") as f:
            return "read: " + f.read(4096).decode(errors="replace")
    except OSError as e:
        return f"denied: {type(e).__name__}"
def listing(path):
    try:
        return "listed: " + ",".join(sorted(os.listdir(path)))
    except OSError as e:
        return f"denied: {type(e).__name__}"
environs = {p: read(p) for p in glob.glob("/proc/[0-9]*/environ")}
print("REPORT " + json.dumps({
    "uid": os.getuid(), "groups": os.getgroups(), "env": dict(os.environ),
    "environ_secrets": [p for p, text in environs.items()
                        if any(s in text for s in ("alice-t", "bob-t", "5ecret", "admin-from"))],
    "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
    "database": read(os.path.join(state, "stoker.db")),
    "server_log": read(os.path.join(state, "server.log")),
    "state_dir": listing(state),
    "jobs_dir": listing(os.path.join(state, "jobs")),
    "bob_dir": listing(bob_job),
    "bob_log": read(os.path.join(bob_job, "logs", "rank-0.log")),
    "bob_run": read(os.path.join(bob_job, "run", "data.txt")),
    "bob_log_via_dotdot": read(os.path.join(os.getcwd(), "..", "..", os.path.basename(bob_job),
                                            "logs", "rank-0.log")),
    "admin_token": read(token_file),
    "write_own_run": open(os.environ["STOKER_RUN_DIR"] + "/mine.txt", "w").write("ok"),
}), flush=True)
"""

BOB = ("import os; print(" + repr(BOB_SECRET) + ", flush=True); "
       "open(os.environ['STOKER_RUN_DIR'] + '/data.txt', 'w').write(" + repr(BOB_SECRET) + ")")


def need_isolation() -> None:
    missing = [what for what, ok in (("root (CI runs as root)", os.geteuid() == 0),
                                     ("bubblewrap (apt-get install bubblewrap)",
                                      shutil.which("bwrap") is not None)) if not ok]
    if missing:
        message = "tenant isolation tests need " + " and ".join(missing)
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def start_server(tmp_path: Path, extra: str = "", env: dict[str, str] | None = None,
                 args: tuple[str, ...] = ()) -> ServerProcess:
    server = ServerProcess(tmp_path / "state", write_config(tmp_path, extra),
                           env={**TOKENS, **(env or {})}, args=list(args))
    return server.start()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    need_isolation()
    server = start_server(tmp_path)
    try:
        yield server
    finally:
        server.stop()
        kill_jobs(server.state_dir)


def submit(server: ServerProcess, token: str, code: str, *args: str,
           env: dict[str, str] | None = None) -> int:
    with server.client(token) as c:
        job: dict[str, Any] = c.submit({"name": "j", "queue": token.split("-")[0],
                                        "command": [sys.executable, "-c", code, *args],
                                        "env": env or {}})
    return int(job["id"])


def finish(server: ServerProcess, token: str, job_id: int,
           timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    with server.client(token) as c:
        while time.monotonic() < deadline:
            job: dict[str, Any] = c.job(job_id)
            if job["state"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
                return job
            time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish: {job['state']} {job['reason']}")


def log_text(server: ServerProcess, token: str, job_id: int) -> str:
    with server.client(token) as c:
        return str(c.logs(job_id)["text"])


def report(server: ServerProcess, token: str, job_id: int) -> dict[str, Any]:
    text = log_text(server, token, job_id)
    line = next((ln for ln in text.splitlines() if ln.startswith("REPORT ")), None)
    assert line is not None, text
    result: dict[str, Any] = json.loads(line[len("REPORT "):])
    return result


def test_a_tenants_job_reaches_nothing_of_the_server_or_other_tenants(
        server: ServerProcess) -> None:
    bob = submit(server, "bob-t", BOB)
    assert finish(server, "bob-t", bob)["state"] == "SUCCEEDED"
    state = server.state_dir.resolve()
    bob_dir = state / "jobs" / str(bob)
    token_file = server.state_dir.parent / "admin.token"
    alice = submit(server, "alice-t", ATTACK, str(state), str(bob_dir), str(token_file),
                   env={"STOKER_FAULT": "raise@step=1", "STOKER_FAULT_OPT_IN": "1"})
    job = finish(server, "alice-t", alice)
    assert job["state"] == "SUCCEEDED", log_text(server, "alice-t", alice)
    seen = report(server, "alice-t", alice)

    alice_user = tenant_identity("alice", None)
    assert seen["uid"] == alice_user.uid != 0 and seen["groups"] == []
    assert seen["environ_secrets"] == []  # no process it can see holds a token
    assert max(seen["pids"]) < 10  # its own processes only: none of the host's
    for probe in ("database", "server_log", "bob_log", "bob_run", "bob_log_via_dotdot",
                  "admin_token", "bob_dir", "jobs_dir"):
        assert seen[probe].startswith("denied"), (probe, seen[probe])
    assert seen["state_dir"] in ("listed: jobs", "denied: PermissionError")  # an empty stand-in
    assert seen["write_own_run"] == 2
    env = seen["env"]
    assert SERVER_SECRET not in json.dumps(env)
    assert not {"STOKER_TOKEN_ALICE", "STOKER_TOKEN_BOB", "SERVER_SECRET"} & set(env)
    assert not [k for k in env if k.startswith("STOKER_FAULT")]  # no opt-in in cluster.toml
    assert env["USER"] == alice_user.user and env["STOKER_JOB_ID"] == str(alice)


def test_job_files_belong_to_their_tenant_and_the_state_to_the_server(
        server: ServerProcess) -> None:
    job_id = submit(server, "alice-t", BOB)
    finish(server, "alice-t", job_id)
    alice = tenant_identity("alice", None)
    state = server.state_dir
    job_dir = state / "jobs" / str(job_id)

    def mode(path: Path) -> tuple[int, int, int]:
        info = path.lstat()
        return info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)

    assert mode(state) == (0, 0, 0o711) and mode(state / "jobs")[2] == 0o711
    assert mode(state / "stoker.db")[0] == 0 and mode(state / "stoker.db")[2] & 0o077 == 0
    assert mode(job_dir) == (0, alice.gid, 0o750)
    assert mode(job_dir / "logs") == (0, alice.gid, 0o750)
    assert mode(job_dir / "logs" / "rank-0.log") == (alice.uid, alice.gid, 0o600)
    assert mode(job_dir / "run") == (alice.uid, alice.gid, 0o700)
    assert mode(job_dir / "run" / "data.txt")[:2] == (alice.uid, alice.gid)
    assert mode(job_dir / "attempt-1")[0] == 0


def test_a_log_swapped_for_a_link_never_serves_another_tenants_bytes(
        tmp_path: Path) -> None:
    """The worst case: a job running as the server's own user (single-trust, no sandbox) swaps
    its log directory between a real one and a link to the other tenant's logs while the API
    reads it. The read walks the path without following links: never bob's bytes."""
    need_isolation()
    server = start_server(tmp_path, '[isolation]\nidentity = "server"\nsandbox = "none"\n'
                          "single_trust = true\n")
    try:
        bob = submit(server, "bob-t", BOB)
        finish(server, "bob-t", bob)
        bob_logs = server.state_dir.resolve() / "jobs" / str(bob) / "logs"
        swapper = (
            "import os, sys, time\n"
            "logs, target = os.path.abspath('../logs'), sys.argv[1]\n"
            "real, link = logs + '.real', logs + '.link'\n"
            "os.rename(logs, real); os.symlink(target, link)\n"
            "print('swapping', flush=True)\n"
            "end = time.time() + 600\n"
            "while time.time() < end and not os.path.exists('stop'):\n"
            "    os.replace(link, logs); os.symlink(target, link)\n"
            "    os.remove(logs); os.rename(real, logs); os.rename(logs, real)\n"
        )
        alice = submit(server, "alice-t", swapper, str(bob_logs))
        seen: set[int] = set()
        deadline = time.monotonic() + 120
        with server.client("alice-t") as c:
            while 403 not in seen:  # read until a read meets the link (however slow the start)
                assert time.monotonic() < deadline, f"no read met the link: {seen}"
                response = c.http.get(f"/v1/jobs/{alice}/logs")
                seen.add(response.status_code)
                assert BOB_SECRET not in response.text
                assert response.status_code in (200, 403), response.text
        work = server.state_dir / "jobs" / str(alice) / "work"
        (work / "stop").touch()
        finish(server, "alice-t", alice)
        assert 403 in seen  # the link was met, and refused
    finally:
        server.stop()
        kill_jobs(server.state_dir)


def write_config(tmp_path: Path, extra: str = "", token_mode: int = 0o600) -> Path:
    token_file = tmp_path / "admin.token"
    token_file.write_text(ADMIN_TOKEN + "\n")
    token_file.chmod(token_mode)
    config = tmp_path / "cluster.toml"
    config.write_text(CLUSTER.format(token_file=token_file, extra=extra))
    return config


def refused_start(config: Path, state: Path) -> str:
    """Start `stoker server`, which must refuse (exit 2, one line): what it said."""
    done = subprocess.run([sys.executable, "-m", "stoker", "server", "--config", str(config),
                           "--state-dir", str(state), "--port", "0"],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, **TOKENS})
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    return done.stderr


def test_several_tenants_without_isolation_refuse_to_start(tmp_path: Path) -> None:
    need_isolation()
    config = write_config(tmp_path, '[isolation]\nidentity = "server"\nsandbox = "none"\n')
    said = refused_start(config, tmp_path / "state")
    assert "isolation" in said and "jobs would run as root" in said
    assert not (tmp_path / "state").exists()  # refused before anything was made


def test_a_token_file_others_can_read_is_refused(tmp_path: Path) -> None:
    need_isolation()
    said = refused_start(write_config(tmp_path, token_mode=0o644), tmp_path / "state")
    assert "admin.token_file" in said and "chmod 600" in said


def test_a_configured_user_must_exist_and_a_managed_name_is_never_taken_over() -> None:
    need_isolation()
    missing = re.escape("tenants.ghost.user: no Unix user 'nobody-here'")
    with pytest.raises(ConfigError, match=missing):
        tenant_identity("ghost", "nobody-here")
    with pytest.raises(ConfigError, match="is root"):
        tenant_identity("admin", "root")
    subprocess.run(["useradd", "--system", "--no-create-home", managed_user("squatted")],
                   capture_output=True, check=False)
    with pytest.raises(ConfigError, match="was not created by Stoker"):
        tenant_identity("squatted", None)
    assert managed_user("alice") == "stoker-alice"
    assert managed_user("Team.Vision") != managed_user("team-vision")
    assert len(managed_user("x" * 60)) <= 32


def test_a_launch_that_fails_fails_the_job_and_frees_its_quota(tmp_path: Path) -> None:
    """A job stored before inputs were checked (a NUL byte in its environment), and one whose
    directory cannot be made, cannot start: each is FAILED with the reason, and the next job
    gets the quota it held."""
    cluster = loading.validate(ClusterConfig, {
        "flavors": {"cpu": {}}, "autodetect": {"cpu_slots": 1},
        "queues": {"q": {"quotas": {"cpu": {"cpus": 1}}}}}, "test")
    store = SqlStore.open(f"sqlite:///{tmp_path / 'db.sqlite'}")
    executor = LocalExecutor(tmp_path / "jobs")
    reconciler = Reconciler(store, executor, cluster, cluster_nodes(cluster, models=[]),
                            executor.jobs_dir, ControlSettings(grace_period_s=1))

    def job(env: dict[str, str]) -> int:
        spec = {"job": {"name": "t", "queue": "q", "resources": {"cpus": 1}, "env": env,
                        "command": [sys.executable, "-c", "pass"]}, "train": None}
        return store.submit(NewJob("t", "t", "q", "", 0, spec), "t").id

    broken, blocked, after = job({"BAD": "a\0b"}), job({}), job({})
    executor.jobs_dir.mkdir(parents=True)
    (executor.jobs_dir / str(blocked)).write_text("a file where its directory should be")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            reconciler.step()
            states = [store.get_job(i).state  # type: ignore[union-attr]
                      for i in (broken, blocked, after)]
            if states[2] == JobState.SUCCEEDED:
                break
            time.sleep(0.05)
        failed = store.get_job(broken)
        assert failed is not None and failed.state == JobState.FAILED
        assert "cannot start" in failed.reason and "NUL" in failed.reason, failed.reason
        stuck = store.get_job(blocked)
        assert stuck is not None and stuck.reason.startswith("cannot start: ")
        assert states == [JobState.FAILED, JobState.FAILED, JobState.SUCCEEDED]
    finally:
        store.close()


def test_the_fault_hook_is_honoured_only_with_the_clusters_opt_in(tmp_path: Path) -> None:
    need_isolation()
    server = start_server(tmp_path, "[isolation]\nfault_injection = true\n")
    try:
        code = "import os; print('FAULT=' + os.environ.get('STOKER_FAULT', '-'))"
        job_id = submit(server, "alice-t", code, env={"STOKER_FAULT": "raise@step=1"})
        finish(server, "alice-t", job_id)
        assert "FAULT=raise@step=1" in log_text(server, "alice-t", job_id)
        with server.client("alice-t") as c:
            events = c.job(job_id)["events"]
        assert any(e["kind"] == "fault-injection" for e in events)
    finally:
        server.stop()
        kill_jobs(server.state_dir)


def test_concurrent_reads_and_swaps_of_a_link_never_escape(tmp_path: Path) -> None:
    """The no-follow open itself, raced by a thread swapping a directory for a link."""
    from stoker.server.logs import read_chunk

    root = tmp_path / "jobs"
    (root / "1" / "logs").mkdir(parents=True)
    (root / "1" / "logs" / "rank-0.log").write_text("mine\n")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "rank-0.log").write_text(BOB_SECRET)
    logs = root / "1" / "logs"
    stop = threading.Event()

    def swap() -> None:
        while not stop.is_set():
            logs.rename(logs.with_name("real"))
            logs.symlink_to(tmp_path / "other")
            logs.unlink()
            logs.with_name("real").rename(logs)

    swapper = threading.Thread(target=swap)
    swapper.start()
    outcomes = set()
    deadline = time.monotonic() + 120
    try:
        # Until reads have met both the swap (refused or missing) and the real file.
        while "mine\n" not in outcomes or outcomes == {"mine\n"}:
            assert time.monotonic() < deadline, outcomes
            try:
                text, _ = read_chunk(root, PurePosixPath("1/logs/rank-0.log"), 0, 100)
            except PermissionError:
                outcomes.add("refused")
                continue
            assert BOB_SECRET not in text
            outcomes.add(text or "missing")
    finally:
        stop.set()
        swapper.join()


@pytest.mark.parametrize(("section", "key", "value"), [
    ("telemetry", "metrics_file", "/etc/cron.d/x"),
    ("telemetry", "metrics_file", "../../1/run/metrics.jsonl"),
    ("data", "cache_dir", "~/.cache"),
    ("data", "cache_dir", "/var/tmp/shared"),
])
def test_a_control_plane_jobs_outputs_stay_in_its_directory(section: str, key: str,
                                                             value: str) -> None:
    body = {"job": {"name": "t", "queue": "q", "train_config": "t.toml"},
            "train": {section: {key: value}}}
    with pytest.raises(ValueError, match=re.escape(f"train.{section}.{key}")):
        JobSubmission.model_validate(body)
    JobSubmission.model_validate({**body, "train": {section: {key: "inside/ok"}}})


def test_confined_outputs_are_refused_by_the_api(server: ServerProcess) -> None:
    with server.client("alice-t") as c:
        response = c.http.post("/v1/jobs", json={
            "job": {"name": "t", "queue": "alice", "train_config": "t.toml"},
            "train": {"telemetry": {"metrics_file": "/tmp/elsewhere.jsonl"}}})
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"][-2:] == ["telemetry", "metrics_file"]
    with server.client(ADMIN_TOKEN) as c:
        assert c.jobs() == []


def test_without_a_sandbox_jobs_still_run_as_their_tenant(tmp_path: Path) -> None:
    """``sandbox = "none"`` as root: the tenant's own user runs the job, or, when that user
    cannot reach this Python (a venv under /root), the server refuses to start and says so."""
    need_isolation()
    try:
        server = start_server(tmp_path, '[isolation]\nsandbox = "none"\n')
    except RuntimeError as e:
        assert "cannot run" in str(e) and sys.executable in str(e), e
        assert "Traceback" not in str(e)
        return
    try:
        code = "import os; print('UID', os.getuid(), sorted(os.environ))"
        job_id = submit(server, "alice-t", code)
        assert finish(server, "alice-t", job_id)["state"] == "SUCCEEDED"
        text = log_text(server, "alice-t", job_id)
        assert f"UID {tenant_identity('alice', None).uid} " in text
        assert "SERVER_SECRET" not in text and "STOKER_TOKEN" not in text
    finally:
        server.stop()
        kill_jobs(server.state_dir)


def test_the_fault_hook_needs_its_second_switch_and_says_when_it_is_set(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from stoker.observe.events import EventLog, read_events
    from stoker.train import faults

    monkeypatch.setenv(faults.ENV, "raise@step=1")
    monkeypatch.delenv(faults.OPT_IN, raising=False)
    monkeypatch.setattr(faults, "_faults", None)
    assert faults.active() == [] and faults.fire("step", 1, rank=0) is None
    events = EventLog(tmp_path)
    faults.announce(events)
    monkeypatch.setenv(faults.OPT_IN, "1")
    monkeypatch.setattr(faults, "_faults", None)
    assert [f.action for f in faults.active()] == ["raise"]
    faults.announce(events)
    seen = [(e["event"], e["armed"]) for e in read_events(tmp_path)]
    assert seen == [("fault_injection", False), ("fault_injection", True)]
