"""`stoker health check`: run a node health check set on this machine and show each check's
figure, rule and duration."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import cast

import typer
from rich.console import Console
from rich.table import Table

from stoker.health.result import CheckSet, HealthReport
from stoker.spec.cluster import load_cluster
from stoker.spec.errors import ConfigError
from stoker.spec.health import HealthConfig

health_app = typer.Typer(help="Node health checks.", no_args_is_help=True)
SETS = ("prestart", "periodic", "light")


@health_app.command("check")
def check(
    check_set: str = typer.Option("prestart", "--set",
                                  help="prestart | periodic (the full set) | light (device only)."),
    cluster: Path | None = typer.Option(None, "--cluster", help="cluster.toml: its [health]."),
    node: str = typer.Option(socket.gethostname(), "--node", help="This node's name."),
    ranks: int = typer.Option(2, "--ranks", min=1, help="Processes in the all-reduce probe."),
    path: Path = typer.Option(Path(".cache/stoker/health"), "--path",
                              help="Where checkpoints go: free space and write speed."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> int:
    """Exit 0 when every check passed, 1 when one failed."""
    if check_set not in SETS:
        raise ConfigError("--set", None, f"{check_set!r} is not one of {', '.join(SETS)}")
    config = load_cluster(cluster).health if cluster else HealthConfig()
    from stoker.health.runner import run_checks  # torch: not for every other `stoker` command

    report = run_checks(node, cast(CheckSet, check_set), config, path, gang_ranks=ranks)
    if as_json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        Console().print(_table(report))
    return 0 if report.passed else 1


def _table(report: HealthReport) -> Table:
    verdict = "[green]healthy[/]" if report.passed else "[bold red]unhealthy[/]"
    table = Table(title=f"{report.node}: {report.check_set} checks, {verdict}, "
                        f"{report.duration_s:.2f} s")
    for column in ("check", "result", "value", "limit", "unit", "seconds", "detail"):
        table.add_column(column, justify="right" if column in ("value", "limit", "seconds")
                         else "left")
    for r in report.results:
        table.add_row(r.name, "pass" if r.passed else "[red]FAIL[/]", _num(r.value),
                      _num(r.limit), r.unit, f"{r.duration_s:.2f}", r.detail)
    return table


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


def register(app: typer.Typer) -> None:
    app.add_typer(health_app, name="health")
