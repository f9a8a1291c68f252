"""The REST API (FastAPI; OpenAPI at /openapi.json, /docs, /redoc) and Prometheus /metrics.

Every route but /healthz needs ``Authorization: Bearer TOKEN``; /metrics and the API docs need
none when ``cluster.api.public_metrics`` / ``public_docs`` say so. A tenant sees and acts on
its own jobs only (another tenant's job is a 404, as if it did not exist) and, on /metrics,
its own queues only; quotas, nodes, the config and the audit log are the admin's.

Every error answer is an `Error` and every status a route returns is declared in the OpenAPI.
A body over ``cluster.api.max_body_bytes`` is a 413; a rejected body is a 422 with field errors
(a NUL, a lone surrogate or a non-finite number anywhere in it included) and stores nothing.
``POST /v1/jobs`` with an ``Idempotency-Key`` returns the tenant's first job with that key (200)
when the body is the same, and is a 409 when it is not.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

import stoker
from stoker.control import job_ops
from stoker.control.plane import Conflict, ControlPlane
from stoker.control.states import TERMINAL
from stoker.control.store import JobRecord
from stoker.control.train_run import RunMetrics, train_run
from stoker.server.auth import Principal, TokenBook
from stoker.server.dashboard import dashboard_routes
from stoker.server.docs import STATIC, redoc_html, swagger_html
from stoker.server.edge import BodyLimit, clean_body, errors, json_errors, printable
from stoker.server.logs import log_source, read_chunk
from stoker.server.metrics import Metrics
from stoker.server.session import session_token
from stoker.spec.api import (
    AccountingReport,
    AuditView,
    Cordon,
    Drain,
    JobAction,
    JobDetail,
    JobState,
    JobSubmission,
    JobView,
    LogChunk,
    MetricsPage,
    NodeDetail,
    NodeView,
    PriorityChange,
    QueueHistory,
    QueueUsage,
    QuotaUpdate,
    Requeue,
    UsageReport,
    WhoAmI,
)
from stoker.spec.errors import ConfigError, KeyedValueError

bearer = HTTPBearer(auto_error=False)


def principal(request: Request,
              cred: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Principal:
    """The Bearer token's principal; on a read (GET), else the browser session's."""
    tokens: TokenBook = request.app.state.tokens
    token = cred.credentials if cred is not None else session_token(request)
    who = tokens.principal(token) if token is not None else None
    if who is None:
        raise HTTPException(401, "missing or invalid API token",
                            headers={"WWW-Authenticate": "Bearer"})
    return who


def admin(who: Annotated[Principal, Depends(principal)]) -> Principal:
    if not who.admin:
        raise HTTPException(403, "only the admin may do this")
    return who


def docs_reader(request: Request, cred: Annotated[HTTPAuthorizationCredentials | None,
                                                  Depends(bearer)]) -> Principal | None:
    """The principal, or None when the admin made the API docs public."""
    return None if request.app.state.api.public_docs else principal(request, cred)


def scraper(request: Request, cred: Annotated[HTTPAuthorizationCredentials | None,
                                              Depends(bearer)]) -> Principal | None:
    """The principal, or None when the admin made /metrics public."""
    return None if request.app.state.api.public_metrics else principal(request, cred)


Who = Annotated[Principal, Depends(principal)]
Admin = Annotated[Principal, Depends(admin)]
Docs = Annotated[Principal | None, Depends(docs_reader)]
Scraper = Annotated[Principal | None, Depends(scraper)]
Clean = Annotated[None, Depends(clean_body)]  # after Who/Admin: authentication comes first

JobSort = Literal["id", "name", "tenant", "queue", "state", "priority", "started_at",
                  "finished_at"]  # store.JOB_SORTS, for the API's schema
MAX_ID = (1 << 63) - 1  # ids and offsets are signed 64-bit integers in the store and the OS
IdempotencyKey = Annotated[str | None, Header(
    alias="Idempotency-Key", min_length=1, max_length=128, pattern=r"^[!-~]+$",
    description="Any printable ASCII token (a UUID): a retry with the same key and body "
                "returns the first job (200); the same key with another body is a 409.")]

AUTH = errors(401, 413)  # every route needing a token


def create_app(plane: ControlPlane, tokens: TokenBook, run_plane: bool = True) -> FastAPI:
    """The app over ``plane``; with ``run_plane`` its lifespan starts and closes the plane."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if run_plane:
            plane.start()
        try:
            yield
        finally:
            if run_plane:
                plane.close()

    api = plane.cluster.api
    app = FastAPI(title="Stoker control plane", version=stoker.__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.tokens = tokens
    app.state.api = api
    metrics = Metrics(plane)
    run_metrics = RunMetrics(plane.jobs_dir)
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]

    @app.middleware("http")
    async def count(request: Request,
                    call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        metrics.requests.labels(request.method, str(response.status_code)).inc()
        return response

    app.add_middleware(BodyLimit, max_bytes=api.max_body_bytes)  # outermost: before all else

    def own_job(job_id: int, who: Principal) -> JobRecord:
        job = plane.store.get_job(job_id) if 0 < job_id <= MAX_ID else None
        if job is None or not who.may_see(job.tenant):
            raise HTTPException(404, f"no job {job_id}")
        return job

    @app.get("/healthz", tags=["server"], responses=errors(413))
    def healthz() -> dict[str, Any]:
        """Alive, and who leads: ``role`` is this server's (leader or standby); on PostgreSQL
        ``leader`` is the leading server as last seen (``server``, ``url``, ``since``,
        ``term``), ``first_cycle_at`` when its first reconcile cycle as leader ended."""
        return {"ok": True, "version": stoker.__version__, **plane.status()}

    @app.get("/metrics", tags=["server"], response_class=PlainTextResponse,
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
                        **json_errors(401, 413)})
    def prometheus(who: Scraper) -> PlainTextResponse:
        queues = None if who is None or who.admin else who.queues
        return PlainTextResponse(metrics.render(queues), media_type="text/plain; version=0.0.4")

    @app.get("/openapi.json", tags=["server"], include_in_schema=False)
    def openapi(_who: Docs) -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", tags=["server"], include_in_schema=False)
    def docs(_who: Docs) -> HTMLResponse:
        return HTMLResponse(swagger_html(app.title, app.openapi()))

    @app.get("/redoc", tags=["server"], include_in_schema=False)
    def redoc(_who: Docs) -> HTMLResponse:
        return HTMLResponse(redoc_html(app.title, app.openapi()))

    @app.get("/v1/whoami", tags=["server"], responses=AUTH)
    def whoami(who: Who) -> WhoAmI:
        return WhoAmI(name=who.name, admin=who.admin, queues=sorted(who.queues))

    @app.post("/v1/jobs", status_code=201, tags=["jobs"],
              responses={200: {"model": JobView, "description": "A retried submit (same "
                               "Idempotency-Key, same body): the first job"},
                         **errors(400, 401, 403, 409, 413, 422)})
    def submit(body: JobSubmission, who: Who, _clean: Clean, response: Response,
               key: IdempotencyKey = None) -> JobView:
        if body.job.queue in plane.cluster.queues and not who.may_use(body.job.queue):
            raise HTTPException(403, f"queue {body.job.queue!r} is not one of yours "
                                f"({', '.join(sorted(who.queues))})")
        try:
            job, created = plane.submit(who.name, body, key, admin=who.admin)
        except ConfigError as e:
            parts = key_parts(e.key)  # the job's keys, or the submission's own code
            where = parts if parts == ["code"] else ["job", *parts]
            raise _unprocessable(["body", *where], e.reason) from None
        except Conflict as e:
            raise HTTPException(409, str(e)) from None
        if not created:
            response.status_code = 200
        return plane.job_views([job])[0]

    @app.get("/v1/jobs", tags=["jobs"], responses=errors(401, 413, 422))
    def list_jobs(who: Who, response: Response,
                  state: Annotated[list[JobState] | None, Query()] = None,
                  active: bool = False, queue: Annotated[str | None, Query(max_length=200)] = None,
                  limit: Annotated[int | None, Query(ge=1, le=10_000)] = None,
                  offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
                  order: Annotated[Literal["asc", "desc"], Query()] = "asc",
                  sort: Annotated[JobSort, Query()] = "id") -> list[JobView]:
        """The caller's jobs (the admin: every job) in ``sort`` order, then id (``order=desc``:
        descending, e.g. newest first; empty values last), optionally in some states or one
        queue. With ``limit``, one page from ``offset``; the ``X-Total-Count`` header says how
        many jobs match in all."""
        states = set(state) if state else None
        if active:
            states = (states or set(JobState)) - TERMINAL
        tenant = None if who.admin else who.name
        if limit is None and offset == 0 and order == "asc" and queue is None and sort == "id":
            jobs = plane.store.list_jobs(tenant=tenant, states=states)
            total = len(jobs)
        else:
            jobs, total = plane.store.page_jobs(limit=limit or MAX_ID, offset=offset,
                                                tenant=tenant, states=states, queue=queue,
                                                newest_first=order == "desc", sort=sort)
        response.headers["X-Total-Count"] = str(total)
        return plane.job_views(jobs)

    @app.get("/v1/jobs/{job_id}", tags=["jobs"], responses=errors(401, 404, 413, 422))
    def get_job(job_id: int, who: Who) -> JobDetail:
        """A job, its events, why each failed attempt failed, its goodput and, for a training
        job that has recorded a step, its ``progress`` (step, loss, tokens/s, MFU, ETA) and
        its ``checkpoints``."""
        job = own_job(job_id, who)
        detail = plane.job_detail(job)
        detail.progress = run_metrics.progress(job)
        detail.checkpoints = run_metrics.checkpoints(job)
        return detail

    @app.get("/v1/jobs/{job_id}/metrics", tags=["jobs"],
             responses=errors(401, 403, 404, 413, 422))
    def job_metrics(job_id: int, who: Who,
                    since: Annotated[int, Query(ge=-1, le=MAX_ID)] = 0,
                    revision: Annotated[str | None, Query(max_length=64,
                                                          pattern=r"^[0-9a-f]+:[0-9]+$")] = None,
                    limit: Annotated[int, Query(ge=1, le=10_000)] = 5000,
                    field: Annotated[list[str] | None, Query(max_length=64)] = None
                    ) -> MetricsPage:
        """A training job's metrics.jsonl records of the steps after ``since``: one per step
        (the latest attempt's), by step, at most ``limit``, each with only the keys in
        ``field`` (repeated; ``step`` always) when given. Poll with the answer's
        ``next_since`` and ``revision``: each poll reads only what the run appended since the
        last one, and steps a restart rewrote since ``revision`` come again."""
        job = own_job(job_id, who)
        run = train_run(job)
        if run is None:
            raise HTTPException(404, f"job {job_id} is not a training job")
        try:
            got = run_metrics.read(job, run, since, revision, limit, field)
        except PermissionError as e:
            raise HTTPException(403, str(e)) from None
        return MetricsPage(records=got.records, since=got.since, next_since=got.next_since,
                           more=got.more, revision=got.revision, last_step=got.last_step,
                           steps=run.steps, done=job.state in TERMINAL and not got.more)

    @app.post("/v1/jobs/{job_id}/cancel", tags=["jobs"],
              responses=errors(401, 404, 409, 413, 422))
    def cancel(job_id: int, who: Who) -> JobView:
        own_job(job_id, who)
        try:
            job = plane.cancel(job_id, who.name)
        except Conflict as e:
            raise HTTPException(409, str(e)) from None
        return plane.job_views([job])[0]

    @app.post("/v1/jobs/{job_id}/hold", tags=["jobs"],
              responses=errors(401, 404, 409, 413, 422))
    def hold(job_id: int, who: Who, _clean: Clean, body: JobAction | None = None) -> JobView:
        """Keep a queued job from being scheduled until it is released (Slurm's hold)."""
        own_job(job_id, who)
        with _job_errors():
            job = job_ops.hold(plane, job_id, who.name, body.reason if body else "")
        return plane.job_views([job])[0]

    @app.post("/v1/jobs/{job_id}/release", tags=["jobs"],
              responses=errors(401, 404, 409, 413, 422))
    def release(job_id: int, who: Who) -> JobView:
        """Let a held job be scheduled again."""
        own_job(job_id, who)
        with _job_errors():
            job = job_ops.release(plane, job_id, who.name)
        return plane.job_views([job])[0]

    @app.post("/v1/jobs/{job_id}/requeue", tags=["jobs"],
              responses=errors(401, 404, 409, 413, 422))
    def requeue(job_id: int, who: Who, _clean: Clean, body: Requeue | None = None) -> JobView:
        """Stop an admitted job as a preemption does (its checkpoints kept, no restart
        counted) and queue it again; ``hold``: held there until released."""
        own_job(job_id, who)
        body = body or Requeue()
        with _job_errors():
            job = job_ops.requeue(plane, job_id, who.name, body.reason, body.hold)
        return plane.job_views([job])[0]

    @app.put("/v1/jobs/{job_id}/priority", tags=["jobs"],
             responses=errors(401, 403, 404, 409, 413, 422))
    def set_priority(job_id: int, body: PriorityChange, who: Who, _clean: Clean) -> JobView:
        """Move a job to another priority class: its tenant may lower it, the admin may set
        any (audited)."""
        own_job(job_id, who)
        with _job_errors():
            job = job_ops.set_priority(plane, job_id, who.name, who.admin, body.priority_class)
        return plane.job_views([job])[0]

    @app.get("/v1/jobs/{job_id}/logs", tags=["jobs"],
             responses=errors(401, 403, 404, 413, 422))
    def logs(job_id: int, who: Who, rank: Annotated[int | None, Query(ge=0)] = None,
             offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
             limit: Annotated[int, Query(ge=1, le=1 << 20)] = 1 << 16) -> LogChunk:
        job = own_job(job_id, who)
        view = plane.job_views([job])[0]
        if rank is not None and rank >= view.ranks:
            raise HTTPException(404, f"job {job_id} has no rank {rank}")
        path, prefix = log_source(plane, job, view.kind, rank)
        try:
            text, next_offset = read_chunk(plane.jobs_dir, path, offset, limit, prefix)
        except PermissionError as e:
            raise HTTPException(403, str(e)) from None
        done = job.state in TERMINAL and next_offset == offset
        return LogChunk(text=text, offset=offset, next_offset=next_offset, done=done)

    @app.get("/v1/queues", tags=["queues"], responses=AUTH)
    def queues(who: Who) -> list[QueueUsage]:
        return plane.queue_usage(None if who.admin else who.queues)

    @app.get("/v1/queues/history", tags=["queues"], responses=errors(401, 413, 422))
    def queue_history(
        who: Who,
        window: Annotated[float, Query(ge=60, le=90 * 86400)] = 86400,
        buckets: Annotated[int, Query(ge=1, le=1000)] = 120,
    ) -> QueueHistory:
        """What each queue held of each flavor's GPUs and CPUs over the last ``window``
        seconds, as the mean per bucket, beside its nominal quota (as configured now): every
        queue for the admin, a tenant's own queues only."""
        return plane.queue_history(None if who.admin else who.queues, window, buckets)

    @app.get("/v1/usage", tags=["queues"], responses=errors(401, 413, 422))
    def usage(who: Who, since: Annotated[float | None, Query(ge=0, le=1e11)] = None
              ) -> UsageReport:
        """Goodput and allocated time per cluster, tenant and queue, from ``since`` (epoch
        seconds; none: all time): every tenant's for the admin, a tenant's own jobs only."""
        return plane.usage(None if who.admin else who.name, since)

    @app.get("/v1/usage/accounting", tags=["queues"], responses=errors(401, 413, 422))
    def accounting(
        who: Who, by: Literal["tenant", "queue", "flavor", "job"] = "tenant",
        start: Annotated[float | None, Query(alias="from", ge=0, le=1e11)] = None,
        end: Annotated[float | None, Query(alias="to", ge=0, le=1e11)] = None,
    ) -> AccountingReport:
        """GPU-hours and CPU-hours of the jobs' allocations grouped ``by`` tenant, queue,
        flavor or job over [``from``, ``to``) (epoch seconds; none: all time, up to now),
        split into productive and lost to preemption, to failures and other, with their cost
        from the cluster's ``[prices]``: every tenant's for the admin, a tenant's own only."""
        if start is not None and end is not None and end <= start:
            raise HTTPException(422, "'to' must be after 'from'")
        return plane.accounting(None if who.admin else who.name, by, start, end)

    @app.put("/v1/queues/{queue}/quotas/{flavor}", tags=["queues"],
             responses=errors(400, 401, 403, 404, 413, 422))
    def set_quota(queue: str, flavor: str, quota: QuotaUpdate, who: Admin,
                  _clean: Clean) -> dict[str, Any]:
        """Replace a queue's quota of one flavor: what the body leaves out is not limited."""
        with _quota_errors(queue):
            record = plane.set_quota(queue, flavor, quota, who.name)
        return {"queue": record.queue, "flavor": record.flavor, "quota": record.quota}

    @app.patch("/v1/queues/{queue}/quotas/{flavor}", tags=["queues"],
               responses=errors(400, 401, 403, 404, 413, 422))
    def change_quota(queue: str, flavor: str, quota: QuotaUpdate, who: Admin,
                     _clean: Clean) -> dict[str, Any]:
        """Change only the amounts the body gives (each resource of the nominal quota and of
        each limit apart) of a queue's quota of one flavor; the rest stays. Returns the
        whole quota that results."""
        with _quota_errors(queue):
            record = plane.change_quota(queue, flavor, quota, who.name)
        return {"queue": record.queue, "flavor": record.flavor, "quota": record.quota}

    @app.get("/v1/nodes", tags=["nodes"], responses=errors(401, 403, 413))
    def nodes(_who: Admin) -> list[NodeView]:
        return plane.node_views()

    @app.put("/v1/nodes/{name}/cordon", tags=["nodes"],
             responses=errors(400, 401, 403, 404, 413, 422))
    def cordon(name: str, body: Cordon, who: Admin, _clean: Clean) -> NodeView:
        if plane.store.set_cordon(name, body.cordoned, body.reason, who.name) is None:
            raise HTTPException(404, f"no node {name!r}")
        return next(v for v in plane.node_views() if v.name == name)

    @app.get("/v1/nodes/{name}", tags=["nodes"], responses=errors(401, 403, 404, 413, 422))
    def node(name: str, _who: Admin) -> NodeDetail:
        """One node: state, health, cordon, drain, repair flag, each check set's last report
        with its figures and durations, and its history (the latest 100 entries)."""
        detail = plane.node_detail(name)
        if detail is None:
            raise HTTPException(404, f"no node {name!r}")
        return detail

    @app.put("/v1/nodes/{name}/drain", tags=["nodes"],
             responses=errors(400, 401, 403, 404, 413, 422))
    def drain(name: str, body: Drain, who: Admin, _clean: Clean) -> NodeView:
        """Place no new job on the node; its jobs finish (``requeue``: are stopped and
        requeued). It is ``draining`` until none is left, then ``drained``."""
        view = plane.drain(name, body.drain, body.reason, body.requeue, who.name)
        if view is None:
            raise HTTPException(404, f"no node {name!r}")
        return view

    @app.get("/v1/config", tags=["server"], responses=errors(401, 403, 413))
    def config(_who: Admin) -> dict[str, Any]:
        return plane.reconciler.effective_cluster().model_dump(mode="json")

    @app.get("/v1/audit", tags=["server"], responses=errors(401, 403, 413, 422))
    def audit(_who: Admin, after_id: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
              limit: Annotated[int, Query(ge=1, le=10_000)] = 1000) -> list[AuditView]:
        """Admin actions in order: quota changes, cordons, cancels of other tenants' jobs."""
        return [AuditView(id=a.id, at=a.at, actor=a.actor, action=a.action, target=a.target,
                          detail=a.detail) for a in plane.store.audit(after_id, limit)]

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.include_router(dashboard_routes(plane, run_metrics))
    return app


@contextmanager
def _job_errors() -> Iterator[None]:
    """A job operation's refusals as HTTP answers: 409, 403, 422 (an unknown class)."""
    try:
        yield
    except Conflict as e:
        raise HTTPException(409, str(e)) from None
    except job_ops.Refused as e:
        raise HTTPException(403, str(e)) from None
    except KeyError as e:
        raise _unprocessable(["body", "priority_class"], str(e.args[0])) from None


@contextmanager
def _quota_errors(queue: str) -> Iterator[None]:
    """A quota change's refusals: 404 (no such queue), 422 (the cluster would be invalid)."""
    try:
        yield
    except KeyError:
        raise HTTPException(404, f"no queue {queue!r}") from None
    except ConfigError as e:
        raise _unprocessable(["body", *key_parts(e.key)], e.reason) from None


def key_parts(key: str | None) -> list[str]:
    """A dotted key's parts; a quoted part keeps its dots (``resources."example.com/gpu"``)."""
    return [part.strip('"') for part in re.findall(r'"[^"]*"|[^.]+', key or "")]


def _unprocessable(loc: list[str], msg: str) -> HTTPException:
    return HTTPException(422, [{"loc": [printable(part) for part in loc if part],
                                "msg": printable(msg), "type": "value_error"}])


async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with one ``{loc, msg, type}`` per error; a cross-field check names its own key.
    What the client sent is never echoed raw (it may not even be encodable)."""
    detail = []
    for err in exc.errors():
        loc = [str(part) for part in err["loc"]]
        msg = str(err["msg"])
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, KeyedValueError):
            key = [cause.key] if cause.relative else cause.key.split(".")
            loc, msg = [*loc, *key], cause.reason
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        detail.append({"loc": [printable(part) for part in loc], "msg": printable(msg),
                       "type": str(err["type"])})
    return JSONResponse(status_code=422, content={"detail": detail})


# FastAPI's answer to a body it cannot decode at all (JSON that is not UTF-8 text): a 400 no
# route declares; answered as the 422 a body that is not JSON gets.
_UNDECODABLE_BODY = "There was an error parsing the body"


async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
    if exc.status_code == 400 and exc.detail == _UNDECODABLE_BODY:
        error = {"loc": ["body"], "msg": "the body is not JSON text in UTF-8",
                 "type": "json_invalid"}
        return JSONResponse(status_code=422, content={"detail": [error]})
    detail = exc.detail if isinstance(exc.detail, list) else printable(str(exc.detail))
    return JSONResponse(status_code=exc.status_code, content={"detail": detail},
                        headers=exc.headers)
