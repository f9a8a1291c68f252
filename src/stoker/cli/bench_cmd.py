"""`stoker bench [SUITE…]`: run benchmarks/ and keep a record; `stoker bench compare OLD NEW`:
which figures got worse beyond their noise; `stoker bench list`; `stoker bench report`."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from stoker.bench import compare as cmp
from stoker.bench import records, report, runner
from stoker.spec.errors import StokerError


class _RunByDefault(typer.core.TyperGroup):
    """`stoker bench X` is `stoker bench run X` unless X is one of the subcommands."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ("--help", "-h")):
            args = ["run", *args]
        return super().parse_args(ctx, args)


bench_app = typer.Typer(cls=_RunByDefault, help="Run benchmarks/ and compare their records.")

RESULTS = typer.Option(None, "--results", help="The results file, one JSON record per run "
                       "(default: results.jsonl beside the scripts).")
DIR = typer.Option(Path("benchmarks"), "--dir", help="Where the benchmark scripts are.")


@bench_app.command("run")
def run(
    suites: list[str] = typer.Argument(None, metavar="[SUITE]...",
                                       help="Scripts in benchmarks/ by name (default: all)."),
    quick: bool = typer.Option(False, "--quick", help="Each script's BENCH_QUICK arguments."),
    repeats: int = typer.Option(1, "--repeats", min=1, help="Runs of each script; samples pool."),
    timeout: float = typer.Option(1800, "--timeout", help="Seconds one run of a script may take."),
    results: Path | None = RESULTS,
    bench_dir: Path = DIR,
    extra: list[str] = typer.Option([], "--arg", help="An argument passed to every script "
                                    "(repeatable; after the quick ones)."),
) -> None:
    """Run the scripts, each in its own process, and append one record (git commit, machine,
    library versions, every figure with its spread over samples) to the results file. Exit 1
    when a script failed; its output's tail is printed and kept in the record."""
    chosen = runner.pick(runner.discover(bench_dir), suites or [])
    results = results or bench_dir / "results.jsonl"
    records.load(results)  # a broken results file is refused before anything runs
    started, state = datetime.now(UTC), runner.git_state(bench_dir.resolve().parent)
    log_dir = bench_dir / "logs" / runner.record_id(started, state[0])
    console = Console(highlight=False)
    outcomes = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("benchmarks", total=len(chosen) * repeats)
        for suite in chosen:
            progress.update(task, description=suite.name)
            args = [*(suite.quick if quick else []), *extra]
            outcome = runner.run_suite(suite, args, repeats, timeout, log_dir,
                                       lambda: progress.advance(task))
            outcomes.append(outcome)
            console.print(_outcome_line(outcome))
    record = runner.new_record(started, state, outcomes, quick, repeats)
    records.append(results, record)
    console.print(f"record {record['id']} appended to {results} (logs: {log_dir})")
    if any(o.rc not in (0, None) for o in outcomes):
        raise typer.Exit(1)


def _outcome_line(o: runner.Outcome) -> str:
    if o.rc is None:
        return f"[yellow]skip[/] {o.suite}: {o.note}"
    if o.rc != 0:
        return f"[red]fail[/] {o.suite} (exit {o.rc}, {o.seconds:.0f} s):\n{o.note}"
    figs = ", ".join(f"{name} {report.value(f)}" for name, f in o.figures.items())
    return f"[green]ok[/]   {o.suite} ({o.seconds:.0f} s): {figs or 'no figures reported'}"


@bench_app.command("compare", context_settings={"ignore_unknown_options": True})
def compare(
    old: str = typer.Argument(..., help="A record: id, commit prefix, or -2 (second newest)."),
    new: str = typer.Argument("-1", help="A record (default: the newest)."),
    results: Path | None = RESULTS,
    bench_dir: Path = DIR,
    sigmas: float = typer.Option(3.0, "--sigmas", help="Standard errors a change must exceed."),
    tolerance: float = typer.Option(0.05, "--tolerance",
                                    help="Fraction of the old mean a change must also exceed."),
) -> None:
    """Judge every figure both records have: worse, better or same. Exit 1 when any is worse."""
    results = results or bench_dir / "results.jsonl"
    all_records = records.load(results)
    a, b = records.resolve(all_records, old, results), records.resolve(all_records, new, results)
    changes, unmatched = cmp.compare(a, b, sigmas, tolerance)
    table = Table(title=f"{a['id']} -> {b['id']}")
    for col in ("suite", "figure", "old", "new", "change", "verdict"):
        table.add_column(col, justify="right" if col in ("old", "new", "change") else "left")
    colour = {"worse": "red", "better": "green", "same": "dim"}
    for c in changes:
        table.add_row(c.suite, c.figure, report.value(c.old), report.value(c.new),
                      f"{100 * c.change:+.1f}%", f"[{colour[c.verdict]}]{c.verdict}[/]")
    console = Console(highlight=False)
    console.print(table)
    for line in unmatched:
        console.print(f"[dim]{line}[/]")
    worse = [c for c in changes if c.verdict == "worse"]
    console.print(f"{len(worse)} worse, {sum(c.verdict == 'better' for c in changes)} better, "
                  f"{sum(c.verdict == 'same' for c in changes)} within noise")
    if worse:
        raise typer.Exit(1)


@bench_app.command("list")
def list_suites(bench_dir: Path = DIR) -> None:
    """The suites, their quick arguments and what they need."""
    table = Table("suite", "quick arguments", "needs")
    for s in runner.discover(bench_dir).values():
        table.add_row(s.name, " ".join(s.quick) or "-", s.needs or "")
    Console().print(table)


@bench_app.command("report")
def report_cmd(
    results: Path | None = RESULTS,
    bench_dir: Path = DIR,
    write: Path | None = typer.Option(None, "--write", metavar="DOC.md",
                                      help="Replace the generated table in DOC.md."),
) -> None:
    """The newest figures of every suite as a Markdown table (printed, or written into a doc)."""
    results = results or bench_dir / "results.jsonl"
    all_records = records.load(results)
    if not all_records:
        raise StokerError(f"{results}: no records yet (run `stoker bench` first)")
    table = report.markdown(all_records)
    if write is None:
        sys.stdout.write(table)
        return
    report.write_into(write, table)
    Console().print(f"wrote the table into {write}")


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")
