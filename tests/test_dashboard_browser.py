"""The web dashboard in a real browser: a real `stoker server` with a short training job,
headless Chromium (Debian's `chromium`, driven by Playwright, no browser download) logged in
through the dashboard's own form.

Every page load is offline: a request for anything but the server is aborted and recorded,
and no page may log a console error. Screenshots are kept in the module's temporary
directory (``shots/``). Without chromium or playwright the module is skipped, or fails under
``CI=true`` (`make chromium` installs it).
"""

from __future__ import annotations

import calendar
import importlib.util
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from stoker.server.process import ServerProcess, kill_jobs
from test_e2e_control import wait

pytestmark = pytest.mark.slow

TOKENS = {"STOKER_ADMIN_TOKEN": "admin-t", "STOKER_TOKEN_ALICE": "alice-t",
          "STOKER_TOKEN_BOB": "bob-t"}
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
[cohorts.lab]
[queues.alice]
cohort = "lab"
[queues.alice.quotas.cpu]
cpus = 2
[queues.bob]
cohort = "lab"
[queues.bob.quotas.cpu]
cpus = 1
borrowing_limit = { cpus = 2 }
"""
STEPS = 30
TRAIN: dict[str, Any] = {
    "model": {"preset": "tiny", "dim": 64, "n_layers": 2, "n_heads": 2, "n_kv_heads": 2,
              "ffn_hidden": 128},
    "data": {"dataset": "stdlib", "tokenizer": "byte"},
    "parallel": {"strategy": "ddp"},
    "optim": {"warmup_steps": 2},
    "train": {"name": "dash", "steps": STEPS, "global_batch_size": 4, "micro_batch_size": 4,
              "seq_len": 64, "eval_interval": 10, "log_interval": 1},
    "checkpoint": {"interval_steps": 10, "async": False},
    "telemetry": {"live": False},
}


def chromium() -> str:
    """Debian's chromium, with playwright to drive it: else skip (fail under CI=true)."""
    path = shutil.which("chromium")
    missing = [name for name, ok in (("chromium (apt-get install chromium; `make chromium`)",
                                      path is not None),
                                     ("playwright (pip install -e '.[dev]')",
                                      importlib.util.find_spec("playwright") is not None))
               if not ok]
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and the dashboard's browser tests need {', '.join(missing)}",
                        pytrace=False)
        pytest.skip(f"missing: {', '.join(missing)}")
    assert path is not None
    return path


@dataclass
class Cluster:
    server: ServerProcess
    train: int  # alice's training job
    sleeper: int  # bob's command job, borrowing
    shots: Path


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    chromium()
    root = tmp_path_factory.mktemp("dashboard")
    (root / "cluster.toml").write_text(CLUSTER)
    server = ServerProcess(root / "state", root / "cluster.toml", env=TOKENS,
                           args=["--interval", "0.2", "--grace-period", "2"])
    with server:
        with server.client("alice-t") as alice:
            train = alice.submit({"name": "alices-run", "queue": "alice", "ranks": 1,
                                  "resources": {"cpus": 1}, "train_config": "train.toml"},
                                 TRAIN)["id"]
        with server.client("bob-t") as bob:
            sleeper = bob.submit({"name": "sleeper", "queue": "bob", "ranks": 2,
                                  "resources": {"cpus": 1},
                                  "command": [sys.executable, "-c",
                                              "import time; print('sleeping', flush=True); "
                                              "time.sleep(120)"]})["id"]
        yield Cluster(server, train, sleeper, root / "shots")
    kill_jobs(root / "state")


@dataclass
class Tab:
    """A logged-in browser context and its page, with what went wrong on it."""

    page: Any
    base: str
    errors: list[str] = field(default_factory=list)
    outside: list[str] = field(default_factory=list)  # requests that left the server

    def goto(self, path: str) -> Any:
        return self.page.goto(self.base + path, wait_until="load")

    def clean(self) -> None:
        assert not self.outside, f"requests left the server: {self.outside}"
        assert not self.errors, f"console errors: {self.errors}"


@pytest.fixture(scope="module")
def browser(cluster: Cluster) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=chromium(), headless=True,
                                     args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield launched
        launched.close()


def open_tab(browser: Any, cluster: Cluster, token: str | None) -> Tab:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    tab = Tab(context.new_page(), cluster.server.url)

    def route(r: Any) -> None:
        if r.request.url.startswith(tab.base + "/"):
            r.continue_()
        else:
            tab.outside.append(r.request.url)
            r.abort()

    context.route("**/*", route)
    tab.page.on("console", lambda m: tab.errors.append(m.text) if m.type == "error" else None)
    tab.page.on("pageerror", lambda e: tab.errors.append(str(e)))
    tab.page.on("dialog", lambda d: d.accept())
    if token is not None:  # through the login form, as a person would
        tab.goto("/")
        assert "/login" in tab.page.url
        tab.page.fill("input[name=token]", token)
        tab.page.click("button[type=submit]")
        tab.page.wait_for_url(tab.base + "/")
    return tab


@pytest.fixture(scope="module")
def alice(browser: Any, cluster: Cluster) -> Tab:
    return open_tab(browser, cluster, "alice-t")


@pytest.fixture(scope="module")
def admin(browser: Any, cluster: Cluster) -> Tab:
    return open_tab(browser, cluster, "admin-t")


def shot(tab: Tab, cluster: Cluster, name: str) -> None:
    cluster.shots.mkdir(exist_ok=True)
    tab.page.screenshot(path=str(cluster.shots / f"{name}.png"), full_page=True)


def latest_per_step(path: Path) -> dict[int, float | None]:
    """Step -> loss of the last record of each step, as the runtime writes metrics.jsonl."""
    out: dict[int, float | None] = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        out[record["step"]] = record["loss"]
    return out


def latest_records(path: Path) -> dict[int, dict[str, Any]]:
    """Step -> the last record of each step."""
    return {r["step"]: r for r in map(json.loads, path.read_text().splitlines())}


def test_jobs_page_lists_the_running_training_job(cluster: Cluster, alice: Tab) -> None:
    wait(cluster.server, cluster.train, {"RUNNING", "SUCCEEDED"})
    alice.goto("/")
    row = alice.page.locator(f"tr[data-job='{cluster.train}']")
    assert row.count() == 1 and "alices-run" in row.inner_text()
    assert row.get_attribute("data-state") in ("RUNNING", "SUCCEEDED")
    assert alice.page.locator(f"tr[data-job='{cluster.sleeper}']").count() == 0  # bob's
    shot(alice, cluster, "jobs")
    alice.goto("/?state=CANCELLED")
    assert alice.page.locator("table.jobs").count() == 0
    alice.clean()


def test_queues_nodes_and_usage_pages_match_the_api(cluster: Cluster, admin: Tab) -> None:
    wait(cluster.server, cluster.sleeper, {"RUNNING"})  # borrowing from alice's queue
    for _ in range(5):  # the API before and after the page: alice's job may end meanwhile
        with cluster.server.client("admin-t") as c:
            api = c.queues()
            admin.goto("/queues")
            rows = admin.page.eval_on_selector_all(
                "table.queues tbody tr", "rows => rows.map(r => ({...r.dataset}))")
            if c.queues() == api:
                break
    assert len(rows) == len(api) > 0
    assert any(r["queue"] == "bob" and float(r["borrowed"]) > 0 for r in rows)
    for row, want in zip(rows, api, strict=True):
        assert (row["queue"], row["flavor"], row["resource"]) == \
            (want["queue"], want["flavor"], want["resource"])
        assert float(row["used"]) == want["used"] and float(row["borrowed"]) == want["borrowed"]
        assert (float(row["nominal"]) if row["nominal"] else None) == want["nominal"]
        assert int(row["pending"]) == want["pending_jobs"]
    lab = admin.page.eval_on_selector_all("table.cohorts tbody tr",
                                          "rows => rows.map(r => ({...r.dataset}))")
    assert [(c["cohort"], c["flavor"], c["resource"]) for c in lab] == [("lab", "cpu", "cpu")]
    assert float(lab[0]["nominal"]) == sum(w["nominal"] for w in api)
    assert float(lab[0]["used"]) == sum(w["used"] for w in api)
    assert float(lab[0]["borrowed"]) == sum(w["borrowed"] for w in api) > 0
    admin.goto(f"/jobs/{cluster.sleeper}?rank=1")  # a command job: each rank its own log
    assert admin.page.locator("#log-rank option").all_inner_texts() == \
        ["rank 0", "rank 0", "rank 1"]
    admin.page.wait_for_function("document.getElementById('log').textContent"
                                 ".includes('sleeping')")
    assert admin.goto(f"/jobs/{cluster.sleeper}?rank=2").status == 404
    admin.errors.clear()  # the browser logs the 404 itself
    admin.goto("/")  # newest first; the Name header sorts by name, a second click flips it
    rows = "rows => rows.map(r => +r.dataset.job)"
    assert admin.page.eval_on_selector_all("table.jobs tbody tr", rows) == \
        [cluster.sleeper, cluster.train]
    admin.page.click("a.sort[data-sort=name]")
    admin.page.wait_for_url("**sort=name&order=desc**")
    assert admin.page.eval_on_selector_all("table.jobs tbody tr", rows) == \
        [cluster.sleeper, cluster.train]  # "sleeper" after "alices-run"
    admin.page.click("a.sort[data-sort=name]")
    admin.page.wait_for_url("**sort=name&order=asc**")
    assert admin.page.eval_on_selector_all("table.jobs tbody tr", rows) == \
        [cluster.train, cluster.sleeper]
    with cluster.server.client("admin-t") as c:  # the API sorts the same way
        by_name = c.send("GET", "/v1/jobs", params={"sort": "name", "limit": 10}).json()
    assert [j["id"] for j in by_name] == [cluster.train, cluster.sleeper]
    assert admin.goto("/?sort=spec").status == 422
    admin.errors.clear()  # the browser logs the 422 itself
    admin.goto("/queues?window=1h")  # bob's job has held 2 CPUs for the last few seconds
    admin.page.wait_for_selector("#queue-history[data-drawn]", state="attached")
    labels, data = admin.page.evaluate("""() => { const c = window.stokerQueueCharts["cpu cpu"];
        return [c.series.map(s => s.label), c.data]; }""")
    bob = labels.index("bob")
    assert labels[bob + 1] == "bob nominal" and set(data[bob + 1]) == {1}
    assert 0 < data[bob][-1] <= 2 and data[bob][0] == 0 and len(data[0]) == 120
    shot(admin, cluster, "queues")
    with cluster.server.client("admin-t") as c:
        nodes, usage = c.nodes(), c.usage()["rows"]
    admin.goto("/nodes")
    assert admin.page.locator("table.nodes tbody tr").count() == len(nodes)
    admin.goto("/usage")
    names = admin.page.eval_on_selector_all(
        "table.usage tbody tr", "rows => rows.map(r => r.dataset.scope + ' ' + r.dataset.name)")
    assert names == [f"{r['scope']} {r['name']}" for r in usage]
    shot(admin, cluster, "usage")
    admin.goto("/usage?by=queue")
    page, api_rows = accounting_rows(admin, cluster, "admin-t")
    assert {r["key"] for r in page} >= {"alice", "bob"} and page == api_rows
    admin.clean()


def accounting_rows(tab: Tab, cluster: Cluster, token: str
                    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The Usage page's GPU-/CPU-hours table (rows, then the total) and the accounting API's
    over the same window, as (key, attempts, GPU-hours, CPU-hours, cost)."""
    table = tab.page.locator("table.accounting")
    by, start, end = (table.get_attribute(f"data-{k}") for k in ("by", "start", "end"))
    page = tab.page.eval_on_selector_all("table.accounting tbody tr", """rows => rows.map(r =>
        ({key: r.dataset.key, attempts: +r.dataset.attempts, gpu: +r.dataset.gpuH,
          cpu: +r.dataset.cpuH, cost: r.dataset.cost === "" ? null : +r.dataset.cost}))""")
    with cluster.server.client(token) as c:
        report = c.accounting(str(by), float(start) if start else None, float(str(end)))
    api = [{"key": r["key"], "attempts": r["attempts"], "gpu": r["gpu_hours"]["total"],
            "cpu": r["cpu_hours"]["total"], "cost": r["cost"]}
           for r in [*report["rows"], report["total"]]]
    return page, api


def test_job_page_draws_the_loss_chart_from_its_metrics(cluster: Cluster, alice: Tab) -> None:
    alice.goto(f"/jobs/{cluster.train}")  # live: the page polls until the run is over
    alice.page.wait_for_selector("#job[data-metrics-done='1']", state="attached",
                                 timeout=120_000)
    steps, losses, _evals = alice.page.evaluate("() => window.stokerCharts.loss.data")
    run = cluster.server.state_dir / "jobs" / str(cluster.train) / "run" / "metrics.jsonl"
    expected = latest_per_step(run)
    assert steps == list(range(1, STEPS + 1)) == sorted(expected)
    assert losses == [expected[s] for s in steps]
    records = latest_records(run)
    steps, total, data_wait, _fwd_bwd, optim, compute, comm = alice.page.evaluate(
        "() => window.stokerCharts.breakdown.data")
    assert total == [pytest.approx(1000 * records[s]["step_time_s"]) for s in steps]
    assert optim == [pytest.approx(1000 * records[s]["optim_s"]) for s in steps]
    assert data_wait == [pytest.approx(1000 * records[s]["data_wait_s"]) for s in steps]
    assert compute == [pytest.approx(1000 * records[s]["compute_s"]) for s in steps]
    assert comm == [pytest.approx(1000 * records[s]["comm_s"]) for s in steps]
    _, memory = alice.page.evaluate("() => window.stokerCharts.memory.data")
    assert memory == [records[s]["peak_mem_bytes"] for s in steps]
    heat = alice.page.evaluate("() => window.stokerHeat")
    assert heat["ranks"] == 1 and heat["steps"] == STEPS and heat["means"] == [1]
    with cluster.server.client("alice-t") as client:
        api = client.job(cluster.train)
    alice.goto(f"/jobs/{cluster.train}")  # the list is as of the page's load
    rows = alice.page.locator("table.checkpoints tbody tr")
    assert [c["step"] for c in api["checkpoints"] if c["committed"]] == [20, 30]  # keep_last 2
    assert [int(rows.nth(i).get_attribute("data-step")) for i in range(rows.count())] == [30, 20]
    assert api["run_events"][0]["text"] == "attempt 0 started at step 0, from scratch, 1 rank"
    assert alice.page.locator("table.run-events tbody tr").count() == len(api["run_events"])
    newest = api["checkpoints"][-1]["bytes"]
    assert f"committed\t{newest / 2**20:.1f} MiB" in rows.nth(0).inner_text()
    box = alice.page.locator("#chart-loss canvas").bounding_box()
    assert box is not None and box["width"] > 200 and box["height"] > 100
    assert alice.page.locator("#progress [data-key=step]").inner_text() == f"{STEPS} / {STEPS}"
    assert "RUNNING" in alice.page.locator("table.events").inner_text()
    assert alice.page.locator("form.cancel").count() == 0  # over
    shot(alice, cluster, "job")
    alice.goto("/usage?window=24h")  # her own hours only
    page, api = accounting_rows(alice, cluster, "alice-t")
    assert [r["key"] for r in page] == ["alice", "total"] and page == api
    assert page[0]["cpu"] > 0
    today = time.strftime("%Y-%m-%d", time.gmtime())
    alice.goto("/usage")  # a chosen day, through the form's date fields
    alice.page.fill("input[name=from]", today)
    alice.page.fill("input[name=to]", today)
    alice.page.click("form.filters button[type=submit]")
    alice.page.wait_for_url(f"**/usage?*from={today}*")
    table = alice.page.locator("table.accounting")
    midnight = calendar.timegm(time.strptime(today, "%Y-%m-%d"))
    assert float(str(table.get_attribute("data-start"))) == midnight
    assert midnight < float(str(table.get_attribute("data-end"))) <= midnight + 86400  # or now
    day, api = accounting_rows(alice, cluster, "alice-t")
    assert day == api and day[0]["cpu"] == pytest.approx(page[0]["cpu"], rel=0.5)
    assert alice.goto("/usage?from=2026-13-01").status == 422
    alice.errors.clear()  # the browser logs the 422 itself
    alice.clean()


def test_a_tenant_cannot_open_another_tenants_job(browser: Any, cluster: Cluster) -> None:
    bob = open_tab(browser, cluster, "bob-t")
    response = bob.goto(f"/jobs/{cluster.train}")
    assert response.status == 404 and "alices-run" not in bob.page.content()
    bob.errors.clear()  # the browser logs the 404 itself
    api = bob.page.request.get(f"{cluster.server.url}/v1/jobs/{cluster.train}/metrics")
    assert api.status == 404  # the session reads the API as bob too
    bob.goto("/")
    assert bob.page.locator(f"tr[data-job='{cluster.train}']").count() == 0
    bob.goto("/nodes")
    assert "admin only" in bob.page.inner_text("main")
    # bob cancels his own job from its page
    bob.goto(f"/jobs/{cluster.sleeper}")
    bob.page.click("form.cancel button")
    bob.page.wait_for_url(f"{cluster.server.url}/jobs/{cluster.sleeper}")
    wait(cluster.server, cluster.sleeper, {"CANCELLED"})
    bob.clean()
    anonymous = open_tab(browser, cluster, None)
    anonymous.goto(f"/jobs/{cluster.sleeper}")
    assert "/login" in anonymous.page.url
    assert httpx.get(f"{cluster.server.url}/queues").status_code in (303, 307)
    anonymous.clean()


def test_api_docs_render_offline(cluster: Cluster, admin: Tab) -> None:
    admin.goto("/docs")
    admin.page.wait_for_selector(".swagger-ui .opblock", timeout=30_000)
    assert "/v1/jobs/{job_id}/metrics" in admin.page.inner_text("#swagger-ui")
    shot(admin, cluster, "docs")
    admin.goto("/redoc")
    admin.page.wait_for_function(
        "() => document.body.innerText.includes('/v1/jobs/{job_id}/metrics')", timeout=30_000)
    admin.clean()


def test_metrics_need_a_token_by_default(cluster: Cluster) -> None:
    assert httpx.get(f"{cluster.server.url}/metrics").status_code == 401
    assert httpx.get(f"{cluster.server.url}/metrics",
                     headers={"Authorization": "Bearer admin-t"}).status_code == 200
