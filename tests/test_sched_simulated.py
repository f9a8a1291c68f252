"""The scheduler over many cycles, driven by the simulator: preemptions stay bounded.

A small cluster shaped like the cut-down Alibaba runs (three GPU models, fractional GPU
requests, four tenants sharing a cohort that reclaims by preemption, three priority classes,
a few long jobs among many short ones) used to show a preemption ping-pong: a job reclaimed its
quota, a borrowing job took the freed room in the next cycle, and the reclaim repeated at every
event (thousands of preemptions for 150 jobs, one job preempted hundreds of times).
"""

from __future__ import annotations

import random

import pytest

from stoker.sim.cluster import from_node_list
from stoker.sim.engine import SimOptions, Simulator
from stoker.sim.policies import resolve
from stoker.sim.tenancy import assign
from stoker.sim.trace import TraceJob, TraceNode

NODES = [TraceNode("p0", 2, "P100"), TraceNode("g0", 8, "G2"), TraceNode("g1", 8, "G2"),
         TraceNode("t0", 2, "T4")]
TENANTS = ["t0", "t1", "t2", "t3"]


def trace(jobs: int, seed: int) -> list[TraceJob]:
    """One arrival a minute; one job in five runs for hours, the rest for minutes."""
    rng = random.Random(seed)
    out, t = [], 0.0
    for i in range(jobs):
        t += rng.expovariate(1 / 60)
        hours = rng.random() < 0.2
        out.append(TraceJob(f"j{i}", t, rng.uniform(20000, 80000) if hours
                            else rng.uniform(60, 3000),
                            gpu_milli=rng.choice([320, 470, 810, 1000, 1000]),
                            vc=rng.choice(TENANTS), priority=rng.choice([0, 0, 1, 2])))
    return out


# Before the fix: 721 and 1,212 preemptions, at most 87 and 131 of one job. Measured since
# (the run is deterministic): 101 (at most 8 of one job) and 247 (16). Bounds: about 1.2x that.
BOUNDS = {"stoker": (121, 10), "stoker-fair": (296, 19)}


@pytest.mark.parametrize("policy", sorted(BOUNDS))
def test_preemptions_bounded(policy: str) -> None:
    jobs = trace(150, seed=0)
    cluster = from_node_list(NODES, TENANTS, "test")
    result = Simulator(cluster, jobs, assign(jobs, TENANTS, "vc"), resolve(policy, cluster),
                       SimOptions()).run()
    assert all(j.finish >= 0 for j in result.jobs)
    preemptions = [j.preemptions for j in result.jobs]
    total, per_job = BOUNDS[policy]
    assert sum(preemptions) <= total, sum(preemptions)
    assert max(preemptions) <= per_job, max(preemptions)
