"""The cluster's nodes: the config's ``[[nodes]]`` plus this machine when autodetection is on.

This machine offers its GPUs (found through NVML, with their model) or, without any, a number of
CPU slots (``autodetect.cpu_slots``, default: its CPU count).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence
from dataclasses import replace

import psutil  # type: ignore[import-untyped]

from stoker.control.store import NodeRecord
from stoker.sched import Node
from stoker.sched.config import NODE_MISSING, build_nodes, resource_space
from stoker.spec.cluster import ClusterConfig
from stoker.spec.resources import written


def gpu_models() -> list[str]:
    """The model name of each GPU of this machine, through NVML; [] without a driver."""
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return []
    if nvml.nvmlInit_v2() != 0:
        return []
    try:
        count = ctypes.c_uint(0)
        if nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)) != 0:
            return []
        names: list[str] = []
        for index in range(count.value):
            handle = ctypes.c_void_p()
            name = ctypes.create_string_buffer(96)
            if nvml.nvmlDeviceGetHandleByIndex_v2(index, ctypes.byref(handle)) != 0:
                return names
            nvml.nvmlDeviceGetName(handle, name, len(name))
            names.append(name.value.decode(errors="replace"))
        return names
    finally:
        nvml.nvmlShutdown()


def local_node(cluster: ClusterConfig, models: Sequence[str] | None = None) -> Node | None:
    """This machine as a node, or None when autodetection is off."""
    auto = cluster.autodetect
    if auto is None or not auto.enabled:
        return None
    models = gpu_models() if models is None else models
    domains = tuple(auto.labels[level] for level in cluster.topology)
    memory = int(psutil.virtual_memory().total)
    cpus = (auto.cpu_slots or os.cpu_count() or 1) * 1000
    flavor = _gpu_flavor(cluster, models[0]) if models else None
    space = resource_space(cluster)
    offered = {"gpu": len(models) * 1000 if flavor else 0, "cpu": cpus, "memory": memory}
    capacity = space.vector(offered, missing=NODE_MISSING)
    return Node(auto.name, flavor or auto.cpu_flavor, capacity, domains)


def _gpu_flavor(cluster: ClusterConfig, model: str) -> str | None:
    for name, flavor in cluster.flavors.items():
        if flavor.gpu_model and flavor.gpu_model.lower() in model.lower():
            return name
    return None


def cluster_nodes(cluster: ClusterConfig, models: Sequence[str] | None = None) -> list[Node]:
    nodes = list(build_nodes(cluster))
    local = local_node(cluster, models)
    if local is not None:
        nodes.append(local)
    return nodes


def node_record(cluster: ClusterConfig, node: Node) -> NodeRecord:
    """What the store keeps of a node; capacity by resource name, as written (GPUs, CPUs,
    bytes), unlimited resources left out."""
    amounts = resource_space(cluster).amounts(node.capacity)
    return NodeRecord(name=node.name, flavor=node.flavor,
                      labels=dict(zip(cluster.topology, node.domains, strict=True)),
                      capacity={name: written(name, v) for name, v in amounts.items()})


def with_cordons(nodes: Sequence[Node], records: Sequence[NodeRecord]) -> list[Node]:
    """Nodes with ``schedulable`` False where the store says they are cordoned (by an admin
    or by the health checks) or draining."""
    cordoned = {r.name for r in records if r.cordoned or r.drain}
    return [replace(n, schedulable=False) if n.name in cordoned else n for n in nodes]
