"""The published baselines on hand-computed traces: strict FIFO's head-of-line blocking against
FIFO with backfill, best-fit over every node a job may use whatever its GPU model, the
lowest-index tie-break, and results that do not depend on the node list's order."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stoker.sched import Policy
from stoker.sim.cluster import from_node_list
from stoker.sim.engine import SimOptions, Simulator
from stoker.sim.metrics import RunResult
from stoker.sim.policies import POLICIES, SimPolicy, resolve
from stoker.sim.trace import TraceJob, TraceNode
from test_sim_engine import by_id, run

BASELINES = ("fifo", "fifo-backfill", "sjf", "srtf", "las")
# SRTF preempts where a later job is shorter than what a running one has left: the placement
# tests whose later job is such a one leave it out (its own tests are below).
UNPREEMPTED = tuple(p for p in BASELINES if p != "srtf")
ONE = [TraceNode("n0", 1)]
FOUR = [TraceNode("n0", 4)]
# A (2 GPUs) runs 0-10. B (4 GPUs) cannot start before A ends. C (1 GPU) fits next to A.
HEAD = [TraceJob("A", 0, 10, gpus_per_rank=2), TraceJob("B", 1, 5, gpus_per_rank=4),
        TraceJob("C", 2, 3, gpus_per_rank=1)]


def test_policy_names() -> None:
    assert set(BASELINES) <= set(POLICIES)
    cluster = from_node_list(FOUR, ["t0"], "test")
    assert resolve("fifo", cluster).strict
    assert not resolve("fifo-backfill", cluster).strict


def test_strict_fifo_blocks_behind_its_head() -> None:
    # B heads the queue from 1 to 10 and blocks C, which would fit: B 10-15, C 15-18.
    assert by_id(run(HEAD, FOUR, "fifo")) == {"A": (10, 0), "B": (15, 9), "C": (18, 13)}


def test_fifo_backfill_passes_a_job_that_does_not_fit() -> None:
    # C starts next to A at 2 (2-5); B when A ends: 10-15.
    assert by_id(run(HEAD, FOUR, "fifo-backfill")) == {"A": (10, 0), "B": (15, 9), "C": (5, 0)}


def test_sjf_passes_the_long_head() -> None:
    # At 0 only A; at 10 B (5 s) and C... C started at 2 (backfill), B 10-15. With a second
    # 4-GPU job D (1 s) arriving at 1, SJF starts D before B at 10: D 10-11, B 11-16.
    jobs = [*HEAD, TraceJob("D", 1, 1, gpus_per_rank=4)]
    assert by_id(run(jobs, FOUR, "sjf")) == {"A": (10, 0), "B": (16, 10), "C": (5, 0),
                                             "D": (11, 9)}
    # Strict FIFO: B 10-15, D 15-16 (arrived at 1, the same instant as B but after it), C 16-19.
    assert by_id(run(jobs, FOUR, "fifo")) == {"A": (10, 0), "B": (15, 9), "C": (19, 14),
                                              "D": (16, 14)}


# Two GPU models, the big one listed first: best-fit over both puts a 2-GPU job on the small
# node and leaves the 8-GPU node for the 8-GPU job. (Flavors tried in the order of the node
# list put it on the big node and made the 8-GPU job wait for it.)
MIXED = [TraceNode("big", 8, "V100"), TraceNode("small", 2, "A100")]
MIXED_JOBS = [TraceJob("A", 0, 10, gpus_per_rank=2), TraceJob("B", 1, 5, gpus_per_rank=8)]


@pytest.mark.parametrize("policy", BASELINES)
def test_best_fit_over_every_gpu_model(policy: str) -> None:
    assert by_id(run(MIXED_JOBS, MIXED, policy)) == {"A": (10, 0), "B": (6, 0)}
    assert by_id(run(MIXED_JOBS, MIXED[::-1], policy)) == {"A": (10, 0), "B": (6, 0)}


@pytest.mark.parametrize("policy", UNPREEMPTED)
def test_a_job_stays_on_its_gpu_models(policy: str) -> None:
    # A may only use a V100: it goes on the big node though the small one fits it best, so B
    # (8 GPUs) waits for it: 10-15.
    jobs = [TraceJob("A", 0, 10, gpus_per_rank=2, gpu_models=("V100",)), MIXED_JOBS[1]]
    assert by_id(run(jobs, MIXED, policy)) == {"A": (10, 0), "B": (15, 9)}


# Two equal nodes of different models: a job that may use either goes on the lower index.
EQUAL = [TraceNode("a", 4, "A100"), TraceNode("b", 4, "V100")]
TIE_JOBS = [TraceJob("X", 0, 10, gpus_per_rank=4),
            TraceJob("Y", 1, 5, gpus_per_rank=4, gpu_models=("A100",))]


@pytest.mark.parametrize("policy", UNPREEMPTED)
def test_ties_go_to_the_lowest_node_index(policy: str) -> None:
    # X takes node 0: with the A100 first, Y (A100 only) waits for X: 10-15; with the V100
    # first, Y starts at once.
    assert by_id(run(TIE_JOBS, EQUAL, policy)) == {"X": (10, 0), "Y": (15, 9)}
    assert by_id(run(TIE_JOBS, EQUAL[::-1], policy)) == {"X": (10, 0), "Y": (6, 0)}


def test_lowest_index_among_equal_nodes() -> None:
    cluster = from_node_list([TraceNode(f"n{i}", 4) for i in range(3)], ["t0"], "test")
    jobs = [TraceJob("A", 0, 10, gpus_per_rank=3), TraceJob("B", 0, 10, gpus_per_rank=4),
            TraceJob("C", 0, 10, gpus_per_rank=1)]
    sim = Simulator(cluster, jobs, ["t0"] * 3, resolve("fifo", cluster))
    sim.run_until(1.0)
    # A on node 0 (the lowest of three equal ones), B on node 1, C on node 0 (1 free: best fit).
    assert [sim.jobs[i].nodes for i in range(3)] == [(0,), (1,), (0,)]

NEVER = SimOptions(checkpoint_interval=math.inf, checkpoint_on_preempt=False)  # all work lost


def test_las_victims_free_a_node_of_the_preemptors_model() -> None:
    # Y (0) takes the A100 node (lowest index), X (1) the V100 one. Z (A100 only) arrives at 10
    # past the 5 GPU-s level of both: it must preempt Y, whose node it can use, not X (the most
    # recently started, on a V100). Z 10-15, Y resumes at 15 from its checkpoint (none: from 0).
    nodes = [TraceNode("a", 1, "A100"), TraceNode("b", 1, "V100")]
    jobs = [TraceJob("Y", 0, 100), TraceJob("X", 1, 100),
            TraceJob("Z", 10, 5, gpu_models=("A100",))]
    policy = SimPolicy("las", Policy(order="las", las_thresholds=(5.0,)), True)
    result = run(jobs, nodes, policy, NEVER)
    outcome = {j.id: j for j in result.jobs}
    assert (outcome["Z"].finish, outcome["Z"].waited) == (15, 0)
    assert (outcome["X"].finish, outcome["X"].preemptions) == (101, 0)
    assert (outcome["Y"].finish, outcome["Y"].preemptions) == (115, 1)


job_lists = st.lists(
    st.tuples(st.integers(0, 30), st.integers(1, 40), st.sampled_from([1, 1, 2, 4]),
              st.sampled_from([1, 1, 2])),
    min_size=1, max_size=8)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=job_lists, models=st.lists(st.sampled_from(["A100", "V100", "H100"]),
                                        min_size=4, max_size=4),
       order=st.permutations(range(4)), policy=st.sampled_from(BASELINES))
def test_node_order_and_models_do_not_change_results(
        specs: list[tuple[int, int, int, int]], models: list[str], order: list[int],
        policy: str) -> None:
    # Equal nodes (ties broken by index alone): any order, and any GPU models on them for jobs
    # that may use any, give the JCTs of one model's nodes in list order.
    jobs = [TraceJob(f"j{i}", float(a), float(d), ranks=r, gpus_per_rank=g)
            for i, (a, d, g, r) in enumerate(specs)]
    plain = [TraceNode(f"n{i}", 4, "A100") for i in range(4)]
    mixed = [TraceNode(f"n{i}", 4, models[i]) for i in order]
    options = SimOptions(checkpoint_interval=10.0)
    expected = [j.jct for j in run(jobs, plain, policy, options).jobs]
    assert [j.jct for j in run(jobs, mixed, policy, options).jobs] == expected


def test_a_gangs_last_rank_goes_to_the_lowest_of_equal_nodes() -> None:
    # 3 ranks of 2 GPUs on three free 4-GPU nodes: two on node 0, the last on node 1 (nodes 1
    # and 2 hold it equally well).
    cluster = from_node_list([TraceNode(f"n{i}", 4) for i in range(3)], ["t0"], "test")
    jobs = [TraceJob("G", 0, 10, ranks=3, gpus_per_rank=2)]
    for policy in BASELINES:
        sim = Simulator(cluster, jobs, ["t0"], resolve(policy, cluster))
        sim.run_until(1.0)
        assert sim.jobs[0].nodes == (0, 0, 1)


# --- srtf: shortest remaining time first, preemptive, oracle durations ---

ON_PREEMPT = SimOptions()  # the default: a preempted job checkpoints as it stops


def preemptions(result: RunResult) -> dict[str, int]:
    return {j.id: j.preemptions for j in result.jobs}


def test_srtf_a_short_arrival_preempts_the_long_job() -> None:
    # At 2 A has 8 s left, B 3: B preempts A and runs 2-5. A checkpoints as it stops and
    # resumes with its 8 s: 5-13. Without checkpoints it starts over: 5-15.
    jobs = [TraceJob("A", 0, 10), TraceJob("B", 2, 3)]
    result = run(jobs, ONE, "srtf", ON_PREEMPT)
    assert by_id(result) == {"A": (13, 3), "B": (5, 0)}
    assert preemptions(result) == {"A": 1, "B": 0}
    assert by_id(run(jobs, ONE, "srtf", NEVER)) == {"A": (15, 3), "B": (5, 0)}


def test_srtf_no_preemption_when_the_short_job_fits_or_is_not_shorter() -> None:
    # Two GPUs: B fits beside A and starts at once.
    jobs = [TraceJob("A", 0, 10), TraceJob("B", 2, 3)]
    result = run(jobs, [TraceNode("n0", 2)], "srtf", ON_PREEMPT)
    assert by_id(result) == {"A": (10, 0), "B": (5, 0)} and not any(preemptions(result).values())
    # One GPU: at 8 A (10 s long) has 2 s left, less than B's 5: A is not preempted.
    late = [TraceJob("A", 0, 10), TraceJob("B", 8, 5)]
    result = run(late, ONE, "srtf", ON_PREEMPT)
    assert by_id(result) == {"A": (10, 0), "B": (15, 2)} and not any(preemptions(result).values())


def test_srtf_equal_remaining_times_go_by_arrival() -> None:
    # At 1 C arrives with 10 s, A has 9 left: no preemption. At 2 B (1 s) preempts A, which
    # (no checkpoints) has 10 s again, as C. At 3 A goes first by its arrival (0, not its
    # requeue at 2): A 3-13, C 13-23.
    jobs = [TraceJob("A", 0, 10), TraceJob("C", 1, 10), TraceJob("B", 2, 1)]
    assert by_id(run(jobs, ONE, "srtf", NEVER)) == {"A": (13, 1), "C": (23, 12), "B": (3, 0)}
    # At 5 A has 5 s left, as B asks: no preemption, B waits: 10-15.
    ties = [TraceJob("A", 0, 10), TraceJob("B", 5, 5)]
    assert by_id(run(ties, ONE, "srtf", ON_PREEMPT)) == {"A": (10, 0), "B": (15, 5)}


# --- las as Tiresias publishes it: each test fails on the rule it replaces ---

def las(*thresholds: float) -> SimPolicy:
    policy = resolve("las", from_node_list(ONE, ["t0"], "test"))
    return replace(policy, policy=replace(policy.policy, las_thresholds=thresholds))


def test_las_demotes_at_the_next_scheduling_event() -> None:
    # A crosses the 5 GPU-s level at 5, but nothing happens then: it is demoted when C arrives
    # at 7, and B (level 0, arrived before C) preempts it: B 7-10, C 10-11, A (3 s left,
    # checkpointed) 11-14. Demoted at the crossing, B would have run 5-8 and C 8-9.
    jobs = [TraceJob("A", 0, 10), TraceJob("B", 2, 3), TraceJob("C", 7, 1)]
    assert by_id(run(jobs, ONE, las(5.0), ON_PREEMPT)) == {
        "A": (14, 4), "B": (10, 5), "C": (11, 3)}


def test_las_orders_a_level_by_arrival_across_preemptions() -> None:
    # One 3-GPU node. X (1 GPU) from 0, Y (2 GPUs) from 1. At 4 Y (6 GPU-s) is past the 5
    # GPU-s level, X (4) is not: Z1 (2 GPUs) preempts Y. At 6 X is past it: Z2 preempts X.
    # At 14 Z1 ends and frees 2 GPUs: X and Y wait on level 1; X arrived first, so X starts
    # (94 s left) and Y, needing 2 GPUs, waits for Z2's end at 26 (97 s left). Ordered by
    # requeue time (Y at 4, X at 6), Y would start at 14 and X at 26.
    jobs = [TraceJob("X", 0, 100), TraceJob("Y", 1, 100, gpus_per_rank=2),
            TraceJob("Z1", 4, 10, gpus_per_rank=2), TraceJob("Z2", 6, 20)]
    result = run(jobs, [TraceNode("n0", 3)], las(5.0), ON_PREEMPT)
    assert by_id(result) == {"X": (108, 8), "Y": (123, 22), "Z1": (14, 0), "Z2": (26, 0)}
    assert preemptions(result) == {"X": 1, "Y": 1, "Z1": 0, "Z2": 0}


def test_las_every_waiting_job_may_preempt() -> None:
    # Six 1-GPU nodes. V runs from 0 and is past the 50 GPU-s level at 60; H1-H5 (from 40)
    # are not. At 60 four gangs of 2-5 GPUs (level 0) come before S (1 GPU) in the queue: each
    # looks for victims and finds only V, too small. S then preempts V and starts at once
    # (the live scheduler lets 4 jobs per queue and cycle look for victims).
    jobs = [TraceJob("V", 0, 1000), *(TraceJob(f"H{i}", 40, 1000) for i in range(1, 6)),
            *(TraceJob(f"G{k}", 60, 10, ranks=k) for k in range(2, 6)), TraceJob("S", 60, 10)]
    result = run(jobs, [TraceNode(f"n{i}", 1) for i in range(6)], las(50.0), ON_PREEMPT)
    outcome = {j.id: j for j in result.jobs}
    assert (outcome["S"].finish, outcome["S"].waited) == (70, 0)
    assert outcome["V"].preemptions == 1
