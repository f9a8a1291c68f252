"""A property-based fuzz of the live API (schemathesis): cases generated from the server's own
OpenAPI, valid and invalid, sent with a tenant's token and with the admin's. No answer may be
a 5xx, and every answer must be declared: its status, its content type and its body's schema.

Bounded: a fixed number of examples and a time budget per token. Every node is cordoned and a
generated cordon never lifts it, so no generated command ever runs.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from stoker.server.process import ServerProcess, kill_jobs

TOKENS = {"STOKER_ADMIN_TOKEN": "admin-secret", "STOKER_TOKEN_ALICE": "alice-secret",
          "STOKER_TOKEN_BOB": "bob-secret"}
CLUSTER = """
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
"""
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
EXAMPLES = 250
BUDGET_S = 35.0  # per token; the whole test stays well under 90 s


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("fuzz")
    config = root / "cluster.toml"
    config.write_text(CLUSTER)
    proc = ServerProcess(root / "state", config, env=TOKENS, args=["--interval", "0.5"])
    with proc:
        admin = {"Authorization": "Bearer admin-secret"}
        assert httpx.put(f"{proc.url}/v1/nodes/local/cordon", headers=admin,
                         json={"cordoned": True, "reason": "fuzzing"}).status_code == 200
        for tenant in ("alice", "bob", "alice"):  # jobs 1-3, for the generated ids to find
            job = {"name": "seed", "queue": tenant, "command": ["true"]}
            assert httpx.post(f"{proc.url}/v1/jobs", json={"job": job},
                              headers={"Authorization": f"Bearer {tenant}-secret"}
                              ).status_code == 201
        yield proc
    kill_jobs(root / "state")


def aim(case: Case, data: st.DataObject) -> None:
    """Point a generated case at things that exist, so it gets past the 404s and 422s of
    unknown names (only what the case already has is changed)."""
    params = case.path_parameters or {}
    for name, choices in (("job_id", [1, 2, 3]), ("queue", ["alice", "bob"]),
                          ("flavor", ["cpu"]), ("name", ["local"])):
        if name in params:
            params[name] = data.draw(st.sampled_from(choices))
    if isinstance(case.body, dict) and isinstance(case.body.get("job"), dict):
        case.body["job"]["queue"] = data.draw(st.sampled_from(["alice", "bob"]))


def keep_cordoned(case: Case) -> None:
    if case.path.endswith("/cordon") and isinstance(case.body, dict) \
            and case.body.get("cordoned") is False:
        case.body["cordoned"] = True


@pytest.mark.parametrize("token", ["alice-secret", "admin-secret"])
def test_fuzzed_requests_get_declared_answers_and_no_5xx(server: ServerProcess,
                                                         token: str) -> None:
    auth = {"Authorization": f"Bearer {token}"}
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json", headers=auth)
    cases = st.one_of(schema.as_strategy(GenerationMode.POSITIVE),
                      schema.as_strategy(GenerationMode.NEGATIVE))
    statuses: Counter[tuple[str, int]] = Counter()
    deadline = time.monotonic() + BUDGET_S

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              phases=[Phase.explicit, Phase.generate],  # no shrinking against a live server
              suppress_health_check=list(HealthCheck))
    @given(case=cases, real=st.booleans(), data=st.data())
    def fuzz(case: Case, real: bool, data: st.DataObject) -> None:
        if time.monotonic() > deadline:
            return
        if real:
            aim(case, data)
        keep_cordoned(case)
        response = case.call_and_validate(base_url=server.url, headers=auth, checks=CHECKS,
                                          timeout=30)
        statuses[(f"{case.method} {case.path}", response.status_code)] += 1

    fuzz()
    sent = sum(statuses.values())
    assert sent >= 50, statuses  # the budget let a real number of cases through
    assert any(code < 300 for _, code in statuses), statuses
    assert any(code == 422 for _, code in statuses), statuses
    log = server.log.read_text()
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log[-3000:]
    jobs: list[dict[str, Any]] = httpx.get(f"{server.url}/v1/jobs",
                                           headers={"Authorization": "Bearer admin-secret"}
                                           ).json()
    assert {j["state"] for j in jobs} <= {"QUEUED", "CANCELLED"}  # nothing ran
