"""docs/benchmarks.md's table of record figures: the newest result of every suite, as Markdown.

`write_into` replaces the text between the two markers in a document (appending them at the end
the first time), so the table is regenerated from the records and the prose around it stays.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stoker.bench.records import Record

BEGIN = "<!-- stoker bench report: begin (generated from benchmarks/results.jsonl) -->"
END = "<!-- stoker bench report: end -->"


def latest_by_suite(records: list[Record]) -> dict[str, tuple[Record, dict[str, Any]]]:
    """Each suite's newest successful run, with the record it belongs to."""
    latest: dict[str, tuple[Record, dict[str, Any]]] = {}
    for record in records:
        for name, suite in record["suites"].items():
            if suite.get("rc") == 0 and suite.get("figures"):
                latest[name] = (record, suite)
    return latest


def value(fig: dict[str, Any]) -> str:
    spread = f" ± {_num(fig['stdev'])}" if fig["n"] > 1 else ""
    return f"{_num(fig['mean'])}{spread} {fig['unit']}".rstrip()


def _num(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"


def markdown(records: list[Record]) -> str:
    lines = ["| suite | figure | value (mean ± sd) | n | better | commit | date | machine |",
             "|---|---|---|---|---|---|---|---|"]
    for name, (record, suite) in sorted(latest_by_suite(records).items()):
        m = record.get("machine", {})
        where = f"{m.get('cpus', '?')} CPUs" + (f", {m['gpus'][0]}" if m.get("gpus") else "")
        quick = " (quick)" if record.get("quick") else ""
        for fig_name, fig in suite["figures"].items():
            lines.append(f"| {name}{quick} | {fig_name} | {value(fig)} | {fig['n']} | "
                         f"{fig['better']} | {record['commit'][:7]} | {record['time'][:10]} | "
                         f"{where} |")
    return "\n".join(lines) + "\n"


def write_into(doc: Path, table: str) -> None:
    text = doc.read_text() if doc.exists() else ""
    block = f"{BEGIN}\n{table}{END}"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + block + "\n"
    doc.write_text(text)
