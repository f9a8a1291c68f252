"""Admission fair sharing (Kueue KEP-4136): within a queue, the tenant with less decayed usage
goes first, before priority; an admission's entry penalty counts at once; usage fades by its
half-life; with the option off nothing changes.

The usage comes from a real `UsageTracker` fed the running jobs a caller would see; units as in
test_sched_scenarios: GPUs, 1 CPU per rank, no memory.
"""

from __future__ import annotations

import pytest

from sched_helpers import res
from stoker.sched import (
    AdmissionFairSharing,
    Decisions,
    FlavorQuota,
    Node,
    PendingJob,
    Policy,
    Queue,
    RunningJob,
    Snapshot,
    queue_positions,
    schedule,
)
from stoker.sched.usage import UsageTracker
from test_sched_scenarios import nodes, pend, queue, run

HOUR = 3600.0
AFS = AdmissionFairSharing(half_life=HOUR, sampling_interval=60.0)
ON = Policy(admission_fair_sharing=AFS)
OFF = Policy()


def held_for(tracker: UsageTracker, running: list[RunningJob], start: float, end: float,
             step: float = 60.0) -> None:
    """Sample ``running`` every ``step`` seconds from ``start`` to ``end``."""
    t = start
    while t <= end:
        tracker.update(t, running)
        t += step


def cycle(pending: list[PendingJob], policy: Policy, usage: dict[tuple[str, str], float],
          running: list[RunningJob] | None = None, node_list: list[Node] | None = None,
          queues: list[Queue] | None = None) -> Decisions:
    snap = Snapshot(10 * HOUR, queues or [queue("q", 8)], node_list or nodes(1), running or [],
                    pending, topology=("zone", "rack"), tenant_usage=usage)
    return schedule(snap, policy)


def admitted(d: Decisions) -> set[object]:
    return {a.job for a in d.admit}


def heavy_usage() -> dict[tuple[str, str], float]:
    """Tenant "heavy" held all 8 GPUs of queue q for the last two hours; "light" nothing."""
    tracker = UsageTracker(AFS)
    held_for(tracker, [run("old", "q", ["n0"] * 8, tenant="heavy")], 8 * HOUR, 10 * HOUR)
    return tracker.scores()


@pytest.mark.parametrize(("policy", "expect"), [
    (ON, {"light-new"}),   # less recent usage first, although its job is newer
    (OFF, {"heavy-old"}),  # FIFO
])
def test_tenant_with_less_usage_goes_first(policy: Policy, expect: set[str]) -> None:
    usage = heavy_usage()
    assert usage[("q", "heavy")] == pytest.approx(8 * 0.75, rel=0.02)  # two half-lives
    pending = [pend("heavy-old", "q", 8, t=0.0, tenant="heavy"),
               pend("light-new", "q", 8, t=500.0, tenant="light")]
    assert admitted(cycle(pending, policy, usage)) == expect


def test_a_tenant_never_seen_counts_as_unused() -> None:
    pending = [pend("heavy-old", "q", 8, t=0.0, tenant="heavy"),
               pend("new-tenant", "q", 8, t=500.0, tenant="newcomer")]
    assert admitted(cycle(pending, ON, heavy_usage())) == {"new-tenant"}


def test_entry_penalty_interleaves_tenants_within_a_cycle() -> None:
    # Penalty factor 0.5 (sampling interval = half-life): each 1-GPU admission adds 0.5.
    afs = AdmissionFairSharing(half_life=60.0, sampling_interval=60.0)
    usage = {("q", "a"): 0.0, ("q", "b"): 0.3}
    pending = [pend(f"{t}{i}", "q", 1, t=float(i), tenant=t) for t in "ab" for i in range(3)]
    # a (0) -> a at 0.5; b (0.3) -> b at 0.8; a (0.5) -> a at 1.0: room for three.
    d = cycle(pending, Policy(admission_fair_sharing=afs), usage, node_list=nodes(1, size=3))
    assert [a.job for a in d.admit] == ["a0", "b0", "a1"]
    # Without the penalty (a cycle that admits one job at a time) tenant a would take all three.


def test_usage_fades_after_several_half_lives() -> None:
    tracker = UsageTracker(AFS)
    heavy = run("big", "q", ["n0"] * 8, tenant="heavy")
    light = run("small", "q", ["n1"], tenant="light")
    held_for(tracker, [heavy, light], 0.0, 2 * HOUR)  # heavy: 8 GPUs, light: 1 GPU
    pending = [pend("heavy-next", "q", 8, t=0.0, tenant="heavy"),
               pend("light-next", "q", 8, t=1.0, tenant="light")]

    def first() -> set[object]:
        return admitted(cycle(pending, ON, tracker.scores(), node_list=nodes(1)))

    assert first() == {"light-next"}  # heavy's recent 8 GPUs outweigh light's 1
    held_for(tracker, [light], 2 * HOUR + 60, 7 * HOUR)  # heavy stops; light keeps 1 GPU
    assert first() == {"heavy-next"}  # five half-lives on: 8 * 0.75 / 32 < 1
    scores = tracker.scores()
    assert scores[("q", "heavy")] == pytest.approx(8 * 0.75 * 0.5 ** 5, rel=0.05)
    assert scores[("q", "light")] == pytest.approx(1.0, rel=0.01)


def test_tracker_penalty_until_next_sample() -> None:
    tracker = UsageTracker(AFS)
    tracker.update(0.0, [])
    tracker.admitted(pend("j", "q", 2, ranks=2, tenant="a"))
    penalty = AFS.penalty_factor * 4
    assert tracker.scores() == {("q", "a"): pytest.approx(penalty)}
    assert not tracker.update(30.0, [])  # within the sampling interval: nothing changes
    assert tracker.update(60.0, [])  # the penalty is folded in and decays from now on
    assert tracker.penalties == {}
    assert tracker.scores() == {("q", "a"): pytest.approx(penalty)}
    tracker.update(60.0 + HOUR, [])
    assert tracker.scores()[("q", "a")] == pytest.approx(penalty / 2)
    restored = UsageTracker(AFS)
    restored.restore(tracker.state())
    assert restored.scores() == tracker.scores() and restored.last_sample == tracker.last_sample


def test_usage_comes_before_priority() -> None:
    # Kueue orders a ClusterQueue's workloads by LocalQueue usage, then priority, then age.
    pending = [pend("heavy-high", "q", 8, prio=100, t=0.0, tenant="heavy"),
               pend("light-low", "q", 8, prio=0, t=1.0, tenant="light")]
    assert admitted(cycle(pending, ON, heavy_usage())) == {"light-low"}
    assert admitted(cycle(pending, OFF, heavy_usage())) == {"heavy-high"}


def test_priority_orders_equal_usage_and_one_tenants_jobs() -> None:
    pending = [pend("a-low", "q", 8, prio=0, t=0.0, tenant="a"),
               pend("b-high", "q", 8, prio=100, t=1.0, tenant="b"),
               pend("a-high", "q", 8, prio=50, t=2.0, tenant="a")]
    assert admitted(cycle(pending, ON, {})) == {"b-high"}  # equal usage: priority
    usage = {("q", "b"): 5.0}
    assert admitted(cycle(pending, ON, usage)) == {"a-high"}  # tenant a: priority, then age


def test_priority_still_drives_preemption() -> None:
    # Ordering changes, preemption does not: a heavy tenant's high-priority job still
    # preempts a light tenant's lower-priority job within its queue.
    q = queue("q", 8, within_queue="LowerPriority")
    running = [run("light-run", "q", ["n0"] * 8, prio=0, tenant="light")]
    pending = [pend("heavy-high", "q", 8, prio=100, tenant="heavy")]
    d = cycle(pending, ON, heavy_usage(), running=running, queues=[q])
    assert [p.job for p in d.preempt] == ["light-run"] and "heavy-high" in d.nominated


def test_order_between_queues_ignores_usage() -> None:
    # Kueue compares usage only within a ClusterQueue: between queues the heads go by
    # priority (then age), whatever their tenants used. One node, room for one of them.
    queues = [queue("q", 8), queue("r", 8)]
    pending = [pend("q-low", "q", 8, prio=0, t=0.0, tenant="light"),
               pend("r-high", "r", 8, prio=100, t=1.0, tenant="heavy")]
    usage = {("r", "heavy"): 100.0}
    assert admitted(cycle(pending, ON, usage, queues=queues)) == {"r-high"}


def test_off_ignores_tenants_and_usage() -> None:
    pending = [pend(f"{t}{i}", "q", 1 + i % 3, prio=i % 2, t=float(10 - i), tenant=t)
               for t in "abc" for i in range(4)]
    plain = [p._replace(tenant="") for p in pending]
    usage = {("q", "a"): 9.0, ("q", "b"): 0.0, ("q", "c"): 3.0}
    node_list = nodes(2, size=4)
    assert cycle(pending, OFF, usage, node_list=node_list) == \
        cycle(plain, OFF, {}, node_list=node_list)
    # On, with one tenant per queue, the order is the queue's own: the same decisions.
    assert cycle(plain, ON, {}, node_list=node_list) == cycle(plain, OFF, {}, node_list=node_list)
    assert cycle(pending, ON, usage, node_list=node_list) != \
        cycle(plain, OFF, {}, node_list=node_list)


def test_resources_weigh_as_configured() -> None:
    afs = AdmissionFairSharing(half_life=HOUR, sampling_interval=60.0,
                               weights=(0.0, 1.0, 0.0), units=(1000, 1000, 2**30))  # CPUs
    tracker = UsageTracker(afs)
    gpu_heavy = RunningJob("g", "q", 0, "gpu", ("n0",) * 4, res(2, 1, 0), tenant="g")
    cpu_heavy = RunningJob("c", "q", 0, "gpu", ("n0",), res(0, 16, 0), tenant="c")
    held_for(tracker, [gpu_heavy, cpu_heavy], 0.0, HOUR)
    scores = tracker.scores()
    assert scores[("q", "c")] > scores[("q", "g")] > 0


def test_positions_put_usage_before_priority() -> None:
    """queue_positions orders a queue as the cycle does under admission fair sharing: the
    light tenant's job first although the heavy tenant's is older and of higher priority."""
    pending = [PendingJob("heavy", "q", 5, 0.0, 1, res(1, 1, 0), tenant="h"),
               PendingJob("light", "q", 0, 10.0, 1, res(1, 1, 0), tenant="l")]
    snap = Snapshot(20.0, [Queue("q", (FlavorQuota("f", res(8, 8, 0)),))], [], [],
                    pending, tenant_usage={("q", "h"): 100.0, ("q", "l"): 1.0})
    assert queue_positions(snap, Policy()) == {"heavy": 1, "light": 2}
    afs = Policy(admission_fair_sharing=AdmissionFairSharing(half_life=3600.0))
    assert queue_positions(snap, afs) == {"light": 1, "heavy": 2}
