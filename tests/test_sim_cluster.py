"""Cutting node lists down, building the default cluster, and mapping jobs to queues."""

from __future__ import annotations

from pathlib import Path

import pytest

from stoker.sim.cluster import cut_nodes, from_node_list, from_toml
from stoker.sim.tenancy import assign, default_queues, resolve_by
from stoker.sim.trace import TraceJob, TraceNode
from stoker.spec.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sim" / "cluster.toml"
# Like real node lists: grouped by model.
NODES = [TraceNode(f"n{i}", 2 if i < 20 else 8, "T4" if i < 20 else "A100") for i in range(40)]


def gpus(nodes: list[TraceNode]) -> int:
    return sum(n.gpus for n in nodes)


def test_cuts_keep_the_mix() -> None:
    assert [n.name for n in cut_nodes(NODES, lambda n: n.gpus, every=10)] == [
        "n0", "n10", "n20", "n30"]
    ten = cut_nodes(NODES, lambda n: n.gpus, sample=10)
    assert len(ten) == 10 and {n.model for n in ten} == {"A100", "T4"}
    assert gpus(ten) == gpus(NODES) // 4
    about_30 = cut_nodes(NODES, lambda n: n.gpus, gpus=30)
    assert 30 <= gpus(about_30) < 30 + 8
    with pytest.raises(ConfigError, match="--sample-nodes"):
        cut_nodes(NODES, lambda n: n.gpus, sample=41)
    assert [n.name for n in cut_nodes(NODES, lambda n: n.gpus, first=3)] == ["n0", "n1", "n2"]
    assert {n.model for n in cut_nodes(NODES, lambda n: n.gpus, first=20)} == {"T4"}
    with pytest.raises(ConfigError, match="--nodes"):
        cut_nodes(NODES, lambda n: n.gpus, first=41)
    with pytest.raises(ConfigError, match="--gpus"):
        cut_nodes(NODES, lambda n: n.gpus, gpus=10_000)


def test_default_cluster_splits_every_model_between_queues() -> None:
    cluster = from_node_list(NODES, ["x", "y"], "test")
    assert cluster.gpus == gpus(NODES)
    assert {n.flavor for n in cluster.nodes} == {"A100", "T4"}
    assert cluster.entitlement() == {"x": gpus(NODES) / 2, "y": gpus(NODES) / 2}
    assert cluster.flavors_for(("A100",)) == ("A100",)
    assert cluster.flavors_for(()) is None


def test_cluster_toml_with_a_node_list(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    text = EXAMPLE.read_text().replace("[flavors.gpu]", '[flavors.gpu]\ngpu_model = "A100"')
    toml.write_text(text)
    cluster = from_toml(toml, [n for n in NODES if n.model == "A100"][:3])
    assert [n.flavor for n in cluster.nodes] == ["gpu"] * 3
    with pytest.raises(ConfigError, match="no flavor has gpu_model 'T4'"):
        from_toml(toml, NODES[:1])


def test_tenancy_rules() -> None:
    jobs = [TraceJob(f"j{i}", i, 10, user=f"u{i % 3}", vc="team-a" if i % 2 else "other")
            for i in range(12)]
    assert resolve_by(jobs, "auto") == "vc"
    assert default_queues(jobs, "vc", 4) == ["other", "team-a"]
    assert default_queues(jobs, "user", 2) == ["t0", "t1"]
    queues = assign(jobs, ["team-a", "q1", "q2"], "vc")
    assert all(q == "team-a" for q, j in zip(queues, jobs, strict=True) if j.vc == "team-a")
    assert len({q for q, j in zip(queues, jobs, strict=True) if j.vc == "other"}) == 1
    assert assign(jobs, ["a", "b"], "user") == assign(list(reversed(jobs)), ["a", "b"],
                                                      "user")[::-1]
    with pytest.raises(ConfigError, match="--tenant-by"):
        resolve_by(jobs, "team")
