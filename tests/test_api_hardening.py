"""The API's edge against a real server: bounded and validated inputs (each refused with its
status and nothing stored or launched), idempotent submits under concurrent retries,
authenticated /metrics and docs, the admin's audit log, and an OpenAPI that tells the truth."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs
import pytest

from stoker.server.client import Client
from stoker.server.process import ServerProcess, kill_jobs

ADMIN, ALICE, BOB = "admin-secret", "alice-secret", "bob-secret"
TOKENS = {"STOKER_ADMIN_TOKEN": ADMIN, "STOKER_TOKEN_ALICE": ALICE, "STOKER_TOKEN_BOB": BOB}
CLUSTER = """
topology = ["rack"]
default_priority_class = "normal"
[priority_classes]
normal = 100
[flavors.cpu]
[flavors.big]
[autodetect]
cpu_slots = 4
cpu_flavor = "cpu"
labels = { rack = "local" }
[[nodes]]
name = "big"
count = 2
flavor = "big"
cpus = 3
memory = "8GiB"
labels = { rack = "r" }
[admin]
token_env = "STOKER_ADMIN_TOKEN"
[tenants.alice]
token_env = "STOKER_TOKEN_ALICE"
queues = ["alice", "wide"]
[tenants.bob]
token_env = "STOKER_TOKEN_BOB"
queues = ["bob"]
[queues.alice.quotas.cpu]
cpus = 4
[queues.wide.quotas.big]
cpus = 6
[queues.bob.quotas.cpu]
cpus = 4
"""
KIB = 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("hardening")
    config = root / "cluster.toml"
    config.write_text(CLUSTER)
    proc = ServerProcess(root / "state", config, env=TOKENS, args=["--interval", "0.2"])
    with proc:
        # Nothing submitted here needs to run: keep every node cordoned, so what is accepted
        # stays queued, and what is refused can be seen to have launched nothing.
        for node in ("local", "big-0", "big-1"):
            assert call(proc, "PUT", f"/v1/nodes/{node}/cordon", ADMIN,
                        json={"cordoned": True, "reason": "hardening tests"}).status_code == 200
        yield proc
    kill_jobs(root / "state")


def call(server: ServerProcess, method: str, path: str, token: str | None = ALICE,
         headers: dict[str, str | bytes] | None = None, **kwargs: Any) -> httpx.Response:
    headers = dict(headers or {})
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.request(method, server.url + path, headers=headers, timeout=30, **kwargs)


def raw_json(server: ServerProcess, method: str, path: str, text: str | bytes,
             token: str = ALICE) -> httpx.Response:
    """Send JSON text exactly as written (``\\u0000``, ``\\ud800``, ``NaN``...)."""
    content = text.encode() if isinstance(text, str) else text
    return call(server, method, path, token, content=content,
                headers={"Content-Type": "application/json"})


def command_job(name: str = "ok", queue: str = "alice", **extra: Any) -> dict[str, Any]:
    return {"name": name, "queue": queue, "command": [sys.executable, "-c", "pass"], **extra}


def stored(server: ServerProcess) -> tuple[list[int], list[str]]:
    """Every job id in the store (the admin's view) and every job directory made."""
    response = call(server, "GET", "/v1/jobs", ADMIN)
    assert response.status_code == 200
    jobs_dir = server.state_dir / "jobs"
    dirs = sorted(os.listdir(jobs_dir)) if jobs_dir.is_dir() else []
    return [j["id"] for j in response.json()], dirs


def assert_refused(server: ServerProcess, response: httpx.Response, status: int,
                   before: tuple[list[int], list[str]], loc: list[Any] | None = None) -> None:
    assert response.status_code == status, response.text
    body = response.json()  # always a JSON answer, whatever was sent
    if loc is not None:
        locs = [e["loc"] for e in body["detail"]]
        assert loc in locs, locs
    assert stored(server) == before


# --- A. bounded and validated at the edge ----------------------------------------------------


def test_a_body_over_the_limit_is_413_declared_or_chunked(server: ServerProcess) -> None:
    before = stored(server)
    big = {"job": command_job(env={"X": "x" * 30 * KIB}), "pad": "p" * (2 << 20)}
    data = json.dumps(big).encode()
    response = call(server, "POST", "/v1/jobs", content=data,
                    headers={"Content-Type": "application/json"})
    assert_refused(server, response, 413, before)

    def chunks() -> Iterator[bytes]:  # no Content-Length: Transfer-Encoding: chunked
        for i in range(0, len(data), 64 * KIB):
            yield data[i:i + 64 * KIB]

    chunked = call(server, "POST", "/v1/jobs", content=chunks(),
                   headers={"Content-Type": "application/json"})
    assert "content-length" not in chunked.request.headers
    assert_refused(server, chunked, 413, before)
    for path, method in (("/v1/queues/alice/quotas/cpu", "PUT"),
                         ("/v1/nodes/local/cordon", "PUT")):
        assert call(server, method, path, ADMIN, content=chunks()).status_code == 413


@pytest.mark.parametrize(("extra", "loc"), [
    ({"command": ["true"] * 1025}, ["body", "job", "command"]),
    ({"command": ["true", "a" * (32 * KIB + 1)]}, ["body", "job", "command", "1"]),
    ({"command": ["true", "é" * (16 * KIB + 1)]}, ["body", "job", "command", "1"]),  # bytes
    ({"command": ["true", *["a" * 30 * KIB] * 9]}, ["body", "job", "command"]),  # 270 KiB
    ({"env": {f"V{i}": "1" for i in range(257)}}, ["body", "job", "env"]),
    ({"env": {"BIG": "v" * (32 * KIB + 1)}}, ["body", "job", "env", "BIG"]),
    ({"env": {f"V{i}": "v" * 30 * KIB for i in range(9)}}, ["body", "job", "command"]),
    ({"env": {"A" * 300: "1"}}, ["body", "job", "env", "A" * 64]),
    ({"ranks": True}, ["body", "job", "ranks"]),
    ({"max_restarts": False}, ["body", "job", "max_restarts"]),
    ({"resources": {"cpus": True}}, ["body", "job", "resources", "cpus"]),
    ({"resources": {"gpus": "1"}}, ["body", "job", "resources", "gpus"]),
    ({"resources": {"memory": True}}, ["body", "job", "resources", "memory"]),
    ({"max_run_time": True}, ["body", "job", "max_run_time"]),
    ({"queue": "q" * 129}, ["body", "job", "queue"]),
])
def test_argv_env_and_types_are_bounded(server: ServerProcess, extra: dict[str, Any],
                                        loc: list[str]) -> None:
    before = stored(server)
    response = call(server, "POST", "/v1/jobs", json={"job": command_job() | extra})
    assert_refused(server, response, 422, before, loc)


def test_limits_leave_room_for_real_jobs(server: ServerProcess) -> None:
    job = command_job("roomy", env={f"V{i}": "v" * 1000 for i in range(200)})
    job["command"] = [*job["command"], *["a" * 1000] * 50]
    response = call(server, "POST", "/v1/jobs", json={"job": job})
    assert response.status_code == 201, response.text
    call(server, "POST", f"/v1/jobs/{response.json()['id']}/cancel")


JOB = '{"name": "n", "queue": "alice", "command": ["/bin/true"]%s}'


@pytest.mark.parametrize(("path", "method", "text", "loc"), [
    ("/v1/jobs", "POST", '{"job": {"name": "a\\u0000", "queue": "alice", "command": ["x"]}}',
     ["body", "job", "name"]),
    ("/v1/jobs", "POST", '{"job": %s}' % (JOB % ', "env": {"K": "v\\u0000w"}'),
     ["body", "job", "env", "K"]),
    ("/v1/jobs", "POST", '{"job": %s}' % (JOB % ', "env": {"K\\u0000": "v"}'),
     ["body", "job", "env", "K\x00"]),
    ("/v1/jobs", "POST", '{"job": %s}' % (JOB % ', "env": {"K\\ud800": "v"}'),
     ["body", "job", "env", "K\\ud800"]),
    ("/v1/jobs", "POST", '{"job": %s}' % (JOB % ', "env": {"K": "\\udfff"}'),
     ["body", "job", "env", "K"]),
    ("/v1/jobs", "POST", '{"job": {"name": "n", "queue": "alice", "command": ["a", "\\ud83d"]}}',
     ["body", "job", "command", "1"]),
    ("/v1/jobs", "POST", b'{"job": {"name": "n", "queue": "alice", "command": ["\xed\xa0\x80"]}}',
     ["body", "job", "command", "0"]),
    ("/v1/jobs", "POST", '{"job": {"name": "t", "queue": "alice", "train_config": "t.toml"}, '
     '"train": {"model": {"preset": "tiny\\u0000"}}}', ["body", "train", "model", "preset"]),
    ("/v1/jobs", "POST", '{"job": {"name": "t", "queue": "alice", "train_config": "t.toml"}, '
     '"train": {"optim": {"lr": NaN}}}', ["body", "train", "optim", "lr"]),
    ("/v1/jobs", "POST", '{"job": %s}' % (JOB % ', "resources": {"cpus": Infinity}'),
     ["body", "job", "resources", "cpus"]),
    ("/v1/jobs", "POST", '{"job": %s}' % (JOB % ', "resources": {"cpus": 1e400}'),
     ["body", "job", "resources", "cpus"]),
    ("/v1/nodes/local/cordon", "PUT", '{"cordoned": false, "reason": "\\u0000"}',
     ["body", "reason"]),
    ("/v1/nodes/local/cordon", "PUT", '{"cordoned": false, "reason": "\\ud800"}',
     ["body", "reason"]),
    ("/v1/queues/alice/quotas/cpu", "PUT", '{"cpus": NaN}', ["body", "cpus"]),
    ("/v1/queues/alice/quotas/cpu", "PUT", '{"memory": "1GiB\\u0000"}', ["body", "memory"]),
])
def test_nul_surrogates_and_non_finite_numbers_are_422_naming_where(
        server: ServerProcess, path: str, method: str, text: str, loc: list[Any]) -> None:
    before, quotas, nodes = stored(server), queue_rows(server), node_rows(server)
    response = raw_json(server, method, path, text, ADMIN if "/v1/jobs" not in path else ALICE)
    assert_refused(server, response, 422, before, loc)
    assert queue_rows(server) == quotas and node_rows(server) == nodes


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/jobs/1/hold"])
def test_a_body_that_is_not_utf8_is_422(server: ServerProcess, path: str) -> None:
    """Found by the fuzz test: FastAPI answered an undecodable JSON body with an undeclared 400."""
    before = stored(server)
    assert_refused(server, raw_json(server, "POST", path, b'\xff\nP\xfe<\xc0'), 422, before,
                   ["body"])


@pytest.mark.parametrize("job_id", ["0", "-1", str(1 << 63), str(10**30)])
def test_an_out_of_range_job_id_is_404(server: ServerProcess, job_id: str) -> None:
    before = stored(server)
    for method, path in (("GET", f"/v1/jobs/{job_id}"), ("POST", f"/v1/jobs/{job_id}/cancel"),
                         ("GET", f"/v1/jobs/{job_id}/logs")):
        for token in (ALICE, ADMIN):
            assert call(server, method, path, token).status_code == 404, (path, token)
    assert stored(server) == before


def test_an_out_of_range_log_offset_is_422(server: ServerProcess) -> None:
    job = call(server, "POST", "/v1/jobs", json={"job": command_job("logs")}).json()
    path = f"/v1/jobs/{job['id']}/logs"
    assert call(server, "GET", path, params={"offset": (1 << 63) - 1}).status_code == 200
    for offset in (1 << 63, 10**30, -1):
        response = call(server, "GET", path, params={"offset": offset})
        assert response.status_code == 422, offset
        assert response.json()["detail"][0]["loc"] == ["query", "offset"]


def queue_rows(server: ServerProcess) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = call(server, "GET", "/v1/queues", ADMIN).json()
    return [{k: v for k, v in r.items() if k not in ("pending_jobs", "running_jobs")}
            for r in rows]


def node_rows(server: ServerProcess) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = call(server, "GET", "/v1/nodes", ADMIN).json()
    return [{k: r[k] for k in ("name", "cordoned", "cordon_reason")} for r in rows]


@pytest.mark.parametrize(("body", "loc"), [
    ({"cpus": False}, ["body", "cpus"]),
    ({"cpus": True}, ["body", "cpus"]),
    ({"gpus": "2"}, ["body", "gpus"]),
    ({"memory": True}, ["body", "memory"]),
    ({"cpus": 8, "borrowing_limit": {"cpus": True}}, ["body", "borrowing_limit", "cpus"]),
    ({"cpus": 8, "lending_limit": {"gpus": False}}, ["body", "lending_limit", "gpus"]),
])
def test_quota_bodies_are_strictly_typed(server: ServerProcess, body: dict[str, Any],
                                         loc: list[str]) -> None:
    quotas = queue_rows(server)
    response = call(server, "PUT", "/v1/queues/alice/quotas/cpu", ADMIN, json=body)
    assert response.status_code == 422, response.text
    assert loc in [e["loc"] for e in response.json()["detail"]]
    assert queue_rows(server) == quotas


@pytest.mark.parametrize("value", [1, 0, "yes", "true", None])
def test_cordon_is_strictly_typed(server: ServerProcess, value: Any) -> None:
    nodes = node_rows(server)
    response = call(server, "PUT", "/v1/nodes/local/cordon", ADMIN, json={"cordoned": value})
    assert response.status_code == 422, response.text
    assert ["body", "cordoned"] in [e["loc"] for e in response.json()["detail"]]
    assert node_rows(server) == nodes


@pytest.mark.parametrize(("job", "loc"), [
    (command_job(ranks=5, resources={"cpus": 1}), ["body", "job", "ranks"]),  # 4 slots
    (command_job(resources={"gpus": 1}), ["body", "job", "resources"]),  # no GPU anywhere
    # big-0 and big-1 have 3 CPUs each: 6 in all, yet room for one 2-CPU rank each.
    (command_job(queue="wide", ranks=3, resources={"cpus": 2}), ["body", "job", "ranks"]),
    (command_job(queue="wide", ranks=3, resources={"cpus": 1, "memory": "5GiB"}),
     ["body", "job", "ranks"]),
    # One rack "r" holds both big nodes, but a required "node" level means one node: 3 CPUs.
    (command_job(queue="wide", ranks=4, resources={"cpus": 1},
                 placement={"topology": "node", "topology_mode": "required"}),
     ["body", "job", "ranks"]),
])
def test_a_gang_that_can_never_fit_is_422(server: ServerProcess, job: dict[str, Any],
                                          loc: list[str]) -> None:
    before = stored(server)
    response = call(server, "POST", "/v1/jobs", json={"job": job})
    assert_refused(server, response, 422, before, loc)


def test_a_gang_that_fits_somewhere_is_accepted(server: ServerProcess) -> None:
    for job in (command_job("w2", queue="wide", ranks=2, resources={"cpus": 2}),
                command_job("w4", queue="wide", ranks=4, resources={"cpus": 1},
                            placement={"topology": "rack", "topology_mode": "required"})):
        response = call(server, "POST", "/v1/jobs", json={"job": job})
        assert response.status_code == 201, response.text
        call(server, "POST", f"/v1/jobs/{response.json()['id']}/cancel")


# --- B. idempotent submit ---------------------------------------------------------------------


def test_a_retried_submit_returns_the_first_job(server: ServerProcess) -> None:
    body = {"job": command_job("idem")}
    first = call(server, "POST", "/v1/jobs", json=body, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == 201, first.text
    before = stored(server)
    # The same body, spelt differently (key order, a default written out): the same request.
    same = {"job": {"resources": {"cpus": 1}, **command_job("idem")}}
    again = call(server, "POST", "/v1/jobs", json=same, headers={"Idempotency-Key": "k-1"})
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    other = call(server, "POST", "/v1/jobs", json={"job": command_job("idem2")},
                 headers={"Idempotency-Key": "k-1"})
    assert other.status_code == 409 and f"job {first.json()['id']}" in other.json()["detail"]
    assert stored(server) == before
    # Keys are per tenant: bob's k-1 is his own.
    bobs = call(server, "POST", "/v1/jobs", BOB, json={"job": command_job("idem", "bob")},
                headers={"Idempotency-Key": "k-1"})
    assert bobs.status_code == 201 and bobs.json()["id"] != first.json()["id"]


@pytest.mark.parametrize("key", ["", "k" * 129, "a b", "é"])
def test_a_malformed_idempotency_key_is_422(server: ServerProcess, key: str) -> None:
    before = stored(server)
    response = call(server, "POST", "/v1/jobs", json={"job": command_job("badkey")},
                    headers={"Idempotency-Key": key.encode()})
    assert_refused(server, response, 422, before, ["header", "Idempotency-Key"])


def test_concurrent_retries_make_one_job(server: ServerProcess) -> None:
    body = {"job": command_job("racy")}
    start = threading.Barrier(8)
    answers: list[httpx.Response] = []

    def submit() -> None:
        start.wait()
        answers.append(call(server, "POST", "/v1/jobs", json=body,
                            headers={"Idempotency-Key": "race-1"}))

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(a.status_code for a in answers) == [200] * 7 + [201], \
        [a.text for a in answers]
    assert len({a.json()["id"] for a in answers}) == 1
    jobs = call(server, "GET", "/v1/jobs", ADMIN).json()
    assert [j["id"] for j in jobs if j["name"] == "racy"] == [answers[0].json()["id"]]


class LosingProxy:
    """Forwards requests to the server, but drops the first answer on the floor (the
    connection closes with no response), as a network failure after the submit would."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.statuses: list[int] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                method, path, headers, body = _read_request(conn)
                answer = httpx.request(method, self.upstream + path, headers=headers,
                                       content=body, timeout=30)
                self.statuses.append(answer.status_code)
                if len(self.statuses) == 1:
                    continue  # lost
                conn.sendall(f"HTTP/1.1 {answer.status_code} X\r\nContent-Type: "
                             f"application/json\r\nContent-Length: {len(answer.content)}\r\n"
                             "Connection: close\r\n\r\n".encode() + answer.content)

    def close(self) -> None:
        self.sock.close()


def _read_request(conn: socket.socket) -> tuple[str, str, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = dict(line.split(": ", 1) for line in lines[1:])
    length = int(next((v for k, v in headers.items() if k.lower() == "content-length"), 0))
    while len(body) < length:
        body += conn.recv(65536)
    keep = {k: v for k, v in headers.items()
            if k.lower() in ("authorization", "content-type", "idempotency-key")}
    return method, path, keep, body


def test_the_client_retries_a_lost_submit_under_the_same_key(server: ServerProcess) -> None:
    proxy = LosingProxy(server.url)
    try:
        with Client(proxy.url, ALICE) as client:
            view = client.submit(command_job("lost"), backoff=0.01)
    finally:
        proxy.close()
    assert proxy.statuses == [201, 200]  # the first submit made the job; the retry found it
    jobs = call(server, "GET", "/v1/jobs", ADMIN).json()
    assert [j["id"] for j in jobs if j["name"] == "lost"] == [view["id"]]


# --- C. authenticated surfaces, audit -----------------------------------------------------


def test_metrics_and_docs_need_a_token(server: ServerProcess) -> None:
    assert call(server, "GET", "/healthz", None).json()["ok"] is True
    for path in ("/metrics", "/docs", "/redoc", "/openapi.json"):
        assert call(server, "GET", path, None).status_code == 401, path
        assert call(server, "GET", path, "wrong").status_code == 401, path
        assert call(server, "GET", path, BOB).status_code == 200, path
    page = call(server, "GET", "/docs", BOB).text
    assert '"/v1/jobs"' in page  # the spec is in the page: its own fetch would have no token


def test_a_tenant_scrapes_its_own_queues_only(server: ServerProcess) -> None:
    alice = call(server, "GET", "/metrics", ALICE).text
    assert 'stoker_jobs{queue="alice",state="QUEUED"}' in alice
    assert 'queue="wide"' in alice
    assert 'queue="bob"' not in alice and "stoker_api_requests" not in alice
    bob = call(server, "GET", "/metrics", BOB).text
    assert 'queue="bob"' in bob and 'queue="alice"' not in bob
    admin = call(server, "GET", "/metrics", ADMIN).text
    assert 'queue="alice"' in admin and 'queue="bob"' in admin
    assert "stoker_api_requests" in admin


def test_public_surfaces_when_the_admin_says_so(tmp_path: Path) -> None:
    config = tmp_path / "cluster.toml"
    config.write_text(CLUSTER + "[api]\npublic_metrics = true\npublic_docs = true\n"
                      "max_body_bytes = \"4KiB\"\n")
    with ServerProcess(tmp_path / "state", config, env=TOKENS) as proc:
        for path in ("/metrics", "/docs", "/redoc", "/openapi.json"):
            assert call(proc, "GET", path, None).status_code == 200, path
        assert 'queue="bob"' in call(proc, "GET", "/metrics", None).text
        assert call(proc, "GET", "/v1/jobs", None).status_code == 401
        response = call(proc, "POST", "/v1/jobs",
                        json={"job": command_job(env={"X": "x" * 5000})})
        assert response.status_code == 413 and "4096" in response.json()["detail"]
        assert call(proc, "GET", "/v1/jobs", ADMIN).json() == []


def test_admin_actions_are_audited(server: ServerProcess) -> None:
    last = max([a["id"] for a in call(server, "GET", "/v1/audit", ADMIN).json()], default=0)
    assert call(server, "GET", "/v1/audit", ALICE).status_code == 403
    assert call(server, "PUT", "/v1/queues/bob/quotas/cpu", ADMIN,
                json={"cpus": 3}).status_code == 200
    assert call(server, "PUT", "/v1/nodes/big-1/cordon", ADMIN,
                json={"cordoned": True, "reason": "fan"}).status_code == 200
    own = call(server, "POST", "/v1/jobs", json={"job": command_job("own")}).json()
    assert call(server, "POST", f"/v1/jobs/{own['id']}/cancel").status_code == 200
    theirs = call(server, "POST", "/v1/jobs", json={"job": command_job("theirs")}).json()
    assert call(server, "POST", f"/v1/jobs/{theirs['id']}/cancel", ADMIN).status_code == 200
    assert call(server, "PUT", "/v1/queues/bob/quotas/cpu", ADMIN,
                json={"cpus": "lots"}).status_code == 422  # refused: not audited
    entries = call(server, "GET", "/v1/audit", ADMIN, params={"after_id": last}).json()
    assert [(e["actor"], e["action"], e["target"]) for e in entries] == [
        ("admin", "quota", "bob/cpu"), ("admin", "cordon", "big-1"),
        ("admin", "cancel", str(theirs["id"]))]
    assert entries[0]["detail"] == {"quota": {"cpu": 3}}
    assert entries[1]["detail"] == {"reason": "fan"}
    assert entries[2]["detail"]["tenant"] == "alice"
    env = {**os.environ, "STOKER_SERVER": server.url, "STOKER_TOKEN": ADMIN, "COLUMNS": "200"}
    out = subprocess.run([sys.executable, "-m", "stoker", "audit", "--after", str(last)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "quota" in out.stdout and "bob/cpu" in out.stdout and "big-1" in out.stdout
    denied = subprocess.run([sys.executable, "-m", "stoker", "audit"], capture_output=True,
                            text=True, env={**env, "STOKER_TOKEN": ALICE}, timeout=120)
    assert denied.returncode == 2 and "403" in denied.stderr


# --- D. the OpenAPI tells the truth -----------------------------------------------------------


def test_every_operation_declares_its_errors(server: ServerProcess) -> None:
    spec = call(server, "GET", "/openapi.json").json()
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            codes = set(op["responses"])
            assert "413" in codes, (method, path)
            if path != "/healthz":
                assert "401" in codes, (method, path)
            for code in codes - {"200", "201"}:
                schema = op["responses"][code]["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/Error"}, (method, path, code)
    assert {"400", "403", "409", "422"} <= set(spec["paths"]["/v1/jobs"]["post"]["responses"])


@pytest.mark.parametrize(("body", "accepted"), [
    ({"job": {"name": "a", "queue": "alice", "command": ["x"]}}, True),
    ({"job": {"name": "a", "queue": "alice", "command": ["x"]}, "train": None}, True),
    ({"job": {"name": "a", "queue": "alice", "train_config": "t.toml"}, "train": {}}, True),
    ({"job": {"name": "a", "queue": "alice"}}, False),
    ({"job": {"name": "a", "queue": "alice", "command": ["x"], "train_config": "t"}}, False),
    ({"job": {"name": "a", "queue": "alice", "command": ["x"]}, "train": {}}, False),
    ({"job": {"name": "a", "queue": "alice", "train_config": "t.toml"}}, False),
    ({"job": {"name": "a", "queue": "alice", "command": [""]}}, False),
    ({"job": {"name": "a", "queue": "alice", "roles": [{"name": "r", "command": ["x"]}]}},
     True),
    ({"job": {"name": "a", "queue": "alice", "command": ["x"],
              "roles": [{"name": "r", "command": ["x"]}]}}, False),
    ({"job": {"name": "a", "queue": "alice", "roles": [{"name": "r", "command": ["x"]}]},
      "train": {}}, False),
])
def test_the_schema_states_the_exactly_one_of_rules(server: ServerProcess, body: dict[str, Any],
                                                    accepted: bool) -> None:
    spec = call(server, "GET", "/openapi.json").json()
    schema = {"$ref": "#/components/schemas/JobSubmission", "components": spec["components"]}
    assert jsonschema_rs.validator_for(schema).is_valid(body) is accepted
    if not accepted:  # and the server agrees
        before = stored(server)
        assert_refused(server, call(server, "POST", "/v1/jobs", json=body), 422, before)


def test_answers_stay_json_even_for_undecodable_input(server: ServerProcess) -> None:
    before = stored(server)
    for text in (b'{"job": {"name": "\xff"}}', b'{"job": 1' + b"9" * 5000 + b"}"):
        response = raw_json(server, "POST", "/v1/jobs", text)
        assert response.status_code in (400, 422) and "detail" in response.json()
    assert stored(server) == before
