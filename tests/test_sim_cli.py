"""`stoker sim` and `stoker sim plan` as a user runs them: real processes, real files (the
one-line errors run the same entry point in this process)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from stoker.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
TIRESIAS = ROOT.parent / "shared" / "traces" / "tiresias"
CLUSTER = ROOT / "examples" / "sim" / "cluster.toml"
needs_tiresias = pytest.mark.shared_data("traces/tiresias/60_job.csv",
                                         "traces/tiresias/n32g4.csv")


def stoker(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stoker", "sim", *map(str, args)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


@needs_tiresias
def test_policies_side_by_side_json_and_report(tmp_path: Path) -> None:
    out = stoker("--trace", TIRESIAS / "60_job.csv", "--format", "tiresias",
                 "--node-list", TIRESIAS / "n32g4.csv", "--nodes", "3",
                 "--policy", "fifo", "--policy", "sjf", "--policy", "las", "--policy", "stoker",
                 "--las-thresholds", "10m,1h", "--json", "--report", tmp_path / "report")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    runs = {r["policy"]: r for r in data["runs"]}
    assert list(runs) == ["fifo", "sjf", "las", "stoker"]
    assert data["skips"] == {"rows": 60, "kept": 60, "skipped": {}, "notes": {}}
    for run in runs.values():
        assert run["finished"] == 60 and run["gpus"] == 12
        assert run["load"] == pytest.approx(1.247, abs=0.01)  # jobs queue on 12 GPUs
        assert run["wait_h"]["mean"] > 0
    assert runs["sjf"]["jct_h"]["mean"] < runs["fifo"]["jct_h"]["mean"]
    assert runs["fifo"]["preemptions"] == runs["sjf"]["preemptions"] == 0
    assert runs["las"]["preemptions"] > 0
    page = (tmp_path / "report" / "index.html").read_text()
    assert "stoker" in page and "load" in page
    for png in ("utilization", "jct_cdf", "wait_by_gpus", "fair_share"):
        assert (tmp_path / "report" / f"{png}.png").stat().st_size > 1000


@needs_tiresias
def test_table_with_cluster_toml() -> None:
    out = stoker("--trace", TIRESIAS / "60_job.csv", "--format", "tiresias",
                 "--cluster", CLUSTER, "--tenant-by", "id", "--policy", "stoker",
                 "--policy", "stoker-fair")
    assert out.returncode == 0, out.stderr
    assert "Policies side by side" in out.stdout
    assert "stoker-fair" in out.stdout and "team-a, team-b" in out.stdout


@needs_tiresias
def test_plan_finds_the_smallest_cluster_per_quarter(tmp_path: Path) -> None:
    prices = tmp_path / "prices.toml"
    prices.write_text("[models.gpu]\non_demand = 2.0\nreserved = 1.2\n")  # one model
    out = stoker("plan", "--trace", TIRESIAS / "60_job.csv", "--format", "tiresias",
                 "--node-list", TIRESIAS / "n32g4.csv", "--policy", "fifo", "--prices", prices,
                 "--target", "wait_p95<=1m", "--quarters", "1", "--growth", "2",
                 "--report", tmp_path / "report", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    chosen = [q["nodes_gpu"] for q in data["quarters"]]
    for quarter, nodes in enumerate(chosen):
        points = {p["nodes"]["gpu"]: p for p in data["points"] if p["quarter"] == quarter}
        assert points[nodes]["ok"] and not points[nodes - 1]["ok"]
        assert points[nodes]["worst"] <= 1 / 60
    assert chosen[1] > chosen[0]
    assert (tmp_path / "report" / "plan.csv").is_file()


def with_trace(args: list[str | Path], message: str) -> object:
    return pytest.param(args, message, marks=needs_tiresias)


@pytest.mark.parametrize(("args", "message"), [
    (["--trace", "missing.csv", "--format", "tiresias"], "missing.csv: no such file"),
    with_trace(["--trace", TIRESIAS / "60_job.csv", "--format", "slurm"],
               "unknown trace format 'slurm'"),
    with_trace(["--trace", TIRESIAS / "n32g4.csv", "--format", "tiresias"],
               "n32g4.csv: job_id: required column is missing"),
    with_trace(["--trace", TIRESIAS / "60_job.csv", "--format", "tiresias"], "has no node list"),
    with_trace(["--trace", TIRESIAS / "60_job.csv", "--format", "tiresias", "--cluster",
                CLUSTER, "--policy", "random"], "unknown policy 'random'"),
    with_trace(["--trace", TIRESIAS / "60_job.csv", "--format", "tiresias", "--cluster",
                CLUSTER, "--nodes", "99"], "--nodes: must be between 1 and 4"),
    with_trace(["--trace", TIRESIAS / "60_job.csv", "--cluster", CLUSTER,
                "--sample-nodes", "0"], "--sample-nodes: must be between 1 and 4"),
    with_trace(["--trace", TIRESIAS / "n32g4.csv"], "n32g4.csv: this is a node list"),
    (["--trace", ROOT / "README.md"], "README.md: unknown trace format: header has"),
    with_trace(["plan", "--trace", TIRESIAS / "60_job.csv", "--format", "tiresias", "--cluster",
                CLUSTER, "--target", "p95<1h"], "--target"),
])
def test_bad_input_is_one_line_exit_2(args: list[str | Path], message: str,
                                      monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "argv", ["stoker", "sim", *map(str, args)])
    monkeypatch.setenv("COLUMNS", "300")
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines


@needs_tiresias
def test_format_detected_cuts_and_assumptions_printed() -> None:
    out = stoker("--trace", TIRESIAS / "60_job.csv", "--node-list", TIRESIAS / "n32g4.csv",
                 "--nodes", "5", "--policy", "fifo", "--checkpoint-interval", "1h",
                 "--restart-overhead", "2m", "--no-checkpoint-on-preempt", "--json")
    assert out.returncode == 0, out.stderr
    inputs = json.loads(out.stdout)["inputs"]
    assert inputs["trace"].endswith("(tiresias, format detected from its header)")
    assert inputs["nodes taken"] == "5 of 32: the first 5 nodes"
    assert inputs["GPUs"] == "whole GPUs (no job asks for a share of one)"
    assert inputs["preemption"] == ("a preempted job loses its work since the last checkpoint "
                                    "(one every 1h), plus 2m per restart "
                                    "(--no-checkpoint-on-preempt)")
    assert inputs["loaded"] == "60 rows read, 60 jobs kept"
    out = stoker("--trace", TIRESIAS / "60_job.csv", "--node-list", TIRESIAS / "n32g4.csv",
                 "--sample-nodes", "4", "--every", "2", "--policy", "fifo")
    assert out.returncode == 0, out.stderr
    assert "nodes taken: 4 of 32: every 2th node, 4 nodes spread evenly" in out.stdout
    assert ("preemption: no work lost: jobs checkpoint on SIGTERM as they stop "
            "(--no-checkpoint-on-preempt: a preempted job loses its work since the last "
            "checkpoint (one every 30m))") in out.stdout


@pytest.mark.shared_data("traces/alibaba-openb-2023")
def test_times_from_states_the_join_and_its_drops(tmp_path: Path) -> None:
    # A requests-only list: the shared pods' first 40 rows without their times, plus a pod the
    # shared list does not name (dropped and counted in the printed assumptions).
    alibaba = ROOT.parent / "shared" / "traces" / "alibaba-openb-2023"
    lines = (alibaba / "openb_pod_list_default.csv").read_text().splitlines()[:41]
    keep = [i for i, c in enumerate(lines[0].split(",")) if not c.endswith("_time")]
    rows = [",".join(line.split(",")[i] for i in keep) for line in lines]
    rows.append("unknown-pod" + rows[1][rows[1].index(","):])
    requests = tmp_path / "requests.csv"
    requests.write_text("\n".join(rows) + "\n")
    out = stoker("--trace", requests, "--times-from", alibaba / "openb_pod_list_default.csv",
                 "--node-list", alibaba / "openb_node_list_gpu_node.csv", "--gpus", "16",
                 "--policy", "srtf", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert "(alibaba, requests only, times by pod name from" in data["inputs"]["trace"]
    assert "skipped 1: no times in" in data["inputs"]["loaded"]
    assert data["skips"]["rows"] == 41 and data["runs"][0]["finished"] == data["skips"]["kept"]
