"""How listing commands print: ``-o table|wide|json|yaml`` and ``--watch``, in one place.

A listing fetches the API's objects and renders them: ``table`` and ``wide`` (more columns)
are rich tables, ``json`` and ``yaml`` print the objects exactly as the API returned them.
``--watch`` redraws the table every ``--interval`` until Ctrl-C (which exits 0).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Any

import typer
from rich.console import Console, RenderableType

from stoker.spec.errors import ConfigError


class Format(StrEnum):
    table = "table"
    wide = "wide"
    json = "json"
    yaml = "yaml"


OUTPUT_OPT = typer.Option(Format.table, "--output", "-o", case_sensitive=False,
                          help="table, wide (more columns), json or yaml: the API's objects "
                               "as they are.")
WATCH_OPT = typer.Option(False, "--watch", "-w",
                         help="Redraw every --interval until Ctrl-C.")
INTERVAL_OPT = typer.Option("2s", "--interval", "-n",
                            help="With --watch: how often (a duration: 2s, 0.5s, 1m).")

Fetch = Callable[[], Any]
Render = Callable[[Any, bool], RenderableType]


def show(fetch: Fetch, render: Render, fmt: Format, console: Console,
         watch: bool = False, interval: str = "2s") -> None:
    """Fetch once and print in ``fmt``; with ``watch``, redraw until Ctrl-C."""
    if watch:
        if fmt not in (Format.table, Format.wide):
            raise ConfigError("--watch", None, "--watch draws a table: use -o table or wide")
        every = interval_seconds(interval)
        watch_live(lambda: render(fetch(), fmt == Format.wide), every, console)
        return
    data = fetch()
    if fmt == Format.json:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    elif fmt == Format.yaml:
        sys.stdout.write(to_yaml(data))
    else:
        console.print(render(data, fmt == Format.wide))


def to_yaml(data: Any) -> str:
    try:
        import yaml  # type: ignore[import-untyped, unused-ignore]
    except ImportError:  # PyYAML is not a dependency of stoker; json always works
        raise ConfigError("--output", None, "yaml needs PyYAML (pip install pyyaml); "
                          "-o json works without it") from None
    text: str = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    return text


def interval_seconds(value: str) -> float:
    """A --interval: a duration with units (``2s``, ``1m``), at least 0.1 s."""
    from stoker.spec.job import parse_seconds

    try:
        seconds = float(parse_seconds(value))
    except ValueError as e:
        raise ConfigError("--interval", None, str(e)) from None
    if not 0.1 <= seconds < float("inf"):
        raise ConfigError("--interval", None, f"expected at least 0.1s, got {value!r}")
    return seconds


def watch_live(draw: Callable[[], RenderableType], every: float, console: Console) -> None:
    """Redraw ``draw()`` every ``every`` seconds in place until Ctrl-C (exit 0, no trace)."""
    from rich.live import Live

    try:
        with Live(draw(), console=console, auto_refresh=False, screen=False) as live:
            while True:
                time.sleep(every)
                live.update(draw(), refresh=True)
    except KeyboardInterrupt:
        return


def duration(seconds: float | None) -> str:
    """A duration with units, two places at most: ``45s``, ``3m05s``, ``1h02m``, ``2d04h``."""
    if seconds is None:
        return "-"
    s = max(0, round(seconds))
    for big, small, bsize, ssize in (("d", "h", 86400, 3600), ("h", "m", 3600, 60),
                                     ("m", "s", 60, 1)):
        if s >= bsize:
            return f"{s // bsize}{big}{(s % bsize) // ssize:02d}{small}"
    return f"{s}s"
