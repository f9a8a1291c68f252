"""The control plane's API objects: job states, request bodies, responses, server settings.

Request bodies forbid unknown keys; the server answers a rejected body with 422 and its field
errors, and stores nothing.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal, Self

from pydantic import (
    Base64Bytes,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from pydantic.config import JsonDict

from stoker.spec import loading
from stoker.spec.cluster import Amounts, Quota, check_ray_address
from stoker.spec.errors import ConfigError, KeyedValueError
from stoker.spec.job import JobSpec
from stoker.spec.train import TrainConfig

DEFAULT_PORT = 8470


class JobState(StrEnum):
    QUEUED = "QUEUED"
    ADMITTED = "ADMITTED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    PREEMPTED = "PREEMPTED"
    CANCELLED = "CANCELLED"


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- requests ----------------------------------------------------------------------------------


# ``train`` is given exactly for a train_config job, in the JSON schema too.
_TRAIN_IFF_TRAIN_CONFIG: JsonDict = {"oneOf": [
    {"required": ["train"], "properties": {
        "job": {"required": ["train_config"], "properties": {"train_config": {"type": "string"}}},
        "train": {"type": "object"}}},
    {"properties": {
        "job": {"required": ["command"], "properties": {"command": {"type": "array"}}},
        "train": {"type": "null"}}},
    {"properties": {
        "job": {"required": ["roles"], "properties": {"roles": {"type": "array"}}},
        "train": {"type": "null"}}},
]}


class JobSubmission(Body):
    """``POST /v1/jobs``: a job spec and, for a training job, its training config as a table
    (before ``job.overrides``, which the server applies), so the job runs what was submitted."""

    model_config = ConfigDict(json_schema_extra=_TRAIN_IFF_TRAIN_CONFIG)

    job: JobSpec
    train: dict[str, Any] | None = None
    # A [task] job's code: its directory as a gzipped tar, base64 in JSON
    # (`stoker.control.code_archive`); the job imports it from code/ in its directory.
    code: Base64Bytes | None = None

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.job.kind == "train" and self.train is None:
            raise KeyedValueError("train", "a train_config job needs its training config")
        if self.job.kind == "command" and self.train is not None:
            raise KeyedValueError("train", "only a train_config job has a training config")
        if self.code is not None and not (self.train or {}).get("task", {}).get("module"):
            raise KeyedValueError("code", "only a training job with [task] module carries "
                                  "code")
        if self.train is not None:
            self.resolved_train()
        return self

    def resolved_train(self) -> TrainConfig:
        """The training config with the job's overrides applied, checked for its rank count."""
        assert self.train is not None
        try:
            data = loading.apply_overrides(self.train, self.job.overrides)
            cfg = loading.validate(TrainConfig, data, None)
            cfg.check_world_size(self.job.ranks)
            cfg.check_confined()
        except ConfigError as e:
            key = "job.ranks" if e.key == "--nproc" else f"train.{e.key}" if e.key else "train"
            raise KeyedValueError(key, e.reason) from None
        return cfg


class Cordon(Body):
    """``PUT /v1/nodes/{name}/cordon``: stop (or resume) admitting jobs to a node."""

    model_config = ConfigDict(strict=True)

    cordoned: bool  # strict: 1 and "yes" are not booleans
    reason: str = Field(default="", max_length=500)


class Drain(Body):
    """``PUT /v1/nodes/{name}/drain``: stop placing jobs on a node and let its running ones
    finish (``requeue``: stop them now, to be requeued), or stop draining it."""

    model_config = ConfigDict(strict=True)

    drain: bool
    reason: str = Field(default="", max_length=500)
    requeue: bool = False


class JobAction(Body):
    """``POST /v1/jobs/{id}/hold``: why (kept in the job's events and reason)."""

    model_config = ConfigDict(strict=True)

    reason: str = Field(default="", max_length=500)


class Requeue(JobAction):
    """``POST /v1/jobs/{id}/requeue``: stop the job as a preemption does and queue it again;
    ``hold``: held there until released."""

    hold: bool = False


class PriorityChange(Body):
    """``PUT /v1/jobs/{id}/priority``: one of the cluster's priority classes."""

    model_config = ConfigDict(strict=True)

    priority_class: str = Field(min_length=1, max_length=128)


class StrictAmounts(Amounts):
    """`Amounts` in a request: ``false`` is not 0, ``"2"`` is not 2, and no NaN or infinity;
    memory is a whole number of bytes or a size such as ``"8GiB"``."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False)


class QuotaUpdate(Quota):
    """``PUT /v1/queues/{queue}/quotas/{flavor}``: a `Quota`, strictly typed."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False)

    borrowing_limit: StrictAmounts | None = None
    lending_limit: StrictAmounts | None = None


# --- responses ---------------------------------------------------------------------------------


class FieldError(BaseModel):
    loc: list[str | int]  # where: "body", "query", "path", "header", then keys and indices
    msg: str
    type: str


class Error(BaseModel):
    """Every 4xx answer: a reason, or (422) one entry per rejected field."""

    detail: str | list[FieldError]


class AuditView(BaseModel):
    """One admin action: a quota change, a cordon, a cancel of another tenant's job."""

    id: int
    at: float
    actor: str
    action: str
    target: str
    detail: dict[str, Any]


class EventView(BaseModel):
    id: int
    job_id: int | None
    at: float
    kind: str
    from_state: JobState | None
    to_state: JobState | None
    reason: str
    actor: str


class WaitingView(BaseModel):
    """Why a queued job was not admitted by the last scheduling cycle (`stoker.sched.Waiting`).

    ``available``: what its queue may still use of ``flavor`` within its nominal quota;
    ``borrowable``: what it could borrow on top of that now; ``requested``: the whole gang's
    request (None when one reason was given for all of a queue's jobs the cycle did not reach).
    Unlimited amounts are left out."""

    code: str
    message: str
    inadmissible: bool
    starving: bool = False
    flavor: str | None = None
    requested: dict[str, float] | None = None
    available: dict[str, float] | None = None
    borrowable: dict[str, float] | None = None


class RoleView(BaseModel):
    """One role of a job with roles: its ranks (job-wide ranks ``first_rank`` to
    ``first_rank + ranks - 1``), what each needs, and once admitted its flavor and the node
    of each of its ranks."""

    name: str
    ranks: int
    first_rank: int
    resources: dict[str, float]
    flavor: str | None = None
    nodes: list[str] = []


class JobView(BaseModel):
    """A job. ``ranks``: all its ranks (every role's); ``resources``: what each rank needs
    (a job with roles: its first role's; ``roles`` has each role's); ``roles``: empty for a
    job without roles."""

    id: int
    tenant: str
    name: str
    queue: str
    priority_class: str
    priority: int
    kind: str
    ranks: int
    resources: dict[str, float]
    state: JobState
    reason: str
    created_at: float
    queued_at: float
    admitted_at: float | None
    started_at: float | None
    finished_at: float | None
    attempt: int
    restarts: int
    max_restarts: int
    exit_code: int | None
    placement: dict[str, Any] | None
    stopping: str | None
    held: bool = False  # held (`stoker hold`): not scheduled until released; see reason
    queue_position: int | None = None
    waiting: WaitingView | None = None
    estimated_start: float | None = None  # replayed from running jobs' max_run_time; see docs
    roles: list[RoleView] = []


class AttemptCauseView(BaseModel):
    """Why a failed attempt failed (`stoker.control.failure`): ``category`` infra (retried
    elsewhere, ``nodes`` suspected), user (not retried) or unknown (retried); ``code`` the
    cause; ``lines`` the log lines that show it."""

    attempt: int
    at: float
    category: str
    code: str
    message: str
    lines: list[str]
    nodes: list[str]
    exit_code: int | None


class GoodputView(BaseModel):
    """Where a job's (or a group's) allocated time went (`stoker.control.goodput`). Every
    ``*_s`` figure but ``queued_s`` is rank-seconds (wall seconds x ranks): ``allocated_s`` =
    ``productive_s`` + the sum of ``lost``; ``queued_s`` is wall seconds in the queue, not
    allocated; ``gpu_s`` the allocated GPU-seconds. ``ratio``: productive / allocated (None
    when nothing was allocated). ``telemetry``: a training run's step records were used."""

    allocated_s: float
    productive_s: float
    ratio: float | None
    lost: dict[str, float]
    queued_s: float
    gpu_s: float
    holds: int
    telemetry: bool


class ProgressView(BaseModel):
    """A training job's progress from its metrics: the last step recorded, its loss, the
    latest eval loss among the recent steps, means over them, and the time left at that pace
    (None once the job is over)."""

    step: int
    steps: int  # the run's train.steps
    loss: float | None
    eval_loss: float | None
    tokens_per_s: float | None
    mfu: float | None
    step_time_s: float | None
    eta_s: float | None
    updated_at: float | None  # the last record's time


class CheckpointView(BaseModel):
    """One checkpoint directory of a training job's run: ``committed`` once its manifest is
    written (its files are not re-checked here; resume does that), with the manifest's total
    ``bytes`` and ``created`` time; an uncommitted one is being written, or was torn."""

    step: int
    committed: bool
    bytes: int | None = None
    created: float | None = None


class AttemptView(BaseModel):
    """One allocation of the job from the accounting store: its ``hold``-th admission on one
    ``flavor`` (one row per flavor), ``admitted_at`` to ``ended_at`` (None: still held),
    ``started_at`` when its processes were launched as attempt ``attempt`` (None: never),
    what it held on ``nodes``, and the state it ended in (``outcome``; None while held) with
    the failure's ``cause`` code."""

    hold: int
    attempt: int | None
    flavor: str
    admitted_at: float
    started_at: float | None
    ended_at: float | None
    nodes: list[str]
    ranks: int
    gpus: float
    cpus: float
    outcome: str | None
    cause: str | None


class RunEventView(BaseModel):
    """One notable event of a training job's run (its events.jsonl), in words."""

    at: float
    kind: str
    text: str


class StragglerView(BaseModel):
    """A training job's rank flagged as a straggler (``event`` "straggler": its ``section``
    scored ``score`` of the fastest rank's for ``steps`` log steps) or recovered
    ("straggler_cleared"), at ``step``, from the run's events.jsonl."""

    event: Literal["straggler", "straggler_cleared"]
    at: float
    rank: int
    step: int
    score: float
    section: str | None = None
    steps: int | None = None


class JobDetail(JobView):
    spec: dict[str, Any]
    events: list[EventView]
    causes: list[AttemptCauseView] = []
    attempts: list[AttemptView] = []  # its allocations, oldest first
    goodput: GoodputView | None = None
    progress: ProgressView | None = None  # a training job that has recorded a step
    checkpoints: list[CheckpointView] = []  # a training job's, oldest first
    stragglers: list[StragglerView] = []  # a training job's, oldest first
    run_events: list[RunEventView] = []  # a training job's notable run events, oldest first


class MetricsPage(BaseModel):
    """``GET /v1/jobs/{id}/metrics``: the run's metrics.jsonl records of the steps after
    ``since``, by step, one per step (the latest attempt's), at most ``limit``. Pass
    ``next_since`` and ``revision`` to the next poll: steps rewritten since that revision (a
    restart redid them) come again, ``since`` then being lower than asked."""

    records: list[dict[str, Any]]
    since: int
    next_since: int
    more: bool  # more records are there already: ask again at once
    revision: str
    last_step: int | None  # the highest step recorded
    steps: int  # the run's train.steps
    done: bool  # the job is over and every record was returned


class UsageRow(BaseModel):
    """Goodput summed over the jobs of one ``scope`` (cluster, tenant or queue) ``name``."""

    scope: str
    name: str
    jobs: int
    goodput: GoodputView


class UsageReport(BaseModel):
    """``GET /v1/usage``: from ``since`` (None: all time) to ``until``; the admin's covers
    every tenant, a tenant's its own jobs (its ``cluster`` row sums only those)."""

    since: float | None
    until: float
    rows: list[UsageRow]


class Hours(BaseModel):
    """Hours held, by how the allocations ended (`stoker.control.accounting`): ``total`` =
    ``productive`` + ``preempted`` + ``failed`` + ``other``."""

    total: float
    productive: float
    preempted: float
    failed: float
    other: float


class AccountingRow(BaseModel):
    """One group's GPU-hours and CPU-hours in the window, its allocations (``attempts``) and
    their cost (None: the cluster has no ``[prices]``). For ``by=job``: the job's tenant,
    queue and name too."""

    key: str
    attempts: int
    gpu_hours: Hours
    cpu_hours: Hours
    cost: float | None
    tenant: str | None = None
    queue: str | None = None
    name: str | None = None


class AccountingReport(BaseModel):
    """``GET /v1/usage/accounting``: rows grouped ``by`` tenant, queue, flavor or job over
    [``start``, ``end``) (``start`` None: all time; ``end`` at most now), and their ``total``;
    the admin's covers every tenant, a tenant's its own jobs. ``prices``: the cluster's
    ``[prices]`` (a GPU-hour per flavor, ``cpu``: a CPU-hour)."""

    by: str
    start: float | None
    end: float
    rows: list[AccountingRow]
    total: AccountingRow
    prices: dict[str, float]


class LogChunk(BaseModel):
    text: str
    offset: int
    next_offset: int
    done: bool  # the job is over and nothing more will be written


class QueueUsage(BaseModel):
    queue: str
    cohort: str | None
    flavor: str
    resource: str
    nominal: float | None
    borrowing_limit: float | None
    lending_limit: float | None
    used: float
    borrowed: float
    pending_jobs: int
    running_jobs: int


class QueueSeries(BaseModel):
    """One queue's holding of one resource on one flavor: the mean per bucket, and its
    nominal quota as configured now (None: no quota of it)."""

    queue: str
    flavor: str
    resource: str
    held: list[float]
    nominal: float | None


class QueueHistory(BaseModel):
    """``GET /v1/queues/history``: [``start``, ``end``) cut into buckets of ``step_s``
    seconds (``times``: each bucket's start), and the series of every queue, flavor and
    resource (GPUs, CPUs) held at some time in the window or with a nominal quota."""

    start: float
    end: float
    step_s: float
    times: list[float]
    series: list[QueueSeries]


class NodeView(BaseModel):
    name: str
    flavor: str
    labels: dict[str, Any]
    capacity: dict[str, float]
    allocated: dict[str, float]
    jobs: list[int]
    cordoned: bool
    cordon_reason: str
    cordoned_by: str = ""  # the admin, "health" (the checks: they lift it), "reconciler"
    state: str = "healthy"  # healthy | suspect | unhealthy | draining | drained
    health: str = "healthy"  # the checks' verdict, under a drain too
    health_reason: str = ""
    passes: int = 0  # consecutive passes of the full check set while not healthy
    failures: int = 0  # consecutive failed checks
    repair_needed: bool = False
    draining: bool = False
    drain_reason: str = ""


class CheckView(BaseModel):
    """One check of a report: its figure against its rule, and how long it took."""

    name: str
    passed: bool
    value: float | None
    limit: float | None
    unit: str
    duration_s: float
    detail: str


class CheckReportView(BaseModel):
    check_set: str  # prestart | periodic | light
    passed: bool
    at: float
    duration_s: float
    results: list[CheckView]


class NodeEventView(BaseModel):
    """One entry of a node's history."""

    id: int
    at: float
    kind: str  # health | check-failed | repair | cordon | uncordon | drain | undrain | drained
    from_state: str | None
    to_state: str | None
    reason: str
    actor: str
    checks: list[CheckView] = []  # the figures of the check behind it


class NodeDetail(NodeView):
    """``GET /v1/nodes/{name}``: the node, each check set's last report, its history."""

    last_checks: list[CheckReportView]
    history: list[NodeEventView]


class WhoAmI(BaseModel):
    name: str
    admin: bool
    queues: list[str]


# --- the server process ------------------------------------------------------------------------


class ServerSettings(BaseModel):
    """``stoker server`` options (flags, or STOKER_* environment variables)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535)
    config: str | None = None
    state_dir: str = "runs/stoker-server"
    db: str | None = None  # default: sqlite:///STATE_DIR/stoker.db
    interval: float | None = Field(default=None, gt=0)  # default: cluster scheduler.interval
    grace_period: float = Field(default=30.0, ge=0)
    failure_grace: float = Field(default=3.0, ge=0)  # after a rank of the gang failed
    backoff_base: float = Field(default=5.0, ge=0)
    backoff_max: float = Field(default=300.0, ge=0)
    resume: bool = True
    single_trust: bool = False  # as isolation.single_trust = true in the cluster config
    ray_address: str | None = None  # overrides the cluster config's ray.address

    @field_validator("ray_address")
    @classmethod
    def _ray_address(cls, address: str | None) -> str | None:
        return None if address is None else check_ray_address(address, "--ray-address")

    def db_url(self) -> str:
        return self.db or f"sqlite:///{self.state_dir}/stoker.db"
