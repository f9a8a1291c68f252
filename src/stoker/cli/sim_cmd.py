"""`stoker sim`: replay a trace through the scheduler for each policy; `stoker sim plan`: the
smallest cluster that meets a target."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from stoker.spec.errors import ConfigError

sim_app = typer.Typer(help="Simulate a cluster trace under scheduling policies.",
                      invoke_without_command=True)

TRACE = typer.Option(None, "--trace", help="Trace file.")
FORMAT = typer.Option(None, "--format", help="alibaba, helios, philly, tiresias or generic; "
                      "default: detected from the trace's header.")
CLUSTER = typer.Option(None, "--cluster", help="cluster.toml (queues, quotas, nodes).")
NODE_LIST = typer.Option(None, "--node-list",
                         help="Node list CSV (Alibaba or Tiresias layout); default: the trace's.")
NODES = typer.Option(None, "--nodes", help="Cut the cluster to its first N nodes.")
SAMPLE = typer.Option(None, "--sample-nodes",
                      help="Cut the cluster to N nodes spread evenly (keeps the model mix).")
EVERY = typer.Option(None, "--every", help="Keep every k-th node.")
GPUS = typer.Option(None, "--gpus", help="Cut the cluster to about this many GPUs.")
SCALE = typer.Option(1.0, "--arrival-scale", help="Arrivals this many times faster.")
TENANT_BY = typer.Option("auto", "--tenant-by", help="Queue by: auto, vc, user or id (hash).")
TENANTS = typer.Option(4, "--tenants", help="Queues made when there is no cluster.toml.")
MAX_JOBS = typer.Option(None, "--max-jobs", help="Only the first N jobs of the trace.")
CKPT = typer.Option("30m", "--checkpoint-interval",
                    help="Work between checkpoints (e.g. 30m); 'never' loses all on restart.")
OVERHEAD = typer.Option("0", "--restart-overhead", help="Time added per restart (e.g. 2m).")
MTBF = typer.Option(None, "--mtbf", help="Mean time between failures of one node (e.g. 30d).")
REPAIR = typer.Option("4h", "--repair-time", help="How long a failed node is down.")
SEED = typer.Option(0, "--seed", help="Seed of everything random (node failures).")
INTERVAL = typer.Option("0", "--interval",
                        help="Schedule once per interval (e.g. 10s); 0: after every event.")
WHOLE = typer.Option(False, "--whole-gpus", help="Round fractional GPU requests up to one GPU.")
CKPT_ON_PREEMPT = typer.Option(
    True, "--checkpoint-on-preempt/--no-checkpoint-on-preempt",
    help="Preempted jobs checkpoint as they stop (Stoker jobs do, on SIGTERM): no work lost. "
         "With --no-checkpoint-on-preempt a preempted job loses its work since its last "
         "periodic checkpoint.")
LAS = typer.Option(None, "--las-thresholds",
                   help="LAS levels in GPU-time, comma-separated (e.g. 1h,10h).")
JSON_OUT = typer.Option(False, "--json", help="Print machine-readable JSON only.")
TIMES_FROM = typer.Option(
    None, "--times-from", help="An Alibaba pod list with times: the trace's pods (requests only) "
    "take their creation, scheduled and deletion times from it, by pod name.")


def _seconds(option: str, text: str | None, allow_never: bool = False) -> float | None:
    from stoker.spec.job import parse_seconds

    if text is None:
        return None
    if allow_never and text == "never":
        return float("inf")
    try:
        value = float(parse_seconds(text))
    except ValueError as e:
        raise ConfigError(option, None, str(e)) from None
    if value < 0:
        raise ConfigError(option, None, "must not be negative")
    return value


def _inputs(trace: Path | None, fmt: str | None, cluster: Path | None, node_list: Path | None,
            nodes: int | None, sample: int | None, every: int | None, gpus: float | None,
            scale: float,
            tenant_by: str, tenants: int, max_jobs: int | None, ckpt: str, overhead: str,
            mtbf: str | None, repair: str, seed: int, interval: str, whole: bool,
            las: str | None, on_preempt: bool, times_from: Path | None = None) -> Any:
    from stoker.sim.engine import SimOptions
    from stoker.sim.run import Cut, SimInputs

    if trace is None:
        raise ConfigError("--trace", None, "give the trace file to simulate")
    checkpoint = _seconds("--checkpoint-interval", ckpt, allow_never=True)
    if checkpoint == 0:
        raise ConfigError("--checkpoint-interval", None, "must be above 0 (or 'never')")
    if tenants < 1:
        raise ConfigError("--tenants", None, "must be at least 1")
    options = SimOptions(
        checkpoint_interval=checkpoint or float("inf"),
        restart_overhead=_seconds("--restart-overhead", overhead) or 0.0,
        node_mtbf=_seconds("--mtbf", mtbf) or None,
        repair_time=_seconds("--repair-time", repair) or 0.0,
        seed=seed, interval=_seconds("--interval", interval) or 0.0, whole_gpus=whole,
        checkpoint_on_preempt=on_preempt)
    thresholds = None
    if las is not None:
        thresholds = tuple(sorted(_seconds("--las-thresholds", t.strip()) or 0.0
                                  for t in las.split(",") if t.strip()))
    return SimInputs(trace=trace, format=fmt, cluster=cluster, node_list=node_list,
                     cut=Cut(first=nodes, sample=sample, every=every, gpus=gpus),
                     arrival_scale=scale,
                     tenant_by=tenant_by, tenants=tenants, max_jobs=max_jobs,
                     las_thresholds=thresholds, options=options, times_from=times_from)


@sim_app.callback()
def sim(
    ctx: typer.Context,
    trace: Path | None = TRACE, fmt: str | None = FORMAT, cluster: Path | None = CLUSTER,
    node_list: Path | None = NODE_LIST,
    policy: list[str] = typer.Option(
        [], "--policy", help="fifo (strict), fifo-backfill, sjf, srtf, las, stoker, "
        "stoker-kueue, stoker-fair, stoker-afs (repeatable)."),
    nodes: int | None = NODES, sample_nodes: int | None = SAMPLE, every: int | None = EVERY,
    gpus: float | None = GPUS, arrival_scale: float = SCALE, tenant_by: str = TENANT_BY,
    tenants: int = TENANTS,
    max_jobs: int | None = MAX_JOBS, checkpoint_interval: str = CKPT,
    restart_overhead: str = OVERHEAD, mtbf: str | None = MTBF, repair_time: str = REPAIR,
    seed: int = SEED, interval: str = INTERVAL, whole_gpus: bool = WHOLE,
    las_thresholds: str | None = LAS, checkpoint_on_preempt: bool = CKPT_ON_PREEMPT,
    times_from: Path | None = TIMES_FROM,
    report: Path | None = typer.Option(None, "--report", help="Write plots + index.html here."),
    json_out: bool = JSON_OUT,
) -> None:
    """Replay a trace through the live scheduler under each policy and compare them."""
    if ctx.invoked_subcommand is not None:
        return
    from stoker.sim.policies import POLICIES
    from stoker.sim.run import prepare, run_policy

    inputs = _inputs(trace, fmt, cluster, node_list, nodes, sample_nodes, every, gpus,
                     arrival_scale,
                     tenant_by, tenants, max_jobs, checkpoint_interval, restart_overhead, mtbf,
                     repair_time, seed, interval, whole_gpus, las_thresholds,
                     checkpoint_on_preempt, times_from)
    policies = policy or ["fifo", "sjf", "las", "stoker"]
    for name in policies:
        if name not in POLICIES:
            raise ConfigError("--policy", None,
                              f"unknown policy {name!r} (known: {', '.join(POLICIES)})")
    prepared = prepare(inputs)
    console = Console(stderr=json_out)
    header = _header(prepared)
    if not json_out:
        for key, value in header.items():
            console.print(f"[bold]{key}[/]: {value}", highlight=False, soft_wrap=True)
    runs = []
    with _progress(console, quiet=json_out) as progress:
        for name in policies:
            task = progress.add_task(f"{name:12}", total=len(prepared.jobs))

            def advance(done: int, total: int, task: Any = task) -> None:
                progress.update(task, completed=done, total=total)

            runs.append(run_policy(prepared, name, advance))
    summaries = [r.summary() for r in runs]
    if report is not None:
        from stoker.sim import report as report_mod

        page = report_mod.write(report, runs, header)
        if not json_out:
            console.print(f"report: {page}")
    if json_out:
        typer.echo(json.dumps({"inputs": header, "skips": prepared.trace.skips.to_dict(),
                               "runs": summaries}, indent=2))
    else:
        console.print(_table(summaries))
        console.print(_groups_table(summaries))


def _header(prepared: Any) -> dict[str, Any]:
    """Every assumption the run makes, as printed above the results (and in --json, --report)."""
    inputs = prepared.inputs
    how = f"--format {inputs.format}" if inputs.format else "format detected from its header"
    if inputs.times_from is not None:
        how = f"requests only, times by pod name from {inputs.times_from} (--times-from)"
    full = prepared.full_nodes
    of = f" of {len(full)}" if full is not None and inputs.cluster is None else ""
    return {
        "trace": f"{inputs.trace} ({prepared.trace.format}, {how})",
        "loaded": "; ".join(prepared.trace.skips.lines()),
        "cluster": prepared.cluster.describe(),
        "nodes taken": f"{len(prepared.cluster.nodes)}{of}: {inputs.cut.describe()}",
        "GPUs": _gpu_assumption(prepared),
        "preemption": _preemption_assumption(inputs.options),
        "queues": f"{', '.join(prepared.queues)} (jobs mapped by --tenant-by "
                  f"{inputs.tenant_by})",
        "LAS thresholds (GPU-s)": inputs.las_thresholds or "the scheduler's default",
        "jobs": f"the first {inputs.max_jobs} of the trace" if inputs.max_jobs else "all",
        "arrival scale": inputs.arrival_scale,
        "checkpoint interval (s)": inputs.options.checkpoint_interval,
        "checkpoint on preemption": inputs.options.checkpoint_on_preempt,
        "node MTBF (s)": inputs.options.node_mtbf or "no failures",
        "seed": inputs.options.seed,
    }


def _gpu_assumption(prepared: Any) -> str:
    shares = sum(1 for j in prepared.jobs if j.gpu_milli < 1000)
    if not shares:
        return "whole GPUs (no job asks for a share of one)"
    if prepared.inputs.options.whole_gpus:
        return f"whole GPUs: {shares} requests for a share of one GPU rounded up (--whole-gpus)"
    return (f"fractional: {shares} jobs ask for a share of one GPU and share it with others "
            "(--whole-gpus rounds them up)")


def _preemption_assumption(options: Any) -> str:
    overhead = f", plus {_span(options.restart_overhead)} per restart" \
        if options.restart_overhead else ""
    if options.checkpoint_interval == float("inf"):
        lost = "all its work (no checkpoints)"
    else:
        every = _span(options.checkpoint_interval)
        lost = f"its work since the last checkpoint (one every {every})"
    if options.checkpoint_on_preempt:
        return (f"no work lost: jobs checkpoint on SIGTERM as they stop{overhead} "
                f"(--no-checkpoint-on-preempt: a preempted job loses {lost})")
    return f"a preempted job loses {lost}{overhead} (--no-checkpoint-on-preempt)"


def _span(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def _progress(console: Console, quiet: bool) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("jobs done"), TimeElapsedColumn(), console=console,
                    disable=quiet, transient=False)


def _table(summaries: list[dict[str, Any]]) -> Table:
    from stoker.sim.report import TABLE_ROWS, cell

    table = Table(title="Policies side by side")
    table.add_column("metric")
    for s in summaries:
        table.add_column(s["policy"], justify="right")
    for label, path, fmt in TABLE_ROWS:
        table.add_row(label, *(cell(s, path, fmt) for s in summaries))
    return table


def _groups_table(summaries: list[dict[str, Any]]) -> Table:
    """Mean / p95 queueing delay by job size and by tenant, and each tenant's share of the
    GPU-hours against its share of the nominal quota."""
    table = Table(title="By job size and tenant: wait mean / p95 (h); tenants: used / entitled")
    table.add_column("group")
    for s in summaries:
        table.add_column(s["policy"], justify="right")
    sizes = sorted({g for s in summaries for g in s["by_gpus"]}, key=_size_order)
    for size in sizes:
        table.add_row(f"{size} GPUs", *(_wait(s["by_gpus"].get(size)) for s in summaries))
    for tenant in sorted({t for s in summaries for t in s["by_tenant"]}):
        cells = []
        for s in summaries:
            share = s["fair_share"].get(tenant, {"used": 0.0, "entitled": 0.0})
            cells.append(f"{_wait(s['by_tenant'].get(tenant))}; "
                         f"{share['used']:.0%} / {share['entitled']:.0%}")
        table.add_row(f"tenant {tenant}", *cells)
    return table


def _size_order(name: str) -> int:
    from stoker.sim.metrics import GPU_BUCKETS

    return [n for _, n in GPU_BUCKETS].index(name)


def _wait(group: dict[str, Any] | None) -> str:
    if not group:
        return "-"
    return f"{group['wait_h']['mean']:.2f} / {group['wait_h']['p95']:.2f}"


@sim_app.command("plan")
def plan(
    trace: Path | None = TRACE, fmt: str | None = FORMAT, cluster: Path | None = CLUSTER,
    node_list: Path | None = NODE_LIST,
    policy: str = typer.Option("stoker", "--policy", help="The policy to plan for."),
    target: str = typer.Option("wait_p95<=1h", "--target",
                               help="METRIC<=VALUE, e.g. wait_p95<=1h (every queue), "
                                    "jct_mean<=4h, utilization>=0.7 (the cluster)"),
    prices: Path | None = typer.Option(
        None, "--prices", help="prices.toml: a table models.NAME per GPU model, on_demand = X, "
        "reserved = Y per GPU-hour; default: --cluster's prices (on-demand only)."),
    quarters: int = typer.Option(0, "--quarters", help="Quarters after this one to plan."),
    growth: float = typer.Option(1.0, "--growth",
                                 help="Arrival rate x this per quarter (compounding)."),
    steps: int = typer.Option(4, "--steps", help="Grid steps per GPU model (coarse, refine)."),
    max_scale: float = typer.Option(
        2.0, "--max-scale", help="Most nodes of a model tried: its nodes x growth x this."),
    max_runs: int = typer.Option(60, "--max-runs", help="Simulator runs per quarter at most."),
    arrival_scale: float = SCALE, tenant_by: str = TENANT_BY,
    tenants: int = TENANTS, max_jobs: int | None = MAX_JOBS, checkpoint_interval: str = CKPT,
    restart_overhead: str = OVERHEAD, mtbf: str | None = MTBF, repair_time: str = REPAIR,
    seed: int = SEED, interval: str = INTERVAL, whole_gpus: bool = WHOLE,
    las_thresholds: str | None = LAS, checkpoint_on_preempt: bool = CKPT_ON_PREEMPT,
    times_from: Path | None = TIMES_FROM,
    report: Path = typer.Option(Path("sim-plan"), "--report",
                                help="Directory for plan.csv and the plots."),
    json_out: bool = JSON_OUT,
) -> None:
    """Per quarter of a growth scenario, the cheapest mix of GPU models meeting the target."""
    from stoker.sim import plan as plan_mod
    from stoker.sim.policies import POLICIES
    from stoker.sim.run import prepare

    if policy not in POLICIES:
        raise ConfigError("--policy", None,
                          f"unknown policy {policy!r} (known: {', '.join(POLICIES)})")
    goal = plan_mod.parse_target(target)
    if quarters < 0:
        raise ConfigError("--quarters", None, "must not be negative")
    if not growth > 0 or growth == float("inf"):
        raise ConfigError("--growth", None, f"must be a positive number, got {growth:g}")
    if report.exists() and not report.is_dir():
        raise ConfigError("--report", None, f"{report} exists and is not a directory")
    inputs = _inputs(trace, fmt, cluster, node_list, None, None, None, None, arrival_scale,
                     tenant_by, tenants, max_jobs, checkpoint_interval, restart_overhead, mtbf,
                     repair_time, seed, interval, whole_gpus, las_thresholds,
                     checkpoint_on_preempt, times_from)
    prepared = prepare(inputs)
    models = {t.model for t in plan_mod.node_types(prepared)}
    if prices is not None:
        table = plan_mod.load_prices(prices, models)
    elif cluster is not None and prepared.cluster.config.prices:
        table = plan_mod.prices_from_cluster(prepared.cluster, str(cluster))
    else:
        raise ConfigError("--prices", None, "give a price table (prices.toml, or --cluster "
                          "with a prices table) for the models " + ", ".join(sorted(models)))
    planner = plan_mod.Planner(prepared, policy, goal, table, steps, max_scale, max_runs)
    console = Console(stderr=json_out)
    if not json_out:
        for key, value in _plan_header(planner, quarters, growth).items():
            console.print(f"[bold]{key}[/]: {value}", highlight=False, soft_wrap=True)
    with _plan_progress(console, quiet=json_out) as progress:
        task = progress.add_task("runs", total=None, status="")
        jobs = progress.add_task("  jobs", total=len(prepared.jobs), status="")

        def point_done(p: Any) -> None:
            mix = _mix_text(planner, p.mix)
            state = "ok" if p.ok else f"misses ({p.why})"
            progress.update(task, advance=1 if p.ran else 0,
                            description=f"Q{p.quarter} runs", status=f"{mix}: {state}")
            if not json_out:
                progress.console.print(
                    f"  Q{p.quarter} {mix}: {p.hourly:,.2f}/h, {goal.metric} "
                    f"{p.worst:.3g} -> {state}", highlight=False)

        def jobs_done(done: int, total: int) -> None:
            progress.update(jobs, completed=done, total=total)

        quarters_run = planner.plan(quarters, growth, point_done, jobs_done)
    table_rows = plan_mod.rows(planner, quarters_run)
    report.mkdir(parents=True, exist_ok=True)
    csv_path = plan_mod.write_csv(report / "plan.csv", table_rows)
    plots = plan_mod.write_plots(report, planner, quarters_run)
    runs = sum(q.runs for q in quarters_run)
    if json_out:
        typer.echo(json.dumps({
            "target": goal.text, "policy": policy, "models": planner.models,
            "prices": {m: {"on_demand": p.on_demand, "reserved": p.reserved}
                       for m, p in table.items()},
            "hours_per_quarter": plan_mod.HOURS_PER_QUARTER, "runs": runs,
            "quarters": table_rows,
            "points": [{"quarter": p.quarter, "nodes": dict(zip(planner.models, p.mix,
                                                                strict=True)),
                        "hourly": p.hourly, "ran": p.ran, "ok": p.ok, "why": p.why,
                        "worst": None if p.worst != p.worst else p.worst}
                       for q in quarters_run for p in q.points],
            "csv": str(csv_path), "plots": [str(p) for p in plots]}, indent=2))
        return
    console.print(_plan_table(planner, goal, quarters_run, table_rows))
    for q in quarters_run:
        if q.best is not None and q.budget_hit:
            console.print(f"Q{q.quarter}: run budget (--max-runs) spent: the cheapest mix found "
                          "so far, a cheaper one may exist")
        if q.best is None:
            why = "run budget (--max-runs) spent" if q.budget_hit else \
                f"not even {_mix_text(planner, q.upper)}"
            console.print(f"Q{q.quarter}: no mix meets {goal.text} ({why})")
    console.print(f"{runs} simulator runs; report: {csv_path}, "
                  f"{', '.join(p.name for p in plots)} in {report}")


def _plan_header(planner: Any, quarters: int, growth: float) -> dict[str, Any]:
    from stoker.sim.plan import GRID_LIMIT, TIME_METRICS

    header = _header(planner.prepared)
    header.pop("nodes taken")
    coarse = (f"grid of {planner.steps} steps per model"
              if (planner.steps + 1) ** len(planner.types) <= GRID_LIMIT
              else f"the cluster's mix scaled ({planner.steps} steps, then bisection)")
    prices = ", ".join(f"{m} {p.on_demand:g} ({p.reserved:g} reserved)"
                       for m, p in planner.prices.items())
    header.update({
        "node types": ", ".join(f"{t.model} ({len(t.nodes)} nodes, {sum(t.gpus):g} GPUs)"
                                for t in planner.types),
        "prices per GPU-hour": prices,
        "growth": f"{quarters} quarters after this one, arrivals x{growth:g} per quarter",
        "target": planner.target.text + (" for every queue" if planner.target.metric
                                         in TIME_METRICS else " for the cluster"),
        "search": f"{coarse}, then per-model bisection; at most {planner.max_runs} runs a "
                  f"quarter; up to {planner.max_scale:g}x each model's nodes x growth",
    })
    if planner.needs:
        header["models required"] = "; ".join(
            f"jobs limited to {'|'.join(m)} need one of its nodes" for m, _ in planner.needs)
    return header


def _mix_text(planner: Any, mix: tuple[int, ...]) -> str:
    return " + ".join(f"{n}x{t.model}" for t, n in zip(planner.types, mix, strict=True) if n) \
        or "nothing"


def _plan_progress(console: Console, quiet: bool) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("{task.fields[status]}"), console=console,
                    disable=quiet, transient=True)


def _plan_table(planner: Any, goal: Any, quarters: list[Any],
                table_rows: list[dict[str, Any]]) -> Table:
    """One row per quarter; plan.csv has each model's and each queue's own columns."""
    from stoker.sim.plan import TIME_METRICS

    unit = " (h)" if goal.metric in TIME_METRICS else ""
    from rich import box

    table = Table(title=f"Capacity plan: {planner.policy}, target {goal.text} (worst queue's); "
                        "cost/quarter on demand and with reserved capacity",
                  box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for label in ("Q", "nodes", "GPUs", "cost/h", "cost/qtr", "reserved", "util",
                  f"{goal.metric}{unit}", "meets", "runs"):
        table.add_column(label, justify="left" if label == "nodes" else "right")
    for q, row in zip(quarters, table_rows, strict=True):
        best = q.best
        worst = "-"
        if best is not None:
            pick = max if goal.op == "<=" else min
            queue = pick(best.values, key=best.values.__getitem__)
            worst = f"{best.values[queue]:.3g}" + (f" ({queue})" if unit else "")
        table.add_row(f"{q.quarter} x{q.growth:.3g}",
                      _mix_text(planner, best.mix) if best else "-",
                      *(_cell(row[c]) for c in ("gpus_total", "hourly_on_demand",
                                                "quarter_on_demand", "quarter_with_reserved")),
                      "-" if row["utilization"] is None else f"{row['utilization']:.0%}",
                      worst, _cell(row["meets"]), str(q.runs))
    return table


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the top-level app."""
    app.add_typer(sim_app, name="sim")
