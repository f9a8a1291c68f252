"""The simulator on hand-computed traces, conservation of work, and determinism."""

from __future__ import annotations

import math
import random
from dataclasses import replace

import pytest

from stoker.sched import Policy
from stoker.sim import engine
from stoker.sim.cluster import from_node_list
from stoker.sim.engine import SimOptions, Simulator
from stoker.sim.metrics import RunResult
from stoker.sim.policies import SimPolicy, resolve
from stoker.sim.synth import generate, nodes
from stoker.sim.tenancy import assign
from stoker.sim.trace import TraceJob, TraceNode


def run(jobs: list[TraceJob], cluster_nodes: list[TraceNode], policy: str | SimPolicy,
        options: SimOptions = SimOptions(), tenants: int = 1) -> RunResult:
    queues = [f"t{i}" for i in range(tenants)]
    cluster = from_node_list(cluster_nodes, queues, "test")
    sim_policy = resolve(policy, cluster) if isinstance(policy, str) else policy
    assigned = assign(jobs, queues, "vc")
    return Simulator(cluster, jobs, assigned, sim_policy, options).run()


def by_id(result: RunResult) -> dict[str, tuple[float, float]]:
    """job id -> (completion time, queueing delay)."""
    return {j.id: (j.finish, j.waited) for j in result.jobs}


ONE_GPU = [TraceNode("n0", 1)]
THREE = [TraceJob("A", 0, 10), TraceJob("B", 1, 5), TraceJob("C", 2, 1)]


def test_fifo_one_gpu() -> None:
    # A runs 0-10, then B 10-15, then C 15-16.
    assert by_id(run(THREE, ONE_GPU, "fifo")) == {"A": (10, 0), "B": (15, 9), "C": (16, 13)}


def test_sjf_one_gpu() -> None:
    # A is alone at 0; when it ends C (1 s) goes before B (5 s): C 10-11, B 11-16.
    assert by_id(run(THREE, ONE_GPU, "sjf")) == {"A": (10, 0), "B": (16, 10), "C": (11, 8)}


TWO_NODES = [TraceNode("n0", 4), TraceNode("n1", 4)]
GANGS = [TraceJob("A", 0, 10, ranks=2, gpus_per_rank=4),
         TraceJob("B", 1, 5, ranks=1, gpus_per_rank=1),
         TraceJob("C", 2, 2, ranks=2, gpus_per_rank=4)]


def test_fifo_gangs() -> None:
    # A holds all 8 GPUs until 10. FIFO starts B (1 GPU) at 10; the 8-GPU gang C must wait
    # for B: 15-17.
    result = run(GANGS, TWO_NODES, "fifo")
    assert by_id(result) == {"A": (10, 0), "B": (15, 9), "C": (17, 13)}
    assert [j.jct for j in result.jobs] == [10, 14, 15]


def test_sjf_gangs() -> None:
    # SJF starts C (2 s) at 10 on all 8 GPUs, B after it: 12-17.
    assert by_id(run(GANGS, TWO_NODES, "sjf")) == {"A": (10, 0), "B": (17, 11), "C": (12, 8)}


def las(thresholds: tuple[float, ...]) -> SimPolicy:
    return SimPolicy("las", Policy(order="las", las_thresholds=thresholds), True)


@pytest.mark.parametrize(("checkpoint", "a_finish", "lost"), [(4.0, 107.0, 2.0),
                                                              (math.inf, 115.0, 10.0)])
def test_las_preempts_and_loses_work_since_checkpoint(checkpoint: float, a_finish: float,
                                                      lost: float) -> None:
    # A (100 s) has 10 GPU-s of service when B arrives at 10, above the 5 GPU-s threshold:
    # B preempts it and runs 10-15. A resumes at 15 from its checkpoint at 8 s of work (or from
    # scratch without checkpoints).
    jobs = [TraceJob("A", 0, 100), TraceJob("B", 10, 5)]
    options = SimOptions(checkpoint_interval=checkpoint, checkpoint_on_preempt=False)
    result = run(jobs, ONE_GPU, las((5.0,)), options)
    a, b = result.jobs
    assert (b.finish, b.waited) == (15, 0)
    assert (a.finish, a.preemptions, a.lost_gpu_seconds) == (a_finish, 1, lost)
    assert a.waited == 5
    assert result.summary()["gpu_hours_lost"] == pytest.approx(lost / 3600)


def test_checkpoint_on_preemption_loses_nothing_and_is_the_default() -> None:
    jobs = [TraceJob("A", 0, 100), TraceJob("B", 10, 5)]
    a, _ = run(jobs, ONE_GPU, las((5.0,)), SimOptions(checkpoint_interval=math.inf)).jobs
    assert (a.finish, a.preemptions, a.lost_gpu_seconds) == (105.0, 1, 0.0)


def test_fifo_never_preempts() -> None:
    jobs = [TraceJob("A", 0, 100), TraceJob("B", 10, 5)]
    result = run(jobs, ONE_GPU, "fifo")
    assert by_id(result) == {"A": (100, 0), "B": (105, 90)}
    assert result.summary()["preemptions"] == 0


def busy_trace(seed: int) -> list[TraceJob]:
    rng = random.Random(seed)
    return [TraceJob(f"j{i}", arrival=rng.uniform(0, 20_000), duration=rng.uniform(60, 4000),
                     ranks=rng.choice([1, 1, 1, 2]), gpus_per_rank=rng.choice([1, 2, 4, 8]),
                     vc=str(rng.randrange(3)), priority=rng.choice([0, 0, 10]))
            for i in range(150)]


CHAOS = SimOptions(checkpoint_interval=300, node_mtbf=20_000, repair_time=1_000, seed=7)


@pytest.mark.parametrize("policy", ["fifo", "las", "stoker"])
def test_conservation_with_preemptions_and_failures(policy: str) -> None:
    jobs = busy_trace(1)
    result = run(jobs, nodes(4, 8), policy, CHAOS, tenants=3)
    outcomes = result.jobs
    assert len(outcomes) == len(jobs)
    assert all(j.finish >= j.arrival + j.duration - 1e-6 for j in outcomes)  # each finished
    assert result.node_failures > 0
    summary = result.summary()
    assert summary["finished"] == len(jobs)
    if policy != "fifo":
        assert summary["preemptions"] > 0
    # Every GPU-second used is either work the trace asked for or work lost to interruptions.
    asked = sum(j.gpus * j.duration for j in jobs)
    lost = sum(j.lost_gpu_seconds for j in outcomes)
    used = sum(j.used_gpu_seconds for j in outcomes)
    assert lost > 0
    assert used == pytest.approx(asked + lost, rel=1e-9)
    end = max(j.finish for j in outcomes)
    assert result.usage.busy_gpu_seconds(end) == pytest.approx(used, rel=1e-9)


def test_same_seed_same_result() -> None:
    jobs = busy_trace(2)
    first = run(jobs, nodes(4, 8), "stoker", CHAOS, tenants=3)
    again = run(jobs, nodes(4, 8), "stoker", CHAOS, tenants=3)
    other = run(jobs, nodes(4, 8), "stoker", replace(CHAOS, seed=8), tenants=3)
    assert first.jobs == again.jobs
    assert first.summary() | {"wall_seconds": 0, "sched_seconds": 0} == (
        again.summary() | {"wall_seconds": 0, "sched_seconds": 0})
    assert first.jobs != other.jobs


def test_synthetic_trace_hits_its_load() -> None:
    cluster = nodes(8, 8)
    trace = generate(400, cluster, load=0.8, seed=3)
    result = run(trace.jobs, cluster, "fifo")
    assert result.summary()["load"] == pytest.approx(0.8, rel=0.05)
    assert result.summary()["finished"] == 400


def test_jobs_too_big_for_the_cluster_are_skipped_and_counted() -> None:
    jobs = [TraceJob("ok", 0, 10), TraceJob("wide", 0, 10, ranks=1, gpus_per_rank=8),
            TraceJob("model", 0, 10, gpu_models=("H100",))]
    result = run(jobs, TWO_NODES, "fifo")
    assert [j.id for j in result.jobs] == ["ok"]
    assert result.skipped == {"a rank needs more GPUs than any node of the cluster has": 1,
                              "no node of an allowed GPU model in the cluster": 1}


@pytest.mark.parametrize("policy", ["fifo", "fifo-backfill", "sjf"])
def test_skipping_cycles_that_cannot_admit_changes_nothing(
        policy: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Skipped cycles, and jobs that cannot fit left out of the snapshot (strict FIFO: all but
    the queue's first two), change no result, with node failures requeueing jobs."""
    jobs = busy_trace(3)
    monkeypatch.setattr(engine, "STRICT_PREFIX", 2)
    monkeypatch.setattr(engine, "SHORT_QUEUE", 1)
    fast = run(jobs, nodes(2, 8), policy, CHAOS)
    monkeypatch.setattr(Simulator, "_may_admit", lambda self, now, arrived: True)
    monkeypatch.setattr(Simulator, "_candidates",
                        lambda self: (list(self.pending_view.values()), False))
    every = run(jobs, nodes(2, 8), policy, CHAOS)
    assert fast.sched_calls < every.sched_calls
    assert fast.jobs == every.jobs


def test_las_keeping_running_jobs_unrebuilt_changes_nothing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Under "las" the running jobs are not rebuilt for a cycle that can find no victim (no
    level changed, no pending job below a running one); the results stay those of rebuilding
    them every cycle."""
    jobs = busy_trace(4)
    kept = []
    no_victims = Simulator._no_victims

    def counting(self: Simulator, now: float) -> bool:
        kept.append(no_victims(self, now))
        return kept[-1]

    monkeypatch.setattr(Simulator, "_no_victims", counting)
    fast = run(jobs, nodes(2, 8), "las", CHAOS)
    monkeypatch.setattr(Simulator, "_no_victims", lambda self, now: False)
    every = run(jobs, nodes(2, 8), "las", CHAOS)
    assert any(kept) and not all(kept)
    assert sum(j.preemptions for j in fast.jobs) > 0
    assert fast.jobs == every.jobs
