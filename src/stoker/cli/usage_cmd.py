"""`stoker usage`: GPU-hours and CPU-hours by tenant, queue, flavor or job over a window, split
into productive and lost, with their cost (`GET /v1/usage/accounting`); a month's chargeback
CSV per tenant; and, with --goodput, the goodput view (`GET /v1/usage`).

Times are UTC: ``--from``/``--to`` take an ISO date or time (UTC unless it names a zone),
epoch seconds, or a duration meaning that long ago; ``--chargeback 2026-12`` is that calendar
month in UTC.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from stoker.cli.jobs_cmd import SERVER_OPT, TOKEN_OPT, _client, _goodput_table, console
from stoker.spec.errors import ConfigError

KINDS = ("productive", "preempted", "failed", "other")
GROUPS = ("tenant", "queue", "flavor", "job")
OUTPUTS = ("table", "csv", "json")
HOUR_DIGITS = 4  # hours in a CSV: to 0.36 s
COST_DIGITS = 2
TOTAL = "(total)"  # the CSV's last row (not a valid tenant, queue or flavor name)


def usage(
    by: str = typer.Option("tenant", "--by", help="Group by tenant, queue, flavor or job."),
    start: str | None = typer.Option(None, "--from", help="Window start: ISO date or time "
                                     "(UTC), epoch seconds, or a DURATION ago (7d); default: "
                                     "all time."),
    end: str | None = typer.Option(None, "--to", help="Window end, as --from; default: now."),
    since: str | None = typer.Option(None, "--since", help="Only the last DURATION (90m, 2h, "
                                     "7d): --from DURATION."),
    output: str = typer.Option("table", "--output", "-o", help="table, csv or json."),
    chargeback: str | None = typer.Option(None, "--chargeback", metavar="MONTH",
                                          help="A month's (2026-12, UTC) CSV per tenant, "
                                          "its last row the total."),
    file: Path | None = typer.Option(None, "--file", help="Write the CSV or JSON here "
                                     "instead of stdout."),
    goodput: bool = typer.Option(False, "--goodput", help="Goodput instead: productive over "
                                 "allocated rank-seconds per cluster, tenant and queue."),
    server: str | None = SERVER_OPT,
    token: str | None = TOKEN_OPT,
) -> None:
    """GPU-hours and CPU-hours of the jobs' allocations, productive and lost to preemption,
    failures and other, with their cost (the admin sees every tenant; a tenant its own)."""
    _choice("--by", by, GROUPS)
    _choice("--output", output, OUTPUTS)
    if since is not None and start is not None:
        raise ConfigError("--since", None, "give --since or --from, not both")
    now = time.time()
    if since is not None:
        start = since
        lo: float | None = _when("--since", since, now, duration_only=True)
    else:
        lo = None if start is None else _when("--from", start, now)
    hi = None if end is None else _when("--to", end, now)
    if lo is not None and hi is not None and hi <= lo:
        raise ConfigError("--to", None, f"{end!r} is not after {start!r}")
    if goodput:
        if output == "csv" or chargeback is not None:
            raise ConfigError("--goodput", None, "gives a table or json (-o json), no CSV")
        _goodput(lo, output, file, server, token)
        return
    if chargeback is not None:
        if start is not None or end is not None or by != "tenant":
            raise ConfigError("--chargeback", None, "a month's chargeback is per tenant over "
                              "the month: no --by, --from, --to or --since")
        lo, hi = month(chargeback)
    with _client(server, token) as client:
        report = client.accounting(by, lo, hi)
    if chargeback is not None:
        _write(file, chargeback_csv(report, chargeback))
    elif output == "json":
        _write(file, json.dumps(report, indent=2) + "\n")
    elif output == "csv":
        _write(file, report_csv(report))
    else:
        console.print(accounting_table(report))


def _choice(option: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(option, None, f"expected one of {', '.join(allowed)}, got {value!r}")


def _when(option: str, text: str, now: float, duration_only: bool = False) -> float:
    """Epoch seconds from an ISO date or time (UTC unless it names a zone), epoch seconds, or
    a duration ago; a ConfigError naming ``option`` otherwise."""
    from stoker.spec.job import parse_seconds

    value = text.strip()
    if not duration_only:
        if re.fullmatch(r"[0-9]+(\.[0-9]+)?", value):
            return float(value)
        if re.match(r"[0-9]{4}-[0-9]{2}", value):
            try:
                at = datetime.fromisoformat(value)
            except ValueError:
                raise ConfigError(option, None, f"not an ISO date or time: {text!r}") from None
            return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()
    try:
        ago = float(parse_seconds(value))
    except ValueError as e:
        what = "a duration" if duration_only else "an ISO date or time, epoch seconds or a " \
            "duration"
        raise ConfigError(option, None, f"expected {what}: {e}") from None
    if not ago > 0 or ago == float("inf"):
        raise ConfigError(option, None, f"expected a positive duration, got {text!r}")
    return now - ago


def month(text: str) -> tuple[float, float]:
    """A calendar month ``YYYY-MM`` in UTC: its first second and the next month's."""
    m = re.fullmatch(r"([0-9]{4})-([0-9]{2})", text.strip())
    if not m or not 1 <= int(m.group(2)) <= 12:
        raise ConfigError("--chargeback", None, f"expected a month as YYYY-MM, got {text!r}")
    year, mon = int(m.group(1)), int(m.group(2))
    first = datetime(year, mon, 1, tzinfo=UTC)
    after = datetime(year + mon // 12, mon % 12 + 1, 1, tzinfo=UTC)
    return first.timestamp(), after.timestamp()


def _write(file: Path | None, text: str) -> None:
    if file is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        file.write_text(text)
        console.print(f"wrote {escape(str(file))}", style="dim")


def _goodput(start: float | None, output: str, file: Path | None, server: str | None,
             token: str | None) -> None:
    with _client(server, token) as client:
        report = client.usage(start)
    if output != "table":
        _write(file, json.dumps(report, indent=2) + "\n")
        return
    rows = [(f"{r['scope']} {r['name']}", r["goodput"]) for r in report["rows"]]
    window = "all time" if start is None else f"since {_utc(start)}"
    console.print(_goodput_table(f"goodput, {window} (rank-seconds)", rows))


def _utc(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def accounting_table(report: dict[str, Any]) -> Table:
    """One line per group, then the total: GPU-hours by outcome, CPU-hours and cost."""
    start = "all time" if report["start"] is None else _utc(report["start"])
    title = f"usage by {report['by']}, {start} to {_utc(report['end'])} (hours)"
    table = Table(title=title, box=None, header_style="bold", title_justify="left")
    for column in (report["by"].upper(), "ATTEMPTS", "GPU-H",
                   *[k.upper() for k in KINDS], "CPU-H", "COST"):
        table.add_column(column, justify="left" if column == report["by"].upper()
                         else "right", no_wrap=True)
    for row in [*report["rows"], report["total"]]:
        key = row["key"] if report["by"] != "job" or row is report["total"] \
            else f"{row['key']} {row.get('tenant') or ''}/{row.get('name') or ''}"
        gpu, cpu = row["gpu_hours"], row["cpu_hours"]
        cost = "-" if row["cost"] is None else f"{row['cost']:.2f}"
        table.add_row(escape(key), str(row["attempts"]), _h(gpu["total"]),
                      *[_h(gpu[k]) for k in KINDS], _h(cpu["total"]), cost,
                      style="bold" if row is report["total"] else None)
    return table


def _h(hours: float) -> str:
    return f"{hours:.2f}"


def _csv_row(row: dict[str, Any]) -> list[Any]:
    gpu, cpu = row["gpu_hours"], row["cpu_hours"]
    hours = [gpu["total"], *[gpu[k] for k in KINDS], cpu["total"], *[cpu[k] for k in KINDS]]
    cost = [] if row["cost"] is None else [round(row["cost"], COST_DIGITS)]
    return [row["attempts"], *[round(h, HOUR_DIGITS) for h in hours], *cost]


def _csv(head: list[str], keys: list[list[str]], total_key: list[str],
         rows: list[dict[str, Any]], priced: bool) -> str:
    """Rows of rounded figures, then a total row that is their sum (so they add up to it
    exactly, to the digits written)."""
    columns = ["attempts", "gpu_hours", *[f"gpu_hours_{k}" for k in KINDS], "cpu_hours",
               *[f"cpu_hours_{k}" for k in KINDS], *(["cost"] if priced else [])]
    figures = [_csv_row(r) for r in rows]
    sums = [round(sum(col), COST_DIGITS if name == "cost" else HOUR_DIGITS)
            for name, col in zip(columns, zip(*figures, strict=True), strict=True)] \
        if figures else [0] * len(columns)
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow([*head, *columns])
    for key, fig in zip(keys, figures, strict=True):
        w.writerow([*key, *fig])
    w.writerow([*total_key, *sums])
    return out.getvalue()


def report_csv(report: dict[str, Any]) -> str:
    """``-o csv``: one line per group, its key first, then the total."""
    by = report["by"]
    head = [by, "tenant", "queue", "name"] if by == "job" else [by]
    keys = [[r["key"], r.get("tenant") or "", r.get("queue") or "", r.get("name") or ""]
            if by == "job" else [r["key"]] for r in report["rows"]]
    total = [TOTAL, "", "", ""] if by == "job" else [TOTAL]
    return _csv(head, keys, total, report["rows"], bool(report["prices"]))


def chargeback_csv(report: dict[str, Any], month_text: str) -> str:
    """A month's chargeback: one line per tenant, then the total (the lines' sum). The
    attempts column of the total counts each tenant's; an allocation is one tenant's."""
    keys = [[month_text, r["key"]] for r in report["rows"]]
    return _csv(["month", "tenant"], keys, [month_text, TOTAL], report["rows"],
                bool(report["prices"]))


def register(app: typer.Typer) -> None:
    app.command("usage")(usage)
