"""Scheduling named resources: a vendor's resource, a CPU-only queue in thousandths of a CPU,
Kueue's resource groups, and what an unlimited quota lends."""

from __future__ import annotations

from stoker.sched import (
    UNLIMITED,
    FlavorQuota,
    Node,
    PendingJob,
    Policy,
    Queue,
    Resources,
    ResourceSpace,
    RunningJob,
    Snapshot,
    schedule,
)
from stoker.sched.quota import QuotaTree

NO = UNLIMITED
ACCEL = ResourceSpace(("gpu", "cpu", "memory", "example.com/accel"))


def accel(gpu: int = 0, cpu: int = 0, memory: int = 0, units: int = 0) -> Resources:
    """Thousandths of a GPU and of a CPU, bytes, whole example.com/accel."""
    return (gpu, cpu, memory, units)


def pend(job_id: str, queue: str, per_rank: Resources, ranks: int = 1, prio: int = 0,
         t: float = 0.0) -> PendingJob:
    return PendingJob(job_id, queue, prio, t, ranks, per_rank)


def test_a_vendor_resource_is_placed_and_limited() -> None:
    """Only one node has the accelerators; the queue may use 3 of them."""
    nodes = [Node("plain", "f", accel(cpu=64_000, memory=NO)),
             Node("acc", "f", accel(cpu=64_000, memory=NO, units=4))]
    queue = Queue("q", (FlavorQuota("f", accel(NO, NO, NO, 3)),))
    one = accel(cpu=1000, units=1)
    pending = [pend(f"j{i}", "q", one, t=float(i)) for i in range(4)]
    pending.append(pend("big", "q", accel(cpu=1000, units=5), t=9.0))
    pending.append(pend("cpu", "q", accel(cpu=1000), t=10.0))
    d = schedule(Snapshot(0.0, [queue], nodes, [], pending, resources=ACCEL))
    placed = {a.job: a.nodes for a in d.admit}
    assert placed == {"j0": ("acc",), "j1": ("acc",), "j2": ("acc",), "cpu": ("plain",)}
    assert d.waiting["j3"].code == "WaitingForQuota"
    assert d.waiting["j3"].requested == one and d.waiting["j3"].available == accel(NO, NO, NO, 0)
    assert d.waiting["big"].code == "NeverFits" and "5 example.com/accel" in \
        d.waiting["big"].message


def test_a_cpu_only_queue_in_thousandths() -> None:
    """Ten 100m jobs fill a 1-CPU node exactly (no rounding left to hide); a quota of 2500m
    admits five 500m jobs."""
    node = [Node("n", "cpu", (0, 1000, NO))]
    tenth = (0, 100, 0)
    queue = Queue("q", (FlavorQuota("cpu", (NO, NO, NO)),))
    d = schedule(Snapshot(0.0, [queue], node, [], [pend(f"j{i}", "q", tenth, t=i)
                                                  for i in range(11)]))
    assert len(d.admit) == 10 and d.waiting["j10"].code == "WaitingForNodes"
    nodes = [Node(f"n{i}", "cpu", (0, 4000, NO)) for i in range(2)]
    half = (0, 500, 0)
    queue = Queue("q", (FlavorQuota("cpu", (NO, 2500, NO)),))
    d = schedule(Snapshot(0.0, [queue], nodes, [], [pend(f"j{i}", "q", half, t=i)
                                                   for i in range(6)]))
    assert [a.job for a in d.admit] == [f"j{i}" for i in range(5)]
    why = d.waiting["j5"]
    assert (why.code, why.available) == ("WaitingForQuota", (NO, 0, NO))


# --- Kueue's resource groups -------------------------------------------------------------------

# cpu under "default" (a flavor no node carries: what every node has), gpu per GPU model.
GROUPED = Queue("q", (FlavorQuota("default", (NO, 4000, NO)),
                      FlavorQuota("h100", (8000, NO, NO)), FlavorQuota("a100", (8000, NO, NO))),
                groups=(("default",), ("h100", "a100")), within_queue="LowerPriority")
GPU_NODES = [Node("h", "h100", (8000, 16_000, NO)), Node("a", "a100", (8000, 16_000, NO))]


def test_groups_charge_each_resource_to_its_group() -> None:
    """Two 4-GPU, 2-CPU jobs fill the h100 node and the 4 CPUs of "default"; a third waits for
    CPU quota although the a100 node and its GPU quota are free. A CPU-only job has no node
    flavor of its own and runs on a GPU node, charged to "default" (Kueue's flavor without
    node labels)."""
    job = (4000, 2000, 0)
    pending = [pend(f"j{i}", "q", job, t=i) for i in range(3)]
    d = schedule(Snapshot(0.0, [GROUPED], GPU_NODES, [], pending))
    assert [(a.job, a.flavor, a.nodes) for a in d.admit] == [("j0", "h100", ("h",)),
                                                             ("j1", "h100", ("h",))]
    assert d.waiting["j2"].code == "WaitingForQuota"
    running = [RunningJob(a.job, "q", 0, a.flavor, a.nodes, job) for a in d.admit]
    tree = QuotaTree([GROUPED], [], 3)
    for r in running:
        account = tree.account("q", r.flavor)
        assert account is not None
        account.add(r.per_rank)
    assert tree.own["q"]["default"].usage[1] == 4000 and tree.own["q"]["h100"].usage[0] == 8000
    assert tree.own["q"]["h100"].usage[1] == 0  # CPUs are charged to their group only
    cpu_only = schedule(Snapshot(0.0, [GROUPED], GPU_NODES, [], [pend("c", "q", (0, 3000, 0))]))
    assert [(a.flavor, a.nodes) for a in cpu_only.admit] == [("h100", ("h",))]


def test_groups_preempt_within_the_queue() -> None:
    """A higher-priority job takes the CPUs of "default" from a lower one of the same
    queue."""
    low = RunningJob("low", "q", 0, "h100", ("h",), (4000, 4000, 0))
    d = schedule(Snapshot(10.0, [GROUPED], GPU_NODES, [low],
                          [pend("high", "q", (2000, 2000, 0), prio=5)]))
    assert [p.job for p in d.preempt] == ["low"] and d.nominated == {"high": ("low",)}


def test_an_unlimited_quota_lends_nothing() -> None:
    """qa leaves CPUs out of its quota (not limited), qb has none of its own: qb cannot borrow
    CPUs from qa's unlimited amount, while qa runs what it likes."""
    qa = Queue("qa", (FlavorQuota("f", (8000, NO, NO)),), cohort="c")
    qb = Queue("qb", (FlavorQuota("f", (8000, 0, NO)),), cohort="c")
    nodes = [Node("n", "f", (8000, 64_000, NO))]
    d = schedule(Snapshot(0.0, [qa, qb], nodes, [], [pend("a", "qa", (1000, 8000, 0)),
                                                     pend("b", "qb", (1000, 1000, 0), t=1)],
                          ), Policy())
    assert [a.job for a in d.admit] == ["a"] and d.waiting["b"].code == "ExceedsMaxQuota"
