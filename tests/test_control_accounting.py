"""Accounting: a scripted day of jobs (a preemption, a failure with a retry, a cancel, a requeue
before start, a job whose roles span two flavors) written through the store's transitions
with a controlled clock; its GPU-hours and CPU-hours match a hand count per tenant, flavor and
outcome, a window clips them, and an allocation still held counts up to now. On a real server
over that day's database: a tenant sees only its own usage, `stoker usage -o json` parses, the
month's chargeback CSV sums to the total, and /metrics has the counters."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from stoker.cli.main import app
from stoker.cli.usage_cmd import chargeback_csv, month
from stoker.control.sql_store import SqlStore
from stoker.control.store import CauseRecord, NewJob
from stoker.control.usage import accounting_report
from stoker.server.process import ServerProcess, kill_jobs
from stoker.spec.api import JobState
from stoker.spec.cluster import load_cluster
from stoker.spec.errors import ConfigError

Q, A, S, R = JobState.QUEUED, JobState.ADMITTED, JobState.STARTING, JobState.RUNNING
DAY = datetime(2026, 12, 1, tzinfo=UTC).timestamp()  # the scripted day: 2026-12-01 UTC
H = 3600.0
PRICES = {"h100": 2.5, "a100": 1.5, "cpu": 0.1}
TOKENS = {"STOKER_ADMIN_TOKEN": "admin-t", "ALICE_TOKEN": "alice-t", "BOB_TOKEN": "bob-t"}
CLUSTER = """
[flavors.h100]
[flavors.a100]
[flavors.cpu]
[[nodes]]
name = "g"
count = 2
flavor = "h100"
gpu = 8
cpu = 32
[[nodes]]
name = "a"
flavor = "a100"
gpu = 8
cpu = 32
[[nodes]]
name = "c"
flavor = "cpu"
cpu = 16
[admin]
token_env = "STOKER_ADMIN_TOKEN"
[tenants.alice]
token_env = "ALICE_TOKEN"
queues = ["research"]
[tenants.bob]
token_env = "BOB_TOKEN"
queues = ["batch"]
[queues.research.quotas.h100]
gpu = 16
[queues.research.quotas.cpu]
cpu = 16
[queues.batch.quotas.a100]
gpu = 8
[prices]
h100 = 2.5
a100 = 1.5
cpu = 0.1
"""

# The hand count (hours). GPU-hours:
#   job 1 alice h100, 2 ranks x 4 GPUs: admitted 0, preempted 2 (16 preempted); readmitted 3,
#     succeeded 6 (24 productive)
#   job 2 bob a100, 1 rank x 8 GPUs: admitted 1, failed 4, retried (24 failed); readmitted 5,
#     succeeded 9 (32 productive)
#   job 3 alice, roles: trainer h100 1 x 8 GPUs, server cpu 2 ranks x 0 GPUs: 10 -> 20 (80)
#   job 4 bob a100 1 x 2 GPUs: admitted 12, cancelled 12.5 before it started (1 other)
#   job 5 alice h100 1 x 8 GPUs: admitted 13, requeued 13.25 before it started (2 other),
#     cancelled 13.5
#   job 6 alice: queued from 14, cancelled at 23, never admitted (nothing)
# CPU-hours: job 1 16 CPUs x 5 h (32 preempted, 48 productive); job 2 16 x 7 (48 failed, 64
#   productive); job 3 (8 + 2 x 4) x 10 = 160 (80 on h100, 80 on cpu); job 4 4 x 0.5 = 2;
#   job 5 8 x 0.25 = 2.
GPU_H = {"alice": {"productive": 104, "preempted": 16, "failed": 0, "other": 2},
         "bob": {"productive": 32, "preempted": 0, "failed": 24, "other": 1}}
CPU_H = {"alice": 242, "bob": 114}
FLAVOR_GPU_H = {"a100": 57, "cpu": 0, "h100": 122}
FLAVOR_CPU_H = {"a100": 114, "cpu": 80, "h100": 162}
COST = {"alice": 122 * 2.5 + 242 * 0.1, "bob": 57 * 1.5 + 114 * 0.1}


def spec(name: str, queue: str, ranks: int = 1, gpu: int = 0, cpu: int = 1,
         **extra: Any) -> dict[str, Any]:
    return {"job": {"name": name, "queue": queue, "ranks": ranks, "command": ["true"],
                    "resources": {"gpu": gpu, "cpu": cpu}, **extra}}


ROLES = {"job": {"name": "serve-train", "queue": "research", "roles": [
    {"name": "trainer", "ranks": 1, "resources": {"gpu": 8, "cpu": 8}, "command": ["true"]},
    {"name": "server", "ranks": 2, "resources": {"cpu": 4}, "command": ["true"]}]}}


class Day:
    """Drives jobs through the store's transitions as the reconciler does, at ``DAY + hours``."""

    def __init__(self, url: str) -> None:
        self.hours = 0.0
        self.store = SqlStore(SqlStore.open(url).engine, clock=lambda: DAY + self.hours * H)

    def at(self, hours: float) -> Day:
        self.hours = hours
        return self

    def submit(self, tenant: str, job_spec: dict[str, Any]) -> int:
        job = job_spec["job"]
        return self.store.submit(NewJob(tenant, job["name"], job["queue"], "normal", 100,
                                        job_spec), "test").id

    def admit(self, job: int, flavor: str, nodes: list[str],
              roles: list[dict[str, Any]] | None = None) -> None:
        placement: dict[str, Any] = {"flavor": flavor, "nodes": nodes, "borrowing": False}
        if roles is not None:
            placement["roles"] = roles
        self.move(job, (Q,), (A,), placement=placement, admitted_at=self.now)

    def run(self, job: int, attempt: int) -> None:
        self.move(job, (A,), (S,), attempt=attempt, started_at=self.now)
        self.move(job, (S,), (R,))

    def move(self, job: int, expect: tuple[JobState, ...], path: tuple[JobState, ...],
             cause: CauseRecord | None = None, **changes: Any) -> None:
        done = self.store.transition(job, expect, path, "scripted", "test", changes,
                                     cause=cause)
        assert done is not None, (job, path)

    @property
    def now(self) -> float:
        return DAY + self.hours * H


def script(url: str, *, still_held: bool = False) -> Day:
    """The scripted day (see the hand count); ``still_held``: and job 7, bob's, 1 x 2 a100
    GPUs from 22 h, still held at 24 h."""
    d = Day(url)
    j1 = d.at(0).submit("alice", spec("pretrain", "research", ranks=2, gpu=4, cpu=8))
    d.admit(j1, "h100", ["g-0", "g-1"])
    d.at(0.1).run(j1, 1)
    d.at(2).move(j1, (R,), (JobState.PREEMPTED, Q), placement=None, queued_at=d.now)
    j2 = d.at(1).submit("bob", spec("batch", "batch", gpu=8, cpu=16, max_restarts=1))
    d.admit(j2, "a100", ["a"])
    d.run(j2, 1)
    d.at(3).admit(j1, "h100", ["g-1", "g-0"])
    d.at(3.1).run(j1, 2)
    cause = CauseRecord(j2, 1, 0.0, "infra", "xid", "GPU fell off the bus", nodes=["a"])
    d.at(4).move(j2, (R,), (JobState.FAILED, Q), cause=cause, placement=None, restarts=1)
    d.at(5).admit(j2, "a100", ["a"])
    d.run(j2, 2)
    d.at(6).move(j1, (R,), (JobState.SUCCEEDED,), finished_at=d.now)
    d.at(9).move(j2, (R,), (JobState.SUCCEEDED,), finished_at=d.now)
    j3 = d.at(9.5).submit("alice", ROLES)
    d.at(10).admit(j3, "h100", ["g-0", "c", "c"],
                   [{"name": "trainer", "flavor": "h100", "ranks": 1},
                    {"name": "server", "flavor": "cpu", "ranks": 2}])
    d.run(j3, 1)
    d.at(20).move(j3, (R,), (JobState.SUCCEEDED,), finished_at=d.now)
    j4 = d.at(11).submit("bob", spec("small", "batch", gpu=2, cpu=4))
    d.at(12).admit(j4, "a100", ["a"])
    d.at(12.5).move(j4, (A,), (JobState.CANCELLED,), placement=None, finished_at=d.now)
    j5 = d.at(13).submit("alice", spec("eval", "research", gpu=8, cpu=8))
    d.admit(j5, "h100", ["g-1"])
    d.at(13.25).move(j5, (A,), (Q,), placement=None, queued_at=d.now)
    d.at(13.5).move(j5, (Q,), (JobState.CANCELLED,), finished_at=d.now)
    j6 = d.at(14).submit("alice", spec("waits", "research", gpu=8))
    d.at(23).move(j6, (Q,), (JobState.CANCELLED,), finished_at=d.now)
    if still_held:
        j7 = d.at(22).submit("bob", spec("serve", "batch", gpu=2, cpu=2))
        d.admit(j7, "a100", ["a"])
        d.run(j7, 1)
    return d.at(24)


@pytest.fixture
def day(db_url: str) -> Iterator[Day]:
    """The scripted day in SQLite, and in PostgreSQL."""
    d = script(db_url)
    yield d
    d.store.close()


def gpu_hours(report: Any) -> dict[str, dict[str, float]]:
    return {r.key: r.gpu_hours.model_dump() for r in report.rows}


def test_the_scripted_day_matches_the_hand_count(day: Day) -> None:
    end = DAY + 24 * H
    by_tenant = accounting_report(day.store, PRICES, None, "tenant", None, end, end)
    for tenant, want in GPU_H.items():
        got = gpu_hours(by_tenant)[tenant]
        assert got == pytest.approx({**want, "total": sum(want.values())}), tenant
    assert {r.key: r.cpu_hours.total for r in by_tenant.rows} == pytest.approx(CPU_H)
    assert {r.key: r.cost for r in by_tenant.rows} == pytest.approx(COST)
    assert {r.key: r.attempts for r in by_tenant.rows} == {"alice": 4, "bob": 3}
    by_flavor = accounting_report(day.store, PRICES, None, "flavor", None, end, end)
    assert {r.key: r.gpu_hours.total for r in by_flavor.rows} == pytest.approx(FLAVOR_GPU_H)
    assert {r.key: r.cpu_hours.total for r in by_flavor.rows} == pytest.approx(FLAVOR_CPU_H)
    for report in (by_tenant, by_flavor):
        assert report.total.gpu_hours.total == pytest.approx(179)
        assert report.total.cpu_hours.total == pytest.approx(356)
        assert report.total.cost == pytest.approx(sum(COST.values()))
    by_job = accounting_report(day.store, {}, "alice", "job", None, end, end)
    assert [(r.key, r.name) for r in by_job.rows] == [("1", "pretrain"), ("3", "serve-train"),
                                                      ("5", "eval")]
    assert by_job.total.cost is None and by_job.total.gpu_hours.total == pytest.approx(122)


def test_each_allocation_is_kept_with_its_nodes_launch_and_outcome(day: Day) -> None:
    first, second = day.store.attempts(job_id=1)
    assert (first.hold, first.flavor, first.nodes, first.ranks, first.gpus, first.cpus) == \
        (1, "h100", ["g-0", "g-1"], 2, 8.0, 16.0)
    assert (first.admitted_at, first.started_at, first.ended_at) == \
        (DAY, DAY + 0.1 * H, DAY + 2 * H)
    assert (first.attempt, first.outcome, second.attempt, second.outcome) == \
        (1, "PREEMPTED", 2, "SUCCEEDED")
    failed = day.store.attempts(job_id=2)[0]
    assert (failed.outcome, failed.cause, failed.tenant, failed.queue) == \
        ("FAILED", "xid", "bob", "batch")
    trainer_and_server = day.store.attempts(job_id=3)
    assert [(a.flavor, a.nodes, a.gpus, a.cpus) for a in trainer_and_server] == \
        [("cpu", ["c"], 0.0, 8.0), ("h100", ["g-0"], 8.0, 8.0)]
    (requeued,) = day.store.attempts(job_id=5)
    assert (requeued.started_at, requeued.attempt, requeued.outcome) == (None, None, "QUEUED")
    assert day.store.attempts(job_id=6) == []


def test_a_window_clips_the_allocations(day: Day) -> None:
    start, end = DAY + 1.5 * H, DAY + 3.5 * H
    report = accounting_report(day.store, PRICES, None, "tenant", start, end, DAY + 24 * H)
    # job 1: 0.5 h x 8 preempted (1.5 -> 2) and 0.5 h x 8 productive (3 -> 3.5); job 2:
    # 2 h x 8 failed (1.5 -> 3.5); nothing else was held then.
    assert gpu_hours(report) == {
        "alice": pytest.approx({"total": 8, "productive": 4, "preempted": 4, "failed": 0,
                                "other": 0}),
        "bob": pytest.approx({"total": 16, "productive": 0, "preempted": 0, "failed": 16,
                              "other": 0})}
    assert report.total.cpu_hours.total == pytest.approx(0.5 * 16 * 2 + 2 * 16)


def test_an_allocation_still_held_counts_up_to_now(db_url: str) -> None:
    d = script(db_url, still_held=True)
    try:
        now = DAY + 24 * H
        report = accounting_report(d.store, PRICES, "bob", "job", None, None, now)
        assert report.end == now and report.rows[-1].key == "7"
        assert report.rows[-1].gpu_hours.productive == pytest.approx(2 * 2)
        later = accounting_report(d.store, PRICES, "bob", "job", None, now + 10 * H, now)
        assert later.end == now  # never past now
        (held,) = d.store.attempts(start=now)
        assert held.job_id == 7 and held.ended_at is None and held.outcome is None
        totals = {(t.tenant, t.flavor, t.outcome): t.gpu_s for t in d.store.attempt_totals()}
        assert ("bob", "a100", None) not in totals  # counters take ended allocations only
        assert totals[("bob", "a100", "FAILED")] == pytest.approx(24 * H)
    finally:
        d.store.close()


def test_the_chargeback_csv_sums_to_the_total(day: Day) -> None:
    lo, hi = month("2026-12")
    assert (lo, hi) == (DAY, datetime(2027, 1, 1, tzinfo=UTC).timestamp())
    report = accounting_report(day.store, PRICES, None, "tenant", lo, hi, DAY + 24 * H)
    rows = list(csv.DictReader(io.StringIO(chargeback_csv(report.model_dump(), "2026-12"))))
    *tenants, total = rows
    assert [r["tenant"] for r in tenants] == ["alice", "bob"] and total["tenant"] == "(total)"
    for column in ("gpu_hours", "gpu_hours_failed", "cpu_hours", "cost"):
        assert sum(float(r[column]) for r in tenants) == pytest.approx(float(total[column]),
                                                                        abs=1e-9), column
    assert float(total["gpu_hours"]) == pytest.approx(179)
    assert float(total["cost"]) == pytest.approx(sum(COST.values()))
    assert {r["month"] for r in rows} == {"2026-12"}


def test_prices_are_checked_one_line_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "cluster.toml"
    config.write_text(CLUSTER)
    assert load_cluster(config).prices == PRICES
    for override, key in (("prices.b200=3", "prices.b200"), ("prices.h100=-1", "prices.h100"),
                          ("prices.cpu='free'", "prices.cpu"), ("prices.a100=nan", "prices.a100"),
                          ("prices.a100=true", "prices.a100")):
        with pytest.raises(ConfigError) as e:
            load_cluster(config, [override])
        assert e.value.key == key or key in str(e.value), (override, str(e.value))
        assert len(str(e.value).splitlines()) == 1


# --- on a real server over the scripted day's database ------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("accounting")
    (root / "state").mkdir()
    script(f"sqlite:///{root / 'state' / 'stoker.db'}").store.close()
    config = root / "cluster.toml"
    config.write_text(CLUSTER)
    proc = ServerProcess(root / "state", config, env=TOKENS, args=["--interval", "0.5"])
    with proc:
        yield proc
    kill_jobs(root / "state")


def stoker(server: ServerProcess, token: str, *args: str) -> str:
    result = CliRunner().invoke(app, ["usage", *args],
                                env={"STOKER_SERVER": server.url, "STOKER_TOKEN": token,
                                     "COLUMNS": "200"})
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def accounting(server: ServerProcess, token: str, **params: Any) -> httpx.Response:
    return httpx.get(f"{server.url}/v1/usage/accounting", params=params, timeout=30,
                     headers={"Authorization": f"Bearer {token}"})


def test_a_tenant_sees_only_its_own_usage(server: ServerProcess) -> None:
    window = {"from": DAY, "to": DAY + 24 * H}
    everyone = accounting(server, "admin-t", by="tenant", **window).json()
    assert [r["key"] for r in everyone["rows"]] == ["alice", "bob"]
    assert everyone["total"]["gpu_hours"]["total"] == pytest.approx(179)
    for tenant, token in (("alice", "alice-t"), ("bob", "bob-t")):
        for by in ("tenant", "queue", "flavor", "job"):
            own = accounting(server, token, by=by, **window).json()
            want = sum(GPU_H[tenant].values())
            assert own["total"]["gpu_hours"]["total"] == pytest.approx(want), (tenant, by)
            if by in ("tenant", "job"):
                assert {r.get("tenant") or r["key"] for r in own["rows"]} == {tenant}
    assert accounting(server, "nobody").status_code == 401
    assert accounting(server, "alice-t", by="user").status_code == 422
    assert accounting(server, "alice-t", **{"from": DAY + H, "to": DAY}).status_code == 422


def test_the_cli_reports_json_csv_table_and_chargeback(server: ServerProcess,
                                                       tmp_path: Path) -> None:
    report = json.loads(stoker(server, "bob-t", "--by", "flavor", "--from", "2026-12-01",
                               "--to", "2026-12-02T00:00", "-o", "json"))
    assert [r["key"] for r in report["rows"]] == ["a100"] and report["start"] == DAY
    assert report["rows"][0]["gpu_hours"]["failed"] == pytest.approx(24)
    assert report["total"]["cost"] == pytest.approx(COST["bob"])
    table = stoker(server, "admin-t", "--by", "job", "--from", str(DAY))
    assert re.search(r"1 alice/pretrain\s+2\s+40\.00\s+24\.00\s+16\.00", table), table
    assert "total" in table and "179.00" in table
    lines = stoker(server, "admin-t", "--by", "queue", "-o", "csv").splitlines()
    assert lines[0].startswith("queue,attempts,gpu_hours,") and lines[-1].startswith("(total),")
    out = tmp_path / "2026-12.csv"
    stoker(server, "admin-t", "--chargeback", "2026-12", "--file", str(out))
    *tenants, total = list(csv.DictReader(out.open()))
    assert [r["tenant"] for r in tenants] == ["alice", "bob"]
    assert sum(float(r["cost"]) for r in tenants) == pytest.approx(float(total["cost"]))
    assert float(total["gpu_hours"]) == pytest.approx(179)
    goodput = stoker(server, "alice-t", "--goodput")
    assert "goodput, all time" in goodput and "tenant alice" in goodput


def test_bad_usage_options_name_the_option(server: ServerProcess) -> None:
    for args, option in ((["--by", "user"], "--by"), (["--from", "2026-13-45"], "--from"),
                         (["--to", "soon"], "--to"), (["--chargeback", "2026-13"],
                                                      "--chargeback"),
                         (["--from", "2026-12-02", "--to", "2026-12-01"], "--to"),
                         (["-o", "xml"], "--output")):
        result = CliRunner().invoke(app, ["usage", *args], env={"STOKER_SERVER": server.url,
                                                                "STOKER_TOKEN": "alice-t"})
        assert isinstance(result.exception, ConfigError), (args, result.output)
        assert str(result.exception).startswith(option), (args, str(result.exception))


def test_metrics_count_gpu_seconds_by_tenant_queue_flavor_and_outcome(
        server: ServerProcess) -> None:
    text = httpx.get(f"{server.url}/metrics", timeout=30,
                     headers={"Authorization": "Bearer admin-t"}).text

    def series(labels: str) -> float:
        found = re.search(re.escape(labels) + r" (\S+)", text)
        assert found is not None, labels
        return float(found.group(1))

    assert series('stoker_gpu_seconds_total{flavor="h100",outcome="preempted",queue="research",'
                  'tenant="alice"}') == pytest.approx(16 * H)
    assert series('stoker_gpu_seconds_total{flavor="a100",outcome="failed",queue="batch",'
                  'tenant="bob"}') == pytest.approx(24 * H)
    assert series('stoker_cpu_seconds_total{flavor="cpu",outcome="productive",'
                  'queue="research",tenant="alice"}') == pytest.approx(80 * H)
    own = httpx.get(f"{server.url}/metrics", timeout=30,
                    headers={"Authorization": "Bearer alice-t"}).text
    assert "stoker_gpu_seconds_total" not in own  # every tenant's: the admin's only
