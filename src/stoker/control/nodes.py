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
from stoker.sched import Node, Resources
from stoker.sched.config import build_nodes
from stoker.spec.cluster import ClusterConfig


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
    memory = float(psutil.virtual_memory().total)
    cpus = float(auto.cpu_slots or os.cpu_count() or 1)
    flavor = _gpu_flavor(cluster, models[0]) if models else None
    if flavor is None:
        return Node(auto.name, auto.cpu_flavor, Resources(0.0, cpus, memory), domains)
    return Node(auto.name, flavor, Resources(float(len(models)), cpus, memory), domains)


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


def node_record(node: Node, topology: Sequence[str]) -> NodeRecord:
    return NodeRecord(name=node.name, flavor=node.flavor,
                      labels=dict(zip(topology, node.domains, strict=True)),
                      capacity=node.capacity._asdict())


def with_cordons(nodes: Sequence[Node], records: Sequence[NodeRecord]) -> list[Node]:
    """Nodes with ``schedulable`` False where the store says an admin cordoned them."""
    cordoned = {r.name for r in records if r.cordoned}
    return [replace(n, schedulable=False) if n.name in cordoned else n for n in nodes]
