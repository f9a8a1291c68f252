"""Jobs on a Stoker server: `stoker submit | jobs | job | cancel | logs | queues`, and the
admin's `stoker nodes | node`, `stoker quota`, `stoker cordon`, `stoker drain` and
`stoker audit`.

The server address and token come from --server/--token or $STOKER_SERVER/$STOKER_TOKEN.
Connection and API errors are one line and exit code 2.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from stoker.cli.progress import progress_rows
from stoker.spec.resources import BASE

if TYPE_CHECKING:
    from stoker.server.client import Client

SERVER_OPT = typer.Option(None, "--server", envvar="STOKER_SERVER",
                          help="Server URL (default http://127.0.0.1:8470).")
TOKEN_OPT = typer.Option(None, "--token", envvar="STOKER_TOKEN", help="API token.")
STATE_STYLE = {"QUEUED": "yellow", "ADMITTED": "cyan", "STARTING": "cyan", "RUNNING": "green",
               "SUCCEEDED": "bold green", "FAILED": "bold red", "PREEMPTED": "magenta",
               "CANCELLED": "dim"}

console = Console(highlight=False)


def _client(server: str | None, token: str | None) -> Client:
    from stoker.server.client import Client

    return Client(server, token)


def submit(
    job_file: Path = typer.Argument(..., help="Job spec (TOML)."),
    set_: list[str] = typer.Option([], "--set", help="Override a job key: key=value."),
    server: str | None = SERVER_OPT,
    token: str | None = TOKEN_OPT,
) -> None:
    """Submit a job; a training job's config file is sent along with it. A submit whose answer
    was lost is retried under the same idempotency key: it never makes two jobs."""
    import uuid

    from stoker.spec import loading
    from stoker.spec.api import JobSubmission
    from stoker.spec.job import load_job

    job = load_job(job_file, set_)
    train = _local_paths(loading.read_toml(job.train_config)) if job.train_config else None
    job_body = job.model_dump(mode="json")
    loading.validate(JobSubmission, {"job": job_body, "train": train}, str(job_file))
    with _client(server, token) as client:  # the server checks it all again
        view = client.submit(job_body, train, idempotency_key=str(uuid.uuid4()))
    console.print(f"submitted job [bold]{view['id']}[/] ({view['name']}) to queue "
                  f"{view['queue']}: {_state(view['state'])}, position {view['queue_position']}")


def _local_paths(train: dict[str, Any]) -> dict[str, Any]:
    """The job runs in its own directory: make the config's data paths, relative to here,
    absolute (the data cache is shared with `stoker train` runs started from here)."""
    from stoker.spec.train import DataConfig

    data = dict(train.get("data", {}))
    cache = Path(data.get("cache_dir", DataConfig().cache_dir)).expanduser()
    data["cache_dir"] = str(cache.absolute())
    dataset = data.get("dataset", DataConfig().dataset)
    if Path(dataset).expanduser().exists():
        data["dataset"] = str(Path(dataset).expanduser().absolute())
    return {**train, "data": data}


def _roles(j: dict[str, Any]) -> list[tuple[str, str]]:
    """A job with roles: its ranks in all, then each role's ranks, request and placement."""
    borrowing = " (borrowing)" if (j["placement"] or {}).get("borrowing") else ""
    rows = [("ranks", f"{j['ranks']} in {len(j['roles'])} roles" + borrowing)]
    for r in j["roles"]:
        last = r["first_rank"] + r["ranks"] - 1
        where = f"{r['flavor']} on {', '.join(r['nodes'])}" if r["nodes"] else "not placed"
        rows.append((f"role {escape(r['name'])}",
                     f"ranks {r['first_rank']}-{last}: {r['ranks']} x "
                     f"{_amounts(r['resources'])}; {where}"))
    return rows


def jobs(
    all_: bool = typer.Option(False, "--all", "-a", help="Include finished jobs."),
    state: list[str] = typer.Option([], "--state", help="Only jobs in this state."),
    server: str | None = SERVER_OPT,
    token: str | None = TOKEN_OPT,
) -> None:
    """Your jobs (the admin sees everyone's): state, queue position, estimated start, age."""
    with _client(server, token) as client:
        rows = client.jobs(active=not all_ and not state, states=[s.upper() for s in state])
    table = Table(box=None, header_style="bold")
    for column in ("ID", "NAME", "TENANT", "QUEUE", "PRIO", "STATE", "POS", "START", "AGE",
                   "RANKS", "RESTARTS", "REASON"):
        table.add_column(column, justify="right" if column in ("ID", "POS", "RANKS") else "left",
                         no_wrap=column != "REASON", overflow="fold")
    now = time.time()
    for j in rows:
        why = _waiting(j["waiting"]) if j["waiting"] else j["reason"]
        if j["stopping"]:
            why = f"stopping ({j['stopping']}): {why}"
        table.add_row(str(j["id"]), j["name"], j["tenant"], j["queue"], j["priority_class"],
                      _state(j["state"]), str(j["queue_position"] or ""),
                      _start(j["estimated_start"], now) if j["state"] == "QUEUED" else "",
                      _age(now - j["created_at"]), str(j["ranks"]),
                      f"{j['restarts']}/{j['max_restarts']}", why)
    console.print(table if rows else "no jobs")


def job(
    job_id: int = typer.Argument(..., help="Job id."),
    server: str | None = SERVER_OPT,
    token: str | None = TOKEN_OPT,
) -> None:
    """A job's details and its event log."""
    with _client(server, token) as client:
        j = client.job(job_id)
    info = Table.grid(padding=(0, 2))
    placement = j["placement"] or {}
    for key, value in (
        ("job", f"{j['id']} {j['name']} ({j['kind']}, tenant {j['tenant']})"),
        ("state", _state(j["state"]) + (f" (stopping: {j['stopping']})" if j["stopping"]
                                        else "")),
        ("reason", _waiting(j["waiting"]) if j["waiting"] else escape(j["reason"])),
        *_waiting_numbers(j["waiting"]),
        ("queue", f"{j['queue']}, priority {j['priority_class']} ({j['priority']})"
         + (f", position {j['queue_position']}" if j["queue_position"] else "")),
        *([("start", _start(j["estimated_start"], time.time()))] if j["state"] == "QUEUED"
          else []),
        *(_roles(j) if j.get("roles") else [
            ("ranks", f"{j['ranks']} x {_amounts(j['resources'])}"),
            ("placement", f"{placement.get('flavor')} on "
             f"{', '.join(placement.get('nodes', []))}"
             + (" (borrowing)" if placement.get("borrowing") else "") if placement else "-")]),
        ("attempts", f"{j['attempt']}, restarts {j['restarts']}/{j['max_restarts']}"),
        ("exit code", "-" if j["exit_code"] is None else str(j["exit_code"])),
        *progress_rows(j.get("progress")),
    ):
        info.add_row(f"[bold]{key}[/]", value)
    console.print(info)
    events = Table(title="events", box=None, header_style="bold", title_justify="left")
    for column in ("TIME", "KIND", "TRANSITION", "BY", "WHY"):
        events.add_column(column, no_wrap=column != "WHY")
    for e in j["events"]:
        moved = f"{e['from_state'] or ''} -> {e['to_state']}" if e["kind"] == "transition" \
            else ""
        events.add_row(time.strftime("%H:%M:%S", time.localtime(e["at"])), e["kind"], moved,
                       e["actor"], escape(e["reason"]))
    console.print(events)
    _causes(j.get("causes") or [])
    if j.get("goodput"):
        console.print(_goodput_table("goodput (rank-seconds)", [("job", j["goodput"])]))


def _goodput_table(title: str, rows: list[tuple[str, dict[str, Any]]]) -> Table:
    """Allocated and productive rank-seconds, the ratio and every non-zero loss, per row."""
    losses = [k for k in (rows[0][1]["lost"] if rows else {})
              if any(g["lost"].get(k) for _, g in rows)]
    table = Table(title=title, box=None, header_style="bold", title_justify="left")
    for column in ("", "GOODPUT", "ALLOCATED", "PRODUCTIVE", *[k.upper() for k in losses],
                   "GPU-S", "QUEUED (WALL)"):
        table.add_column(column, justify="left" if not column else "right", no_wrap=True)
    for name, g in rows:
        ratio = "-" if g["ratio"] is None else f"{100 * g['ratio']:.1f}%"
        table.add_row(escape(name), ratio, _secs(g["allocated_s"]), _secs(g["productive_s"]),
                      *[_secs(g["lost"][k]) for k in losses], _secs(g["gpu_s"]),
                      _secs(g["queued_s"]))
    return table


def _secs(seconds: float) -> str:
    return f"{seconds:.1f}"


def _causes(causes: list[dict[str, Any]]) -> None:
    """Why each failed attempt failed, with the log lines that show it."""
    if not causes:
        return
    table = Table(title="failed attempts", box=None, header_style="bold",
                  title_justify="left")
    for column in ("ATTEMPT", "CATEGORY", "CAUSE", "EXIT", "NODES", "WHY"):
        table.add_column(column, no_wrap=column != "WHY")
    for c in causes:
        why = escape(c["message"])
        if c["lines"]:
            why += "\n" + "\n".join(f"[dim]{escape(line)}[/]" for line in c["lines"][-6:])
        table.add_row(str(c["attempt"]), c["category"], c["code"],
                      "-" if c["exit_code"] is None else str(c["exit_code"]),
                      ", ".join(c["nodes"]) or "-", why)
    console.print(table)


def _waiting(why: dict[str, Any]) -> str:
    mark = ", inadmissible" if why["inadmissible"] else ""
    return f"[bold]{why['code']}[/]{mark}: {escape(why['message'])}"


def _waiting_numbers(why: dict[str, Any] | None) -> list[tuple[str, str]]:
    """The quota numbers behind a waiting reason, as rows of `stoker job`."""
    if not why or why["flavor"] is None:
        return []
    rows = [(f"{key} ({why['flavor']})", _amounts(why[key]) or "0")
            for key in ("available", "borrowable") if why[key] is not None]
    if why["requested"] is not None:
        rows.insert(0, ("requested", _amounts(why["requested"])))
    return rows


def _start(at: float | None, now: float) -> str:
    """An estimated start: "now", "in 2h 5m", or "unknown" (something ahead has no
    max_run_time, or the estimate reached its horizon)."""
    if at is None:
        return "unknown"
    if at <= now + 1:
        return "now"
    return "in " + _age(at - now)


def cancel(
    job_id: int = typer.Argument(..., help="Job id."),
    server: str | None = SERVER_OPT,
    token: str | None = TOKEN_OPT,
) -> None:
    """Cancel a job: a queued one at once, a running one after SIGTERM (and SIGKILL)."""
    with _client(server, token) as client:
        j = client.cancel(job_id)
    what = "cancelled" if j["state"] == "CANCELLED" else "cancelling (processes are stopping)"
    console.print(f"job {job_id}: {what}")


def logs(
    job_id: int = typer.Argument(..., help="Job id."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing until it ends."),
    rank: int | None = typer.Option(None, "--rank", help="Only this rank's output."),
    server: str | None = SERVER_OPT,
    token: str | None = TOKEN_OPT,
) -> None:
    """A job's output (all attempts, each starting with a '=== stoker: attempt N' line)."""
    import sys

    offset = 0
    with _client(server, token) as client:
        while True:
            chunk = client.logs(job_id, rank, offset)
            sys.stdout.write(chunk["text"])
            sys.stdout.flush()
            more = chunk["next_offset"] != offset
            offset = chunk["next_offset"]
            if more:
                continue
            if not follow or chunk["done"]:
                return
            time.sleep(0.5)


def queues(server: str | None = SERVER_OPT, token: str | None = TOKEN_OPT) -> None:
    """Each queue's usage against its nominal quota, and what it borrows, per flavor."""
    with _client(server, token) as client:
        rows = client.queues()
    table = Table(box=None, header_style="bold")
    for column in ("QUEUE", "COHORT", "FLAVOR", "RESOURCE", "USED", "NOMINAL", "BORROWED",
                   "BORROW LIMIT", "LEND LIMIT", "PENDING", "RUNNING"):
        table.add_column(column, no_wrap=True, justify="left" if column in (
            "QUEUE", "COHORT", "FLAVOR", "RESOURCE") else "right")
    for q in rows:
        r = q["resource"]
        table.add_row(q["queue"], q["cohort"] or "-", q["flavor"], r, _num(q["used"], r),
                      _num(q["nominal"], r), _num(q["borrowed"], r),
                      _num(q["borrowing_limit"], r), _num(q["lending_limit"], r),
                      str(q["pending_jobs"]), str(q["running_jobs"]))
    console.print(table if rows else "no queues")


def nodes(server: str | None = SERVER_OPT, token: str | None = TOKEN_OPT) -> None:
    """Nodes: capacity, what is allocated on them, health state and why (admin)."""
    with _client(server, token) as client:
        rows = client.nodes()
    table = Table(box=None, header_style="bold")
    for column in ("NODE", "FLAVOR", "LABELS", "GPUS", "CPUS", "MEMORY", "OTHER", "JOBS",
                   "STATE", "REASON"):
        table.add_column(column, no_wrap=column != "REASON", overflow="fold")
    for n in rows:
        cap, used = n["capacity"], n["allocated"]
        other = [r for r in cap if r not in BASE]
        table.add_row(
            n["name"], n["flavor"], ",".join(f"{k}={v}" for k, v in n["labels"].items()),
            *(f"{_num(used.get(r, 0), r)}/{_num(cap.get(r), r)}" for r in BASE),
            " ".join(f"{r}={_num(used.get(r, 0), r)}/{_num(cap[r], r)}" for r in other) or "-",
            ",".join(map(str, n["jobs"])) or "-", _node_state(n), escape(_node_reason(n)))
    console.print(table)


NODE_STYLE = {"healthy": "green", "suspect": "yellow", "unhealthy": "bold red",
              "draining": "magenta", "drained": "magenta"}


def _node_state(n: dict[str, Any]) -> str:
    """The state, and "cordoned" and "repair" when they apply."""
    marks = [m for m, on in (("cordoned", n["cordoned"]), ("repair", n["repair_needed"])) if on]
    return f"[{NODE_STYLE.get(n['state'], '')}]{n['state']}[/]" + "".join(
        f",[red]{m}[/]" for m in marks)


def _node_reason(n: dict[str, Any]) -> str:
    """Why it is not simply healthy: the drain, the cordon (and who set it), the checks."""
    why = []
    if n["draining"]:
        why.append(f"drain: {n['drain_reason'] or '-'}")
    if n["cordoned"]:
        by = f" by {n['cordoned_by']}" if n["cordoned_by"] else ""
        why.append(f"cordoned{by}: {n['cordon_reason'] or '-'}")
    if n["health_reason"] and n["health_reason"] != n["cordon_reason"]:
        why.append(n["health_reason"])
    return "; ".join(why)


def node(
    name: str = typer.Argument(..., help="Node name."),
    server: str | None = SERVER_OPT,
    token: str | None = TOKEN_OPT,
) -> None:
    """One node: state, cordon, drain, repair flag, last checks with their figures and
    durations, and its history (admin)."""
    with _client(server, token) as client:
        n = client.node(name)
    info = Table.grid(padding=(0, 2))
    by = f" by {n['cordoned_by']}" if n["cordoned_by"] else ""
    for key, value in (
        ("node", f"{n['name']} ({n['flavor']})"),
        ("state", _node_state(n)),
        ("health", f"{n['health']}" + (f": {escape(n['health_reason'])}"
                                       if n["health_reason"] else "")),
        ("checks", f"{n['failures']} failed in a row, {n['passes']} passed in a row"),
        ("cordon", f"yes{by}: {escape(n['cordon_reason'] or '-')}" if n["cordoned"] else "no"),
        ("drain", f"yes: {escape(n['drain_reason'] or '-')}" if n["draining"] else "no"),
        ("repair", "[red]needed[/]" if n["repair_needed"] else "no"),
        ("jobs", ",".join(map(str, n["jobs"])) or "-"),
    ):
        info.add_row(f"[bold]{key}[/]", value)
    console.print(info)
    for report in n["last_checks"]:
        verdict = "pass" if report["passed"] else "[red]FAIL[/]"
        checks = _checks_table(f"last {report['check_set']} checks: {verdict}, "
                               f"{report['duration_s']:.2f} s, {_clock(report['at'])}")
        for r in report["results"]:
            _check_row(checks, r)
        console.print(checks)
    history = Table(title="history", box=None, header_style="bold", title_justify="left")
    for column in ("TIME", "KIND", "CHANGE", "BY", "WHY"):
        history.add_column(column, no_wrap=column != "WHY", overflow="fold")
    for e in n["history"]:
        change = f"{e['from_state'] or ''} -> {e['to_state']}" if e["from_state"] != \
            e["to_state"] else ""
        history.add_row(_clock(e["at"]), e["kind"], change, e["actor"], escape(e["reason"]))
    console.print(history if n["history"] else "no history")


def _checks_table(title: str) -> Table:
    table = Table(title=title, box=None, header_style="bold", title_justify="left")
    for column in ("CHECK", "RESULT", "VALUE", "LIMIT", "UNIT", "SECONDS", "DETAIL"):
        table.add_column(column, no_wrap=column != "DETAIL", overflow="fold",
                         justify="right" if column in ("VALUE", "LIMIT", "SECONDS") else "left")
    return table


def _check_row(table: Table, r: dict[str, Any]) -> None:
    figure = ["" if r[k] is None else f"{r[k]:.4g}" for k in ("value", "limit")]
    table.add_row(r["name"], "pass" if r["passed"] else "[red]FAIL[/]", *figure, r["unit"],
                  f"{r['duration_s']:.2f}", escape(r["detail"]))


def _clock(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def quota(
    queue: str = typer.Argument(..., help="Queue."),
    flavor: str = typer.Argument(..., help="Resource flavor."),
    amounts: list[str] = typer.Argument(..., help="Nominal quota: gpu=8 cpu=64 memory=1TiB "
                                        "example.com/gpu=4."),
    borrow: list[str] = typer.Option([], "--borrowing-limit", help="e.g. gpu=4"),
    lend: list[str] = typer.Option([], "--lending-limit", help="e.g. gpu=2"),
    server: str | None = SERVER_OPT,
    token: str | None = TOKEN_OPT,
) -> None:
    """Replace a queue's quota of one flavor while the server runs (admin; next cycle on)."""
    body: dict[str, Any] = _parse_amounts(amounts, "amounts")
    if borrow:
        body["borrowing_limit"] = _parse_amounts(borrow, "--borrowing-limit")
    if lend:
        body["lending_limit"] = _parse_amounts(lend, "--lending-limit")
    with _client(server, token) as client:
        result = client.set_quota(queue, flavor, body)
    console.print(f"quota of queue {result['queue']} on {result['flavor']}: {result['quota']}")


def cordon(
    node: str = typer.Argument(..., help="Node name."),
    off: bool = typer.Option(False, "--off", help="Uncordon: admit jobs to it again."),
    reason: str = typer.Option("", "--reason", help="Why (kept with the node)."),
    server: str | None = SERVER_OPT,
    token: str | None = TOKEN_OPT,
) -> None:
    """Stop admitting new jobs to a node; its running jobs stay (admin)."""
    with _client(server, token) as client:
        n = client.cordon(node, not off, reason)
    console.print(f"node {n['name']}: {'cordoned' if n['cordoned'] else 'ready'}")


def drain(
    node: str = typer.Argument(..., help="Node name."),
    off: bool = typer.Option(False, "--off", help="Stop draining: admit jobs to it again."),
    requeue: bool = typer.Option(False, "--requeue",
                                 help="Stop its jobs now and requeue them, as a preemption."),
    reason: str = typer.Option("", "--reason", help="Why (kept with the node)."),
    server: str | None = SERVER_OPT,
    token: str | None = TOKEN_OPT,
) -> None:
    """Drain a node: no new jobs; its running jobs finish, or with --requeue are stopped and
    requeued. It is "draining" until none is left, then "drained" (admin)."""
    with _client(server, token) as client:
        n = client.drain(node, not off, reason, requeue)
    jobs = f" ({len(n['jobs'])} jobs on it{', requeued' if requeue else ''})" if n["jobs"] \
        else ""
    console.print(f"node {n['name']}: {n['state']}{jobs}")


def audit(
    after: int = typer.Option(0, "--after", help="Only entries after this id."),
    limit: int = typer.Option(100, "--limit", help="At most this many entries."),
    server: str | None = SERVER_OPT,
    token: str | None = TOKEN_OPT,
) -> None:
    """Admin actions: quota changes, cordons, cancels of other tenants' jobs (admin)."""
    from rich.markup import escape

    with _client(server, token) as client:
        rows = client.audit(after, limit)
    table = Table(box=None, header_style="bold")
    for column in ("ID", "TIME", "ACTOR", "ACTION", "TARGET", "DETAIL"):
        table.add_column(column, justify="right" if column == "ID" else "left",
                         no_wrap=column != "DETAIL", overflow="fold")
    for a in rows:
        detail = ", ".join(f"{k}={v}" for k, v in a["detail"].items())
        table.add_row(str(a["id"]), time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(a["at"])),
                      a["actor"], a["action"], escape(a["target"]), escape(detail))
    console.print(table if rows else "no admin actions")


def _parse_amounts(items: list[str], source: str) -> dict[str, Any]:
    from stoker.spec import loading

    out: dict[str, Any] = {}
    for item in items:
        keys, value = loading.parse_override(item)
        out[".".join(keys)] = value
    if not out:
        from stoker.spec.errors import ConfigError

        raise ConfigError(source, None, "give at least one amount: gpu=, cpu=, memory=, ...")
    return out


def _state(state: str) -> str:
    return f"[{STATE_STYLE.get(state, '')}]{state}[/]"


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{max(0.0, seconds):.0f}s"


def _num(value: float | None, resource: str) -> str:
    if value is None:
        return "-"
    if resource in ("memory", "ephemeral-storage"):
        for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
            if value >= size:
                return f"{value / size:.3g}{unit}"
    return f"{value:g}"


def _amounts(amounts: dict[str, float]) -> str:
    return ", ".join(f"{k}={_num(v, k)}" for k, v in amounts.items() if v)


def register(app: typer.Typer) -> None:
    """Add the job and cluster commands to the top-level app."""
    for command in (submit, jobs, job, cancel, logs, queues, nodes, node, quota, cordon, drain,
                    audit):
        app.command(command.__name__)(command)
