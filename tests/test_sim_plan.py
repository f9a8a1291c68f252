"""`stoker sim plan`: the cheapest mix of GPU models per quarter, on traces small enough to
work out by hand, its CSV and plots, and its one-line errors (the CLI run in this process)."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

from stoker.cli.main import main
from stoker.sim.plan import HOURS_PER_QUARTER, interleaved

# Two models of 4-GPU nodes: A at 1 per GPU-hour (0.6 reserved), B at 3.
NODES = "sn,gpu,model\na0,4,A\na1,4,A\nb0,4,B\nb1,4,B\n"
PRICES = "[models.A]\non_demand = 1.0\nreserved = 0.6\n\n[models.B]\non_demand = 3.0\n"


def write_inputs(tmp_path: Path, extra_jobs: str = "") -> list[str]:
    """12 jobs of 4 GPUs for an hour, one every 30 minutes: two run at once, so two nodes
    never make one wait; twice as fast (quarter 1 at growth 2) four run at once."""
    jobs = "id,arrival,duration,gpus,gpu_model\n" + "".join(
        f"j{i},{i * 1800},3600,4,\n" for i in range(12)) + extra_jobs
    (tmp_path / "jobs.csv").write_text(jobs)
    (tmp_path / "nodes.csv").write_text(NODES)
    (tmp_path / "prices.toml").write_text(PRICES)
    return ["--trace", str(tmp_path / "jobs.csv"), "--node-list", str(tmp_path / "nodes.csv"),
            "--prices", str(tmp_path / "prices.toml"), "--policy", "fifo", "--tenants", "2",
            "--target", "wait_p95<=0s", "--report", str(tmp_path / "report")]


def sim(args: list[str], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["stoker", "sim", *args])
    monkeypatch.setenv("COLUMNS", "300")
    with pytest.raises(SystemExit) as exit_:
        main()
    out = capsys.readouterr()
    return int(exit_.value.code or 0), out.out, out.err


@pytest.mark.parametrize("n", [1, 2, 5, 8, 13])
def test_interleaved_prefixes_spread_and_nest(n: int) -> None:
    order = interleaved(list(range(n)))
    assert sorted(order) == list(range(n))
    if n == 8:
        assert order == [0, 4, 2, 6, 1, 5, 3, 7]


def test_cheapest_mix_per_quarter_and_growth(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    args = write_inputs(tmp_path)
    code, out, err = sim(["plan", *args, "--quarters", "1", "--growth", "2", "--json"],
                         monkeypatch, capsys)
    assert code == 0, err
    plan = json.loads(out)
    q0, q1 = plan["quarters"]
    # Two nodes at once, four in quarter 1; A's GPUs cost a third of B's, so only A.
    assert (q0["nodes_A"], q0["nodes_B"], q0["hourly_on_demand"]) == (2, 0, 8.0)
    assert (q1["nodes_A"], q1["nodes_B"], q1["hourly_on_demand"]) == (4, 0, 16.0)
    assert q0["meets"] and q1["meets"] and q1["growth_factor"] == 2.0
    # Every cheaper mix that was run missed, and the chosen mix's queues wait for nothing.
    for quarter, chosen in ((0, q0), (1, q1)):
        cheaper = [p for p in plan["points"]
                   if p["quarter"] == quarter and p["hourly"] < chosen["hourly_on_demand"]]
        assert cheaper and not any(p["ok"] for p in cheaper)
        assert chosen["wait_p95_h_t0"] == chosen["wait_p95_h_t1"] == 0.0
    assert plan["runs"] == q0["runs"] + q1["runs"] == sum(p["ran"] for p in plan["points"])

    # plan.csv holds the same rows; costs follow the prices and the reserved rule (8 GPUs of A
    # held in every quarter: reserved at 0.6, the rest at 1.0).
    with (tmp_path / "report" / "plan.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["nodes_A"]) for r in rows] == [2, 4]
    for row, quarter in zip(rows, (q0, q1), strict=True):
        hourly = float(row["gpus_A"]) * 1.0 + float(row["gpus_B"]) * 3.0
        assert float(row["hourly_on_demand"]) == hourly == quarter["hourly_on_demand"]
        assert float(row["quarter_on_demand"]) == pytest.approx(hourly * HOURS_PER_QUARTER)
        reserved = 8 * 0.6 + (float(row["gpus_A"]) - 8) * 1.0
        assert float(row["hourly_with_reserved"]) == pytest.approx(reserved)
        assert float(row["reserved_gpus_A"]) == 8.0 and row["meets"] == "True"
    for name in ("cdf.png", "utilization.png", "cost_vs_target.png"):
        assert (tmp_path / "report" / name).stat().st_size > 5000, name


def test_many_steps_search_the_scaled_mix_and_trade(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # 65 x 65 grid points exceed GRID_LIMIT: the cluster's mix scaled finds 1A + 1B (16/h)
    # first; neither model can be shrunk, and trading B for A (1A + 1 more) gives 2A (8/h).
    code, out, err = sim(["plan", *write_inputs(tmp_path), "--steps", "64", "--json"],
                         monkeypatch, capsys)
    assert code == 0, err
    plan = json.loads(out)
    (q0,) = plan["quarters"]
    assert (q0["nodes_A"], q0["nodes_B"], q0["hourly_on_demand"]) == (2, 0, 8.0)
    ran = {(p["nodes"]["A"], p["nodes"]["B"]): p["ok"] for p in plan["points"] if p["ran"]}
    assert ran[1, 1] and not ran[1, 0] and not ran[0, 1] and ran[2, 0]


def test_a_model_some_jobs_need_is_in_every_passing_mix(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # One more job, limited to B, beside j0 at time 0: A alone can never hold it.
    args = write_inputs(tmp_path, extra_jobs="jb,0,3600,4,B\n")
    code, out, err = sim(["plan", *args, "--json"], monkeypatch, capsys)
    assert code == 0, err
    plan = json.loads(out)
    (q0,) = plan["quarters"]
    # 1A+1B (16/h) misses: j1 arrives while both are busy; 2A+1B (20/h) is the cheapest.
    assert (q0["nodes_A"], q0["nodes_B"], q0["hourly_on_demand"]) == (2, 1, 20.0)
    without_b = [p for p in plan["points"] if p["nodes"]["B"] == 0]
    assert without_b and all(not p["ran"] and p["why"] == "no node for jobs limited to B"
                             for p in without_b)


CLUSTER = """
[flavors.a]
gpu_model = "A"

[flavors.b]
gpu_model = "B"

[[nodes]]
name = "a"
count = 2
flavor = "a"
gpus = 4

[[nodes]]
name = "b"
count = 2
flavor = "b"
gpus = 4

[queues.all.quotas.a]
gpus = 64

[queues.all.quotas.b]
gpus = 64

[prices]
a = 1.0
b = 3.0
"""


def test_cluster_toml_and_its_prices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    # The flavors' GPU models are the node types, [prices] the on-demand prices: as above.
    write_inputs(tmp_path)
    (tmp_path / "cluster.toml").write_text(CLUSTER)
    code, out, err = sim(["plan", "--trace", str(tmp_path / "jobs.csv"), "--cluster",
                          str(tmp_path / "cluster.toml"), "--policy", "fifo", "--target",
                          "wait_p95<=0s", "--report", str(tmp_path / "report"), "--quarters",
                          "1", "--growth", "2", "--json"], monkeypatch, capsys)
    assert code == 0, err
    plan = json.loads(out)
    assert plan["prices"] == {"A": {"on_demand": 1.0, "reserved": 1.0},
                              "B": {"on_demand": 3.0, "reserved": 3.0}}
    assert [(q["nodes_A"], q["nodes_B"]) for q in plan["quarters"]] == [(2, 0), (4, 0)]


def test_console_table_and_progress(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = sim(["plan", *write_inputs(tmp_path)], monkeypatch, capsys)
    assert code == 0, err
    assert "Capacity plan: fifo, target wait_p95<=0s" in out
    assert "Q0 2xA: 8.00/h, wait_p95 0 -> ok" in out
    assert "simulator runs; report:" in out


@pytest.mark.parametrize(("extra", "prices", "message"), [
    ([], PRICES + "\n[models.H100]\non_demand = 2.0\n",
     "prices.toml: models.H100: unknown GPU model (the cluster has: A, B)"),
    ([], "[models.A]\non_demand = 1.0\n", "prices.toml: models.B: no price for GPU model 'B'"),
    ([], "[models.A]\non_demand = -1\n[models.B]\non_demand = 3\n",
     "prices.toml: models.A.on_demand: expected a non-negative number"),
    ([], "[models.A]\nreserved = 1\n[models.B]\non_demand = 3\n",
     "prices.toml: models.A.on_demand: missing"),
    (["--growth", "0"], PRICES, "--growth: must be a positive number"),
    (["--quarters", "-1"], PRICES, "--quarters: must not be negative"),
], ids=["unknown-model", "missing-model", "negative-price", "no-on-demand", "growth-0",
        "negative-quarters"])
def test_bad_input_is_one_line_exit_2_nothing_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        extra: list[str], prices: str, message: str) -> None:
    args = write_inputs(tmp_path)
    (tmp_path / "prices.toml").write_text(prices)
    code, _, err = sim(["plan", *args, *extra], monkeypatch, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "report").exists()
