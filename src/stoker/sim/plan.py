"""Capacity planning: per quarter of a growth scenario, the cheapest mix of GPU models whose
simulated run meets a target.

The rules, in order (docs/architecture.md, "Capacity plans"):

- Node types. Each GPU model of the cluster is one node type: the cluster's nodes of that model
  (a flavor of cluster.toml, or a model of the node list). A mix is a count of nodes per type;
  n nodes of a type are the first n of its nodes in an interleaved order (`interleaved`: every
  prefix spread evenly over the list, each holding the shorter ones), and beyond the list's
  length, copies of them in that order (same GPUs and topology labels).
- Growth. Quarter q replays the trace with arrivals `growth ** q` times faster (times
  `--arrival-scale`): quarter 0 is the trace as it is.
- Cost. A mix's hourly cost is, over its nodes, GPUs x the on-demand price of the node's model;
  a quarter is 2190 hours. Mixes are compared by this on-demand cost.
- Target. A time metric (wait_p95, jct_mean, ...) is met when every queue with finished jobs
  meets it; a ratio (utilization, fragmentation) is the cluster's. A mix also has to hold every
  job the whole cluster can: one lacking a GPU model some jobs are limited to, or too small for
  a gang, never meets the target (the first is known without a run).
- Search. Counts per type range over 0..ceil(nodes of the type x growth factor x max_scale).
  Coarse: every mix of `steps` + 1 evenly spaced counts per type, tried cheapest first until
  one meets the target; with more than GRID_LIMIT such mixes (many types), the cluster's own
  mix scaled instead (`steps` scales, then bisection to the smallest passing one). Refine
  (`Planner._refine`): shrink each type to the fewest nodes that still pass, then trade a type
  for more of the cheapest-per-GPU one when that costs less, until neither changes the mix.
  A mix with no more nodes of any type than one that missed is not run (more nodes are assumed
  never to make a metric worse). At most `max_runs` simulator runs per quarter.
- Reserved capacity. The reserved commitment of a model is the fewest GPUs of it that every
  quarter's chosen mix holds (a baseline the whole horizon uses); those GPUs cost the reserved
  price every quarter, the rest the on-demand price.
"""

from __future__ import annotations

import csv
import itertools
import math
import re
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from stoker.sched import GPU
from stoker.sim.cluster import SimCluster, flavor_name
from stoker.sim.engine import Simulator
from stoker.sim.metrics import RunResult
from stoker.sim.policies import resolve
from stoker.sim.run import Cut, Prepared, build_cluster, prepare_trace, run_policy
from stoker.spec.errors import ConfigError
from stoker.spec.job import parse_seconds

TIME_METRICS = {f"{kind}_{stat}": (f"{kind}_h", stat) for kind in ("jct", "wait")
                for stat in ("mean", "median", "p95", "p99")}
RATIO_METRICS = ("utilization", "fragmentation")
HOURS_PER_QUARTER = 365 * 24 / 4  # 2190
GRID_LIMIT = 4096  # most mixes in a coarse grid over every node type

Mix = tuple[int, ...]  # nodes per node type, in `Planner.types` order


@dataclass(frozen=True)
class Target:
    metric: str
    op: str
    value: float  # hours for time metrics, a fraction for ratios
    text: str

    def passes(self, value: float) -> bool:
        return value <= self.value if self.op == "<=" else value >= self.value

    def per_queue(self, summary: dict[str, Any]) -> dict[str, float]:
        """The metric of each queue with finished jobs (time metrics), or of the cluster."""
        if self.metric not in TIME_METRICS:
            return {"cluster": metric_value(summary, self.metric)}
        group, stat = TIME_METRICS[self.metric]
        return {q: float(g[group][stat]) for q, g in summary["by_tenant"].items()}

    def worst(self, values: dict[str, float]) -> float:
        pick = max if self.op == "<=" else min
        return pick(values.values()) if values else math.nan


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


# ---------------------------------------------------------------- prices


@dataclass(frozen=True)
class Price:
    on_demand: float  # per GPU-hour
    reserved: float  # per GPU-hour of committed capacity


def load_prices(path: Path, models: Iterable[str]) -> dict[str, Price]:
    """`[models.<GPU model>] on_demand = X, reserved = Y` (reserved defaults to on_demand);
    every model of the cluster needs a price and every priced model must be the cluster's."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(str(path), None, "no such file") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(str(path), None, f"not a TOML file: {e}") from None
    unknown_top = sorted(set(data) - {"models"})
    if unknown_top:
        raise ConfigError(str(path), unknown_top[0], "unknown table (expected models.NAME tables)")
    table = data.get("models", {})
    if not isinstance(table, dict):
        raise ConfigError(str(path), "models", "expected models.NAME tables")
    prices = {}
    for model, entry in table.items():
        key = f"models.{model}"
        if not isinstance(entry, dict):
            raise ConfigError(str(path), key, "expected a table: on_demand = X, reserved = Y")
        extra = sorted(set(entry) - {"on_demand", "reserved"})
        if extra:
            raise ConfigError(str(path), f"{key}.{extra[0]}",
                              "unknown key (expected on_demand, reserved)")
        if "on_demand" not in entry:
            raise ConfigError(str(path), f"{key}.on_demand", "missing: the per GPU-hour price")
        on_demand = _price(path, f"{key}.on_demand", entry["on_demand"])
        reserved = _price(path, f"{key}.reserved", entry.get("reserved", on_demand))
        prices[model] = Price(on_demand, reserved)
    return check_prices(prices, models, str(path))


def prices_from_cluster(cluster: SimCluster, source: str) -> dict[str, Price]:
    """cluster.toml's `[prices]` (per flavor GPU-hour) as on-demand prices, none reserved."""
    by_model = {model_of(cluster, f): Price(float(p), float(p))
                for f, p in cluster.config.prices.items() if f in cluster.config.flavors}
    return check_prices(by_model, {model_of(cluster, n.flavor) for n in cluster.nodes},
                        f"{source}: prices")


def check_prices(prices: dict[str, Price], models: Iterable[str],
                 source: str) -> dict[str, Price]:
    models = sorted(set(models))
    for model in prices:
        if model not in models:
            raise ConfigError(source, f"models.{model}", "unknown GPU model (the cluster has: "
                              f"{', '.join(models)})")
    for model in models:
        if model not in prices:
            raise ConfigError(source, f"models.{model}", f"no price for GPU model {model!r} "
                              "(every model of the cluster needs one)")
    return prices


def _price(path: Path, key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(str(path), key, f"expected a non-negative number, got {value!r}")
    return float(value)


def model_of(cluster: SimCluster, flavor: str) -> str:
    """The GPU model a flavor's nodes have (its flavor name when it names none)."""
    config = cluster.config.flavors.get(flavor)
    return (config.gpu_model if config is not None and config.gpu_model else None) or flavor


# ---------------------------------------------------------------- mixes


@dataclass(frozen=True)
class NodeType:
    model: str
    flavor: str
    nodes: tuple[Any, ...]  # TraceNode (node list) or sched Node (cluster.toml), interleaved
    gpus: tuple[float, ...]  # of each node

    def take(self, count: int) -> list[Any]:
        """The first `count` nodes, then copies of the list in order."""
        n = len(self.nodes)
        copies = [replace(self.nodes[i % n], name=f"{self.nodes[i % n].name}-copy{i // n + 1}")
                  for i in range(max(0, count - n))]
        return [*self.nodes[:count], *copies]

    def gpus_of(self, count: int) -> float:
        n = len(self.gpus)
        return sum(self.gpus[:count]) + sum(self.gpus[i % n] for i in range(max(0, count - n)))


def interleaved(items: list[Any]) -> list[Any]:
    """The items at positions 0, 1/2, 1/4, 3/4, 1/8, ... of the list (the van der Corput
    sequence): every prefix is spread evenly over the list, and each holds the shorter ones,
    so more nodes of a type always hold the fewer ones' GPUs."""
    n = len(items)
    order: list[int] = []
    seen: set[int] = set()
    bits = max(1, (n - 1).bit_length())
    for k in range(1 << bits):
        position = int(f"{k:0{bits}b}"[::-1], 2) * n >> bits
        if position not in seen:
            seen.add(position)
            order.append(position)
    return [items[i] for i in order]


def node_types(prepared: Prepared) -> list[NodeType]:
    """The cluster's node types, one per GPU model, in the order the models first appear."""
    from_list = prepared.inputs.cluster is None and prepared.full_nodes is not None
    types: dict[str, list[Any]] = {}
    if from_list:
        assert prepared.full_nodes is not None
        for node in prepared.full_nodes:
            types.setdefault(flavor_name(node.model), []).append(node)
    else:
        for snode in prepared.cluster.nodes:
            types.setdefault(snode.flavor, []).append(snode)
    out = []
    for flavor, listed in types.items():
        nodes = interleaved(listed)
        gpus = tuple(float(n.gpus) if from_list else n.capacity[GPU] / 1000 for n in nodes)
        out.append(NodeType(model_of(prepared.cluster, flavor), flavor, tuple(nodes), gpus))
    return out


@dataclass
class Point:
    """One mix tried (or ruled out without a run: `ran` False)."""

    quarter: int
    mix: Mix
    gpus: dict[str, float]
    hourly: float
    ran: bool
    ok: bool
    why: str = ""  # why it misses, when it does
    values: dict[str, float] = field(default_factory=dict)  # per queue (or 'cluster')
    worst: float = math.nan
    summary: dict[str, Any] = field(default_factory=dict)
    result: RunResult | None = None


@dataclass
class Quarter:
    quarter: int
    growth: float  # growth ** quarter
    arrival_scale: float
    upper: Mix
    points: list[Point]
    best: Point | None
    runs: int
    budget_hit: bool


class Planner:
    """Runs the mixes of each quarter (see the module docstring for the rules)."""

    def __init__(self, prepared: Prepared, policy: str, target: Target,
                 prices: dict[str, Price], steps: int = 4, max_scale: float = 2.0,
                 max_runs: int = 60) -> None:
        if steps < 1:
            raise ConfigError("--steps", None, "must be at least 1")
        if max_scale <= 0:
            raise ConfigError("--max-scale", None, "must be above 0")
        if max_runs < 1:
            raise ConfigError("--max-runs", None, "must be at least 1")
        self.prepared = prepared
        self.policy = policy
        self.target = target
        self.prices = prices
        self.steps = steps
        self.max_scale = max_scale
        self.max_runs = max_runs
        self.types = node_types(prepared)
        self._gpu_cache: dict[tuple[int, int], float] = {}
        self.needs = self._needs()
        self.holdable = self._holdable(prepared)

    @property
    def models(self) -> list[str]:
        return [t.model for t in self.types]

    def _needs(self) -> list[tuple[tuple[str, ...], frozenset[int]]]:
        """Per set of GPU models some jobs are limited to: the node types they may use."""
        out = []
        for models in sorted({j.gpu_models for j in self.prepared.jobs if j.gpu_models}):
            flavors = self.prepared.cluster.flavors_for(models) or ()
            out.append((models, frozenset(i for i, t in enumerate(self.types)
                                          if t.flavor in flavors)))
        return out

    def _holdable(self, prepared: Prepared) -> int:
        """How many jobs the whole cluster can ever hold (the simulator skips the rest)."""
        sim_policy = resolve(self.policy, prepared.cluster, prepared.inputs.las_thresholds)
        return len(Simulator(prepared.cluster, prepared.jobs, prepared.tenants, sim_policy,
                             prepared.inputs.options).jobs)

    def hourly(self, mix: Mix) -> float:
        return sum(self._gpus_of(i, n) * self.prices[t.model].on_demand
                   for i, (t, n) in enumerate(zip(self.types, mix, strict=True)))

    def gpus(self, mix: Mix) -> dict[str, float]:
        return {t.model: self._gpus_of(i, n) for i, (t, n) in enumerate(zip(self.types, mix,
                                                                             strict=True))}

    def _gpus_of(self, i: int, count: int) -> float:
        if (i, count) not in self._gpu_cache:
            self._gpu_cache[i, count] = self.types[i].gpus_of(count)
        return self._gpu_cache[i, count]

    def unplaceable(self, mix: Mix) -> str:
        for models, types in self.needs:
            if not any(mix[i] for i in types):
                return f"no node for jobs limited to {'|'.join(models)}"
        return ""

    def quarter_inputs(self, growth: float) -> Prepared:
        inputs = replace(self.prepared.inputs,
                         arrival_scale=self.prepared.inputs.arrival_scale * growth)
        return prepare_trace(self.prepared.trace, inputs)

    def with_mix(self, base: Prepared, mix: Mix) -> Prepared:
        picked = [n for t, count in zip(self.types, mix, strict=True) for n in t.take(count)]
        if base.inputs.cluster is None and base.full_nodes is not None:
            cluster = build_cluster(base.inputs, picked, base.queues, Cut())
        else:
            cluster = base.cluster.with_nodes(tuple(picked))
        return Prepared(base.trace, base.jobs, base.tenants, cluster, base.inputs,
                        base.full_nodes)

    def upper(self, growth: float) -> Mix:
        return tuple(math.ceil(len(t.nodes) * growth * self.max_scale) for t in self.types)

    def plan(self, quarters: int, growth: float,
             on_point: Callable[[Point], None] | None = None,
             on_progress: Callable[[int, int], None] | None = None) -> list[Quarter]:
        out = []
        for q in range(quarters + 1):
            factor = growth ** q
            out.append(self.plan_quarter(q, factor, on_point, on_progress))
        return out

    def plan_quarter(self, q: int, factor: float,
                     on_point: Callable[[Point], None] | None = None,
                     on_progress: Callable[[int, int], None] | None = None) -> Quarter:
        base = self.quarter_inputs(factor)
        upper = self.upper(factor)
        tried: dict[Mix, Point] = {}
        missed: list[Mix] = []
        runs = 0
        budget_hit = False

        def attempt(mix: Mix) -> bool | None:
            """Whether `mix` meets the target (None: the run budget is spent)."""
            nonlocal runs, budget_hit
            if mix in tried:
                return tried[mix].ok
            if any(all(a <= b for a, b in zip(mix, m, strict=True)) for m in missed):
                return False  # no more of any type than a mix that missed
            point = Point(q, mix, self.gpus(mix), self.hourly(mix), ran=False, ok=False)
            point.why = self.unplaceable(mix)
            if not point.why:
                if runs >= self.max_runs:
                    budget_hit = True
                    return None
                runs += 1
                self._judge(point, run_policy(self.with_mix(base, mix), self.policy,
                                              on_progress))
            tried[mix] = point
            if not point.ok:
                missed.append(mix)
            if on_point is not None:
                on_point(point)
            return point.ok

        best: Mix | None = None
        if (self.steps + 1) ** len(upper) <= GRID_LIMIT:
            for mix in sorted(self.grid(upper), key=lambda m: (self.hourly(m), sum(m), m)):
                ok = attempt(mix)
                if ok is None:
                    break
                if ok:
                    best = mix
                    break
        else:
            best = self._along_line(upper, attempt)
        if best is not None:
            best = self._refine(best, upper, attempt)
        points = sorted(tried.values(), key=lambda p: (p.hourly, p.mix))
        return Quarter(q, factor, self.prepared.inputs.arrival_scale * factor, upper, points,
                       tried[best] if best is not None else None, runs, budget_hit)

    def _refine(self, best: Mix, upper: Mix, attempt: Callable[[Mix], bool | None]) -> Mix:
        """Shrink: per type, most expensive GPUs first, bisect its count down to the fewest
        nodes that still pass. Trade: per type still in the mix (most expensive first), drop
        it and bisect the cheapest-per-GPU other type up to the fewest nodes that pass; keep
        the trade if it costs less, and shrink again. Until neither changes the mix or the
        run budget is spent (`attempt` returns None)."""
        by_price = sorted(range(len(self.types)),
                          key=lambda i: -self.prices[self.types[i].model].on_demand)

        def with_count(mix: Mix, i: int, count: int) -> Mix:
            return (*mix[:i], count, *mix[i + 1:])

        def smallest(mix: Mix, i: int, low: int, high: int) -> int | None:
            """The fewest nodes of type i in (low, high] that pass: `high` is known to pass
            and `low` to miss (None: the budget is spent)."""
            while high - low > 1:
                mid = (low + high) // 2
                ok = attempt(with_count(mix, i, mid))
                if ok is None:
                    return None
                low, high = (low, mid) if ok else (mid, high)
            return high

        changed = True
        while changed:
            changed = False
            for i in by_price:  # shrink
                fewest = smallest(best, i, -1, best[i])
                if fewest is None:
                    return best
                if fewest < best[i]:
                    best, changed = with_count(best, i, fewest), True
            for i in by_price:  # trade
                cheap = [j for j in reversed(by_price) if j != i and self.prices[
                    self.types[j].model].on_demand < self.prices[self.types[i].model].on_demand]
                if not best[i] or not cheap or best[cheap[0]] >= upper[cheap[0]]:
                    continue
                j, dropped = cheap[0], with_count(best, i, 0)
                low, high, step = best[j], None, 1  # gallop up: +1, +2, +4 ... then bisect
                while high is None and low < upper[j]:
                    count = min(best[j] + step, upper[j])
                    ok = attempt(with_count(dropped, j, count))
                    if ok is None:
                        return best
                    low, high, step = (low, count, step) if ok else (count, None, step * 2)
                if high is None:
                    continue
                fewest = smallest(dropped, j, low, high)
                if fewest is None:
                    return best
                traded = with_count(dropped, j, fewest)
                if self.hourly(traded) < self.hourly(best):
                    best, changed = traded, True
                    break
        return best

    def grid(self, upper: Mix) -> list[Mix]:
        """Every mix of `steps` + 1 evenly spaced counts per type, 0 to the upper bound."""
        axes = [sorted({round(u * k / self.steps) for k in range(self.steps + 1)})
                for u in upper]
        return [m for m in itertools.product(*axes) if any(m)]

    def _along_line(self, upper: Mix,
                    attempt: Callable[[Mix], bool | None]) -> Mix | None:
        """The smallest passing mix of the form ceil(upper x j / J), J = max(upper): the
        cluster's own mix scaled; `steps` evenly spaced j first, then bisection."""
        most = max(upper)

        def line(j: int) -> Mix:
            return tuple(math.ceil(u * j / most) for u in upper)

        low, high = 0, None
        for k in range(1, self.steps + 1):
            j = math.ceil(most * k / self.steps)
            ok = attempt(line(j))
            if ok is None:
                return None
            if ok:
                high = j
                break
            low = j
        if high is None:
            return None
        while high - low > 1:
            mid = (low + high) // 2
            ok = attempt(line(mid))
            if ok is None:
                break
            low, high = (low, mid) if ok else (mid, high)
        return line(high)

    def _judge(self, point: Point, result: RunResult) -> None:
        summary = result.summary()
        point.ran = True
        point.result = result
        point.summary = summary
        point.values = self.target.per_queue(summary)
        point.worst = self.target.worst(point.values)
        if summary["jobs"] < self.holdable:
            point.why = f"holds {summary['jobs']} of the {self.holdable} jobs"
        elif summary["finished"] < summary["jobs"]:
            point.why = f"{summary['jobs'] - summary['finished']} jobs never finish"
        else:
            failing = [q for q, v in point.values.items() if not self.target.passes(v)]
            point.why = f"{self.target.metric} missed by {', '.join(failing)}" if failing else ""
        point.ok = not point.why


# ---------------------------------------------------------------- costs and the report


def commitment(planner: Planner, quarters: list[Quarter]) -> dict[str, float]:
    """Reserved GPUs per model: the fewest of it that every quarter's chosen mix holds."""
    chosen = [q.best for q in quarters if q.best is not None]
    if not chosen:
        return {m: 0.0 for m in planner.models}
    return {m: min(p.gpus[m] for p in chosen) for m in planner.models}


def costs(planner: Planner, point: Point, reserved: dict[str, float]) -> dict[str, float]:
    on_demand = point.hourly
    with_reserved = sum(
        reserved[m] * planner.prices[m].reserved
        + (point.gpus[m] - reserved[m]) * planner.prices[m].on_demand for m in planner.models)
    return {"hourly_on_demand": on_demand, "hourly_with_reserved": with_reserved,
            "quarter_on_demand": on_demand * HOURS_PER_QUARTER,
            "quarter_with_reserved": with_reserved * HOURS_PER_QUARTER}


def rows(planner: Planner, quarters: list[Quarter]) -> list[dict[str, Any]]:
    """One row per quarter: what plan.csv, the table and --json show."""
    reserved = commitment(planner, quarters)
    queues = sorted({k for q in quarters if q.best for k in q.best.values})
    out = []
    for q in quarters:
        row: dict[str, Any] = {"quarter": q.quarter, "growth_factor": round(q.growth, 6),
                               "arrival_scale": round(q.arrival_scale, 6)}
        best = q.best
        for t, n in zip(planner.types, best.mix if best else (None,) * len(planner.types),
                        strict=True):
            row[f"nodes_{t.model}"] = n
            row[f"gpus_{t.model}"] = best.gpus[t.model] if best else None
            row[f"reserved_gpus_{t.model}"] = reserved[t.model] if best else None
        row["gpus_total"] = sum(best.gpus.values()) if best else None
        for key, value in (costs(planner, best, reserved) if best else
                           dict.fromkeys(("hourly_on_demand", "hourly_with_reserved",
                                          "quarter_on_demand", "quarter_with_reserved"))).items():
            row[key] = round(value, 4) if value is not None else None
        row["utilization"] = round(best.summary["utilization"], 4) if best else None
        unit = "_h" if planner.target.metric in TIME_METRICS else ""
        for queue in queues:
            value = best.values.get(queue) if best else None
            row[f"{planner.target.metric}{unit}_{queue}"] = (
                round(value, 4) if value is not None else None)
        row["meets"] = best is not None
        row["runs"] = q.runs
        row["budget_hit"] = q.budget_hit
        out.append(row)
    return out


def write_csv(path: Path, table: list[dict[str, Any]]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(table[0]))
        writer.writeheader()
        for row in table:
            writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return path


def write_plots(directory: Path, planner: Planner, quarters: list[Quarter]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    chosen = [q for q in quarters if q.best is not None and q.best.result is not None]
    paths = []

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, attr, label in ((axes[0], "jct", "JCT (h)"), (axes[1], "waited", "wait (h)")):
        for q in chosen:
            assert q.best is not None and q.best.result is not None
            done = [j for j in q.best.result.jobs if j.finish >= 0]
            values = np.sort([getattr(j, attr) / 3600 for j in done])
            ax.step(values, np.arange(1, len(values) + 1) / max(len(values), 1), where="post",
                    label=f"Q{q.quarter} (x{q.growth:g})")
        ax.set(xlabel=label, ylabel="fraction of jobs", title=f"{label.split()[0]} CDF")
        ax.set_xscale("symlog", linthresh=0.01)
        ax.legend()
    paths.append(_save(fig, directory / "cdf.png"))

    fig, ax = plt.subplots(figsize=(7, 4))
    for q in chosen:
        assert q.best is not None
        series = q.best.summary["utilization_over_time"]
        ax.plot(series["t_h"], series["busy"], label=f"Q{q.quarter}")
    ax.set(xlabel="hours into the run", ylabel="busy GPUs / GPUs", ylim=(0, 1.05),
           title="Utilisation of each quarter's chosen mix")
    ax.legend()
    paths.append(_save(fig, directory / "utilization.png"))

    fig, ax = plt.subplots(figsize=(7, 4))
    for q in quarters:
        ran = [p for p in q.points if p.ran]
        line = ax.scatter([p.hourly for p in ran], [p.worst for p in ran], s=18,
                          label=f"Q{q.quarter}", alpha=0.7)
        if q.best is not None:
            ax.scatter([q.best.hourly], [q.best.worst], s=120, marker="*",
                       color=line.get_facecolor()[0], edgecolor="black", zorder=3)
    target = planner.target
    ax.axhline(target.value, ls="--", color="black", lw=1, label=f"target {target.text}")
    unit = " (h)" if target.metric in TIME_METRICS else ""
    costs_run = [p.hourly for q in quarters for p in q.points if p.ran and p.hourly > 0]
    if costs_run and max(costs_run) > 20 * min(costs_run):
        ax.set_xscale("log")
    ax.set(xlabel="cost per hour (on-demand)", ylabel=f"worst queue's {target.metric}{unit}",
           title="Cost vs target (stars: chosen)")
    if target.metric in TIME_METRICS:
        ax.set_yscale("symlog", linthresh=max(target.value / 10, 1e-3))
        ax.set_ylim(bottom=0)
    ax.legend()
    paths.append(_save(fig, directory / "cost_vs_target.png"))
    return paths


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
