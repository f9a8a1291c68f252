"""Prometheus metrics: job counts, queue usage, node health and goodput read from the store at
scrape time, plus counters of reconcile cycles, decisions and API requests. A tenant's scrape
holds its own queues' series only (no cluster-wide counters: they would tell of other
tenants' work)."""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections import defaultdict
from collections.abc import Collection, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from stoker.control import node_health
from stoker.control.accounting import outcome_class
from stoker.control.goodput import LOSSES, Goodput, total
from stoker.control.plane import ControlPlane
from stoker.control.reconciler import CycleStats
from stoker.control.store import NodeRecord, Store
from stoker.spec.api import JobState


class StateCollector(Collector):
    """Per-queue series of ``queues`` (None: all of them)."""

    def __init__(self, plane: ControlPlane, queues: Collection[str] | None = None) -> None:
        self.plane = plane
        self.queues = queues

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        jobs = GaugeMetricFamily("stoker_jobs", "Jobs by queue and state",
                                 labels=["queue", "state"])
        tally = Tally((j.queue, j.state.value) for j in self.plane.store.list_jobs())
        shown = [q for q in self.plane.cluster.queues if self.queues is None or q in self.queues]
        for queue in shown:
            for state in JobState:
                jobs.add_metric([queue, state.value], tally[(queue, state.value)])
        yield jobs
        labels = ["queue", "flavor", "resource"]
        used = GaugeMetricFamily("stoker_queue_used", "Resources held by admitted jobs",
                                 labels=labels)
        nominal = GaugeMetricFamily("stoker_queue_nominal", "Nominal quota", labels=labels)
        borrowed = GaugeMetricFamily("stoker_queue_borrowed", "Used above the nominal quota",
                                     labels=labels)
        for u in self.plane.queue_usage(shown):
            key = [u.queue, u.flavor, u.resource]
            used.add_metric(key, u.used)
            borrowed.add_metric(key, u.borrowed)
            if u.nominal is not None:
                nominal.add_metric(key, u.nominal)
        yield from (used, nominal, borrowed)
        if self.queues is None:  # nodes and cluster-wide goodput are the admin's
            yield from node_metrics(self.plane.store.nodes())
            yield from goodput_metrics(self.plane)
            yield from accounting_metrics(self.plane.store)


def goodput_metrics(plane: ControlPlane) -> list[GaugeMetricFamily | CounterMetricFamily]:
    """All-time goodput (`stoker.control.goodput`) in rank-seconds: the cluster's ratio, what
    each (tenant, queue) held and used productively, and what was lost, by reason."""
    jobs = plane.store.list_jobs()
    parts = plane.goodput.per_job(jobs, time.time())
    cluster = total(g for _, g in parts)
    ratio = GaugeMetricFamily("stoker_goodput_ratio",
                              "Productive over allocated rank-seconds, all time",
                              labels=["scope"])
    if cluster.ratio is not None:
        ratio.add_metric(["cluster"], cluster.ratio)
    allocated = CounterMetricFamily("stoker_allocated_seconds",
                                    "Allocated rank-seconds (admission to release)",
                                    labels=["tenant", "queue"])
    productive = CounterMetricFamily("stoker_productive_seconds",
                                     "Productive rank-seconds", labels=["tenant", "queue"])
    groups: dict[tuple[str, str], list[Goodput]] = defaultdict(list)
    for job, g in parts:
        groups[(job.tenant, job.queue)].append(g)
    for key, gs in sorted(groups.items()):
        t = total(gs)
        allocated.add_metric(list(key), t.allocated_s)
        productive.add_metric(list(key), t.productive_s)
    lost = CounterMetricFamily("stoker_lost_seconds",
                               "Allocated rank-seconds not productive, by reason",
                               labels=["reason"])
    for reason in LOSSES:
        lost.add_metric([reason], cluster.lost.get(reason, 0.0))
    queued = CounterMetricFamily("stoker_queued_seconds",
                                 "Wall seconds jobs waited in the queue (not allocated)")
    queued.add_metric([], cluster.queued_s)
    return [ratio, allocated, productive, lost, queued]


def accounting_metrics(store: Store) -> list[GaugeMetricFamily | CounterMetricFamily]:
    """GPU- and CPU-seconds of the ended allocations by tenant, queue, flavor and outcome
    class (`stoker.control.accounting`), summed by the database, so they only grow; and the
    GPUs and CPUs held now."""
    labels = ["tenant", "queue", "flavor", "outcome"]
    gpu = CounterMetricFamily("stoker_gpu_seconds", "GPU-seconds held by ended allocations "
                              "(admission to release), by how they ended", labels=labels)
    cpu = CounterMetricFamily("stoker_cpu_seconds", "CPU-seconds held by ended allocations "
                              "(admission to release), by how they ended", labels=labels)
    sums: dict[tuple[str, str, str, str], list[float]] = defaultdict(lambda: [0.0, 0.0])
    for t in store.attempt_totals():
        key = (t.tenant, t.queue, t.flavor, outcome_class(t.outcome))
        sums[key][0] += t.gpu_s
        sums[key][1] += t.cpu_s
    for key, (gpu_s, cpu_s) in sorted(sums.items()):
        gpu.add_metric(list(key), gpu_s)
        cpu.add_metric(list(key), cpu_s)
    held = ["tenant", "queue", "flavor"]
    gpus = GaugeMetricFamily("stoker_gpus_held", "GPUs held by admitted jobs now", labels=held)
    cpus = GaugeMetricFamily("stoker_cpus_held", "CPUs held by admitted jobs now", labels=held)
    now: dict[tuple[str, str, str], list[float]] = defaultdict(lambda: [0.0, 0.0])
    for a in store.attempts(start=time.time()):
        now[(a.tenant, a.queue, a.flavor)][0] += a.gpus
        now[(a.tenant, a.queue, a.flavor)][1] += a.cpus
    for key3, (g, c) in sorted(now.items()):
        gpus.add_metric(list(key3), g)
        cpus.add_metric(list(key3), c)
    return [gpu, cpu, gpus, cpus]


NODE_STATES = ("healthy", "suspect", "unhealthy", "draining", "drained")


def node_metrics(nodes: Sequence[NodeRecord]) -> list[GaugeMetricFamily]:
    """Each node's state (1 for the one it is in) and whether it is flagged for repair."""
    states = GaugeMetricFamily("stoker_node_state", "Node state (1: the state it is in)",
                               labels=["node", "state"])
    repair = GaugeMetricFamily("stoker_node_repair_needed",
                               "1 when the node failed failures_to_flag checks in a row",
                               labels=["node"])
    failures = GaugeMetricFamily("stoker_node_check_failures",
                                 "Consecutive failed health checks", labels=["node"])
    for node in nodes:
        now = node_health.state(node)
        for name in NODE_STATES:
            states.add_metric([node.name, name], float(name == now))
        repair.add_metric([node.name], float(node.repair))
        failures.add_metric([node.name], float(node.failures))
    return [states, repair, failures]


class Metrics:
    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane
        self.registry = CollectorRegistry()
        self.registry.register(StateCollector(plane))
        self.cycles = Histogram("stoker_reconcile_seconds", "Duration of a reconcile cycle",
                                registry=self.registry,
                                buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5))
        self.admitted = Counter("stoker_admissions", "Jobs admitted", registry=self.registry)
        self.preempted = Counter("stoker_preemptions", "Preemptions decided",
                                 registry=self.registry)
        self.requests = Counter("stoker_api_requests", "API requests",
                                ["method", "status"], registry=self.registry)
        plane.reconciler.on_cycle = self.on_cycle

    def on_cycle(self, stats: CycleStats) -> None:
        self.cycles.observe(stats.seconds)
        self.admitted.inc(stats.admitted)
        self.preempted.inc(stats.preempted)

    def render(self, queues: Collection[str] | None = None) -> bytes:
        """Everything, or (a tenant's scrape) the series of ``queues`` alone."""
        if queues is None:
            return generate_latest(self.registry)
        own = CollectorRegistry()
        own.register(StateCollector(self.plane, queues))
        return generate_latest(own)
