"""The cluster config (``cluster.toml``): nodes, topology, flavors, tenants, queues and quotas.

Quota semantics follow Kueue's ClusterQueue: each queue holds, per resource flavor, a nominal
quota; queues in one cohort lend each other their unused quota. ``borrowing_limit`` caps what a
queue (or cohort) may take above its nominal quota from its parent cohort; ``lending_limit`` caps
how much of its unused nominal quota it lends out (the rest stays reserved for it). Cohorts nest
(``parent``) and may own quota of their own, shared by everything below them.

Resources are named (`stoker.spec.resources`): ``gpu``, ``cpu``, ``memory``,
``ephemeral-storage`` or a vendor's ``domain/name``; the old keys ``gpus`` and ``cpus`` still
work. A queue's quota is either flat (``quotas``: one resource group holding every flavor, in
which a resource a flavor leaves out is not limited) or Kueue's resource groups
(``resource_groups``): each group covers some resources, and each of its flavors gives a quota
for exactly those. A resource is in at most one group of a queue, a flavor in at most one; a
resource no group covers is not limited by the queue. A node leaves out ``cpu``, ``memory`` and
``ephemeral-storage`` when it does not limit them; it has none of ``gpu`` or of a vendor's
resource it leaves out.

A node carries one flavor. A job runs on the nodes of one flavor F (the queue's flavors are
tried in the order written, group by group). Its request is charged in F's group to F, and in
every other group to that group's *first* flavor, which stands for what every node has of
those resources (Kueue's flavor without node labels). So with ``cpu``/``memory`` under a
``default`` flavor and ``gpu`` under ``h100`` and ``a100``, a job on an h100 node is charged
its GPUs to h100 and its CPUs and memory to default.

```toml
topology = ["zone", "rack"]          # levels, outermost first; nodes label each level
default_priority_class = "normal"

[scheduler]
order = "las"                        # or "fifo" (Kueue's: priority, then age), "sjf"
las_thresholds = ["1h", "10h"]       # "las" levels: GPU-time run (GPU-hours as "1h")
fair_sharing = false                 # weighted dominant-resource share orders the queues
starvation_age = "6h"                # a job pending longer gets a reservation
victim_order = "stoker"              # or "kueue": lower priority, then most recently admitted
hold_quota_without_victims = false   # true: Kueue's hold by a job that finds no victims

[admission_fair_sharing]             # Kueue's usage-based order of tenants within a queue
enabled = false
half_life = "24h"                    # past usage counts half after this (usageHalfLifeTime)
sampling_interval = "5m"             # how often usage held is sampled (usageSamplingInterval)
resource_weights = { gpu = 1.0, cpu = 0.0, memory = 0.0 }   # per GPU, CPU, GiB, unit

[priority_classes]
low = 0
normal = 100

[flavors.cpu]
[flavors.h100]
gpu_model = "H100"

[autodetect]                         # this machine as one node (NVML; else CPU slots)
cpu_slots = 4
cpu_flavor = "cpu"
labels = { zone = "local", rack = "local" }

[[nodes]]                            # or explicit nodes; ``count`` names them name-0, name-1, ...
name = "gpu"
count = 4
flavor = "h100"
gpu = 8                              # or gpus = 8; any named resource
cpu = 96
memory = "1TiB"
"example.com/ib" = 4                 # a vendor's resource
labels = { zone = "z1", rack = "r1" }

[admin]
token_env = "STOKER_ADMIN_TOKEN"

[tenants.alice]
token_sha256 = "<hex sha256 of the token>"   # or token_file = "/etc/stoker/alice.token" (0600)
queues = ["research"]
user = "alice"                       # optional: the Unix user its jobs run as

[isolation]                          # see IsolationConfig
identity = "auto"                    # per-tenant Unix users when the server runs as root
sandbox = "auto"                     # bubblewrap where it works
single_trust = false                 # several tenants without isolation: refuse to start
pass_env = ["NCCL_*"]                # server variables jobs may see besides PATH, LANG, ...

executor = "local"                   # or "ray": ranks placed on a Ray cluster, see RayConfig

[ray]                                # with executor = "ray"
address = "auto"                     # or "ray://HEAD:10001", or "HEAD:6379"
shared_dir = "/mnt/shared/stoker"    # job dirs, runs, checkpoints, logs: seen by every node

[store]                              # default: SQLite in the server's state directory
url = "postgresql+psycopg://stoker@db.example:5432/stoker"   # password: $PGPASSWORD or ~/.pgpass

[prices]                             # optional: the cost `stoker usage` shows
h100 = 2.5                           # per GPU-hour on a flavor (a flavor without one: free)
cpu = 0.04                           # per CPU-hour, on any flavor
[api]
public_metrics = false               # /metrics needs a token
max_body_bytes = "1MiB"

[cohorts.org]
parent = "company"                   # optional; cohorts with no section are implicit roots

[queues.research]
cohort = "org"
strategy = "BestEffortFIFO"          # or StrictFIFO
fair_weight = 1.0
preemption = { within_queue = "LowerPriority", reclaim_within_cohort = "Any" }
when_can_borrow = "MayStopSearch"    # flavor fungibility (Kueue's defaults); or TryNextFlavor
when_can_preempt = "TryNextFlavor"   # or MayStopSearch
flavor_preference = "BorrowingOverPreemption"   # or PreemptionOverBorrowing

[queues.research.quotas.h100]        # flat: flavors are tried in the order written
gpu = 8
cpu = 64
borrowing_limit = { gpu = 8 }
lending_limit = { gpu = 4 }

[queues.training]                    # or Kueue's resource groups
cohort = "org"

[[queues.training.resource_groups]]
resources = ["cpu", "memory"]
flavors.default = { cpu = 256, memory = "2TiB" }

[[queues.training.resource_groups]]
resources = ["gpu"]
flavors.h100 = { gpu = 16, borrowing_limit = { gpu = 8 } }
flavors.a100 = { gpu = 8 }
```

Scheduler keys beyond Kueue's (see docs/architecture.md, the scheduler):

- ``scheduler.order``: the order of each queue's jobs of one priority (and of the queues'
  heads, after Kueue's borrowing level and priority). "las" (default): least attained service
  first, by Tiresias levels of GPU-seconds run (``scheduler.las_thresholds``, by default 1 and
  10 GPU-hours), then age; under it a queue
  that may preempt within itself (``within_queue`` "LowerPriority" or
  "LowerOrNewerEqualPriority") also preempts its running jobs of the same priority at a higher
  level, and reclaim compares levels too. "fifo": Kueue's order, priority then age. "sjf":
  priority, then the job's ``max_run_time`` (shortest first; none: last). Measured in
  docs/benchmarks.md ("Stoker's default policy").
- ``scheduler.victim_order``: the order victims are taken in within each of Kueue's groups (jobs
  already being preempted, other queues' jobs the preemptor has a hierarchical claim on, other
  queues' borrowers, the preemptor's own queue). "stoker" (default) loses the least work: lower
  priority, then least progress since the last checkpoint, then most recently started;
  "kueue": lower priority, then most recently admitted.
- ``scheduler.hold_quota_without_victims`` (default false; true is Kueue's behaviour): a job that
  needs preemption but finds no victims, in a queue whose ``reclaim_within_cohort`` is not
  "Any", keeps the quota it could use for the rest of the cycle, so other queues cannot borrow
  it. Off by default: on replayed traces it made jobs wait longer.

Flavor fungibility, per queue (Kueue's ``flavorFungibility``; flavors are tried in the order of
``quotas``): ``when_can_borrow`` "MayStopSearch" (default) takes the first flavor where the job
fits, borrowing or not; "TryNextFlavor" goes on looking for one where it fits without borrowing.
``when_can_preempt`` "TryNextFlavor" (default) goes on past a flavor where victims would make
room; "MayStopSearch" takes the first such flavor. When the search does not stop,
``flavor_preference`` picks among the flavors tried: "BorrowingOverPreemption" (default) a fit
over reclaiming from other queues over preempting in the job's own queue, then the one borrowing
least; "PreemptionOverBorrowing" the one borrowing least, then the same order.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from stoker.spec import loading, resources
from stoker.spec.errors import ConfigError, KeyedValueError
from stoker.spec.health import HealthConfig
from stoker.spec.job import (
    NAME_PATTERN,
    Bytes,
    JobSpec,
    Placement,
    RankResources,
    ResourceAmounts,
    Seconds,
)

# Stored as 32-bit integers (PostgreSQL's INTEGER).
Priority = Annotated[int, Field(ge=-(2**31), le=2**31 - 1)]
# A price per hour: a plain non-negative number (not a string, not a boolean).
Price = Annotated[float, Field(ge=0, allow_inf_nan=False, strict=True)]
DB_SCHEMES = ("sqlite", "postgresql", "postgres")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Amounts(ResourceAmounts):
    """An amount per named resource (`ResourceAmounts`); a resource left out is not limited."""


class Quota(Amounts):
    """Nominal quota of one flavor, with the limits on borrowing and lending."""

    borrowing_limit: Amounts | None = None
    lending_limit: Amounts | None = None

    def names(self) -> set[str]:
        """Every resource it names, limits included."""
        out = set(self.amounts())
        for limit in (self.borrowing_limit, self.lending_limit):
            if limit is not None:
                out |= set(limit.amounts())
        return out


class ResourceGroup(Section):
    """Kueue's resource group: the resources it covers, and the flavors (tried in the order
    written) that give a quota for exactly those resources."""

    resources: tuple[str, ...] = Field(min_length=1)
    flavors: dict[str, Quota] = Field(min_length=1)

    def covered(self) -> tuple[str, ...]:
        """``resources`` by canonical name (checked by `ClusterConfig`)."""
        return tuple(resources.canonical(r) or r for r in self.resources)


Groups = list[tuple[tuple[str, ...] | None, dict[str, Quota]]]  # (covered: None = all, flavors)


class Quotas(Section):
    """The quota of a queue or a cohort: flat (``quotas``) or in resource groups."""

    quotas: dict[str, Quota] = {}
    resource_groups: tuple[ResourceGroup, ...] = ()

    def groups(self) -> Groups:
        """Each resource group's covered resources (None: the flat form, which covers every
        resource) and flavors."""
        if self.resource_groups:
            return [(g.covered(), g.flavors) for g in self.resource_groups]
        return [(None, self.quotas)] if self.quotas else []

    def flavor_quotas(self) -> dict[str, Quota]:
        """Every flavor's quota, group after group, in the order written."""
        return {f: q for _, flavors in self.groups() for f, q in flavors.items()}


class Preemption(Section):
    """Kueue's ClusterQueue preemption policy."""

    within_queue: Literal["Never", "LowerPriority", "LowerOrNewerEqualPriority"] = "Never"
    reclaim_within_cohort: Literal["Never", "LowerPriority", "Any"] = "Never"
    borrow_within_cohort: Literal["Never", "LowerPriority"] = "Never"
    borrow_max_priority: int | None = None


Fungibility = Literal["MayStopSearch", "TryNextFlavor"]


class QueueConfig(Quotas):
    cohort: str | None = None
    strategy: Literal["StrictFIFO", "BestEffortFIFO"] = "BestEffortFIFO"
    fair_weight: float = Field(default=1.0, ge=0)
    preemption: Preemption = Preemption()
    when_can_borrow: Fungibility = "MayStopSearch"
    when_can_preempt: Fungibility = "TryNextFlavor"
    flavor_preference: Literal["BorrowingOverPreemption",
                               "PreemptionOverBorrowing"] = "BorrowingOverPreemption"


class CohortConfig(Quotas):
    parent: str | None = None
    fair_weight: float = Field(default=1.0, ge=0)


class FlavorConfig(Section):
    gpu_model: str | None = None


class NodeConfig(ResourceAmounts):
    """Nodes of one kind; their capacity is any named resources (`ResourceAmounts`): one left
    out is unlimited for cpu, memory and ephemeral-storage, and none for the others."""

    name: str = Field(pattern=NAME_PATTERN)
    count: int = Field(default=1, ge=1, le=100_000)
    flavor: str
    labels: dict[str, str] = Field(default_factory=dict)

    def names(self) -> list[str]:
        if self.count == 1:
            return [self.name]
        return [f"{self.name}-{i}" for i in range(self.count)]


class AutodetectConfig(Section):
    """This machine as one node: its GPUs through NVML, else ``cpu_slots`` CPU slots."""

    enabled: bool = True
    name: str = Field(default="local", pattern=NAME_PATTERN)
    cpu_slots: int | None = Field(default=None, ge=1)
    cpu_flavor: str = "cpu"
    labels: dict[str, str] = {}


class TokenConfig(Section):
    """Where a principal's API token comes from: its SHA-256 in the config, a file readable by
    the server alone (mode 0600 or stricter), or an environment variable of the server."""

    token_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    token_file: str | None = Field(default=None, min_length=1)
    token_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")

    @model_validator(mode="after")
    def _one_token(self) -> Self:
        given = [v for v in (self.token_sha256, self.token_file, self.token_env) if v is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of token_sha256, token_file or token_env")
        return self


class TenantConfig(TokenConfig):
    queues: tuple[str, ...] = Field(min_length=1)
    # The Unix user this tenant's jobs run as; default (server run as root): one Stoker creates.
    user: str | None = Field(default=None, pattern=r"^[a-z_][a-z0-9_-]{0,31}$")


class IsolationConfig(Section):
    """How jobs are kept from each other and from the control plane.

    ``identity``: ``auto`` runs each tenant's jobs as its own unprivileged Unix user when the
    server runs as root (the tenant's ``user``, else ``stoker-<tenant>``, created by Stoker) and
    as the server's user otherwise; ``tenant`` insists on per-tenant users; ``server`` never
    switches. ``sandbox``: ``auto`` uses bubblewrap where it is installed and works. A server
    with several tenants that can neither switch users nor sandbox refuses to start unless
    ``single_trust`` says every tenant may see everything the server sees.
    """

    identity: Literal["auto", "tenant", "server"] = "auto"
    sandbox: Literal["auto", "bubblewrap", "none"] = "auto"
    single_trust: bool = False
    # Server environment variables handed to jobs beside the fixed allow-list (PATH, LANG, ...);
    # a trailing * matches a prefix (NCCL_*).
    pass_env: tuple[str, ...] = ()
    # Honour STOKER_FAULT (the test-only fault hook) in jobs' environments.
    fault_injection: bool = False


class ApiConfig(Section):
    """The API's edges: what needs no token, and how large a request body may be."""

    public_metrics: bool = False  # /metrics without a token
    public_docs: bool = False  # /docs, /redoc and /openapi.json without a token
    max_body_bytes: Bytes = Field(default=1 << 20, ge=1024)


class StoreConfig(Section):
    """The control plane's database: ``url`` is ``sqlite:///PATH`` or
    ``postgresql+psycopg://USER@HOST:PORT/DB`` (several servers, one leader: PostgreSQL only).
    Default: SQLite in the server's state directory; ``stoker server --db`` overrides."""

    url: str | None = Field(default=None, min_length=1)

    @field_validator("url")
    @classmethod
    def _scheme(cls, url: str | None) -> str | None:
        # The URL itself is never repeated in the error: it may hold a password.
        scheme = (url or "").split(":", 1)[0].split("+", 1)[0]
        if url is not None and (scheme not in DB_SCHEMES or "://" not in url):
            raise KeyedValueError("store.url", "expected sqlite:///PATH or "
                                  "postgresql+psycopg://USER@HOST:PORT/DB")
        return url


RAY_ADDRESS = re.compile(r"^(auto|ray://[^\s/:]+(:\d{1,5})?|[^\s/:]+:\d{1,5})$")


def check_ray_address(address: str, key: str = "ray.address") -> str:
    if not RAY_ADDRESS.match(address):
        raise KeyedValueError(key, f"{address!r} is not a Ray address: expected auto, "
                              "ray://HOST[:PORT] or HOST:PORT")
    return address


class RayConfig(Section):
    """The Ray cluster the ``ray`` executor places ranks on (see control/ray_executor.py).

    Nodes come from Ray: a node's name is its ``stoker/node`` label (else the first 12 hex
    digits of its Ray node id), its topology levels its ``stoker/<level>`` labels, its flavor
    its ``stoker/flavor`` label, else the flavor whose ``gpu_model`` matches its GPUs' Ray
    accelerator type, else ``cpu_flavor``. ``shared_dir`` holds the job directories (runs,
    checkpoints, logs, exit files): the same path on the control plane and on every node.
    """

    address: str = "auto"
    shared_dir: str = Field(min_length=1)
    namespace: str = Field(default="stoker", pattern=NAME_PATTERN)
    cpu_flavor: str = "cpu"
    reserve_timeout: Seconds = 60.0  # a placement group not ready by then: back to the queue

    @field_validator("address")
    @classmethod
    def _address(cls, address: str) -> str:
        return check_ray_address(address)

    @field_validator("shared_dir")
    @classmethod
    def _absolute(cls, path: str) -> str:
        if not path.startswith("/"):
            raise KeyedValueError("ray.shared_dir", "must be an absolute path (every node "
                                  "and the control plane see it at the same place)")
        return path


class ResourceWeights(Section):
    """How much a GPU, a CPU, a GiB of memory (or of ephemeral-storage) and a unit of a
    vendor's resource held count in a tenant's usage; by default GPUs alone, 1 each. Keys:
    the old ``gpus``, ``cpus``, ``memory``, or any resource name."""

    model_config = ConfigDict(extra="allow",
                              json_schema_extra={"additionalProperties": {"type": "number",
                                                                          "minimum": 0}})

    gpus: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    cpus: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    memory: float | None = Field(default=None, ge=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _named(self) -> Self:
        given = {resources.ALIASES.get(k, k) for k in ("gpus", "cpus", "memory")
                 if getattr(self, k) is not None}
        for key, value in (self.__pydantic_extra__ or {}).items():
            name = resources.canonical(key)
            if name is None or key in resources.ALIASES:
                raise KeyedValueError(key, "unknown key: not a resource name", relative=True)
            if name in given:
                raise KeyedValueError(key, f"{name} is given twice", relative=True)
            if isinstance(value, bool) or not isinstance(value, int | float) or not (
                    0 <= value < float("inf")):
                raise KeyedValueError(key, f"expected a weight >= 0, got {value!r}",
                                      relative=True)
            given.add(name)
        return self

    def weights(self) -> dict[str, float]:
        """Per resource: the weight of one GPU, CPU, GiB or unit (zeros left out)."""
        out = {resources.GPU: 1.0}
        for key in ("gpus", "cpus", "memory"):
            value = getattr(self, key)
            if value is not None:
                out[resources.ALIASES.get(key, key)] = value
        for key, value in (self.__pydantic_extra__ or {}).items():
            out[resources.ALIASES.get(key, key)] = float(value)
        return {name: w for name, w in out.items() if w}


class AdmissionFairSharingConfig(Section):
    """Kueue's admission fair sharing (KEP-4136) on every queue: within a queue, the jobs of
    the tenant with the least decayed usage go first, before priority (`stoker.sched.usage`).
    The control plane keeps the usage in memory: a restarted server starts from zero."""

    enabled: bool = False
    half_life: Seconds = 24 * 3600.0
    sampling_interval: Seconds = 300.0
    resource_weights: ResourceWeights = ResourceWeights()

    @model_validator(mode="after")
    def _check(self) -> Self:
        if not self.resource_weights.weights():
            raise KeyedValueError("admission_fair_sharing.resource_weights",
                                  "at least one weight must be above 0")
        if self.sampling_interval > self.half_life:
            raise KeyedValueError("admission_fair_sharing.sampling_interval",
                                  f"{self.sampling_interval:g} s is longer than the half-life "
                                  f"({self.half_life:g} s)")
        return self


class SchedulerConfig(Section):
    fair_sharing: bool = False
    starvation_age: Seconds | None = None
    order: Literal["fifo", "sjf", "las"] = "las"
    # Tiresias levels under order = "las": GPU-time run (a GPU-hour is "1h"), ascending.
    las_thresholds: tuple[Seconds, ...] = (3600.0, 36000.0)
    interval: Seconds = 1.0
    victim_order: Literal["stoker", "kueue"] = "stoker"
    hold_quota_without_victims: bool = False

    @field_validator("las_thresholds")
    @classmethod
    def _ascending(cls, levels: tuple[float, ...]) -> tuple[float, ...]:
        if list(levels) != sorted(set(levels)):
            raise ValueError("must be strictly ascending, e.g. [\"1h\", \"10h\"]")
        return levels


class ClusterConfig(Section):
    topology: tuple[str, ...] = ()
    default_priority_class: str | None = None
    priority_classes: dict[str, Priority] = {}
    scheduler: SchedulerConfig = SchedulerConfig()
    admission_fair_sharing: AdmissionFairSharingConfig = AdmissionFairSharingConfig()
    flavors: dict[str, FlavorConfig] = Field(min_length=1)
    autodetect: AutodetectConfig | None = None
    nodes: tuple[NodeConfig, ...] = ()
    admin: TokenConfig | None = None
    tenants: dict[str, TenantConfig] = {}
    isolation: IsolationConfig = IsolationConfig()
    api: ApiConfig = ApiConfig()
    health: HealthConfig = HealthConfig()
    store: StoreConfig = StoreConfig()
    executor: Literal["local", "ray"] = "local"
    ray: RayConfig | None = None
    cohorts: dict[str, CohortConfig] = {}
    queues: dict[str, QueueConfig] = Field(min_length=1)
    # What an hour costs (`stoker usage`): a GPU-hour per flavor, and ``cpu``, a CPU-hour.
    prices: dict[str, Price] = {}
    _resource_names: tuple[str, ...] | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _check(self) -> Self:
        self._check_names()
        self._check_nodes()
        self._check_cohorts()
        self._check_queues()
        self._check_prices()
        users: dict[str, str] = {}
        for tenant, cfg in self.tenants.items():
            if cfg.user is not None and users.setdefault(cfg.user, tenant) != tenant:
                raise KeyedValueError(f"tenants.{tenant}.user", f"user {cfg.user!r} is already "
                                      f"tenant {users[cfg.user]!r}'s: tenants never share one")
            for i, queue in enumerate(cfg.queues):
                if queue not in self.queues:
                    raise KeyedValueError(f"tenants.{tenant}.queues.{i}",
                                          f"unknown queue {queue!r}")
        if self.default_priority_class is not None and (
            self.default_priority_class not in self.priority_classes
        ):
            raise KeyedValueError("default_priority_class",
                                  f"{self.default_priority_class!r} is not in priority_classes")
        return self

    def _check_prices(self) -> None:
        for name in self.prices:
            if name != "cpu" and name not in self.flavors:
                raise KeyedValueError(f"prices.{name}", f"unknown flavor {name!r} (give a "
                                      "GPU-hour price per flavor, or cpu: a CPU-hour price)")

    def _check_names(self) -> None:
        for table in ("flavors", "tenants", "cohorts", "queues", "priority_classes"):
            for name in getattr(self, table):
                if not re.fullmatch(NAME_PATTERN, name):
                    raise KeyedValueError(f"{table}.{name}", "names are letters, digits, . _ -")
        if len(set(self.topology)) != len(self.topology):
            raise KeyedValueError("topology", "levels must be distinct")

    def _check_nodes(self) -> None:
        if self.executor == "ray":
            self._check_ray()
            return
        if not self.nodes and (self.autodetect is None or not self.autodetect.enabled):
            raise KeyedValueError("nodes", "give [[nodes]] or enable [autodetect]")
        seen: set[str] = set()
        for i, node in enumerate(self.nodes):
            if node.flavor not in self.flavors:
                raise KeyedValueError(f"nodes.{i}.flavor", f"unknown flavor {node.flavor!r}")
            self._check_labels(f"nodes.{i}.labels", node.labels)
            for name in node.names():
                if name in seen:
                    raise KeyedValueError(f"nodes.{i}.name", f"node {name!r} is defined twice")
                seen.add(name)
        if self.autodetect is not None and self.autodetect.enabled:
            self._check_labels("autodetect.labels", self.autodetect.labels)
            if self.autodetect.cpu_flavor not in self.flavors:
                raise KeyedValueError("autodetect.cpu_flavor",
                                      f"unknown flavor {self.autodetect.cpu_flavor!r}")

    def _check_ray(self) -> None:
        if self.ray is None:
            raise KeyedValueError("ray", 'executor = "ray" needs a [ray] section with '
                                  "shared_dir (and address, default auto)")
        if self.nodes:
            raise KeyedValueError("nodes", 'with executor = "ray" the nodes come from Ray: '
                                  "remove [[nodes]]")
        if self.autodetect is not None and self.autodetect.enabled:
            raise KeyedValueError("autodetect", 'with executor = "ray" the nodes come from '
                                  "Ray: remove [autodetect]")
        if self.ray.cpu_flavor not in self.flavors:
            raise KeyedValueError("ray.cpu_flavor", f"unknown flavor {self.ray.cpu_flavor!r}")

    def _check_labels(self, key: str, labels: dict[str, str]) -> None:
        for level in self.topology:
            if level not in labels:
                raise KeyedValueError(key, f"missing the topology level {level!r}")

    def _check_cohorts(self) -> None:
        for name, cohort in self.cohorts.items():
            self._check_quotas(f"cohorts.{name}", cohort,
                               has_parent=cohort.parent is not None, is_queue=False)
            seen = {name}
            parent = cohort.parent
            while parent is not None:
                if parent in seen:
                    raise KeyedValueError(f"cohorts.{name}.parent", "cohorts form a cycle")
                seen.add(parent)
                parent = self.cohorts[parent].parent if parent in self.cohorts else None

    def _check_queues(self) -> None:
        for name, queue in self.queues.items():
            if queue.cohort in self.queues:
                raise KeyedValueError(f"queues.{name}.cohort",
                                      f"{queue.cohort!r} is a queue, not a cohort")
            if not queue.groups():
                raise KeyedValueError(f"queues.{name}", "give its quota: quotas (one table "
                                      "per flavor) or resource_groups")
            self._check_quotas(f"queues.{name}", queue, has_parent=queue.cohort is not None,
                               is_queue=True)

    def _check_quotas(self, key: str, owner: Quotas, has_parent: bool, is_queue: bool) -> None:
        if owner.quotas and owner.resource_groups:
            raise KeyedValueError(f"{key}.resource_groups", "give quotas or resource_groups, "
                                  "not both")
        if not owner.resource_groups:
            for flavor, quota in owner.quotas.items():
                self._check_quota(f"{key}.quotas.{flavor}", flavor, quota, None, has_parent,
                                  is_queue)
            return
        covered_by: dict[str, int] = {}
        flavor_in: dict[str, int] = {}
        for i, group in enumerate(owner.resource_groups):
            where = f"{key}.resource_groups.{i}"
            for j, name in enumerate(group.resources):
                resource = resources.canonical(name)
                if resource is None:
                    raise KeyedValueError(f"{where}.resources.{j}", f"{name!r} is not a "
                                          "resource name (gpu, cpu, memory, "
                                          "ephemeral-storage or domain/name)")
                if resource in covered_by:
                    raise KeyedValueError(f"{where}.resources.{j}", f"{resource} is already "
                                          f"covered by resource group {covered_by[resource]}"
                                          + (" (a resource is in one group only)"
                                             if covered_by[resource] != i else ""))
                covered_by[resource] = i
            for flavor, quota in group.flavors.items():
                if flavor in flavor_in:
                    raise KeyedValueError(f"{where}.flavors.{flavor}", f"flavor {flavor!r} "
                                          f"is already in resource group {flavor_in[flavor]} "
                                          "(a flavor is in one group only)")
                flavor_in[flavor] = i
                self._check_quota(f"{where}.flavors.{flavor}", flavor, quota, group.covered(),
                                  has_parent, is_queue)

    def _check_quota(self, where: str, flavor: str, quota: Quota,
                     covered: tuple[str, ...] | None, has_parent: bool, is_queue: bool) -> None:
        if flavor not in self.flavors:
            raise KeyedValueError(where, f"unknown flavor {flavor!r}")
        if quota.borrowing_limit is not None and not has_parent:
            raise KeyedValueError(f"{where}.borrowing_limit", "needs a cohort to borrow from")
        if covered is not None:  # Kueue: each flavor gives exactly the group's resources
            nominal = quota.amounts()
            missing = [r for r in covered if r not in nominal]
            if missing:
                raise KeyedValueError(where, f"no quota of {', '.join(missing)}: each flavor "
                                      f"of a group gives every resource it covers "
                                      f"({', '.join(covered)})")
            for part, amounts in (("", quota), ("borrowing_limit.", quota.borrowing_limit),
                                  ("lending_limit.", quota.lending_limit)):
                for name in amounts.amounts() if amounts is not None else ():
                    if name not in covered:
                        assert amounts is not None
                        raise KeyedValueError(f"{where}.{part}{amounts.key_of(name)}",
                                              f"{name} is not covered by this resource group "
                                              f"({', '.join(covered)})")
        if quota.lending_limit is None or not is_queue:
            return  # a cohort lends out of everything below it, not only its own quota
        nominal = quota.amounts()
        for name, lend in quota.lending_limit.amounts().items():
            if name in nominal and lend > nominal[name]:
                raise KeyedValueError(f"{where}.lending_limit.{quota.lending_limit.key_of(name)}",
                                      f"{resources.describe(name, lend)} is above the nominal "
                                      f"quota {resources.describe(name, nominal[name])}")

    def resource_names(self) -> tuple[str, ...]:
        """The cluster's resources: gpu, cpu, memory and every other one its nodes, quotas and
        weights name, in `resources.order`."""
        if self._resource_names is None:
            names: set[str] = set(self.admission_fair_sharing.resource_weights.weights())
            for node in self.nodes:
                names |= set(node.amounts())
            for owner in (*self.queues.values(), *self.cohorts.values()):
                for covered, flavors in owner.groups():
                    names |= set(covered or ())
                    for quota in flavors.values():
                        names |= quota.names()
            self._resource_names = resources.order(names)
        return self._resource_names

    # --- lookups used by the control plane and the simulator ---

    def priority(self, priority_class: str | None) -> int:
        name = priority_class or self.default_priority_class
        return 0 if name is None else self.priority_classes[name]

    def flavors_for_model(self, gpu_model: str | None) -> tuple[str, ...] | None:
        """Flavors whose gpu_model contains ``gpu_model`` (any case); None: no constraint."""
        if gpu_model is None:
            return None
        want = gpu_model.lower()
        return tuple(name for name, f in self.flavors.items()
                     if f.gpu_model is not None and want in f.gpu_model.lower())

    def check_job(self, job: JobSpec, source: str | None = None) -> None:
        """Reject a job that names things this cluster does not have."""
        if job.queue not in self.queues:
            raise ConfigError(source, "queue", f"unknown queue {job.queue!r} "
                              f"(known: {', '.join(self.queues)})")
        if job.priority_class is not None and job.priority_class not in self.priority_classes:
            raise ConfigError(source, "priority_class",
                              f"unknown priority class {job.priority_class!r}")
        for i, role in enumerate(job.job_roles()):
            self._check_role(job, role.resources, role.placement,
                             "" if job.roles is None else f"roles.{i}.", source)

    def _check_role(self, job: JobSpec, resources: RankResources, placement: Placement,
                    prefix: str, source: str | None) -> None:
        """A role's (the job's, without roles) resources and placement; ``prefix``: its key."""
        topo = placement.topology
        if topo is not None and topo not in (*self.topology, "node"):
            raise ConfigError(source, f"{prefix}placement.topology",
                              f"unknown topology level {topo!r} "
                              f"(known: {', '.join((*self.topology, 'node'))})")
        known = self.resource_names()
        for name in resources.amounts():
            if name not in known:
                key = resources.key_of(name)
                where = f'resources."{key}"' if "." in key else f"resources.{key}"
                raise ConfigError(source, prefix + where, f"this cluster has no {name} (its "
                                  f"resources: {', '.join(known)})")
        allowed = self.flavors_for_model(placement.gpu_model)
        if allowed is not None and not set(allowed) & set(self.queues[job.queue].flavor_quotas()):
            raise ConfigError(source, f"{prefix}placement.gpu_model",
                              f"queue {job.queue!r} has no flavor with GPU model "
                              f"{placement.gpu_model!r}")


def load_cluster(path: str | Path, overrides: tuple[str, ...] | list[str] = ()) -> ClusterConfig:
    """Read and validate ``cluster.toml``; mistakes become one-line ConfigErrors."""
    return loading.load(ClusterConfig, path, overrides)
