"""Capacity planning: the smallest cut of the cluster whose run meets a target.

Sizes are node counts of the (evenly spread) node list. A coarse grid is run from the smallest
size up until one meets the target; bisection between it and the last size that failed then
finds the smallest passing size, assuming more nodes never make the metric worse.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stoker.sim.run import Cut, Prepared, run_policy
from stoker.spec.errors import ConfigError
from stoker.spec.job import parse_seconds

TIME_METRICS = {f"{kind}_{stat}": (f"{kind}_h", stat) for kind in ("jct", "wait")
                for stat in ("mean", "median", "p95", "p99")}
RATIO_METRICS = ("utilization", "fragmentation")


@dataclass(frozen=True)
class Target:
    metric: str
    op: str
    value: float  # hours for time metrics, a fraction for ratios
    text: str

    def met(self, summary: dict[str, Any]) -> bool:
        value = metric_value(summary, self.metric)
        return value <= self.value if self.op == "<=" else value >= self.value


def parse_target(text: str) -> Target:
    """'wait_p95<=1h', 'jct_mean<=90m', 'utilization>=0.6' (or 60%)."""
    m = re.fullmatch(r"\s*([a-z0-9_]+)\s*(<=|>=)\s*(\S+)\s*", text)
    if not m:
        raise ConfigError("--target", None,
                          f"expected METRIC<=VALUE or METRIC>=VALUE, got {text!r}")
    metric, op, raw = m.groups()
    try:
        if metric in TIME_METRICS:
            value = float(parse_seconds(raw)) / 3600
        elif metric in RATIO_METRICS:
            value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
        else:
            known = ", ".join([*TIME_METRICS, *RATIO_METRICS])
            raise ConfigError("--target", metric, f"unknown metric (known: {known})")
    except ValueError as e:
        raise ConfigError("--target", metric, str(e)) from None
    return Target(metric, op, value, text.strip())


def metric_value(summary: dict[str, Any], metric: str) -> float:
    if metric in TIME_METRICS:
        group, stat = TIME_METRICS[metric]
        return float(summary[group][stat])
    return float(summary[metric])


@dataclass
class PlanPoint:
    nodes: int
    gpus: float
    load: float
    value: float
    ok: bool
    summary: dict[str, Any]


def sweep(prepared: Prepared, policy: str, target: Target, min_nodes: int, max_nodes: int,
          steps: int, on_point: Callable[[PlanPoint], None] | None = None) -> list[PlanPoint]:
    """Run sizes until the smallest passing one is found; return every point run, by size."""
    if not 1 <= min_nodes <= max_nodes:
        raise ConfigError("--min-nodes", None, f"must be between 1 and {max_nodes}")
    points: dict[int, PlanPoint] = {}

    def run(n: int) -> PlanPoint:
        if n not in points:
            summary = run_policy(prepared.resized(Cut(sample=n, every=prepared.inputs.cut.every)),
                                 policy).summary()
            value = metric_value(summary, target.metric)
            points[n] = PlanPoint(n, summary["gpus"], summary["load"], value, target.met(summary),
                                  summary)
            if on_point is not None:
                on_point(points[n])
        return points[n]

    grid = sorted({round(min_nodes + (max_nodes - min_nodes) * i / max(steps - 1, 1))
                   for i in range(steps)})
    failing = None
    for n in grid:
        if run(n).ok:
            low, high = (failing if failing is not None else n), n
            while high - low > 1:
                mid = (low + high) // 2
                low, high = (low, mid) if run(mid).ok else (mid, high)
            break
        failing = n
    return [points[n] for n in sorted(points)]


def smallest(points: list[PlanPoint]) -> PlanPoint | None:
    """The smallest passing size above every failing one (None if the largest still fails)."""
    best = None
    for p in sorted(points, key=lambda p: p.nodes, reverse=True):
        if not p.ok:
            break
        best = p
    return best


def plot(path: Path, points: list[PlanPoint], target: Target, policy: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    gpus = [p.gpus for p in points]
    ax.plot(gpus, [p.value for p in points], "-", color="gray", lw=1)
    for ok, color, label in ((True, "tab:green", "meets target"), (False, "tab:red", "misses")):
        sel = [p for p in points if p.ok == ok]
        ax.scatter([p.gpus for p in sel], [p.value for p in sel], color=color, label=label,
                   zorder=3)
    ax.axhline(target.value, ls="--", color="black", lw=1, label=f"target {target.text}")
    unit = " (h)" if target.metric in TIME_METRICS else ""
    ax.set(xlabel="cluster GPUs", ylabel=f"{target.metric}{unit}",
           title=f"Capacity plan ({policy})")
    if any(p.value > 0 for p in points) and target.metric in TIME_METRICS:
        ax.set_yscale("symlog", linthresh=max(target.value / 10, 1e-3))
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
