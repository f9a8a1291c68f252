"""A real Ray cluster for the tests: one per session, every node on 127.0.0.1.

`ray_cluster` starts a head (no CPUs: it holds no ranks) and three worker nodes of 2 CPUs,
``n0`` and ``n1`` labelled ``stoker/rack = r0``, ``n2`` in ``r1``, and connects this process
to it (namespace ``stoker``, where the servers under test put their actors). Tests may add
and remove nodes. Ray binds 127.0.0.1 only with ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (else
Ray 2.60 advertises the machine's public address). Without Ray the tests are skipped, or fail
naming what is missing when ``CI=true`` (CI must run them).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
NAMESPACE = "stoker"


class RayTestCluster:
    def __init__(self, temp_dir: Path) -> None:
        from ray.cluster_utils import Cluster

        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "include_dashboard": False, "temp_dir": str(temp_dir)})
        self.address: str = self.cluster.address
        self.nodes: dict[str, Any] = {}

    def add(self, name: str, rack: str, cpus: int = 2) -> None:
        self.nodes[name] = self.cluster.add_node(
            num_cpus=cpus, labels={"stoker/node": name, "stoker/rack": rack})
        self.cluster.wait_for_nodes()

    def remove(self, name: str) -> None:
        """The node dies: its raylet and every worker on it are killed."""
        self.cluster.remove_node(self.nodes.pop(name), allow_graceful=False)

    def node_ids(self) -> dict[str, str]:
        """Alive Ray node id -> its ``stoker/node`` label."""
        import ray

        return {n["NodeID"]: n["Labels"].get("stoker/node", "") for n in ray.nodes()
                if n["Alive"]}

    def shutdown(self) -> None:
        import ray

        ray.shutdown()
        self.cluster.shutdown()


def _missing(why: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and Ray is missing: {why}", pytrace=False)
    pytest.skip(f"Ray is missing: {why}")


def _ray_temp_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ray's session files go under the test's temp dir. Ray also writes the cluster's address
    to its *default* temp dir (``$RAY_TMPDIR/ray``) whatever ``temp_dir`` says, and fails when
    that directory does not exist, as on a fresh CI machine: point it at one that does."""
    base = tmp_path_factory.mktemp("ray")
    os.environ["RAY_TMPDIR"] = str(base)
    (base / "ray").mkdir()
    return base / "ray"


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayTestCluster]:
    os.environ.update(ENV)  # read when Ray is imported
    try:
        import ray
    except ImportError as e:
        _missing(f"cannot import ray ({e}); pip install 'stoker[ray]'")
    cluster = RayTestCluster(_ray_temp_dir(tmp_path_factory))
    try:
        cluster.add("n0", "r0")
        cluster.add("n1", "r0")
        cluster.add("n2", "r1")
        ray.init(address=cluster.address, namespace=NAMESPACE, logging_level="WARNING",
                 log_to_driver=False)
        yield cluster
    finally:
        cluster.shutdown()
