"""Stoker's default policy in the simulator, hand-computed: within each queue the job with the
least attained service goes first and preempts one of its queue that has run longer (a higher
LAS level); with checkpoints on SIGTERM the victim loses no work. Kueue's order
(`stoker-kueue`) lets the long job run on."""

from __future__ import annotations

import math

import pytest

from stoker.sim.cluster import from_node_list
from stoker.sim.engine import SimOptions, Simulator
from stoker.sim.policies import resolve
from stoker.sim.tenancy import assign
from stoker.sim.trace import TraceJob, TraceNode
from test_sim_engine import by_id

# One GPU, one tenant. Y (100 s) starts at 0 and passes the 5 GPU-second level at 5; Z (5 s)
# arrives at 10 at level 0.
JOBS = [TraceJob("Y", 0, 100), TraceJob("Z", 10, 5)]


def replay(policy: str, on_preempt: bool) -> dict[str, tuple[float, float]]:
    cluster = from_node_list([TraceNode("n0", 1)], ["t0"], "test")
    options = SimOptions(checkpoint_interval=math.inf, checkpoint_on_preempt=on_preempt)
    sim = Simulator(cluster, JOBS, assign(JOBS, ["t0"], "vc"),
                    resolve(policy, cluster, las_thresholds=(5.0,)), options)
    return by_id(sim.run())


@pytest.mark.parametrize(("on_preempt", "y_finish"), [(True, 105), (False, 115)])
def test_least_attained_service_preempts_within_the_queue(on_preempt: bool,
                                                          y_finish: float) -> None:
    # Z preempts Y at 10 and runs 10-15. Y resumes at 15 with 90 s left when it checkpoints on
    # SIGTERM (ends at 105), or from scratch without a checkpoint (100 s: ends at 115).
    assert replay("stoker", on_preempt) == {"Y": (y_finish, 5), "Z": (15, 0)}


def test_kueue_order_lets_the_long_job_run() -> None:
    # Equal priorities: Z waits for Y, 100-105.
    assert replay("stoker-kueue", True) == {"Y": (100, 0), "Z": (105, 90)}
