"""From inputs (trace, cluster, cuts, scaling, tenancy) to the runs of each policy."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from stoker.sched import GPU
from stoker.sim import tenancy
from stoker.sim.cluster import SimCluster, cut_nodes, from_node_list, from_toml
from stoker.sim.engine import SimOptions, Simulator
from stoker.sim.loaders import load_node_list, load_trace
from stoker.sim.metrics import RunResult
from stoker.sim.policies import resolve
from stoker.sim.trace import Trace, TraceJob, TraceNode, scale_arrivals
from stoker.spec.errors import ConfigError


@dataclass(frozen=True)
class Cut:
    """How to cut the cluster down: every k-th node, then the first N nodes, then N nodes
    spread evenly (`sample`), then a GPU total (spread evenly)."""

    first: int | None = None
    sample: int | None = None
    every: int | None = None
    gpus: float | None = None

    def describe(self) -> str:
        parts = [f"every {self.every}th node" if self.every else "",
                 f"the first {self.first} nodes" if self.first else "",
                 f"{self.sample} nodes spread evenly" if self.sample else "",
                 f"about {self.gpus:g} GPUs spread evenly" if self.gpus else ""]
        return ", ".join(p for p in parts if p) or "whole cluster"


@dataclass(frozen=True)
class SimInputs:
    trace: Path
    format: str | None = None  # None: detected from the trace's header
    cluster: Path | None = None
    node_list: Path | None = None
    cut: Cut = Cut()
    arrival_scale: float = 1.0
    tenant_by: str = "auto"
    tenants: int = 4
    max_jobs: int | None = None
    las_thresholds: tuple[float, ...] | None = None  # GPU-seconds; None: the scheduler's
    options: SimOptions = field(default_factory=SimOptions)
    times_from: Path | None = None  # an Alibaba pod list the trace's pods take their times from


@dataclass
class Prepared:
    """A loaded trace and the cluster it runs on: what every policy's run shares."""

    trace: Trace
    jobs: list[TraceJob]
    tenants: list[str]
    cluster: SimCluster
    inputs: SimInputs
    full_nodes: list[TraceNode] | None = None

    def resized(self, cut: Cut) -> Prepared:
        """The same trace on a different cut of the original cluster."""
        cluster = build_cluster(self.inputs, self.full_nodes, self.queues, cut)
        return Prepared(self.trace, self.jobs, self.tenants, cluster, self.inputs,
                        self.full_nodes)

    @property
    def queues(self) -> list[str]:
        return [q.name for q in self.cluster.queues]


def prepare(inputs: SimInputs) -> Prepared:
    """Load the trace named by `inputs` and build its cluster."""
    return prepare_trace(load_trace(inputs.trace, inputs.format, inputs.times_from), inputs)


def prepare_trace(trace: Trace, inputs: SimInputs) -> Prepared:
    """Build the cluster for an already loaded (or generated) trace."""
    if inputs.arrival_scale <= 0:
        raise ConfigError("--arrival-scale", None, "must be above 0")
    jobs = trace.jobs[: inputs.max_jobs] if inputs.max_jobs else trace.jobs
    jobs = scale_arrivals(jobs, inputs.arrival_scale)
    by = tenancy.resolve_by(jobs, inputs.tenant_by)
    nodes = load_node_list(inputs.node_list) if inputs.node_list else trace.nodes
    if inputs.cluster is not None:
        queues = []
    elif nodes is None:
        raise ConfigError(str(inputs.trace), None, "this trace has no node list: give "
                          "--cluster cluster.toml or --node-list FILE")
    else:
        queues = tenancy.default_queues(jobs, by, inputs.tenants)
    cluster = build_cluster(inputs, nodes, queues, inputs.cut)
    tenants = tenancy.assign(jobs, [q.name for q in cluster.queues], by)
    return Prepared(trace, jobs, tenants, cluster, inputs, nodes)


def build_cluster(inputs: SimInputs, nodes: list[TraceNode] | None, queues: list[str],
                  cut: Cut) -> SimCluster:
    if inputs.cluster is not None:
        cluster = from_toml(inputs.cluster, nodes)
        kept = cut_nodes(list(cluster.nodes), lambda n: n.capacity[GPU] / 1000,
                         first=cut.first, sample=cut.sample, every=cut.every, gpus=cut.gpus)
        return cluster.with_nodes(tuple(kept))
    assert nodes is not None
    kept_nodes = cut_nodes(nodes, lambda n: n.gpus, first=cut.first, sample=cut.sample,
                           every=cut.every, gpus=cut.gpus)
    source = str(inputs.node_list or inputs.trace)
    return from_node_list(kept_nodes, queues, source)


def run_policy(prepared: Prepared, policy: str,
               on_progress: Callable[[int, int], None] | None = None) -> RunResult:
    sim_policy = resolve(policy, prepared.cluster, prepared.inputs.las_thresholds)
    sim = Simulator(prepared.cluster, prepared.jobs, prepared.tenants, sim_policy,
                    prepared.inputs.options, on_progress)
    result = sim.run()
    result.trace = prepared.trace.source
    return result
