"""`stoker pipeline run FILE | status [RUN] | lineage ARTIFACT`: pipelines (`stoker.pipeline`).

A bad pipeline file is one line naming the file and key, exit 2, and nothing runs; a step that
fails after its tries exits 1 and names the command that resumes the run.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

from stoker.cli.output import duration

app = typer.Typer(help="Pipelines: steps with cached, versioned artifacts and their lineage.",
                  no_args_is_help=True)
console = Console(highlight=False)
err = Console(stderr=True, highlight=False)

STORE_OPT = typer.Option(
    None, "--store", envvar="STOKER_PIPELINE_STORE",
    help="The artifact store (a directory or fsspec URL; default: the --file's, else "
         ".stoker/pipelines).")
FILE_OPT = typer.Option(None, "--file", "-f", help="A pipeline file: use its store.")
JSON_OPT = typer.Option(False, "--json", help="Print the record as JSON.")

MARKS = {"ran": "[green]✓[/]", "cached": "[cyan]↷[/]", "resumed": "[cyan]↷[/]",
         "failed": "[bold red]✗[/]", "start": "[yellow]…[/]"}


@app.command("run")
def run(
    file: Path = typer.Argument(..., help="Pipeline file (TOML)."),
    set_: list[str] = typer.Option([], "--set", help="Override a key: steps.NAME.params.k=v."),
    resume: str | None = typer.Option(
        None, "--resume", metavar="RUN|last",
        help="Resume a failed run: its overrides again, and every task it finished reused "
             "(cache = false steps too)."),
    workers: int | None = typer.Option(None, "--workers", min=1,
                                       help="Processes for a fanned-out step's shards."),
    as_json: bool = JSON_OPT,
) -> None:
    """Run a pipeline, each unchanged step served from the cache.

    A step whose code version, params and inputs are unchanged is served from the store's
    cache; the others run, retried with back-off, a fanned-out step's shards in parallel
    processes. Exit codes: 0 done, 1 a step failed (resume with --resume RUN), 2 bad input."""
    from stoker.pipeline.runner import Runner, find_run, load_pipeline
    from stoker.pipeline.store import Store

    overrides = list(set_)
    if resume is not None:
        store = Store(load_pipeline(file, overrides).store_url)
        overrides = [*find_run(store, resume)["overrides"], *overrides]
    pipeline = load_pipeline(file, overrides)

    def report(event: str, step: str, detail: str) -> None:
        if not as_json:
            tail = f" [dim]{escape(detail)}[/]" if detail else ""
            err.print(f"{MARKS.get(event, event)} {step} {event}{tail}")

    runner = Runner(pipeline, workers=workers, resume=resume, report=report)
    if not as_json:
        err.print(f"pipeline {pipeline.spec.name}: run {runner.run_id}, store "
                  f"{pipeline.store_url}")
    try:
        record = runner.run()
    finally:
        if as_json:
            sys.stdout.write(json.dumps(runner.record, indent=1) + "\n")
    if not as_json:
        seconds = record["ended"] - record["started"]
        err.print(f"[bold green]succeeded[/] in {seconds:.2f} s; outputs: stoker pipeline "
                  f"status {record['id']}")


@app.command("status")
def status(
    run_id: str | None = typer.Argument(None, metavar="[RUN]",
                                        help="A run (default: list the runs; 'last')."),
    store: str | None = STORE_OPT,
    file: Path | None = FILE_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """The store's runs, or one run's steps: state, tries, time and outputs."""
    from stoker.pipeline.runner import find_run, runs

    st = _store(store, file)
    if run_id is None:
        records = runs(st)
        if as_json:
            sys.stdout.write(json.dumps(records, indent=1) + "\n")
            return
        table = Table("run", "pipeline", "state", "started", "took", "steps")
        for r in records:
            states = [s["state"] for s in r["steps"].values()]
            table.add_row(r["id"], r["pipeline"], _state(r["state"]), _clock(r["started"]),
                          duration((r["ended"] or time.time()) - r["started"]),
                          ", ".join(f"{states.count(s)} {s}" for s in dict.fromkeys(states)))
        console.print(table)
        return
    record = find_run(st, run_id)
    if as_json:
        sys.stdout.write(json.dumps(record, indent=1) + "\n")
        return
    console.print(f"run [bold]{record['id']}[/] of {record['pipeline']} ({record['file']}): "
                  f"{_state(record['state'])}"
                  + (f", resumed from {record['resumed_from']}" if record["resumed_from"]
                     else ""))
    if record["error"]:
        console.print(f"[red]{escape(record['error'])}[/]")
    table = Table("step", "state", "shards", "tries", "seconds", "outputs")
    results = []
    for name, step in record["steps"].items():
        shards = step["shards"]
        outputs = "\n".join(f"{k} {v['digest'][:12]}" for k, v in
                            (shards[0]["outputs"].items() if len(shards) == 1 else ()))
        if len(shards) > 1:
            outputs = f"{len(shards)} shards"
        if len(shards) == 1 and shards[0]["result"] is not None:
            results.append(f"{name}: {escape(json.dumps(shards[0]['result']))}")
        errors = [e for s in shards for e in s["errors"]]
        if errors:
            results.append(f"{name}: [red]{escape(errors[-1])}[/]"
                           + (f" ({len(errors)} failed tries)" if len(errors) > 1 else ""))
        table.add_row(name, _state(step["state"]), str(len(shards)),
                      str(sum(s["attempts"] for s in shards)),
                      f"{sum(s['seconds'] for s in shards):.2f}", outputs)
    console.print(table)
    for line in results:
        console.print(line)


@app.command("lineage")
def lineage(
    artifact: str = typer.Argument(..., help="A file or directory, STEP.OUTPUT of the newest "
                                   "run (RUN:STEP.OUTPUT, STEP.OUTPUT[SHARD]), or a digest."),
    store: str | None = STORE_OPT,
    file: Path | None = FILE_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Which steps, code, params and inputs produced ARTIFACT.

    The tree goes back through every step's input artifacts to the pipeline's sources."""
    from stoker.pipeline import lineage as lin

    st = _store(store, file)
    tree = lin.lineage(st, lin.resolve(st, artifact))
    if as_json:
        sys.stdout.write(json.dumps(tree, indent=1) + "\n")
        return
    root = Tree(_node_label(tree))
    _grow(root, tree, set())
    console.print(root)


def _grow(parent: Tree, node: dict[str, Any], shown: set[str]) -> None:
    """Each artifact's own tree once; where it is an input again, its line only."""
    step = node.get("step")
    if step is None:
        return
    if node["digest"] in shown:
        parent.add("[dim](its lineage is above)[/]")
        return
    shown.add(node["digest"])
    code = step["code"].removeprefix("declared:")
    label = (f"[bold]{step['name']}[/] {escape(str(step['target']))}"
             + (f" shard {step['shard']}/{step['shards']}" if step["shards"] > 1 else "")
             + f" code {code[:12]} run {step['run']}")
    branch = parent.add(label)
    if step["params"]:
        branch.add(f"params {escape(json.dumps(step['params']))}")
    for name, value in step["inputs"].items():
        for i, child in enumerate(value if isinstance(value, list) else [value]):
            suffix = f"[{i}]" if isinstance(value, list) else ""
            sub = branch.add(f"input {name}{suffix}: {_node_label(child)}")
            _grow(sub, child, shown)


def _node_label(node: dict[str, Any]) -> str:
    if "output" not in node:
        return f"{node['digest'][:12]} (not made by a step of this store)"
    return f"[cyan]{node['output']}[/] {node['digest'][:12]} ({node['kind']}, {node['size']:,} B)"


def _store(store: str | None, file: Path | None) -> Any:
    from stoker.pipeline.runner import load_pipeline
    from stoker.pipeline.store import DEFAULT_STORE, Store

    if store is None and file is not None:
        store = load_pipeline(file).store_url
    return Store(store or DEFAULT_STORE)


def _state(state: str) -> str:
    style = {"succeeded": "bold green", "ran": "green", "cached": "cyan", "resumed": "cyan",
             "failed": "bold red", "running": "yellow", "pending": "dim"}.get(state, "")
    return f"[{style}]{state}[/]" if style else state


def _clock(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def register(root: typer.Typer) -> None:
    """Add `stoker pipeline` to the top-level app."""
    root.add_typer(app, name="pipeline")
