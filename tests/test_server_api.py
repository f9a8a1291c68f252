"""The REST API against a real `stoker server` process: auth, tenancy, validation, admin."""

from __future__ import annotations

import base64
import gzip
import io
import os
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from stoker.server.process import ServerProcess, kill_jobs

TOKENS = {"STOKER_ADMIN_TOKEN": "admin-secret", "STOKER_TOKEN_ALICE": "alice-secret",
          "STOKER_TOKEN_BOB": "bob-secret", "STOKER_TOKEN_CAROL": "carol-secret"}
CLUSTER = """
default_priority_class = "normal"
[priority_classes]
normal = 100
[flavors.cpu]
[autodetect]
cpu_slots = 4
cpu_flavor = "cpu"
[admin]
token_env = "STOKER_ADMIN_TOKEN"
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
# carol's queue: a node of its own with a vendor's resource, milli-CPU quotas
[flavors.accel]
[[nodes]]
name = "accel"
flavor = "accel"
cpu = 2
"example.com/accel" = 2
[tenants.carol]
token_env = "STOKER_TOKEN_CAROL"
queues = ["carol"]
[queues.carol.quotas.accel]
cpu = "1500m"
"example.com/accel" = 2
"""
TRAIN = {"model": {"preset": "tiny"}, "train": {"steps": 2, "global_batch_size": 16,
                                                "micro_batch_size": 8}}
TASK = {"task": {"module": "task:build"}, "train": TRAIN["train"]}


def _code(info: tarfile.TarInfo, data: bytes = b"") -> str:
    """A one-member gzipped tar, base64, as a submission's ``code``."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return base64.b64encode(gzip.compress(raw.getvalue())).decode()


def _symlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info


CODE = _code(tarfile.TarInfo("task.py"), b"def build(cfg): ...\n")
LINK_OUT = _code(_symlink("task.py", "/etc/passwd"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("api")
    config = root / "cluster.toml"
    config.write_text(CLUSTER)
    proc = ServerProcess(root / "state", config, env=TOKENS, args=["--interval", "0.2"])
    with proc:
        yield proc
    kill_jobs(root / "state")


def call(server: ServerProcess, method: str, path: str, token: str | None = "alice-secret",
         headers: dict[str, str] | None = None, **kwargs: Any) -> httpx.Response:
    headers = dict(headers or {})
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.request(method, server.url + path, headers=headers, timeout=30, **kwargs)


def command_job(name: str = "ok", queue: str = "alice", seconds: float = 0.0,
                **extra: Any) -> dict[str, Any]:
    code = f"import time; time.sleep({seconds}); print('hello from', {name!r})"
    return {"name": name, "queue": queue, "command": [sys.executable, "-c", code], **extra}


def wait_state(server: ServerProcess, job_id: int, states: set[str],
               token: str = "alice-secret", timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = call(server, "GET", f"/v1/jobs/{job_id}", token).json()
        if job["state"] in states:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} stayed {job['state']}: {job['reason']}")


def wait_waiting(server: ServerProcess, job_id: int, token: str = "alice-secret",
                 timeout: float = 60) -> dict[str, Any]:
    """The job once a scheduling cycle has left it waiting and said why."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = call(server, "GET", f"/v1/jobs/{job_id}", token).json()
        if job["waiting"]:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} is {job['state']} with no waiting reason")


def all_jobs(server: ServerProcess) -> list[dict[str, Any]]:
    response = call(server, "GET", "/v1/jobs", "admin-secret")
    assert response.status_code == 200
    jobs: list[dict[str, Any]] = response.json()
    return jobs


def test_health_needs_no_token_docs_and_metrics_do(server: ServerProcess) -> None:
    assert call(server, "GET", "/healthz", None).json()["ok"] is True
    for path in ("/docs", "/openapi.json", "/metrics"):
        assert call(server, "GET", path, None).status_code == 401, path
    assert call(server, "GET", "/docs").status_code == 200
    paths = call(server, "GET", "/openapi.json").json()["paths"]
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/cancel"} <= set(paths)
    metrics = call(server, "GET", "/metrics").text
    assert 'stoker_jobs{queue="alice",state="QUEUED"}' in metrics


@pytest.mark.parametrize("token", [None, "wrong", "alice-secretx", "bob"])
def test_missing_or_wrong_token_is_401(server: ServerProcess, token: str | None) -> None:
    for method, path in (("GET", "/v1/jobs"), ("POST", "/v1/jobs"), ("GET", "/v1/queues")):
        response = call(server, method, path, token, json={})
        assert response.status_code == 401, (method, path)


def test_submit_list_get_logs(server: ServerProcess) -> None:
    response = call(server, "POST", "/v1/jobs", json={"job": command_job("hello")})
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["tenant"] == "alice" and job["state"] == "QUEUED" and job["queue_position"] >= 1
    assert job["id"] in [j["id"] for j in call(server, "GET", "/v1/jobs").json()]
    done = wait_state(server, job["id"], {"SUCCEEDED", "FAILED"})
    assert done["state"] == "SUCCEEDED", done["reason"]
    states = [e["to_state"] for e in done["events"] if e["kind"] == "transition"]
    assert states == ["QUEUED", "ADMITTED", "STARTING", "RUNNING", "SUCCEEDED"] or states == [
        "QUEUED", "ADMITTED", "STARTING", "SUCCEEDED"]
    log = call(server, "GET", f"/v1/jobs/{job['id']}/logs").json()
    assert "hello from hello" in log["text"]
    assert call(server, "GET", f"/v1/jobs/{job['id']}/logs?rank=1").status_code == 404


def test_another_tenants_job_is_invisible(server: ServerProcess) -> None:
    job = call(server, "POST", "/v1/jobs", json={"job": command_job("mine")}).json()
    for method, path in (("GET", f"/v1/jobs/{job['id']}"),
                         ("POST", f"/v1/jobs/{job['id']}/cancel"),
                         ("GET", f"/v1/jobs/{job['id']}/logs")):
        assert call(server, method, path, "bob-secret").status_code == 404, path
    assert job["id"] not in [j["id"] for j in call(server, "GET", "/v1/jobs", "bob-secret").json()]
    assert job["id"] in [j["id"] for j in all_jobs(server)]  # the admin sees everyone's
    queues = {q["queue"] for q in call(server, "GET", "/v1/queues", "bob-secret").json()}
    assert queues == {"bob"}


def test_submit_to_another_tenants_queue_is_403(server: ServerProcess) -> None:
    before = len(all_jobs(server))
    response = call(server, "POST", "/v1/jobs", json={"job": command_job(queue="bob")})
    assert response.status_code == 403
    assert len(all_jobs(server)) == before


@pytest.mark.parametrize(("body", "loc"), [
    ({"job": command_job() | {"nmae": "x"}}, ["body", "job", "nmae"]),
    ({"job": {"name": "x", "command": ["true"]}}, ["body", "job", "queue"]),
    ({"job": command_job(ranks=0)}, ["body", "job", "ranks"]),
    ({"job": command_job(name="bad name!")}, ["body", "job", "name"]),
    ({"job": command_job() | {"command": []}}, ["body", "job", "command"]),
    ({"job": command_job() | {"train_config": "t.toml"}}, ["body", "job", "train_config"]),
    ({"job": {"name": "t", "queue": "alice", "train_config": "t.toml"}}, ["body", "train"]),
    ({"job": {"name": "t", "queue": "alice", "train_config": "t.toml"},
      "train": TRAIN | {"optim": {"lr": -1}}}, ["body", "train", "optim", "lr"]),
    ({"job": {"name": "t", "queue": "alice", "train_config": "t.toml", "ranks": 3},
      "train": TRAIN}, ["body", "train", "train", "global_batch_size"]),
    ({"job": command_job(queue="nope")}, ["body", "job", "queue"]),
    ({"job": command_job(resources={"cpus": 64})}, ["body", "job", "resources"]),
    ({"job": command_job(), "extra": 1}, ["body", "extra"]),
    ({"job": command_job(), "code": CODE}, ["body", "code"]),  # code only for a [task] job
    ({"job": {"name": "t", "queue": "alice", "train_config": "t.toml"}, "train": TASK,
      "code": base64.b64encode(b"not an archive").decode()}, ["body", "code"]),
    ({"job": {"name": "t", "queue": "alice", "train_config": "t.toml"}, "train": TASK,
      "code": LINK_OUT}, ["body", "code"]),
])
def test_bad_bodies_are_422_with_field_errors_and_store_nothing(
        server: ServerProcess, body: dict[str, Any], loc: list[str]) -> None:
    before = len(all_jobs(server))
    response = call(server, "POST", "/v1/jobs", json=body)
    assert response.status_code == 422, response.text
    assert loc in [e["loc"] for e in response.json()["detail"]], response.text
    assert len(all_jobs(server)) == before


def test_a_queued_job_has_a_position_and_an_estimated_start(server: ServerProcess) -> None:
    """Bob's quota is 2 CPUs: a 2-rank job with max_run_time 600 s holds it all, so the next
    job of 2 ranks waits for quota, first in its queue, and is expected to start when the first
    reaches its max run time (the job behind it has no estimate: the one before it has no
    max_run_time)."""
    first = call(server, "POST", "/v1/jobs", "bob-secret", json={"job": command_job(
        "holder", queue="bob", seconds=30, ranks=2, max_run_time=600)}).json()
    try:
        running = wait_state(server, first["id"], {"RUNNING"}, "bob-secret")
        second = call(server, "POST", "/v1/jobs", "bob-secret", json={"job": command_job(
            "next", queue="bob", ranks=2)}).json()
        third = call(server, "POST", "/v1/jobs", "bob-secret", json={"job": command_job(
            "after", queue="bob", ranks=2)}).json()
        waiting = wait_waiting(server, second["id"], "bob-secret")
        assert waiting["waiting"]["code"] == "WaitingForQuota", waiting["waiting"]
        deadline = time.monotonic() + 30
        while waiting["estimated_start"] is None and time.monotonic() < deadline:
            time.sleep(0.2)
            waiting = call(server, "GET", f"/v1/jobs/{second['id']}", "bob-secret").json()
        assert waiting["queue_position"] == 1
        assert waiting["estimated_start"] == pytest.approx(running["started_at"] + 600)
        behind = call(server, "GET", f"/v1/jobs/{third['id']}", "bob-secret").json()
        assert behind["queue_position"] == 2 and behind["estimated_start"] is None
    finally:
        for job in (first, second, third):
            call(server, "POST", f"/v1/jobs/{job['id']}/cancel", "bob-secret")
        for job in (first, second, third):  # bob's quota is free again for the next test
            wait_state(server, job["id"], {"CANCELLED", "SUCCEEDED", "FAILED"}, "bob-secret")


def test_malformed_json_is_422(server: ServerProcess) -> None:
    before = len(all_jobs(server))
    response = call(server, "POST", "/v1/jobs", content=b"{not json",
                    headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert len(all_jobs(server)) == before


def test_cancel_queued_job_then_again_is_409(server: ServerProcess) -> None:
    # Cordon the only node so the job stays queued.
    assert call(server, "PUT", "/v1/nodes/local/cordon", "admin-secret",
                json={"cordoned": True, "reason": "test"}).status_code == 200
    try:
        job = call(server, "POST", "/v1/jobs", json={"job": command_job("c")}).json()
        waiting = wait_waiting(server, job["id"])
        assert waiting["state"] == "QUEUED"
        why = waiting["waiting"]  # the one node is cordoned: no healthy node holds the job
        assert (why["code"], why["inadmissible"]) == ("NodeUnhealthy", True), why
        cancelled = call(server, "POST", f"/v1/jobs/{job['id']}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "CANCELLED"
        assert call(server, "POST", f"/v1/jobs/{job['id']}/cancel").status_code == 409
        events = call(server, "GET", f"/v1/jobs/{job['id']}").json()["events"]
        assert events[-1]["actor"] == "alice" and events[-1]["to_state"] == "CANCELLED"
    finally:
        call(server, "PUT", "/v1/nodes/local/cordon", "admin-secret", json={"cordoned": False})


def test_admin_only_endpoints(server: ServerProcess) -> None:
    quota = {"cpus": 3}
    for method, path, body in (("GET", "/v1/nodes", None), ("GET", "/v1/config", None),
                               ("PUT", "/v1/queues/alice/quotas/cpu", quota),
                               ("PUT", "/v1/nodes/local/cordon", {"cordoned": True})):
        assert call(server, method, path, "alice-secret", json=body).status_code == 403, path
        assert call(server, method, path, "admin-secret", json=body).status_code == 200, path
    call(server, "PUT", "/v1/nodes/local/cordon", "admin-secret", json={"cordoned": False})
    call(server, "PUT", "/v1/queues/alice/quotas/cpu", "admin-secret", json={"cpus": 2})
    assert call(server, "GET", "/v1/whoami", "admin-secret").json()["admin"] is True


def test_admin_changes_quota_while_running(server: ServerProcess) -> None:
    def nominal() -> float:
        rows = call(server, "GET", "/v1/queues", "admin-secret").json()
        return next(r["nominal"] for r in rows if r["queue"] == "bob" and r["resource"] == "cpu")

    assert call(server, "PUT", "/v1/queues/bob/quotas/cpu", "admin-secret",
                json={"cpus": 3}).status_code == 200
    assert nominal() == 3
    config = call(server, "GET", "/v1/config", "admin-secret").json()
    assert config["queues"]["bob"]["quotas"]["cpu"]["cpu"] == 3  # by canonical name
    bad = call(server, "PUT", "/v1/queues/bob/quotas/cpu", "admin-secret",
               json={"cpus": 1, "lending_limit": {"cpus": 2}})
    assert bad.status_code == 422, bad.text
    assert call(server, "PUT", "/v1/queues/bob/quotas/cpu", "admin-secret",
                json={"cpus": 1, "bogus": 2}).status_code == 422
    assert call(server, "PUT", "/v1/queues/nope/quotas/cpu", "admin-secret",
                json={"cpus": 1}).status_code == 404
    assert nominal() == 3  # nothing stored by the rejected changes
    call(server, "PUT", "/v1/queues/bob/quotas/cpu", "admin-secret", json={"cpus": 2})


def test_logs_cannot_follow_a_link_out_of_the_job_dir(server: ServerProcess,
                                                      tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    code = ("import os, sys; log = os.path.join('..', 'logs', 'rank-0.log'); os.remove(log); "
            f"os.symlink({str(secret)!r}, log)")
    job = call(server, "POST", "/v1/jobs",
               json={"job": {"name": "sneaky", "queue": "alice",
                             "command": [sys.executable, "-c", code]}}).json()
    final = wait_state(server, job["id"], {"SUCCEEDED", "FAILED"})
    response = call(server, "GET", f"/v1/jobs/{job['id']}/logs")
    assert "top secret" not in response.text
    if os.geteuid() == 0:  # isolated: the log's directory is not the job's to change
        text = response.json()["text"]
        assert final["state"] == "FAILED"
        assert "PermissionError" in text or "Read-only file system" in text
    else:  # the same user as the server: the link is made, and refused when read
        assert response.status_code == 403


def test_events_are_json_with_actor_and_reason(server: ServerProcess) -> None:
    job = call(server, "POST", "/v1/jobs", json={"job": command_job("ev")}).json()
    detail = call(server, "GET", f"/v1/jobs/{job['id']}").json()
    first = detail["events"][0]
    assert first["actor"] == "alice" and first["reason"] == "submitted"
    assert (first["kind"], first["to_state"]) == ("transition", "QUEUED")
    assert first["job_id"] == job["id"]
    assert isinstance(first["at"], float) and first["at"] == detail["created_at"]


def test_a_raised_quota_admits_a_waiting_job(server: ServerProcess) -> None:
    spec = command_job("wide", queue="bob", ranks=3, resources={"cpus": 1})
    job = call(server, "POST", "/v1/jobs", "bob-secret", json={"job": spec}).json()
    waiting = wait_waiting(server, job["id"], "bob-secret")  # 3 CPUs do not fit in a quota of 2
    assert waiting["state"] == "QUEUED", waiting
    why = waiting["waiting"]
    assert (why["code"], why["inadmissible"], why["flavor"]) == ("ExceedsMaxQuota", True, "cpu")
    assert why["requested"] == {"gpu": 0, "cpu": 3, "memory": 0}
    assert why["available"]["cpu"] == 2 and why["borrowable"]["cpu"] == 0
    call(server, "PUT", "/v1/queues/bob/quotas/cpu", "admin-secret", json={"cpus": 3})
    try:
        done = wait_state(server, job["id"], {"SUCCEEDED", "FAILED"}, token="bob-secret")
        assert done["state"] == "SUCCEEDED"
        admitted = [e for e in done["events"] if e["to_state"] == "ADMITTED"]
        assert admitted[0]["at"] > waiting["created_at"]
    finally:
        call(server, "PUT", "/v1/queues/bob/quotas/cpu", "admin-secret", json={"cpus": 2})


def test_a_job_asking_a_named_resource(server: ServerProcess) -> None:
    """A vendor's resource and milli-CPUs: the job is admitted to the node that has them,
    and the API shows its request by resource name; what no node or quota has is refused,
    naming the key."""
    spec = command_job("accel", queue="carol", ranks=2,
                       resources={"cpu": "500m", "example.com/accel": 1})
    job = call(server, "POST", "/v1/jobs", "carol-secret", json={"job": spec})
    assert job.status_code == 201, job.text
    assert job.json()["resources"] == {"cpu": 0.5, "example.com/accel": 1}
    done = wait_state(server, job.json()["id"], {"SUCCEEDED", "FAILED"}, token="carol-secret")
    assert done["state"] == "SUCCEEDED", done["reason"]
    assert done["placement"]["nodes"] == ["accel", "accel"]
    for resources, loc in (({"example.com/accel": 3}, ["body", "job", "resources"]),
                           ({"example.com/tpu": 1}, ["body", "job", "resources",
                                                     "example.com/tpu"]),
                           ({"example.com/accel": "500m"}, ["body", "job", "resources",
                                                            "example.com/accel"]),
                           ({"cpu": "lots"}, ["body", "job", "resources", "cpu"])):
        bad = command_job("bad", queue="carol", resources=resources)
        answer = call(server, "POST", "/v1/jobs", "carol-secret", json={"job": bad})
        assert answer.status_code == 422, answer.text
        assert answer.json()["detail"][0]["loc"] == loc, answer.json()
    rows = call(server, "GET", "/v1/queues", "admin-secret").json()
    carol = {r["resource"]: r for r in rows if r["queue"] == "carol"}
    assert carol["cpu"]["nominal"] == 1.5 and carol["example.com/accel"]["nominal"] == 2
    nodes = {n["name"]: n for n in call(server, "GET", "/v1/nodes", "admin-secret").json()}
    assert nodes["accel"]["capacity"] == {"gpu": 0, "cpu": 2, "example.com/accel": 2}
