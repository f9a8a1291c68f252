"""The scheduler's nodes, read from a Ray cluster.

Each alive Ray node offering CPUs or GPUs becomes a `Node`. Its labels (``ray start --labels``,
KubeRay's ``rayStartParams``) carry Stoker's names, under the ``stoker/`` prefix:

- ``stoker/node``: the node's name (default: the first 12 hex digits of its Ray node id);
- ``stoker/<level>`` for each level of the config's ``topology`` (``stoker/rack = "r7"``); a
  node without one is a domain of its own at that level (``?<name>``), so it never shares a
  rack (or zone) with another by accident;
- ``stoker/flavor``: its flavor (default: the flavor whose ``gpu_model`` matches the GPUs'
  Ray ``accelerator_type:*`` resource, else ``ray.cpu_flavor``).

Capacity: Ray's ``GPU``, ``CPU`` and ``memory`` resources, and every Ray custom resource named
as one of the cluster's resources (``example.com/gpu``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from stoker.sched import UNLIMITED, Node
from stoker.sched.config import resource_space
from stoker.spec.cluster import ClusterConfig
from stoker.spec.resources import scale

PREFIX = "stoker/"
ID_LABEL = "ray.io/node-id"
ACCELERATOR = "accelerator_type:"


@dataclass(frozen=True)
class RayNode:
    """A Ray node as the executor needs it: where to pin bundles and where rank 0 listens."""

    node: Node
    node_id: str
    address: str


def ray_node(info: Mapping[str, Any], cluster: ClusterConfig) -> RayNode | None:
    """One entry of ``ray.nodes()``; None when it is dead or offers neither CPUs nor GPUs."""
    resources: Mapping[str, float] = info.get("Resources") or {}
    if not info.get("Alive") or not (resources.get("CPU") or resources.get("GPU")):
        return None
    node_id = str(info["NodeID"])
    labels: Mapping[str, str] = info.get("Labels") or {}
    name = labels.get(PREFIX + "node") or node_id[:12]
    domains = tuple(labels.get(PREFIX + level) or f"?{name}" for level in cluster.topology)
    gpus = float(resources.get("GPU", 0.0))
    space = resource_space(cluster)
    offered = {"gpu": gpus, "cpu": resources.get("CPU", 0.0),
               "memory": resources.get("memory", 0.0)}
    offered |= {name: resources[name] for name in space.names[3:] if name in resources}
    capacity = space.vector({n: int(float(v) * scale(n)) for n, v in offered.items()},
                            missing={"ephemeral-storage": UNLIMITED})
    flavor = labels.get(PREFIX + "flavor") or _flavor(cluster, resources, gpus)
    return RayNode(Node(name, flavor, capacity, domains), node_id,
                   str(info.get("NodeManagerAddress", "")))


def ray_nodes(infos: Iterable[Mapping[str, Any]], cluster: ClusterConfig) -> list[RayNode]:
    """The usable nodes, by name; of two alive nodes with one name, the first keeps it."""
    found: dict[str, RayNode] = {}
    for info in infos:
        node = ray_node(info, cluster)
        if node is not None:
            found.setdefault(node.node.name, node)
    return [found[name] for name in sorted(found)]


def _flavor(cluster: ClusterConfig, resources: Mapping[str, float], gpus: float) -> str:
    assert cluster.ray is not None
    if gpus:
        models = [key[len(ACCELERATOR):] for key in resources if key.startswith(ACCELERATOR)]
        for model in models:
            for name, flavor in cluster.flavors.items():
                if flavor.gpu_model and flavor.gpu_model.lower() in model.lower():
                    return name
    return cluster.ray.cpu_flavor
