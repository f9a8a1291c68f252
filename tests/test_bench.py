"""`stoker bench`: records from real script runs, regressions judged against noise, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from stoker.bench.compare import judge
from stoker.bench.figures import ENV
from stoker.bench.records import summarise
from stoker.bench.runner import discover
from stoker.cli.main import main

REPO = Path(__file__).resolve().parent.parent

SCRIPT = '''
import os, sys
from stoker.bench.figures import figure
BENCH_QUICK = ["--speed", "100"]
speed = float(sys.argv[sys.argv.index("--speed") + 1]) if "--speed" in sys.argv else 50.0
figure("ratio", [1.00, 1.02, 0.98, 1.01], "x", "lower")
figure("speed", [speed, speed * 1.01], "jobs/s", "higher")
if os.environ.get("FAIL"):
    print("it broke here")
    sys.exit(3)
'''


@dataclass
class Done:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def bench(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
          ) -> Callable[..., Done]:
    """`stoker bench ARGS` in this process (the CLI's own main, exit code and all), in ``cwd``."""
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.delenv(ENV, raising=False)

    def run(cwd: Path, *args: str, **env: str) -> Done:
        monkeypatch.chdir(cwd)
        monkeypatch.setattr(sys, "argv", ["stoker", "bench", *args])
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        capsys.readouterr()
        with pytest.raises(SystemExit) as exited:
            main()
        out = capsys.readouterr()
        return Done(int(exited.value.code or 0), out.out, out.err)

    return run


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "toy.py").write_text(SCRIPT)
    for args in (["init", "-q"], ["add", "-A"],
                 ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "toy"]):
        subprocess.run(["git", *args], cwd=tmp_path, check=True)
    return tmp_path


def test_a_run_appends_a_record_and_compare_flags_only_what_got_worse(
        bench: Callable[..., Done], checkout: Path) -> None:
    assert bench(checkout, "--quick", "--repeats", "2").returncode == 0
    results = checkout / "benchmarks" / "results.jsonl"
    [record] = [json.loads(line) for line in results.read_text().splitlines()]
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=checkout, capture_output=True,
                            text=True, check=True).stdout.strip()
    assert record["commit"] == commit and record["dirty"] is False and record["quick"] is True
    assert record["machine"]["cpus"] >= 1 and "torch" in record["versions"]
    toy = record["suites"]["toy"]
    assert toy["rc"] == 0 and toy["args"] == ["--speed", "100"]
    speed, ratio = toy["figures"]["speed"], toy["figures"]["ratio"]
    assert speed["n"] == 4 and speed["samples"] == [100.0, 101.0, 100.0, 101.0]
    assert speed["better"] == "higher" and speed["unit"] == "jobs/s"
    assert ratio["n"] == 8 and ratio["mean"] == pytest.approx(1.0025)

    assert bench(checkout, "toy").returncode == 0  # speed 50: half as fast, ratio the same
    compared = bench(checkout, "compare", "-2")
    assert compared.returncode == 1, compared.stdout
    rows = {line.split("│")[2].strip(): line for line in compared.stdout.splitlines()
            if line.count("│") > 5}
    assert "worse" in rows["speed"] and "same" in rows["ratio"]
    assert "1 worse, 0 better, 1 within noise" in compared.stdout
    assert bench(checkout, "compare", "-1", "-1").returncode == 0
    assert bench(checkout, "compare", commit[:7], "-2").returncode == 0  # newest of that commit


def test_a_failed_script_is_recorded_with_its_output(bench: Callable[..., Done],
                                                     checkout: Path) -> None:
    done = bench(checkout, "toy", FAIL="1")
    assert done.returncode == 1 and "it broke here" in done.stdout
    record = json.loads((checkout / "benchmarks" / "results.jsonl").read_text())
    assert record["suites"]["toy"]["rc"] == 3
    assert "it broke here" in record["suites"]["toy"]["note"]


def test_report_writes_the_table_between_its_markers(bench: Callable[..., Done],
                                                     checkout: Path) -> None:
    assert bench(checkout, "toy").returncode == 0
    doc = checkout / "bench.md"
    doc.write_text("# Figures\n\nprose before\n")
    for _ in range(2):  # a second write replaces the table, it does not add one
        assert bench(checkout, "report", "--write", str(doc)).returncode == 0
    text = doc.read_text()
    assert text.startswith("# Figures\n\nprose before\n") and text.count("| toy | speed |") == 1
    assert "| toy | speed | 50.2 ± 0.354 jobs/s | 2 | higher |" in text


@pytest.mark.parametrize(("args", "message"), [
    (["nope"], "no benchmark 'nope' (have: toy)"),
    (["compare", "-1"], "no records yet"),
    (["compare", "zzzz"], "no records yet"),
])
def test_bad_input_is_one_line_and_exit_2(bench: Callable[..., Done], checkout: Path,
                                          args: list[str], message: str) -> None:
    done = bench(checkout, *args)
    assert done.returncode == 2 and message in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_a_broken_results_file_is_refused_before_anything_runs(bench: Callable[..., Done],
                                                               checkout: Path) -> None:
    results = checkout / "benchmarks" / "results.jsonl"
    results.write_text('{"id": "x", "suites": {}}\nnot json\n')
    done = bench(checkout, "toy")
    assert done.returncode == 2 and "benchmarks/results.jsonl:2: not a JSON record" in done.stderr
    assert results.read_text().count("\n") == 2 and not (checkout / "benchmarks/logs").exists()


def test_judge_weighs_a_change_against_both_sides_noise() -> None:
    steady = summarise("ms", "lower", [10.0, 10.1, 9.9, 10.0])
    noisy = summarise("ms", "lower", [8.0, 14.0, 9.0, 13.0])
    slower = summarise("ms", "lower", [11.0, 11.1, 10.9, 11.0])
    assert judge(steady, slower, 3.0, 0.05) == "worse"
    assert judge(slower, steady, 3.0, 0.05) == "better"
    assert judge(steady, noisy, 3.0, 0.05) == "same"  # +10% but within its spread
    assert judge(steady, slower, 3.0, 0.20) == "same"  # within the tolerance
    one = summarise("ms", "lower", [10.0])
    assert judge(one, summarise("ms", "lower", [10.4]), 3.0, 0.05) == "same"
    assert judge(one, summarise("ms", "lower", [10.6]), 3.0, 0.05) == "worse"



def test_every_benchmark_script_reports_figures_and_has_quick_arguments() -> None:
    suites = discover(REPO / "benchmarks")
    assert len(suites) >= 20
    for suite in suites.values():
        source = suite.script.read_text()
        assert "from stoker.bench.figures import figure" in source, suite.name
        assert suite.quick, f"{suite.name}: no BENCH_QUICK"
