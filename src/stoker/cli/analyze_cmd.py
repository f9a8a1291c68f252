"""`stoker analyze PROFILE_DIR [-o table|json] [--html REPORT.html] [--top N]`: where the
profiled steps' time went, per rank and across ranks (rules: `stoker.observe.trace_analysis`)."""

from __future__ import annotations

import html
import json
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer
from rich.console import Console, Group
from rich.table import Table

SECTIONS = ("computation", "communication", "memcpy", "idle")


class Output(StrEnum):
    table = "table"
    json = "json"


def analyze_cmd(
    profile_dir: Path = typer.Argument(..., metavar="PROFILE_DIR",
                                       help="RUN_DIR/profiles/<stamp>/ (rank-R.json[.gz])."),
    output: Output = typer.Option(Output.table, "--output", "-o", case_sensitive=False,
                                  help="table or json."),
    report: Path | None = typer.Option(None, "--html", metavar="REPORT.html",
                                       help="Also write a self-contained HTML report."),
    top: int = typer.Option(15, "--top", help="Operators to list, by self time."),
) -> None:
    """Split each rank's profiled steps (ProfilerStep#N) into computation, communication,
    memory copy and idle; communication overlapped with computation; the top operators by
    self time; the slowest rank and by how much in each section. CPU and GPU traces. Exit 2:
    no such dir, no traces, an unreadable trace."""
    from stoker.observe.trace_analysis import analyse

    result = analyse(profile_dir, top=top)
    if report is not None:
        report.write_text(to_html(result))
    if output is Output.json:
        print(json.dumps(result, indent=2))
        return
    console = Console(highlight=False)
    console.print(render(result))
    if report is not None:
        console.print(f"report: {report}", soft_wrap=True)


def ms(us: Any) -> str:
    return f"{float(us) / 1000:.2f}"


def rank_rows(result: dict[str, Any]) -> list[list[str]]:
    rows = []
    for r in result["ranks"]:
        for s in r["steps"]:
            rows.append([str(r["rank"]), str(s["step"]).replace("ProfilerStep", "step "),
                         ms(s["wall_us"]),
                         *(ms(s[f"{k}_us"]) for k in SECTIONS), ""])
        rows.append([str(r["rank"]), "all", ms(r["wall_us"]),
                     *(ms(r[f"{k}_us"]) for k in SECTIONS), f"{r['overlap_pct']:.1f}%"])
    return rows


def slowest_rows(result: dict[str, Any]) -> list[list[str]]:
    return [[k, str(v["rank"]), ms(v["us"]), ms(v["over_least_us"]), str(v["least_rank"])]
            for k, v in result["slowest"]["sections"].items()]


def headline(result: dict[str, Any]) -> str:
    s = result["slowest"]
    return (f"slowest rank: {s['rank']}, {ms(s['over_fastest_us'])} ms more step time outside "
            f"communication than rank {s['fastest_rank']} (the others wait for it); sections "
            f"sum to the step time within {result['tolerance_us']:g} µs per step")


RANK_HEAD = ["rank", "step", "wall ms", "compute ms", "comm ms", "memcpy ms", "idle ms",
             "comm overlap"]
SLOW_HEAD = ["section", "most: rank", "ms", "over least ms", "least: rank"]
OPS_HEAD = ["operator", "self ms", "calls"]


def render(result: dict[str, Any]) -> Group:
    t = Table(title=f"time per rank and step: {result['dir']}")
    for i, h in enumerate(RANK_HEAD):
        t.add_column(h, justify="left" if i < 2 else "right", no_wrap=True)
    for row in rank_rows(result):
        t.add_row(*row, style="bold" if row[1] == "all" else None)
    slow = Table(title="across ranks")
    for h in SLOW_HEAD:
        slow.add_column(h, justify="right" if "ms" in h else "left")
    for row in slowest_rows(result):
        slow.add_row(*row)
    ops = Table(title="top operators by self time (every rank and thread)")
    for h in OPS_HEAD:
        ops.add_column(h, justify="left" if h == "operator" else "right")
    for o in result["top_ops"]:
        ops.add_row(o["name"], ms(o["self_us"]), str(o["calls"]))
    return Group(t, slow, ops, headline(result))


def to_html(result: dict[str, Any]) -> str:
    def table(head: list[str], rows: list[list[str]]) -> str:
        th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                       for row in rows)
        return f"<table><tr>{th}</tr>{body}</table>"

    bars = []
    for r in result["ranks"]:
        wall = float(r["wall_us"]) or 1.0
        parts = "".join(f'<span class="{k}" style="width:{100 * float(r[f"{k}_us"]) / wall:.2f}%"'
                        f' title="{k} {ms(r[f"{k}_us"])} ms"></span>' for k in SECTIONS)
        bars.append(f'<div class="row"><b>rank {r["rank"]}</b><div class="bar">{parts}</div>'
                    f"</div>")
    ops = [[o["name"], ms(o["self_us"]), str(o["calls"])] for o in result["top_ops"]]
    legend = " ".join(f'<span class="key {k}"></span>{k}' for k in SECTIONS)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>stoker analyze</title><style>
body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}} td:first-child{{text-align:left}}
.row{{display:flex;align-items:center;gap:1em;margin:4px 0}}
.bar{{display:flex;width:600px;height:18px;border:1px solid #999}} .bar span{{height:100%}}
.key{{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px}}
.computation{{background:#4a7}} .communication{{background:#d64}} .memcpy{{background:#48c}}
.idle{{background:#ddd}}
</style></head><body>
<h1>Trace analysis</h1><p>{html.escape(result["dir"])}</p>
<p>{html.escape(headline(result))}</p>
<h2>Step time by section</h2><p>{legend}</p>{"".join(bars)}
<h2>Per rank and step</h2>{table(RANK_HEAD, rank_rows(result))}
<h2>Across ranks</h2>{table(SLOW_HEAD, slowest_rows(result))}
<h2>Top operators by self time</h2>{table(OPS_HEAD, ops)}
</body></html>
"""


def register(app: typer.Typer) -> None:
    app.command("analyze")(analyze_cmd)
