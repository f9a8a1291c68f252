"""Multi-node gangs on hand-computed traces: a request larger than every node runs as a gang
across nodes where the trace allows it (`multi_node`), and stays on one node when it fits one."""

from __future__ import annotations

import pytest

from stoker.sim.cluster import from_node_list
from stoker.sim.engine import Simulator
from stoker.sim.loaders.common import gang_shape, largest_node, split_to_fit
from stoker.sim.policies import resolve
from stoker.sim.trace import TraceJob, TraceNode
from test_sim_engine import by_id, run

TWO_FOUR = [TraceNode("n0", 4), TraceNode("n1", 4)]


@pytest.mark.parametrize(("gpus", "largest", "shape"), [
    (4, 4, (1, 4)), (8, 4, (2, 4)), (8, 2, (4, 2)), (6, 4, (2, 3)), (5, 4, (5, 1)),
    (8, 8, (1, 8)), (3, 0, (1, 3)),
])
def test_gang_shape(gpus: int, largest: int, shape: tuple[int, int]) -> None:
    assert gang_shape(gpus, largest) == shape


def test_split_to_fit_only_where_the_trace_allows() -> None:
    pod = TraceJob("p", 0, 10, gpus_per_rank=8, cpus_per_rank=16, memory_mib_per_rank=1000,
                   multi_node=True)
    gang = split_to_fit(pod, 4)
    assert (gang.ranks, gang.gpus_per_rank, gang.cpus_per_rank, gang.memory_mib_per_rank) == (
        2, 4, 8.0, 500)
    assert split_to_fit(pod, 8) is pod
    fixed = TraceJob("f", 0, 10, gpus_per_rank=8)
    assert split_to_fit(fixed, 4) is fixed
    assert largest_node([TraceNode("a", 2, "T4"), TraceNode("b", 8, "V100")], ("T4",)) == 2
    assert largest_node([TraceNode("a", 2, "T4")], ("A100",)) == 0


def test_an_eight_gpu_pod_runs_as_a_gang_of_two_whole_nodes() -> None:
    # Alone on two 4-GPU nodes: 2 ranks of 4, one per node, 0-10. Without `multi_node` the
    # same request is skipped as never fitting.
    cluster = from_node_list(TWO_FOUR, ["t0"], "test")
    pod = TraceJob("P", 0, 10, gpus_per_rank=8, multi_node=True)
    for policy in ("fifo", "fifo-backfill", "sjf", "las", "stoker"):
        sim = Simulator(cluster, [pod], ["t0"], resolve(policy, cluster))
        sim.run_until(1.0)
        assert (sim.jobs[0].ranks, sim.jobs[0].nodes) == (2, (0, 1))
        assert by_id(run([pod], TWO_FOUR, policy)) == {"P": (10, 0)}
    fixed = Simulator(cluster, [TraceJob("P", 0, 10, gpus_per_rank=8)], ["t0"],
                      resolve("fifo", cluster))
    assert fixed.jobs == [] and sum(fixed.skipped.values()) == 1


def test_a_job_that_fits_one_node_waits_for_one() -> None:
    # A (3 GPUs) 0-10 on n0; B (2 GPUs, at 1) best-fits n1, 1-11. C (3 GPUs, at 2) would find 3
    # free GPUs across the two nodes, but fits one node, so it stays on one: it waits for A's
    # node and runs 10-15.
    jobs = [TraceJob("A", 0, 10, gpus_per_rank=3), TraceJob("B", 1, 10, gpus_per_rank=2),
            TraceJob("C", 2, 5, gpus_per_rank=3, multi_node=True)]
    for policy in ("fifo", "fifo-backfill"):
        assert by_id(run(jobs, TWO_FOUR, policy)) == {
            "A": (10, 0), "B": (11, 0), "C": (15, 8)}
