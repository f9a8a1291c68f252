"""`--report DIR`: PNG plots (matplotlib, Agg) and one HTML page comparing the policies."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np

from stoker.sim.metrics import GPU_BUCKETS, RunResult

# (label, path into a summary, format)
TABLE_ROWS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("load (offered GPU-h / capacity)", ("load",), "{:.2f}"),
    ("jobs finished", ("finished",), "{:d}"),
    ("JCT mean (h)", ("jct_h", "mean"), "{:.2f}"),
    ("JCT median (h)", ("jct_h", "median"), "{:.2f}"),
    ("JCT p95 (h)", ("jct_h", "p95"), "{:.2f}"),
    ("JCT p99 (h)", ("jct_h", "p99"), "{:.2f}"),
    ("wait mean (h)", ("wait_h", "mean"), "{:.2f}"),
    ("wait median (h)", ("wait_h", "median"), "{:.2f}"),
    ("wait p95 (h)", ("wait_h", "p95"), "{:.2f}"),
    ("wait p99 (h)", ("wait_h", "p99"), "{:.2f}"),
    ("makespan (h)", ("makespan_h",), "{:.1f}"),
    ("GPU utilisation", ("utilization",), "{:.1%}"),
    ("GPUs idle while jobs wait (% capacity)", ("idle_while_waiting",), "{:.1%}"),
    ("  of which fragmented (no waiting job fits)", ("fragmentation",), "{:.1%}"),
    ("preemptions", ("preemptions",), "{:d}"),
    ("restarts after node failure", ("restarts_after_failure",), "{:d}"),
    ("GPU-hours lost", ("gpu_hours_lost",), "{:.1f}"),
    ("scheduler calls", ("sched_calls",), "{:d}"),
    ("scheduler time (s)", ("sched_seconds",), "{:.2f}"),
    ("simulation time (s)", ("wall_seconds",), "{:.2f}"),
)


def cell(summary: dict[str, Any], path: tuple[str, ...], fmt: str) -> str:
    value: Any = summary
    for key in path:
        value = value[key]
    return fmt.format(value)


def write(out: Path, runs: list[RunResult], header: dict[str, Any]) -> Path:
    """Write the plots and `index.html` under `out`; return the page's path."""
    import matplotlib

    matplotlib.use("Agg")
    out.mkdir(parents=True, exist_ok=True)
    summaries = [r.summary() for r in runs]
    images = [
        _utilization(out / "utilization.png", runs),
        _jct_cdf(out / "jct_cdf.png", runs),
        _by_bucket(out / "wait_by_gpus.png", summaries),
        _fair_share(out / "fair_share.png", summaries),
    ]
    page = out / "index.html"
    page.write_text(_html(summaries, header, [i.name for i in images]))
    return page


def _utilization(path: Path, runs: list[RunResult]) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.5))
    for run in runs:
        series = run.usage.series()
        t = np.asarray(series["t"]) / 3600
        ax.plot(t, np.asarray(series["busy"]) / run.gpus, label=run.policy, lw=1)
    ax.set(xlabel="hours", ylabel="busy GPUs / capacity", title="GPU utilisation over time",
           ylim=(0, 1.05))
    ax.legend()
    return _save(fig, path)


def _jct_cdf(path: Path, runs: list[RunResult]) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for run in runs:
        jct = np.sort([j.jct / 3600 for j in run.jobs if j.finish >= 0])
        if len(jct):
            ax.plot(jct, np.arange(1, len(jct) + 1) / len(jct), label=run.policy)
    ax.set(xscale="log", xlabel="job completion time (h)", ylabel="fraction of jobs",
           title="JCT distribution")
    ax.legend()
    return _save(fig, path)


def _by_bucket(path: Path, summaries: list[dict[str, Any]]) -> Path:
    import matplotlib.pyplot as plt

    names = [name for _, name in GPU_BUCKETS]
    fig, ax = plt.subplots(figsize=(6, 4))
    width = 0.8 / max(len(summaries), 1)
    for k, s in enumerate(summaries):
        values = [s["by_gpus"].get(n, {}).get("wait_h", {}).get("mean", 0.0) for n in names]
        ax.bar(np.arange(len(names)) + k * width, values, width, label=s["policy"])
    ax.set_xticks(np.arange(len(names)) + width * (len(summaries) - 1) / 2, names)
    ax.set(xlabel="GPUs per job", ylabel="mean queueing delay (h)",
           title="Queueing delay by job size")
    ax.legend()
    return _save(fig, path)


def _fair_share(path: Path, summaries: list[dict[str, Any]]) -> Path:
    import matplotlib.pyplot as plt

    queues = sorted({q for s in summaries for q in s["fair_share"]})
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / (len(summaries) + 1)
    x = np.arange(len(queues))
    entitled = [summaries[0]["fair_share"].get(q, {}).get("entitled", 0.0) for q in queues]
    ax.bar(x, entitled, width, label="entitled (nominal quota)", color="lightgray")
    for k, s in enumerate(summaries, start=1):
        used = [s["fair_share"].get(q, {}).get("used", 0.0) for q in queues]
        ax.bar(x + k * width, used, width, label=f"used: {s['policy']}")
    ax.set_xticks(x + width * len(summaries) / 2, queues, rotation=45, ha="right")
    ax.set(ylabel="share of GPU-hours", title="Fair share vs entitlement per tenant")
    ax.legend(fontsize="small")
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _html(summaries: list[dict[str, Any]], header: dict[str, Any], images: list[str]) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(s['policy'])}</th>" for s in summaries)
    rows = "".join(
        "<tr><td>" + esc(label) + "</td>"
        + "".join(f"<td>{esc(cell(s, path, fmt))}</td>" for s in summaries) + "</tr>"
        for label, path, fmt in TABLE_ROWS)
    info = "".join(f"<li><b>{esc(k)}</b>: {esc(str(v))}</li>" for k, v in header.items())
    tenants = _tenant_table(summaries)
    figures = "".join(f'<p><img src="{esc(name)}" alt="{esc(name)}"></p>' for name in images)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>stoker sim report</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}} td:first-child{{text-align:left}}
</style></head><body>
<h1>Simulation report</h1><ul>{info}</ul>
<h2>Policies side by side</h2><table><tr><th>metric</th>{head}</tr>{rows}</table>
<h2>Per tenant: queueing delay and share of GPU-hours</h2>{tenants}
<h2>Plots</h2>{figures}
</body></html>
"""


def _tenant_table(summaries: list[dict[str, Any]]) -> str:
    esc = html.escape
    queues = sorted({q for s in summaries for q in s["fair_share"]})
    head = "".join(f"<th>{esc(s['policy'])}: wait mean (h) / used / entitled</th>"
                   for s in summaries)
    rows = []
    for q in queues:
        cells = []
        for s in summaries:
            wait = s["by_tenant"].get(q, {}).get("wait_h", {}).get("mean", 0.0)
            share = s["fair_share"].get(q, {"used": 0.0, "entitled": 0.0})
            cells.append(f"<td>{wait:.2f} / {share['used']:.1%} / {share['entitled']:.1%}</td>")
        rows.append(f"<tr><td>{esc(q)}</td>{''.join(cells)}</tr>")
    return f"<table><tr><th>tenant</th>{head}</tr>{''.join(rows)}</table>"
