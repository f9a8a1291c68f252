"""Jobs on a Stoker server: `stoker submit | jobs | job | cancel | logs | queues`, and the
admin's `stoker nodes | node`, `stoker quota`, `stoker cordon`, `stoker drain` and
`stoker audit`.

The server address and token come from --server/--token or $STOKER_SERVER/$STOKER_TOKEN.
Connection and API errors are one line and exit code 2.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.table import Table

from stoker.cli.output import INTERVAL_OPT, OUTPUT_OPT, WATCH_OPT, Format, duration, show
from stoker.cli.progress import progress_rows
from stoker.spec.errors import ConfigError
from stoker.spec.resources import BASE

if TYPE_CHECKING:
    from collections.abc import Callable

    from stoker.server.client import Client

SERVER_OPT = typer.Option(None, "--server", envvar="STOKER_SERVER",
                          help="Server URL (default http://127.0.0.1:8470).")
TOKEN_OPT = typer.Option(None, "--token", envvar="STOKER_TOKEN", help="API token.")
STATE_STYLE = {"QUEUED": "yellow", "ADMITTED": "cyan", "STARTING": "cyan", "RUNNING": "green",
               "SUCCEEDED": "bold green", "FAILED": "bold red", "PREEMPTED": "magenta",
               "CANCELLED": "dim"}

console = Console(highlight=False)
MAX_ARRAY = 1000  # tasks of one --array


def _client(server: str | None, token: str | None) -> Client:
    from stoker.server.client import Client

    return Client(server, token)


def submit(
    job_file: Path = typer.Argument(..., help="Job spec (TOML)."),
    set_: list[str] = typer.Option([], "--set", help="Override a job key: key=value."),
    after_ok: list[int] = typer.Option([], "--after-ok", metavar="JOB",
                                       help="Run only once job JOB has SUCCEEDED (repeatable); "
                                       "if it ends FAILED or CANCELLED, this job is cancelled."),
    array: str | None = typer.Option(None, "--array", metavar="RANGE",
                                     help="Submit one job per index: 0-9, 0,2,5 or 0-9:2 (at "
                                     f"most {MAX_ARRAY}), each named NAME-INDEX with "
                                     "$STOKER_ARRAY_TASK_ID in its environment."),
    no_code: bool = typer.Option(False, "--no-code", help="A [task] job: do not send the "
                                 "task's code; its ranks import it from task.path as it is "
                                 "on the nodes (a shared filesystem, outside any sandbox)."),
    server: str | None = SERVER_OPT,
    token: str | None = TOKEN_OPT,
) -> None:
    """Submit a job; a training job's config file is sent along with it, and a [task] job's
    code (the files under task.path, as Ray's working_dir). A submit whose answer was lost is
    retried under the same idempotency key: it never makes two jobs."""
    import base64
    import uuid

    from stoker.spec import loading
    from stoker.spec.api import JobSubmission
    from stoker.spec.job import load_job

    tasks = array_indices(array) if array is not None else None
    job = load_job(job_file, set_)
    if after_ok:
        job = job.model_copy(update={"after_ok": (*job.after_ok, *after_ok)})
    train = (_local_paths(loading.read_toml(job.train_config), Path(job.train_config))
             if job.train_config else None)
    code = None if no_code or train is None else _task_code(train)
    encoded = base64.b64encode(code).decode() if code is not None else None
    bodies = [job.model_dump(mode="json")] if tasks is None else \
        [array_task(job.model_dump(mode="json"), i, tasks) for i in tasks]
    for body in bodies:  # the server checks it all again
        loading.validate(JobSubmission, {"job": body, "train": train, "code": encoded},
                         str(job_file))
    key = str(uuid.uuid4())
    with _client(server, token) as client:
        if tasks is None:
            view = client.submit(bodies[0], train, idempotency_key=key, code=encoded)
            console.print(f"submitted job [bold]{view['id']}[/] ({view['name']}) to queue "
                          f"{view['queue']}: {_state(view['state'])}, position "
                          f"{view['queue_position']}")
            return
        ids = [client.submit(body, train, idempotency_key=f"{key}-{i}", code=encoded)["id"]
               for i, body in zip(tasks, bodies, strict=True)]
    console.print(f"submitted job array {job.name} ({len(ids)} tasks, {array}) to queue "
                  f"{job.queue}: jobs {', '.join(map(str, ids))}")


def array_indices(text: str) -> list[int]:
    """Slurm's ``--array`` ranges: ``0-9``, ``0,2,5``, ``0-9:2`` or a mix (``1-3,8``), in
    order, each index once; at most `MAX_ARRAY` of them. ConfigError (one line) otherwise."""
    indices: list[int] = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d{1,7})(?:-(\d{1,7})(?::(\d{1,7}))?)?\s*", part)
        if m is None:
            raise ConfigError("--array", None, f"expected ranges such as 0-9, 0,2,5 or "
                              f"0-9:2, got {text!r}")
        first = int(m.group(1))
        last = int(m.group(2)) if m.group(2) is not None else first
        step = int(m.group(3)) if m.group(3) is not None else 1
        if last < first or step < 1:
            raise ConfigError("--array", None, f"{part.strip()!r}: a range goes up, by a "
                              "step of at least 1")
        if len(indices) + (last - first) // step + 1 > MAX_ARRAY:
            raise ConfigError("--array", None, f"more than {MAX_ARRAY} tasks in {text!r}")
        indices.extend(range(first, last + 1, step))
    if len(set(indices)) != len(indices):
        raise ConfigError("--array", None, f"an index is given twice in {text!r}")
    return indices


def array_task(job: dict[str, Any], index: int, tasks: list[int]) -> dict[str, Any]:
    """Task ``index`` of an array: the job named ``NAME-INDEX``, with the array's task id,
    count, first and last index and name in its environment (Slurm's SLURM_ARRAY_*)."""
    env = {**job.get("env", {}), "STOKER_ARRAY_TASK_ID": str(index),
           "STOKER_ARRAY_TASK_COUNT": str(len(tasks)), "STOKER_ARRAY_TASK_MIN": str(min(tasks)),
           "STOKER_ARRAY_TASK_MAX": str(max(tasks)), "STOKER_ARRAY_NAME": job["name"]}
    return {**job, "name": f"{job['name']}-{index}", "env": env}


def _local_paths(train: dict[str, Any], config: Path) -> dict[str, Any]:
    """The job runs in its own directory: make a prepared dataset's path, relative to here,
    absolute, and a user task's code directory (`task.path`, default the config file's)
    absolute. The data cache stays where the config puts it, inside the job's directory: a
    control-plane job writes nowhere else (`TrainConfig.check_confined`)."""
    from stoker.spec.train import DataConfig

    task = train.get("task")
    if isinstance(task, dict) and task.get("module"):
        base = config.expanduser().resolve().parent
        path = (base / str(task.get("path", "."))).resolve()
        return {**train, "task": {**task, "path": str(path)}}  # [data] is not used

    data = dict(train.get("data", {}))
    dataset = data.get("dataset", DataConfig().dataset)
    if Path(dataset).expanduser().exists():
        data["dataset"] = str(Path(dataset).expanduser().absolute())
    return {**train, "data": data}


def _task_code(train: dict[str, Any]) -> bytes | None:
    """A [task] job's code: the files under its (absolute) ``task.path``, packed."""
    from stoker.control.code_archive import BadArchive, pack

    task = train.get("task")
    if not (isinstance(task, dict) and task.get("module")):
        return None
    try:
        packed = pack(Path(task["path"]))
    except (BadArchive, OSError) as e:
        raise ConfigError(None, "task.path", str(e)) from None
    console.print(f"sending the task's code: {packed.files} files from {task['path']} "
                  f"({packed.unpacked / 1024:,.0f} KiB, {len(packed.archive) / 1024:,.0f} KiB "
                  "packed)")
    return packed.archive


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
    all_: bool = typer.Option(False, "--all", "-a", help="Include finished jobs, with their "
                              "start, end and elapsed time."),
    state: list[str] = typer.Option([], "--state", help="Only jobs in this state."),
    limit: int = typer.Option(200, "--limit", "-l", help="At most this many jobs (0: all): "
                              "the oldest active ones; with -a or --state, the newest."),
    output: Format = OUTPUT_OPT,
    watch: bool = WATCH_OPT,
    interval: str = INTERVAL_OPT,
    server: str | None = SERVER_OPT,
    token: str | None = TOKEN_OPT,
) -> None:
    """Your jobs (the admin sees everyone's): state, queue position, start (estimated while
    queued), end, elapsed, age; one page of at most --limit, in id order, and how many more
    there are."""
    if not 0 <= limit <= MAX_PAGE:
        raise ConfigError("--limit", None, f"expected 0 (all) to {MAX_PAGE}, got {limit}")
    states = [s.upper() for s in state]
    ended = all_ or bool(state)
    with _client(server, token) as client:
        def fetch() -> tuple[list[dict[str, Any]], int]:
            rows, total = client.jobs_page(active=not ended, states=states,
                                           limit=limit or None, newest_first=ended)
            return sorted(rows, key=lambda j: j["id"]), total - len(rows)

        if output in (Format.json, Format.yaml) and not watch:
            rows, more = fetch()
            show(lambda: rows, _jobs_table_of(ended), output, console)
            if more:
                Console(stderr=True, highlight=False).print(_more(more, ended))
            return
        show(fetch, lambda page, wide: _jobs_table_of(ended)(page[0], wide, page[1]), output,
             console, watch, interval)


MAX_PAGE = 10_000  # the API's largest page


def _more(more: int, ended: bool) -> str:
    which = "older" if ended else "newer"
    return f"{more} {which} job{'s' if more != 1 else ''} not shown (--limit 0: all)"


def _jobs_table_of(ended: bool) -> Callable[..., RenderableType]:
    def render(rows: list[dict[str, Any]], wide: bool, more: int = 0) -> RenderableType:
        table = _jobs_table(rows, wide, ended)
        return Group(table, f"[dim]{_more(more, ended)}[/]") if more else table
    return render


def _jobs_table(rows: list[dict[str, Any]], wide: bool, ended: bool) -> RenderableType:
    """One row per job; ``ended``: with an END column; ``wide``: kind, attempt, nodes too."""
    if not rows:
        return "no jobs"
    columns = ["ID", "NAME", "TENANT", "QUEUE", "PRIO", "STATE", "POS", "START",
               *(["END"] if ended else []), "ELAPSED", "AGE", "RANKS", "RESTARTS",
               *(["KIND", "ATTEMPT", "NODES"] if wide else []), "REASON"]
    table = Table(box=None, header_style="bold")
    for column in columns:
        table.add_column(column, justify="right" if column in (
            "ID", "POS", "RANKS", "ELAPSED", "AGE", "ATTEMPT") else "left",
            no_wrap=column != "REASON", overflow="fold")
    now = time.time()
    for j in rows:
        cells = {"ID": str(j["id"]), "NAME": escape(j["name"]), "TENANT": j["tenant"],
                 "QUEUE": j["queue"], "PRIO": j["priority_class"], "STATE": _job_state(j),
                 "POS": str(j["queue_position"] or ""), "START": _job_start(j, now),
                 "END": _when(j["finished_at"], now), "ELAPSED": _elapsed(j, now),
                 "AGE": duration(now - j["created_at"]), "RANKS": str(j["ranks"]),
                 "RESTARTS": f"{j['restarts']}/{j['max_restarts']}", "KIND": j["kind"],
                 "ATTEMPT": str(j["attempt"]),
                 "NODES": ",".join((j["placement"] or {}).get("nodes", [])) or "-",
                 "REASON": _job_reason(j)}
        table.add_row(*(cells[c] for c in columns))
    return table


def _job_state(j: dict[str, Any]) -> str:
    return _state(j["state"]) + (" [yellow](held)[/]" if j.get("held") else "")


def _job_reason(j: dict[str, Any]) -> str:
    why = _waiting(j["waiting"]) if j["waiting"] else escape(j["reason"])
    return f"stopping ({j['stopping']}): {why}" if j["stopping"] else why


def _job_start(j: dict[str, Any], now: float) -> str:
    """Queued: the estimate ("in 5m03s", "now", "unknown"; "held"); else when the latest
    attempt started."""
    if j["state"] == "QUEUED":
        return "held" if j.get("held") else _start(j["estimated_start"], now)
    return _when(j["started_at"], now)


def _elapsed(j: dict[str, Any], now: float) -> str:
    """How long the latest attempt has run (or ran, for a finished job)."""
    if j["started_at"] is None or j["state"] in ("QUEUED", "ADMITTED"):
        return "-"
    end = j["finished_at"] if j["finished_at"] is not None else now
    return duration(end - j["started_at"])


def _when(at: float | None, now: float) -> str:
    """A time: HH:MM:SS today, else MM-DD HH:MM; "-" for none."""
    if at is None:
        return "-"
    same_day = time.localtime(at)[:3] == time.localtime(now)[:3]
    return time.strftime("%H:%M:%S" if same_day else "%m-%d %H:%M", time.localtime(at))


def job(
    job_id: int = typer.Argument(..., help="Job id."),
    priority: str | None = typer.Option(None, "--priority", help="Move it to this priority "
                                        "class first (its owner may lower it; the admin may "
                                        "set any)."),
    output: Format = OUTPUT_OPT,
    watch: bool = WATCH_OPT,
    interval: str = INTERVAL_OPT,
    server: str | None = SERVER_OPT,
    token: str | None = TOKEN_OPT,
) -> None:
    """A job's details and its event log."""
    with _client(server, token) as client:
        if priority is not None:
            changed = client.set_priority(job_id, priority)
            Console(stderr=True, highlight=False).print(  # stdout stays -o's alone
                f"job {job_id}: priority {changed['priority_class']} ({changed['priority']})")
        show(lambda: client.job(job_id), _job_detail, output, console, watch, interval)


def _job_detail(j: dict[str, Any], wide: bool) -> RenderableType:
    info = Table.grid(padding=(0, 2))
    placement = j["placement"] or {}
    now = time.time()
    for key, value in (
        ("job", f"{j['id']} {escape(j['name'])} ({j['kind']}, tenant {j['tenant']})"),
        ("state", _job_state(j) + (f" (stopping: {j['stopping']})" if j["stopping"]
                                   else "")),
        ("reason", _waiting(j["waiting"]) if j["waiting"] else escape(j["reason"])),
        *_waiting_numbers(j["waiting"]),
        ("queue", f"{j['queue']}, priority {j['priority_class']} ({j['priority']})"
         + (f", position {j['queue_position']}" if j["queue_position"] else "")),
        *([("start", _job_start(j, now))] if j["state"] == "QUEUED" else [
            ("started", _when(j["started_at"], now)), ("ended", _when(j["finished_at"], now)),
            ("elapsed", _elapsed(j, now))]),
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
    events = Table(title="events", box=None, header_style="bold", title_justify="left")
    for column in ("TIME", "KIND", "TRANSITION", "BY", "WHY"):
        events.add_column(column, no_wrap=column != "WHY")
    for e in j["events"]:
        moved = f"{e['from_state'] or ''} -> {e['to_state']}" if e["kind"] == "transition" \
            else ""
        events.add_row(time.strftime("%H:%M:%S", time.localtime(e["at"])), e["kind"], moved,
                       e["actor"], escape(e["reason"]))
    parts: list[RenderableType] = [info, events]
    if j.get("attempts"):
        parts.append(_attempts(j["attempts"], now))
    if j.get("causes"):
        parts.append(_causes(j["causes"]))
    if j.get("stragglers"):
        parts.append(_stragglers(j["stragglers"]))
    if j.get("goodput"):
        parts.append(_goodput_table("goodput (rank-seconds)", [("job", j["goodput"])]))
    return Group(*parts)


def _stragglers(stragglers: list[dict[str, Any]]) -> Table:
    """The ranks the run flagged as stragglers, and when they recovered."""
    table = Table(title="stragglers", box=None, header_style="bold", title_justify="left")
    for column in ("TIME", "RANK", "STEP", "WHAT"):
        table.add_column(column, no_wrap=True)
    for e in stragglers:
        what = (f"flagged: {escape(e['section'] or '?')} at {e['score']:.2f} of the fastest "
                f"rank for {e['steps']} log steps" if e["event"] == "straggler"
                else f"cleared: {e['score']:.2f}")
        table.add_row(time.strftime("%H:%M:%S", time.localtime(e["at"])), str(e["rank"]),
                      str(e["step"]), what)
    return table


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


def _attempts(attempts: list[dict[str, Any]], now: float) -> Table:
    """Each allocation from the accounting store: when, where, what it held and how it
    ended."""
    table = Table(title="attempts", box=None, header_style="bold", title_justify="left")
    for column in ("HOLD", "ATTEMPT", "FLAVOR", "ADMITTED", "START", "END", "ELAPSED",
                   "NODES", "GPUS", "CPUS", "OUTCOME", "CAUSE"):
        table.add_column(column, no_wrap=column != "NODES")
    for a in attempts:
        ran = "-" if a["started_at"] is None else \
            duration((a["ended_at"] if a["ended_at"] is not None else now) - a["started_at"])
        table.add_row(str(a["hold"]), "-" if a["attempt"] is None else str(a["attempt"]),
                      escape(a["flavor"]), _when(a["admitted_at"], now),
                      _when(a["started_at"], now), _when(a["ended_at"], now), ran,
                      escape(", ".join(a["nodes"])) or "-", f"{a['gpus']:g}",
                      f"{a['cpus']:g}", a["outcome"] or "(held)", escape(a["cause"] or "-"))
    return table


def _causes(causes: list[dict[str, Any]]) -> Table:
    """Why each failed attempt failed, with the log lines that show it."""
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
    return table


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


def queues(
    output: Format = OUTPUT_OPT,
    watch: bool = WATCH_OPT,
    interval: str = INTERVAL_OPT,
    server: str | None = SERVER_OPT,
    token: str | None = TOKEN_OPT,
) -> None:
    """Each queue's usage against its nominal quota, and what it borrows, per flavor."""
    with _client(server, token) as client:
        show(client.queues, _queues_table, output, console, watch, interval)


def _queues_table(rows: list[dict[str, Any]], wide: bool) -> RenderableType:
    """One row per queue, flavor and resource; ``wide``: the borrowing and lending limits."""
    if not rows:
        return "no queues"
    columns = ["QUEUE", "COHORT", "FLAVOR", "RESOURCE", "USED", "NOMINAL", "BORROWED",
               *(["BORROW LIMIT", "LEND LIMIT"] if wide else []), "PENDING", "RUNNING"]
    table = Table(box=None, header_style="bold")
    for column in columns:
        table.add_column(column, no_wrap=True, justify="left" if column in (
            "QUEUE", "COHORT", "FLAVOR", "RESOURCE") else "right")
    for q in rows:
        r = q["resource"]
        cells = {"QUEUE": q["queue"], "COHORT": q["cohort"] or "-", "FLAVOR": q["flavor"],
                 "RESOURCE": r, "USED": _num(q["used"], r), "NOMINAL": _num(q["nominal"], r),
                 "BORROWED": _num(q["borrowed"], r),
                 "BORROW LIMIT": _num(q["borrowing_limit"], r),
                 "LEND LIMIT": _num(q["lending_limit"], r), "PENDING": str(q["pending_jobs"]),
                 "RUNNING": str(q["running_jobs"])}
        table.add_row(*(cells[c] for c in columns))
    return table


def nodes(
    output: Format = OUTPUT_OPT,
    watch: bool = WATCH_OPT,
    interval: str = INTERVAL_OPT,
    server: str | None = SERVER_OPT,
    token: str | None = TOKEN_OPT,
) -> None:
    """Nodes: capacity, what is allocated on them, health state and why (admin)."""
    with _client(server, token) as client:
        show(client.nodes, _nodes_table, output, console, watch, interval)


def _nodes_table(rows: list[dict[str, Any]], wide: bool) -> RenderableType:
    """One row per node; ``wide``: its labels, its health checks' counts."""
    if not rows:
        return "no nodes"
    columns = ["NODE", "FLAVOR", *(["LABELS"] if wide else []), "GPUS", "CPUS", "MEMORY",
               "OTHER", "JOBS", "STATE", *(["HEALTH", "PASSES", "FAILURES"] if wide else []),
               "REASON"]
    table = Table(box=None, header_style="bold")
    for column in columns:
        table.add_column(column, no_wrap=column != "REASON", overflow="fold")
    for n in rows:
        cap, used = n["capacity"], n["allocated"]
        other = [r for r in cap if r not in BASE]
        gpus, cpus, memory = (f"{_num(used.get(r, 0), r)}/{_num(cap.get(r), r)}" for r in BASE)
        cells = {"NODE": n["name"], "FLAVOR": n["flavor"],
                 "LABELS": ",".join(f"{k}={v}" for k, v in n["labels"].items()),
                 "GPUS": gpus, "CPUS": cpus, "MEMORY": memory,
                 "OTHER": " ".join(f"{r}={_num(used.get(r, 0), r)}/{_num(cap[r], r)}"
                                   for r in other) or "-",
                 "JOBS": ",".join(map(str, n["jobs"])) or "-", "STATE": _node_state(n),
                 "HEALTH": n["health"], "PASSES": str(n["passes"]),
                 "FAILURES": str(n["failures"]), "REASON": escape(_node_reason(n))}
        table.add_row(*(cells[c] for c in columns))
    return table


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
    output: Format = OUTPUT_OPT,
    server: str | None = SERVER_OPT,
    token: str | None = TOKEN_OPT,
) -> None:
    """One node: state, cordon, drain, repair flag, last checks with their figures and
    durations, and its history (admin)."""
    with _client(server, token) as client:
        show(lambda: client.node(name), _node_detail, output, console)


def _node_detail(n: dict[str, Any], _wide: bool) -> RenderableType:
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
    parts: list[RenderableType] = [info]
    for report in n["last_checks"]:
        verdict = "pass" if report["passed"] else "[red]FAIL[/]"
        checks = _checks_table(f"last {report['check_set']} checks: {verdict}, "
                               f"{duration(report['duration_s'])}, {_clock(report['at'])}")
        for r in report["results"]:
            _check_row(checks, r)
        parts.append(checks)
    history = Table(title="history", box=None, header_style="bold", title_justify="left")
    for column in ("TIME", "KIND", "CHANGE", "BY", "WHY"):
        history.add_column(column, no_wrap=column != "WHY", overflow="fold")
    for e in n["history"]:
        change = f"{e['from_state'] or ''} -> {e['to_state']}" if e["from_state"] != \
            e["to_state"] else ""
        history.add_row(_clock(e["at"]), e["kind"], change, e["actor"], escape(e["reason"]))
    parts.append(history if n["history"] else "no history")
    return Group(*parts)


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
    amounts: list[str] | None = typer.Argument(None, help="Nominal quota to change: gpu=8 "
                                               "cpu=64 memory=1TiB example.com/gpu=4."),
    borrow: list[str] = typer.Option([], "--borrowing-limit", help="e.g. gpu=4"),
    lend: list[str] = typer.Option([], "--lending-limit", help="e.g. gpu=2"),
    replace: bool = typer.Option(False, "--replace", help="Replace the whole quota of the "
                                 "flavor: what is not given is not limited (the old "
                                 "behaviour)."),
    output: Format = OUTPUT_OPT,
    server: str | None = SERVER_OPT,
    token: str | None = TOKEN_OPT,
) -> None:
    """Change a queue's quota of one flavor while the server runs (admin; next cycle on):
    only the amounts given, each resource of the nominal quota and of each limit apart; the
    rest stays. Prints the resulting quota."""
    body: dict[str, Any] = _parse_amounts(amounts, "amounts") if amounts else {}
    if borrow:
        body["borrowing_limit"] = _parse_amounts(borrow, "--borrowing-limit")
    if lend:
        body["lending_limit"] = _parse_amounts(lend, "--lending-limit")
    if not body:
        raise ConfigError("amounts", None, "give an amount (gpu=8) or --borrowing-limit or "
                          "--lending-limit")
    with _client(server, token) as client:
        result = client.set_quota(queue, flavor, body, replace=replace)
    show(lambda: result, _quota_table, output, console, False, "2s")


def _quota_table(q: dict[str, Any], _wide: bool) -> Table:
    """One line per resource the quota names: nominal, borrowing and lending limits."""
    quota = q["quota"]
    limits = {k: quota.get(k) or {} for k in ("borrowing_limit", "lending_limit")}
    names = [k for k in quota if k not in limits]
    names += sorted({r for v in limits.values() for r in v} - set(names))
    table = Table(title=f"quota of queue {escape(q['queue'])} on {escape(q['flavor'])}",
                  box=None, header_style="bold", title_justify="left")
    for column in ("RESOURCE", "NOMINAL", "BORROW LIMIT", "LEND LIMIT"):
        table.add_column(column, justify="left" if column == "RESOURCE" else "right",
                         no_wrap=True)
    for name in names:
        table.add_row(escape(name), _num(quota.get(name), name),
                      *[_num(limits[k].get(name), name) for k in limits])
    return table


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
    output: Format = OUTPUT_OPT,
    server: str | None = SERVER_OPT,
    token: str | None = TOKEN_OPT,
) -> None:
    """Admin actions: quota changes, cordons, cancels, holds and priority changes of other
    tenants' jobs (admin)."""
    with _client(server, token) as client:
        show(lambda: client.audit(after, limit), _audit_table, output, console)


def _audit_table(rows: list[dict[str, Any]], _wide: bool) -> RenderableType:
    if not rows:
        return "no admin actions"
    table = Table(box=None, header_style="bold")
    for column in ("ID", "TIME", "ACTOR", "ACTION", "TARGET", "DETAIL"):
        table.add_column(column, justify="right" if column == "ID" else "left",
                         no_wrap=column != "DETAIL", overflow="fold")
    for a in rows:
        detail = ", ".join(f"{k}={v}" for k, v in a["detail"].items())
        table.add_row(str(a["id"]), _clock(a["at"]), a["actor"], a["action"],
                      escape(a["target"]), escape(detail))
    return table


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
    return duration(seconds)


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
