"""The web dashboard's pages, rendered on the server (Jinja2), behind the API's tokens.

A browser logs in once with its token (`session.py`: an HttpOnly cookie); a script or a
benchmark may send ``Authorization: Bearer`` instead. A tenant sees its own jobs and queues
only (another tenant's job page is a 404, as in the API); nodes are the admin's. The pages'
scripts read the API (`/v1/...`) with the same session, for the live parts of a job's page.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from stoker.control.plane import Conflict, ControlPlane
from stoker.control.states import TERMINAL
from stoker.control.store import JOB_SORTS, JobRecord
from stoker.control.train_run import RunMetrics
from stoker.server.auth import Principal, TokenBook
from stoker.server.dashboard.format import FILTERS
from stoker.server.logs import log_source, read_tail
from stoker.server.session import (
    csrf_ok,
    csrf_token,
    end_session,
    safe_next,
    session_token,
    start_session,
)
from stoker.spec.api import JobState, NodeView, QueueUsage

TEMPLATES = Path(__file__).parent / "templates"
PAGE_SIZE = 50
LOG_TAIL = 16 << 10
WINDOWS = {"all": None, "24h": 86400.0, "7d": 7 * 86400.0, "30d": 30 * 86400.0}
MAX_ID = (1 << 63) - 1
HISTORY_WINDOWS = {"1h": 3600.0, "24h": 86400.0, "7d": 7 * 86400.0, "30d": 30 * 86400.0}
HISTORY_BUCKETS = 120  # the Queues page's history: points per chart
GROUPS = ("tenant", "queue", "flavor")  # the Usage page's accounting, grouped by


@dataclass(frozen=True)
class NodeGroup:
    """The nodes under one topology domain (its label at each level, outermost first)."""

    path: tuple[str, ...]
    nodes: list[NodeView]

    @property
    def capacity(self) -> dict[str, float]:
        return _sum(n.capacity for n in self.nodes)

    @property
    def allocated(self) -> dict[str, float]:
        return _sum(n.allocated for n in self.nodes)


def _sum(amounts: Iterable[dict[str, float]]) -> dict[str, float]:
    total: dict[str, float] = {}
    for a in amounts:
        for k, v in a.items():
            total[k] = total.get(k, 0.0) + v
    return total


@dataclass
class CohortTotal:
    """A cohort's member queues together, on one flavor's resource: what they are given
    (``nominal``), hold (``used``) and hold above their own quotas (``borrowed``: lent to
    them by other members, or by the cohort's parent)."""

    cohort: str
    flavor: str
    resource: str
    queues: int = 0
    nominal: float = 0.0
    used: float = 0.0
    borrowed: float = 0.0
    unlimited: bool = False  # a member has no nominal quota of it

    @property
    def idle(self) -> float:
        return max(0.0, self.nominal - self.used)


def cohort_totals(rows: Iterable[QueueUsage]) -> list[CohortTotal]:
    """The queue rows of each cohort summed, by cohort, flavor and resource."""
    totals: dict[tuple[str, str, str], CohortTotal] = {}
    for r in rows:
        if r.cohort is None:
            continue
        key = (r.cohort, r.flavor, r.resource)
        t = totals.setdefault(key, CohortTotal(*key))
        t.queues += 1
        t.used += r.used
        t.borrowed += r.borrowed
        if r.nominal is None:
            t.unlimited = True
        else:
            t.nominal += r.nominal
    return [totals[k] for k in sorted(totals)]


def day_start(day: str, key: str, default: float | None, days_after: int = 0) -> float | None:
    """The UTC start of ``day`` (YYYY-MM-DD) plus ``days_after`` days, as epoch seconds;
    ``default`` when it is empty. A bad date is a 422 naming the field."""
    if not day:
        return default
    try:
        start = datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise HTTPException(422, f"{key}: {day!r} is not a date (YYYY-MM-DD)") from None
    return (start + timedelta(days=days_after)).timestamp()


def topology_groups(nodes: list[NodeView], levels: tuple[str, ...]) -> list[NodeGroup]:
    """The nodes grouped by their innermost topology domain, domains in label order; one
    group of all when the cluster has no topology."""
    groups: dict[tuple[str, ...], list[NodeView]] = {}
    for node in nodes:
        path = tuple(str(node.labels.get(level, "-")) for level in levels)
        groups.setdefault(path, []).append(node)
    return [NodeGroup(path, members) for path, members in sorted(groups.items())]


@dataclass(frozen=True)
class Viewer:
    who: Principal
    csrf: str


def environment() -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update(FILTERS)
    return env


def viewer(request: Request) -> Viewer | None:
    """Who is asking: the Bearer token's principal, else the session cookie's."""
    header = request.headers.get("authorization", "")
    scheme, _, credentials = header.partition(" ")
    token = credentials.strip() if scheme.lower() == "bearer" else \
        session_token(request, reads_only=False)
    if not token:
        return None
    tokens: TokenBook = request.app.state.tokens
    who = tokens.principal(token)
    return None if who is None else Viewer(who, csrf_token(token))


def dashboard_routes(plane: ControlPlane, run_metrics: RunMetrics) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    env = environment()

    def render(request: Request, template: str, me: Viewer | None, status: int = 200,
               **context: Any) -> HTMLResponse:
        page = env.get_template(template).render(
            request=request, me=me, path=request.url.path, **context)
        return HTMLResponse(page, status_code=status,
                            headers={"Cache-Control": "no-store",
                                     "X-Frame-Options": "DENY",
                                     "Referrer-Policy": "same-origin"})

    def to_login(request: Request) -> RedirectResponse:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse("/login?" + urlencode({"next": target}), status_code=303)

    def not_found(request: Request, me: Viewer, message: str) -> HTMLResponse:
        return render(request, "error.html", me, status=404, title="Not found",
                      message=message)

    def visible_job(job_id: int, me: Viewer) -> JobRecord | None:
        job = plane.store.get_job(job_id) if 0 < job_id <= MAX_ID else None
        return job if job is not None and me.who.may_see(job.tenant) else None

    @router.get("/login", response_model=None)
    def login_form(request: Request, next: str = "/") -> Response:
        if viewer(request) is not None:
            return RedirectResponse(safe_next(next), status_code=303)
        return render(request, "login.html", None, next=safe_next(next), error=None)

    @router.post("/login", response_model=None)
    async def login(request: Request) -> Response:
        form = parse_qs((await request.body()).decode(errors="replace"))
        token = (form.get("token") or [""])[0].strip()
        target = safe_next((form.get("next") or ["/"])[0])
        tokens: TokenBook = request.app.state.tokens
        if not token or tokens.principal(token) is None:
            return render(request, "login.html", None, status=401, next=target,
                          error="That token is not valid here.")
        response = RedirectResponse(target, status_code=303)
        start_session(response, request, token)
        return response

    @router.post("/logout", response_model=None)
    async def logout(request: Request) -> Response:
        form = parse_qs((await request.body()).decode(errors="replace"))
        me = viewer(request)
        if me is not None and not csrf_ok_for(request, form):
            raise HTTPException(403, "the form is stale: reload the page")
        response = RedirectResponse("/login", status_code=303)
        end_session(response)
        return response

    def csrf_ok_for(request: Request, form: dict[str, list[str]]) -> bool:
        token = session_token(request, reads_only=False)
        presented = form.get("csrf") or [""]
        return token is not None and csrf_ok(token, presented[0])

    @router.get("/", response_model=None)
    def jobs_page(request: Request, state: str = "",
                  queue: Annotated[str, Query(max_length=200)] = "",
                  page: Annotated[int, Query(ge=1, le=10**9)] = 1,
                  sort: str = "id", order: str = "desc") -> Response:
        me = viewer(request)
        if me is None:
            return to_login(request)
        states: set[JobState] | None = None
        if state == "active":
            states = set(JobState) - TERMINAL
        elif state:
            if state not in JobState.__members__:
                raise HTTPException(422, f"unknown state {state!r}: one of active, "
                                    + ", ".join(JobState.__members__))
            states = {JobState(state)}
        if sort not in JOB_SORTS or order not in ("asc", "desc"):
            raise HTTPException(422, f"sort by one of {', '.join(JOB_SORTS)}, order asc or "
                                "desc")
        records, total = plane.store.page_jobs(
            limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE,
            tenant=None if me.who.admin else me.who.name, states=states,
            queue=queue or None, newest_first=order == "desc", sort=sort)
        pages = max(1, math.ceil(total / PAGE_SIZE))

        def link(to: int, by: str = sort, way: str = order) -> str:
            query = {k: v for k, v in (("state", state), ("queue", queue)) if v}
            return "/?" + urlencode({**query, "sort": by, "order": way, "page": to})

        def sort_link(by: str) -> str:  # a column's header: by it, flipped when already so
            return link(1, by, "asc" if (by, order) == (sort, "desc") else "desc")

        queues = sorted(plane.cluster.queues if me.who.admin else me.who.queues)
        return render(request, "jobs.html", me, title="Jobs", jobs=plane.job_views(records),
                      total=total, page=page, pages=pages, state=state, queue=queue,
                      states=["active", *JobState.__members__], queues=queues,
                      prev=link(page - 1) if page > 1 else None,
                      next=link(page + 1) if page < pages else None, now=time.time(),
                      sort=sort, order=order, sort_link=sort_link)

    @router.get("/jobs/{job_id}", response_model=None)
    def job_page(request: Request, job_id: int,
                 rank: Annotated[int | None, Query(ge=0)] = None) -> Response:
        me = viewer(request)
        if me is None:
            return to_login(request)
        job = visible_job(job_id, me)
        if job is None:
            return not_found(request, me, f"no job {job_id}")
        detail = plane.job_detail(job)
        detail.progress = run_metrics.progress(job)
        detail.checkpoints = run_metrics.checkpoints(job)
        if rank is not None and rank >= detail.ranks:
            return not_found(request, me, f"job {job_id} has no rank {rank}")
        path, prefix = log_source(plane, job, detail.kind, rank)
        log, log_offset = read_tail(plane.jobs_dir, path, LOG_TAIL, prefix)
        may_cancel = (me.who.admin or job.tenant == me.who.name) and job.state not in TERMINAL
        return render(request, "job.html", me, title=f"Job {job.id}", job=detail, log=log,
                      log_offset=log_offset, log_rank=rank, may_cancel=may_cancel,
                      over=job.state in TERMINAL, now=time.time())

    @router.post("/jobs/{job_id}/cancel", response_model=None)
    async def cancel(request: Request, job_id: int) -> Response:
        me = viewer(request)
        if me is None:
            return to_login(request)
        form = parse_qs((await request.body()).decode(errors="replace"))
        if not csrf_ok_for(request, form):
            raise HTTPException(403, "the form is stale: reload the page")
        if visible_job(job_id, me) is None:
            return not_found(request, me, f"no job {job_id}")
        try:
            plane.cancel(job_id, me.who.name)
        except Conflict as e:
            raise HTTPException(409, str(e)) from None
        return RedirectResponse(f"/jobs/{job_id}", status_code=303)

    @router.get("/queues", response_model=None)
    def queues_page(request: Request, window: str = "24h") -> Response:
        me = viewer(request)
        if me is None:
            return to_login(request)
        if window not in HISTORY_WINDOWS:
            raise HTTPException(422, f"unknown window {window!r}: one of "
                                + ", ".join(HISTORY_WINDOWS))
        queues = None if me.who.admin else me.who.queues
        rows = plane.queue_usage(queues)
        history = plane.queue_history(queues, HISTORY_WINDOWS[window], HISTORY_BUCKETS)
        return render(request, "queues.html", me, title="Queues", rows=rows,
                      cohorts=cohort_totals(rows), window=window,
                      windows=list(HISTORY_WINDOWS), history=history.model_dump(mode="json"))

    @router.get("/nodes", response_model=None)
    def nodes_page(request: Request) -> Response:
        me = viewer(request)
        if me is None:
            return to_login(request)
        nodes = plane.node_views() if me.who.admin else []
        levels = plane.cluster.topology
        return render(request, "nodes.html", me, title="Nodes", nodes=nodes, levels=levels,
                      groups=topology_groups(nodes, levels))

    @router.get("/usage", response_model=None)
    def usage_page(request: Request, window: str = "all", by: str = "tenant",
                   first: Annotated[str, Query(alias="from")] = "",
                   last: Annotated[str, Query(alias="to")] = "") -> Response:
        me = viewer(request)
        if me is None:
            return to_login(request)
        if window not in WINDOWS:
            raise HTTPException(422, f"unknown window {window!r}: one of "
                                + ", ".join(WINDOWS))
        if by not in GROUPS:
            raise HTTPException(422, f"unknown grouping {by!r}: one of " + ", ".join(GROUPS))
        span = WINDOWS[window]
        now = time.time()
        since = None if span is None else now - span
        if first or last:  # whole UTC days, both included
            since, now = day_start(first, "from", None), day_start(last, "to", now, 1)
            if since is not None and since >= now:
                raise HTTPException(422, "'to' must not be before 'from'")
        tenant = None if me.who.admin else me.who.name
        report = plane.usage(tenant, since)
        accounting = plane.accounting(tenant, by, since, now)
        return render(request, "usage.html", me, title="Usage", report=report,
                      accounting=accounting, by=by, groups=GROUPS,
                      window=window, windows=list(WINDOWS), first=first, last=last)

    return router
