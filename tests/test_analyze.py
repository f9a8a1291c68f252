"""`stoker analyze` (issue 14 item 2): real traces of a 2-rank CPU/gloo run whose rank 1 sleeps
in one profiled step (the ``slow`` fault), and small synthetic traces with exact sums."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from stoker.observe.trace_analysis import SECTIONS, TOLERANCE_US, analyse
from stoker.spec.loading import to_toml
from test_train_recovery import CONFIG, train

SLOW_MS = 300


def run_cli(args: list[str], monkeypatch: pytest.MonkeyPatch,
            capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from stoker.cli.main import main

    monkeypatch.setattr(sys, "argv", ["stoker", "analyze", *args])
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as exit_:
        main()
    out = capsys.readouterr()
    return int(exit_.value.code or 0), out.out, out.err


@pytest.fixture(scope="module")
def slowed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Steps 2-3 profiled on both ranks; rank 1 sleeps SLOW_MS at the start of step 3."""
    tmp = tmp_path_factory.mktemp("analyze")
    cfg = {k: dict(v) for k, v in CONFIG.items()}
    cfg["train"].update(steps=4, log_interval=2)
    cfg["checkpoint"] = {"enabled": False}
    cfg["telemetry"].update(sample_ids=False, peak_flops=1e12)
    cfg["profile"] = {"enabled": True, "wait": 0, "warmup": 1, "active": 2, "repeat": 1}
    (tmp / "train.toml").write_text(to_toml(cfg))
    done = train(tmp / "train.toml", tmp / "run", fault=f"slow@step=3,rank=1,ms={SLOW_MS}")
    assert done.returncode == 0, done.stderr
    (where,) = (tmp / "run" / "profiles").iterdir()
    return where


@pytest.mark.slow
def test_real_traces_sum_to_the_step_time_and_name_the_slowed_rank(
        slowed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "report.html"
    code, out, err = run_cli([str(slowed), "-o", "json", "--html", str(report)], monkeypatch,
                             capsys)
    assert code == 0, err
    result = json.loads(out)
    assert [r["rank"] for r in result["ranks"]] == [0, 1]
    for r in result["ranks"]:
        assert r["timeline"] == "cpu main thread" and len(r["steps"]) == 2
        for s in r["steps"]:
            parts = sum(s[f"{k}_us"] for k in SECTIONS)
            assert abs(parts - s["wall_us"]) <= TOLERANCE_US, s
            assert all(s[f"{k}_us"] >= 0 for k in SECTIONS)
        assert r["communication_us"] > 0 and r["comm_total_us"] > 0
        assert 0 <= r["comm_overlapped_us"] <= r["comm_total_us"]
    slow = result["slowest"]
    assert slow["rank"] == 1 and slow["over_fastest_us"] > 0.5 * SLOW_MS * 1000
    # rank 0 waits for rank 1 in communication; rank 1 slept: idle
    assert slow["sections"]["communication"]["rank"] == 0
    assert slow["sections"]["idle"]["rank"] == 1
    assert any(o["name"].startswith("gloo:") for o in result["top_ops"])
    page = report.read_text()
    assert "<table>" in page and "slowest rank: 1" in page and "http" not in page
    code, out, _ = run_cli([str(slowed)], monkeypatch, capsys)
    assert code == 0 and "slowest rank: 1" in out and "communication" in out


def step(name: str, ts: float, dur: float, tid: int = 1) -> dict[str, Any]:
    return {"ph": "X", "cat": "user_annotation", "name": name, "pid": 1, "tid": tid, "ts": ts,
            "dur": dur}


def op(name: str, ts: float, dur: float, tid: int = 1, cat: str = "cpu_op") -> dict[str, Any]:
    return {**step(name, ts, dur, tid), "cat": cat}


def write(where: Path, events: list[dict[str, Any]], rank: int = 0, gz: bool = False) -> None:
    where.mkdir(exist_ok=True)
    text = json.dumps({"traceEvents": events, "distributedInfo": {"rank": rank}})
    name = where / f"rank-{rank:05d}.json"
    if gz:
        (where / f"{name.name}.gz").write_bytes(gzip.compress(text.encode()))
    else:
        name.write_text(text)


def test_synthetic_cpu_trace_exact_sections(tmp_path: Path) -> None:
    write(tmp_path, [
        step("ProfilerStep#1", 0, 100),
        op("aten::mm", 10, 20),
        op("c10d::allreduce_", 40, 20), op("aten::empty", 45, 5),  # inside: communication
        op("aten::copy_", 60, 10),
        step("FSDP::all_gather", 70, 20), op("aten::copy_", 70, 5),  # then 15 µs of waiting
        step("gloo:all_reduce", 0, 35, tid=2),  # gloo's thread: overlaps mm by 20
    ])
    write(tmp_path, [step("ProfilerStep#1", 0, 100), op("aten::mm", 0, 90)], rank=1, gz=True)
    r0, r1 = analyse(tmp_path)["ranks"]
    (s,) = r0["steps"]
    assert {k: s[f"{k}_us"] for k in SECTIONS} == {
        "computation": 20, "communication": 35, "memcpy": 15, "idle": 30}
    assert (r0["comm_total_us"], r0["comm_overlapped_us"]) == (35 + 15 + 20 - 0, 20)
    assert r1["computation_us"] == 90 and r1["idle_us"] == 10
    result = analyse(tmp_path)
    assert result["slowest"]["rank"] == 1 and result["slowest"]["over_fastest_us"] == 100 - 65
    tops = {o["name"]: o["self_us"] for o in result["top_ops"]}
    assert tops["aten::mm"] == 110 and tops["c10d::allreduce_"] == 15


def test_synthetic_gpu_trace_uses_the_kernels(tmp_path: Path) -> None:
    write(tmp_path, [
        step("ProfilerStep#1", 0, 100),
        op("aten::mm", 0, 5),  # the CPU's own ops are not the timeline on GPU
        op("ampere_sgemm", 0, 50, tid=7, cat="kernel"),
        op("ncclDevKernel_AllReduce_Sum_f32", 30, 50, tid=8, cat="kernel"),
        op("Memcpy HtoD (Pageable -> Device)", 85, 5, tid=7, cat="gpu_memcpy"),
    ])
    (r,) = analyse(tmp_path)["ranks"]
    assert r["timeline"] == "gpu"
    assert {k: r[f"{k}_us"] for k in SECTIONS} == {
        "computation": 30, "communication": 50, "memcpy": 5, "idle": 15}
    assert (r["comm_overlapped_us"], r["overlap_pct"]) == (20, 40)


@pytest.mark.parametrize(("make", "words"), [
    (lambda p: p / "missing", ["no such profile dir"]),
    (lambda p: p, ["no traces"]),
    (lambda p: (p / "rank-00000.json").write_text("{") and p, ["not a readable trace"]),
    (lambda p: (p / "rank-00000.json").write_text("[1]") and p, ["not a Chrome trace"]),
    (lambda p: (p / "rank-00000.json").write_text('{"traceEvents": []}') and p,
     ["no ProfilerStep#"]),
])
def test_bad_input_is_one_line_exit_2(tmp_path: Path, make: Any, words: list[str],
                                      monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli([str(make(tmp_path))], monkeypatch, capsys)
    assert code == 2 and not out
    (line,) = err.strip().splitlines()
    assert all(w in line for w in words), line


def test_the_slow_fault_sleeps_once_and_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from stoker.train import faults

    (fault,) = faults.parse("slow@step=3,rank=1,ms=50")
    assert (fault.action, fault.filters) == ("slow", {"step": 3, "rank": 1, "ms": 50})
    monkeypatch.setattr(faults, "_faults", [fault])
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT", raising=False)
    monkeypatch.delenv("STOKER_ATTEMPT", raising=False)
    assert faults.fire("step", 3, rank=0) is None
    started = time.monotonic()
    assert faults.fire("step", 3, rank=1) is None
    assert time.monotonic() - started >= 0.05
    assert fault.fired and faults.fire("step", 3, rank=1) is None
