"""The REST API (FastAPI; OpenAPI at /docs) and Prometheus /metrics.

Every route but /healthz and /metrics needs ``Authorization: Bearer TOKEN``. A tenant sees and
acts on its own jobs only (another tenant's job is a 404, as if it did not exist); quotas,
nodes and the config are the admin's. A rejected body is a 422 with field errors and stores
nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

import stoker
from stoker.control.plane import Conflict, ControlPlane
from stoker.control.states import TERMINAL
from stoker.control.store import JobRecord
from stoker.server.auth import Principal, TokenBook
from stoker.server.logs import read_chunk
from stoker.server.metrics import Metrics
from stoker.spec.api import (
    Cordon,
    JobDetail,
    JobState,
    JobSubmission,
    JobView,
    LogChunk,
    NodeView,
    QueueUsage,
    WhoAmI,
)
from stoker.spec.cluster import Quota
from stoker.spec.errors import ConfigError, KeyedValueError

bearer = HTTPBearer(auto_error=False)


def principal(request: Request,
              cred: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Principal:
    tokens: TokenBook = request.app.state.tokens
    who = tokens.principal(cred.credentials) if cred is not None else None
    if who is None:
        raise HTTPException(401, "missing or invalid API token",
                            headers={"WWW-Authenticate": "Bearer"})
    return who


def admin(who: Annotated[Principal, Depends(principal)]) -> Principal:
    if not who.admin:
        raise HTTPException(403, "only the admin may do this")
    return who


Who = Annotated[Principal, Depends(principal)]
Admin = Annotated[Principal, Depends(admin)]


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

    app = FastAPI(title="Stoker control plane", version=stoker.__version__, lifespan=lifespan)
    app.state.tokens = tokens
    metrics = Metrics(plane)
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]

    @app.middleware("http")
    async def count(request: Request,
                    call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        metrics.requests.labels(request.method, str(response.status_code)).inc()
        return response

    def own_job(job_id: int, who: Principal) -> JobRecord:
        job = plane.store.get_job(job_id)
        if job is None or not who.may_see(job.tenant):
            raise HTTPException(404, f"no job {job_id}")
        return job

    @app.get("/healthz", tags=["server"])
    def healthz() -> dict[str, Any]:
        return {"ok": True, "version": stoker.__version__}

    @app.get("/metrics", tags=["server"], response_class=Response)
    def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/whoami", tags=["server"])
    def whoami(who: Who) -> WhoAmI:
        return WhoAmI(name=who.name, admin=who.admin, queues=sorted(who.queues))

    @app.post("/v1/jobs", status_code=201, tags=["jobs"])
    def submit(body: JobSubmission, who: Who) -> JobView:
        if body.job.queue in plane.cluster.queues and not who.may_use(body.job.queue):
            raise HTTPException(403, f"queue {body.job.queue!r} is not one of yours "
                                f"({', '.join(sorted(who.queues))})")
        try:
            job = plane.submit(who.name, body)
        except ConfigError as e:
            raise _unprocessable(["body", "job", *(e.key or "").split(".")], e.reason) from None
        return plane.job_views([job])[0]

    @app.get("/v1/jobs", tags=["jobs"])
    def list_jobs(who: Who, state: Annotated[list[JobState] | None, Query()] = None,
                  active: bool = False) -> list[JobView]:
        states = set(state) if state else None
        if active:
            states = (states or set(JobState)) - TERMINAL
        jobs = plane.store.list_jobs(tenant=None if who.admin else who.name, states=states)
        return plane.job_views(jobs)

    @app.get("/v1/jobs/{job_id}", tags=["jobs"])
    def get_job(job_id: int, who: Who) -> JobDetail:
        return plane.job_detail(own_job(job_id, who))

    @app.post("/v1/jobs/{job_id}/cancel", tags=["jobs"])
    def cancel(job_id: int, who: Who) -> JobView:
        own_job(job_id, who)
        try:
            job = plane.cancel(job_id, who.name)
        except Conflict as e:
            raise HTTPException(409, str(e)) from None
        return plane.job_views([job])[0]

    @app.get("/v1/jobs/{job_id}/logs", tags=["jobs"])
    def logs(job_id: int, who: Who, rank: Annotated[int | None, Query(ge=0)] = None,
             offset: Annotated[int, Query(ge=0)] = 0,
             limit: Annotated[int, Query(ge=1, le=1 << 20)] = 1 << 16) -> LogChunk:
        job = own_job(job_id, who)
        view = plane.job_views([job])[0]
        if rank is not None and rank >= view.ranks:
            raise HTTPException(404, f"job {job_id} has no rank {rank}")
        train = view.kind == "train"
        index = 0 if train or rank is None else rank
        prefix = f"[rank{rank}]:" if train and rank is not None else None
        try:
            text, next_offset = read_chunk(plane.jobs_dir, plane.log_file(job, index),
                                           offset, limit, prefix)
        except PermissionError as e:
            raise HTTPException(403, str(e)) from None
        done = job.state in TERMINAL and next_offset == offset
        return LogChunk(text=text, offset=offset, next_offset=next_offset, done=done)

    @app.get("/v1/queues", tags=["queues"])
    def queues(who: Who) -> list[QueueUsage]:
        return plane.queue_usage(None if who.admin else who.queues)

    @app.put("/v1/queues/{queue}/quotas/{flavor}", tags=["queues"])
    def set_quota(queue: str, flavor: str, quota: Quota, who: Admin) -> dict[str, Any]:
        try:
            record = plane.set_quota(queue, flavor, quota, who.name)
        except KeyError:
            raise HTTPException(404, f"no queue {queue!r}") from None
        except ConfigError as e:
            raise _unprocessable(["body", *(e.key or "").split(".")], e.reason) from None
        return {"queue": record.queue, "flavor": record.flavor, "quota": record.quota}

    @app.get("/v1/nodes", tags=["nodes"])
    def nodes(_who: Admin) -> list[NodeView]:
        return plane.node_views()

    @app.put("/v1/nodes/{name}/cordon", tags=["nodes"])
    def cordon(name: str, body: Cordon, who: Admin) -> NodeView:
        if plane.store.set_cordon(name, body.cordoned, body.reason, who.name) is None:
            raise HTTPException(404, f"no node {name!r}")
        return next(v for v in plane.node_views() if v.name == name)

    @app.get("/v1/config", tags=["server"])
    def config(_who: Admin) -> dict[str, Any]:
        return plane.reconciler.effective_cluster().model_dump(mode="json")

    return app


def _unprocessable(loc: list[str], msg: str) -> HTTPException:
    return HTTPException(422, [{"loc": [part for part in loc if part], "msg": msg,
                                "type": "value_error"}])


async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with one ``{loc, msg, type}`` per error; a cross-field check names its own key."""
    detail = []
    for err in exc.errors():
        loc = [str(part) for part in err["loc"]]
        msg = str(err["msg"])
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, KeyedValueError):
            loc, msg = [*loc, *cause.key.split(".")], cause.reason
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        detail.append({"loc": loc, "msg": msg, "type": err["type"]})
    return JSONResponse(status_code=422, content={"detail": detail})
