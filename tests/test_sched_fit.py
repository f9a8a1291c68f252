"""`stoker.sched.fit.never_fits`: whether a gang can ever be placed, the one answer the control
plane's submission check, the simulator and the reconciler's node avoidance share."""

from __future__ import annotations

from sched_helpers import res
from stoker.sched import UNLIMITED, Node
from stoker.sched.fit import never_fits, ranks_per_node

# Two flavors: h (two 8-GPU nodes in racks r0 and r1) and a (one 4-GPU node in r0).
NODES = [Node("h0", "h", res(8, 64, 2**40), ("z", "r0")),
         Node("h1", "h", res(8, 64, 2**40), ("z", "r1")),
         Node("a0", "a", res(4, 64, 2**40), ("z", "r0"))]
TOPOLOGY = ("zone", "rack")


def test_a_node_holds_ranks_by_its_scarcest_resource() -> None:
    assert ranks_per_node(res(2, 16, 0), res(8, 64, 2**40)) == 4
    assert ranks_per_node(res(2, 40, 0), res(8, 64, 2**40)) == 1
    assert ranks_per_node(res(0, 0, 0), res(8, 64, 2**40)) > 10**6  # asks nothing limited
    assert ranks_per_node(res(1, 1, 0), (8000, UNLIMITED, UNLIMITED)) == 8


def test_a_gang_runs_on_one_flavor() -> None:
    """20 GPUs in all, but no one flavor has 20: a gang never spans flavors."""
    assert never_fits(2, res(8, 1, 0), NODES) is None
    unfit = never_fits(5, res(4, 1, 0), NODES)
    assert unfit is not None and unfit.why == "gang" and unfit.room == 4
    assert never_fits(1, res(4, 1, 0), NODES, flavors={"a"}) is None
    assert never_fits(2, res(4, 1, 0), NODES, flavors={"a"}) == ("gang", 1)


def test_no_node_holds_a_rank_or_none_of_the_flavor() -> None:
    assert never_fits(1, res(16, 1, 0), NODES) == ("rank", 0)
    assert never_fits(1, res(1, 1, 0), NODES, flavors={"b200"}) == ("no_flavor", 0)


def test_a_required_domain_holds_the_whole_gang() -> None:
    assert never_fits(2, res(8, 1, 0), NODES, None, TOPOLOGY, "rack", required=True) == (
        "domain", 1)
    assert never_fits(2, res(8, 1, 0), NODES, None, TOPOLOGY, "zone", required=True) is None
    assert never_fits(2, res(8, 1, 0), NODES, None, TOPOLOGY, "rack") is None  # preferred
    assert never_fits(3, res(4, 1, 0), NODES, None, TOPOLOGY, "node", required=True) == (
        "domain", 2)


def test_nodes_to_avoid_are_left_out() -> None:
    assert never_fits(2, res(8, 1, 0), NODES, avoid={"h1"}) == ("gang", 1)
    assert never_fits(1, res(8, 1, 0), NODES, avoid={"h1"}) is None
