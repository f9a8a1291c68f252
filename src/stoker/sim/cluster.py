"""The simulated cluster: the scheduler's queues, cohorts and nodes, from the same
`cluster.toml` the server reads or from a trace's node list, optionally cut down.

Without a cluster.toml, each GPU model becomes a flavor and each tenant a queue in one cohort,
with an equal share of every flavor as nominal quota and no borrowing limit. Preemption: a queue
under its nominal quota takes it back from every borrowing queue's jobs
(``reclaim_within_cohort = "Any"``), and a job yields to one of higher priority of its queue
(``within_queue = "LowerPriority"``), under the default ``[scheduler] order = "las"`` also to
one of the same priority with less attained service (a lower level). Reclaiming only by level
("LowerPriority" under "las") gave a lower mean JCT but let queues wait for their nominal quota
(docs/benchmarks.md, "Stoker's default policy").
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from stoker.sched import GPU, UNLIMITED, Cohort, Node, Queue, ResourceSpace
from stoker.sched.config import build_cohorts, build_nodes, build_queues, resource_space
from stoker.sim.trace import TraceNode
from stoker.spec import loading
from stoker.spec.cluster import ClusterConfig, load_cluster
from stoker.spec.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class SimCluster:
    config: ClusterConfig
    nodes: tuple[Node, ...]
    queues: tuple[Queue, ...]
    cohorts: tuple[Cohort, ...]
    source: str

    @property
    def gpus(self) -> float:
        return sum(n.capacity[GPU] for n in self.nodes) / 1000

    @property
    def space(self) -> ResourceSpace:
        return resource_space(self.config)

    @property
    def topology(self) -> tuple[str, ...]:
        return self.config.topology

    def entitlement(self) -> dict[str, float]:
        """Nominal GPU quota of each queue (summed over flavors)."""
        return {q.name: sum(fq.nominal[GPU] for fq in q.quotas if fq.nominal[GPU] < UNLIMITED)
                / 1000 for q in self.queues}

    def flavors_for(self, models: tuple[str, ...]) -> tuple[str, ...] | None:
        """Flavors matching any of the allowed GPU models; None when any model will do."""
        if not models:
            return None
        found: list[str] = []
        for model in models:
            for flavor in self.config.flavors_for_model(model) or ():
                if flavor not in found:
                    found.append(flavor)
        return tuple(found)

    def with_nodes(self, nodes: tuple[Node, ...]) -> SimCluster:
        return replace(self, nodes=nodes)

    def describe(self) -> str:
        return f"{len(self.nodes)} nodes, {self.gpus:g} GPUs ({self.source})"


def from_toml(path: str | Path, node_list: list[TraceNode] | None = None) -> SimCluster:
    """The cluster.toml's queues and quotas; its [[nodes]], or `node_list` mapped to its flavors."""
    cfg = load_cluster(path)
    if node_list is None:
        if not cfg.nodes:
            raise ConfigError(str(path), "nodes", "the simulator needs explicit [[nodes]] "
                              "(autodetection is for the live server); or give a node list")
        nodes = build_nodes(cfg)
    else:
        nodes = tuple(_node_for_config(cfg, n, str(path)) for n in node_list)
    return SimCluster(cfg, nodes, build_queues(cfg), build_cohorts(cfg), str(path))


def from_node_list(nodes: list[TraceNode], queues: list[str], source: str) -> SimCluster:
    """A default cluster config for `nodes` shared by `queues` (see the module docstring)."""
    cfg = default_config(nodes, queues, source)
    return SimCluster(cfg, build_nodes(cfg), build_queues(cfg), build_cohorts(cfg), source)


def default_config(nodes: list[TraceNode], queues: list[str], source: str) -> ClusterConfig:
    if not nodes:
        raise ConfigError(source, None, "the node list is empty (after cutting it down?)")
    levels = [k for k, _ in nodes[0].labels]
    flavors: dict[str, dict[str, Any]] = {}
    totals: dict[str, float] = {}
    node_tables = []
    for n in nodes:
        flavor = flavor_name(n.model)
        flavors[flavor] = {"gpu_model": n.model} if n.model else {}
        totals[flavor] = totals.get(flavor, 0.0) + n.gpus
        node_tables.append({"name": _node_name(n.name), "flavor": flavor, "gpus": n.gpus,
                            "labels": dict(n.labels)})
    share = 1.0 / len(queues)
    preemption = {"within_queue": "LowerPriority", "reclaim_within_cohort": "Any",
                  "borrow_within_cohort": "Never"}
    data = {
        "topology": levels,
        "flavors": flavors,
        "nodes": node_tables,
        "cohorts": {"all": {}},
        "queues": {q: {"cohort": "all", "preemption": preemption,
                       "quotas": {f: {"gpus": total * share} for f, total in totals.items()}}
                   for q in queues},
    }
    return loading.validate(ClusterConfig, data, source)


def flavor_name(model: str) -> str:
    """A flavor name for a GPU model ('' -> 'gpu')."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", model).strip("-._")
    return name or "gpu"


def _node_name(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "-", name)
    return cleaned if cleaned[:1].isalnum() else f"n{cleaned}"


def _node_for_config(cfg: ClusterConfig, node: TraceNode, source: str) -> Node:
    flavors = cfg.flavors_for_model(node.model) if node.model else tuple(cfg.flavors)
    if not flavors:
        raise ConfigError(source, "flavors", f"no flavor has gpu_model {node.model!r} "
                          f"(node {node.name} of the node list)")
    labels = dict(node.labels)
    domains = tuple(labels.get(level, "-") for level in cfg.topology)
    capacity = resource_space(cfg).vector({"gpu": round(node.gpus * 1000)}, missing=UNLIMITED)
    return Node(_node_name(node.name), flavors[0], capacity, domains)


def cut_nodes(nodes: list[T], gpus_of: Callable[[T], float], *, first: int | None = None,
              sample: int | None = None, every: int | None = None,
              gpus: float | None = None) -> list[T]:
    """Keep every k-th node, then the `first` N nodes in list order, then `sample` nodes spread
    evenly over the list, then the fewest nodes (spread evenly) holding at least `gpus` GPUs.
    Spreading keeps the mix of GPU models and sizes; `first` keeps the list's head as it is."""
    if every is not None:
        if every < 1:
            raise ConfigError("--every", None, "must be at least 1")
        nodes = nodes[::every]
    if first is not None:
        if not 1 <= first <= len(nodes):
            raise ConfigError("--nodes", None, f"must be between 1 and {len(nodes)}")
        nodes = nodes[:first]
    if sample is not None:
        if not 1 <= sample <= len(nodes):
            raise ConfigError("--sample-nodes", None, f"must be between 1 and {len(nodes)}")
        nodes = spread(nodes, sample)
    if gpus is not None:
        total = sum(gpus_of(n) for n in nodes)
        if not 0 < gpus <= total:
            raise ConfigError("--gpus", None, f"must be more than 0 and at most {total:g}")
        low, high = 1, len(nodes)
        while low < high:  # the GPUs of spread(nodes, k) grow with k
            mid = (low + high) // 2
            if sum(gpus_of(n) for n in spread(nodes, mid)) >= gpus:
                high = mid
            else:
                low = mid + 1
        nodes = spread(nodes, low)
    return nodes


def spread(items: list[T], k: int) -> list[T]:
    """k items at evenly spaced positions of the list."""
    n = len(items)
    return [items[(i * n) // k] for i in range(k)]
