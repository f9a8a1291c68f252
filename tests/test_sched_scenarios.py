"""Scheduler scenarios: inputs -> expected admissions and preemptions, one table per semantic.

Every scenario is small enough to check by hand; the comment on each row says why.
Units: GPUs unless stated; all jobs ask 1 CPU per rank and no memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from sched_helpers import INF3, res
from sched_helpers import gpus as gpus_of
from stoker.sched import (
    UNLIMITED,
    Cohort,
    Decisions,
    FlavorQuota,
    Node,
    PendingJob,
    Policy,
    Queue,
    Resources,
    RunningJob,
    Snapshot,
    estimate_starts,
    queue_positions,
    schedule,
)


def gpus(n: float) -> Resources:
    """A quota or limit of ``n`` GPUs (CPUs and memory unlimited)."""
    return res(n, UNLIMITED, UNLIMITED)


def quota(nominal: float, borrow: float | None = None, lend: float | None = None,
          flavor: str = "gpu") -> FlavorQuota:
    return FlavorQuota(flavor, gpus(nominal), INF3 if borrow is None else gpus(borrow),
                       INF3 if lend is None else gpus(lend))


def queue(name: str, nominal: float, cohort: str | None = None, borrow: float | None = None,
          lend: float | None = None, **kw: object) -> Queue:
    return Queue(name, (quota(nominal, borrow, lend),), cohort=cohort, **kw)  # type: ignore[arg-type]


def nodes(count: int, size: float = 8, flavor: str = "gpu", prefix: str = "n",
          racks: int = 1) -> list[Node]:
    per_rack = max(1, count // racks)
    return [Node(f"{prefix}{i}", flavor, res(size, 64, 2**40), ("z", f"r{i // per_rack}"))
            for i in range(count)]


def pend(job_id: str, q: str, g: float = 1, ranks: int = 1, prio: int = 0, t: float = 0.0,
         **kw: object) -> PendingJob:
    return PendingJob(job_id, q, prio, t, ranks, res(g, 1, 0), **kw)  # type: ignore[arg-type]


def run(job_id: str, q: str, on: Sequence[str], g: float = 1, prio: int = 0, t: float = 0.0,
        flavor: str = "gpu", **kw: object) -> RunningJob:
    return RunningJob(job_id, q, prio, flavor, tuple(on), res(g, 1, 0), created_at=t,
                      **kw)  # type: ignore[arg-type]


@dataclass
class Case:
    queues: list[Queue]
    pending: list[PendingJob]
    running: list[RunningJob] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=lambda: nodes(8))
    cohorts: list[Cohort] = field(default_factory=list)
    policy: Policy = field(default_factory=Policy)
    now: float = 100.0

    def run(self) -> Decisions:
        snap = Snapshot(self.now, self.queues, self.nodes, self.running, self.pending,
                        cohorts=self.cohorts, topology=("zone", "rack"))
        return schedule(snap, self.policy)


def admitted(d: Decisions) -> set[str]:
    return {str(a.job) for a in d.admit}


def preempted(d: Decisions) -> set[str]:
    return {str(p.job) for p in d.preempt}


def check(case: Case, admit: set[str], preempt: Sequence[str] = ()) -> Decisions:
    d = case.run()
    assert admitted(d) == admit, d.waiting
    assert preempted(d) == set(preempt), d.preempt
    return d


# --- quotas: nominal, borrowing and lending limits, cohorts (flat and hierarchical) ---

QUOTA_CASES = {
    # No cohort: only nominal quota; the 1-GPU job after two 2-GPU jobs waits.
    "nominal only": (Case([queue("a", 4)], [pend("a1", "a", 2), pend("a2", "a", 2, t=1),
                                            pend("a3", "a", 1, t=2)]), {"a1", "a2"}),
    # b lends its 4 unused GPUs: a runs 6 in all.
    "borrow from idle queue": (Case([queue("a", 4, "c"), queue("b", 4, "c")],
                                    [pend(f"a{i}", "a", 2, t=i) for i in range(3)]),
                               {"a0", "a1", "a2"}),
    # borrowing_limit 1: a may use 5, so the third 2-GPU job waits.
    "borrowing limit": (Case([queue("a", 4, "c", borrow=1), queue("b", 4, "c")],
                             [pend(f"a{i}", "a", 2, t=i) for i in range(3)]), {"a0", "a1"}),
    # b lends at most 1 GPU: a gets 4 + 1; a 1-GPU job still fits after two 2-GPU jobs.
    "lending limit": (Case([queue("a", 4, "c"), queue("b", 4, "c", lend=1)],
                           [pend("a0", "a", 2), pend("a1", "a", 2, t=1), pend("a2", "a", 2, t=2),
                            pend("a3", "a", 1, t=3)]), {"a0", "a1", "a3"}),
    # b uses its whole nominal quota: nothing to borrow.
    "nothing to lend": (Case([queue("a", 4, "c"), queue("b", 4, "c")],
                             [pend("a0", "a", 4), pend("a1", "a", 1, t=1)],
                             running=[run("b0", "b", ["n7"], 4)]), {"a0"}),
    # A queue with no cohort never borrows, even with idle nodes.
    "no cohort, no borrowing": (Case([queue("a", 2), queue("b", 8)], [pend("a0", "a", 3)]),
                                set()),
    # Hierarchical: team1 (a1, a2) and team2 (b1) under org; team2 lends org at most 2.
    # a1 (nominal 2) can reach 2 + 2 (a2 idle) + 2 (from team2) = 6, not 8.
    "hierarchical lending limit": (
        Case([queue("a1", 2, "team1"), queue("a2", 2, "team1"), queue("b1", 4, "team2")],
             [pend("x", "a1", 7), pend("y", "a1", 6, t=1)],
             cohorts=[Cohort("org"), Cohort("team1", "org"),
                      Cohort("team2", "org", quotas=(quota(0, lend=2),))]),
        {"y"}),
    # Same tree, but the 6-GPU job is exactly what a1 can reach.
    "hierarchical borrow across teams": (
        Case([queue("a1", 2, "team1"), queue("a2", 2, "team1"),
              queue("b1", 4, "team2", lend=2)],
             [pend("x", "a1", 6)],
             cohorts=[Cohort("org"), Cohort("team1", "org"), Cohort("team2", "org")]),
        {"x"}),
    # A cohort's own quota is shared by its queues (here: queues with no nominal quota).
    "cohort-owned quota": (
        Case([queue("a", 0, "pool"), queue("b", 0, "pool")],
             [pend("a0", "a", 3), pend("b0", "b", 2, t=1)],
             cohorts=[Cohort("pool", quotas=(quota(4),))]),
        {"a0"}),
    # team1 may borrow at most 1 from org: a1 gets its team's 4 plus 1.
    "cohort borrowing limit": (
        Case([queue("a1", 2, "team1"), queue("a2", 2, "team1"), queue("b1", 4, "team2")],
             [pend("x", "a1", 5), pend("y", "a1", 1, t=1)],
             cohorts=[Cohort("org"), Cohort("team1", "org", quotas=(quota(0, borrow=1),)),
                      Cohort("team2", "org")]),
        {"x"}),
}


@pytest.mark.parametrize("name", list(QUOTA_CASES))
def test_quota(name: str) -> None:
    case, expect = QUOTA_CASES[name]
    check(case, expect)


def test_admit_reports_borrowing() -> None:
    d = check(Case([queue("a", 4, "c"), queue("b", 4, "c")],
                   [pend("a0", "a", 4), pend("a1", "a", 2, t=1)]), {"a0", "a1"})
    assert {str(a.job): a.borrowing for a in d.admit} == {"a0": False, "a1": True}


# --- ordering: queueing strategies, priority, FIFO / SJF / LAS, borrowing last, fair sharing ---

def two_jobs_one_slot(**policy: object) -> Case:
    return Case([queue("a", 2)], [pend("old", "a", 2, t=1, expected_duration=500.0,
                                       attained_service=5000.0),
                                  pend("new", "a", 2, t=2, expected_duration=50.0)],
                policy=Policy(**policy))  # type: ignore[arg-type]


ORDER_CASES = {
    "best effort skips a head that does not fit": (
        Case([queue("a", 4)], [pend("big", "a", 6), pend("small", "a", 2, t=1)]), {"small"}),
    "strict FIFO blocks behind its head": (
        Case([queue("a", 4, strategy="StrictFIFO")],
             [pend("big", "a", 6), pend("small", "a", 2, t=1)]), set()),
    "priority before age": (
        Case([queue("a", 2)], [pend("low", "a", 2, prio=0), pend("high", "a", 2, prio=9, t=5)]),
        {"high"}),
    "fifo: oldest first": (two_jobs_one_slot(), {"old"}),
    "sjf: shortest expected duration first": (two_jobs_one_slot(order="sjf"), {"new"}),
    "las: least attained service first": (
        two_jobs_one_slot(order="las", las_thresholds=(100.0,)), {"new"}),
    # qb's job is older but would borrow; qa's fits its nominal quota and goes first (Kueue).
    "jobs within nominal quota before borrowing ones": (
        Case([queue("qa", 2, "c"), queue("qb", 2, "c")],
             [pend("b", "qb", 2, t=0), pend("a", "qa", 2, t=1)],
             running=[run("rb", "qb", ["n0"], 2)]), {"a"}),
}


@pytest.mark.parametrize("name", list(ORDER_CASES))
def test_order(name: str) -> None:
    case, expect = ORDER_CASES[name]
    check(case, expect)


def test_strict_fifo_reason_names_the_head() -> None:
    d = ORDER_CASES["strict FIFO blocks behind its head"][0].run()
    why = d.waiting["small"]
    assert why.code == "BlockedByStrictFIFO" and "big" in why.message and not why.inadmissible


def fair_case(weight_a: float, fair: bool) -> Case:
    # qc lends 4; qa already borrows 2, qb borrows nothing; room for one more 2-GPU job.
    return Case([queue("qa", 2, "c", fair_weight=weight_a), queue("qb", 2, "c"),
                 queue("qc", 4, "c")],
                [pend("a", "qa", 2, t=0), pend("b", "qb", 2, t=1)],
                running=[run("ra", "qa", ["n0"], 4), run("rb", "qb", ["n1"], 2)],
                policy=Policy(fair_sharing=fair, preemption=False))


@pytest.mark.parametrize(("weight_a", "fair", "expect"), [
    (1.0, False, {"a"}),  # no fair sharing: both borrow, the older job wins
    (1.0, True, {"b"}),  # fair sharing: qb has the lower dominant-resource share
    (4.0, True, {"a"}),  # qa's weight 4 divides its share below qb's
])
def test_fair_sharing_order(weight_a: float, fair: bool, expect: set[str]) -> None:
    check(fair_case(weight_a, fair), expect)


@pytest.mark.parametrize(("fair", "expect"), [(False, {"b"}), (True, {"b"})])
def test_fair_sharing_across_a_cohort_tree(fair: bool, expect: set[str]) -> None:
    # team1 (qa) borrows 4 from the org; team2 (qb, qc) borrows nothing. Room for one job.
    # Without fair sharing b still goes first: it borrows within team2, a from the whole org.
    case = Case([queue("qa", 2, "team1"), queue("qb", 2, "team2"), queue("qc", 6, "team2")],
                [pend("a", "qa", 2, t=0), pend("b", "qb", 2, t=1)],
                running=[run("ra", "qa", ["n0"], 6), run("rb", "qb", ["n1"], 2)],
                cohorts=[Cohort("org"), Cohort("team1", "org"), Cohort("team2", "org")],
                policy=Policy(fair_sharing=fair, preemption=False))
    check(case, expect)


# --- preemption: within the queue, reclaim within the cohort, borrow within the cohort ---

def full_queue(within: str, running_prio: int = 0, running_t: float = 0.0,
               pending_t: float = 10.0) -> Case:
    return Case([queue("a", 4, within_queue=within)],
                [pend("p", "a", 4, prio=5, t=pending_t)],
                running=[run("r", "a", ["n0"], 4, prio=running_prio, t=running_t)])


PREEMPT_CASES = {
    "within queue: LowerPriority preempts lower": (full_queue("LowerPriority"), {"r"}),
    "within queue: Never": (full_queue("Never"), set()),
    "within queue: LowerPriority spares equal priority": (
        full_queue("LowerPriority", running_prio=5), set()),
    "within queue: LowerOrNewerEqualPriority preempts newer equal": (
        full_queue("LowerOrNewerEqualPriority", running_prio=5, running_t=20.0), {"r"}),
    "within queue: LowerOrNewerEqualPriority spares older equal": (
        full_queue("LowerOrNewerEqualPriority", running_prio=5, running_t=1.0), set()),
}


@pytest.mark.parametrize("name", list(PREEMPT_CASES))
def test_preemption_within_queue(name: str) -> None:
    case, expect = PREEMPT_CASES[name]
    d = check(case, set(), expect)
    if expect:
        assert d.nominated == {"p": tuple(expect)}
        assert all(p.reason == "within_queue" and p.by == "p" for p in d.preempt)
        assert d.waiting["p"].code == "WaitingForVictims"
        assert "waiting for" in d.waiting["p"].message


@pytest.mark.parametrize(("need", "victims"), [
    (2, {"b"}),  # lowest priority, then least progress since its checkpoint
    (4, {"a", "b"}),  # both priority-0 jobs before the priority-1 job
    (6, {"a", "b", "c"}),
])
def test_victims_lose_least_work(need: int, victims: set[str]) -> None:
    case = Case([queue("q", 6, within_queue="LowerPriority")], [pend("p", "q", need, prio=5)],
                running=[run("a", "q", ["n0"], 2, prio=0, progress=100.0),
                         run("b", "q", ["n1"], 2, prio=0, progress=10.0),
                         run("c", "q", ["n2"], 2, prio=1, progress=0.0)])
    check(case, set(), victims)


def test_minimal_victim_set_spares_unneeded_jobs() -> None:
    # Victim order is b (1 GPU) then a (4 GPUs); after taking both, b is given back.
    case = Case([queue("q", 5, within_queue="LowerPriority")], [pend("p", "q", 4, prio=5)],
                running=[run("a", "q", ["n0"], 4, progress=50.0),
                         run("b", "q", ["n1"], 1, progress=1.0)])
    check(case, set(), {"a"})


def reclaim_case(policy: str, borrower_prio: int = 0, b_running: float = 8,
                 **kw: object) -> Case:
    jobs = [run(f"b{i}", "qb", [f"n{i}"], 2, prio=borrower_prio)
            for i in range(int(b_running / 2))]
    return Case([queue("qa", 4, "c", reclaim_within_cohort=policy, **kw), queue("qb", 4, "c")],
                [pend("p", "qa", 4, prio=0)], running=jobs)


RECLAIM_CASES = {
    # qb borrows 4 of qa's GPUs; qa wants its nominal quota back (ties: input order).
    "reclaim Any": (reclaim_case("Any"), {"b0", "b1"}),
    "reclaim LowerPriority spares equal priority": (reclaim_case("LowerPriority"), set()),
    "reclaim LowerPriority takes lower priority": (
        reclaim_case("LowerPriority", borrower_prio=-1), {"b0", "b1"}),
    "reclaim Never": (reclaim_case("Never"), set()),
    # qb uses exactly its nominal quota: not borrowing, nothing to reclaim.
    "no reclaim from a queue within its quota": (reclaim_case("Any", b_running=4), {"p"}),
}


@pytest.mark.parametrize("name", list(RECLAIM_CASES))
def test_reclaim_within_cohort(name: str) -> None:
    case, expect = RECLAIM_CASES[name]
    if name == "no reclaim from a queue within its quota":
        check(case, expect)  # room is left: p is simply admitted
        return
    d = check(case, set(), expect)
    assert all(p.reason == "reclaim" for p in d.preempt)


def borrow_case(policy: str, max_priority: int | None = None) -> Case:
    # qa (nominal 2) wants 4, so it must borrow; qb borrows 4 with three priority-0 jobs.
    return Case([queue("qa", 2, "c", reclaim_within_cohort="LowerPriority",
                       borrow_within_cohort=policy, borrow_max_priority=max_priority),
                 queue("qb", 2, "c"), queue("qc", 4, "c")],
                [pend("p", "qa", 4, prio=10)],
                running=[run(f"b{i}", "qb", [f"n{i}"], 2) for i in range(3)]
                + [run("c0", "qc", ["n5"], 2)],
                nodes=nodes(6))


@pytest.mark.parametrize(("policy", "max_priority", "victims"), [
    ("Never", None, set()),  # p needs to borrow: no preemption in the cohort without the policy
    ("LowerPriority", None, {"b0", "b1"}),  # two of qb's borrowed jobs make room
    ("LowerPriority", -1, set()),  # victims above the threshold: not while borrowing
])
def test_borrow_within_cohort(policy: str, max_priority: int | None, victims: set[str]) -> None:
    d = check(borrow_case(policy, max_priority), set(), victims)
    assert all(p.reason == "borrow" for p in d.preempt)


def test_preemption_frees_nodes_not_only_quota() -> None:
    # Quota has room (16) but the only node is full: the lower-priority job makes room.
    case = Case([queue("q", 16, within_queue="LowerPriority")], [pend("p", "q", 8, prio=1)],
                running=[run("r", "q", ["n0"], 8)], nodes=nodes(1))
    check(case, set(), {"r"})


def test_job_already_being_preempted_is_reused() -> None:
    case = full_queue("LowerPriority")
    case.running = [case.running[0]._replace(preempting=True)]
    d = check(case, set(), set())
    assert d.nominated == {"p": ("r",)}


def test_victims_are_not_taken_twice() -> None:
    case = Case([queue("q", 4, within_queue="LowerPriority")],
                [pend("p1", "q", 4, prio=5), pend("p2", "q", 4, prio=5, t=1)],
                running=[run("r", "q", ["n0"], 4)])
    d = check(case, set(), {"r"})
    assert set(d.nominated) == {"p1"}


def test_preemption_off() -> None:
    case = full_queue("LowerPriority")
    case.policy = Policy(preemption=False)
    check(case, set(), set())


@pytest.mark.parametrize(("mine", "victims"), [
    (2, {"b0"}),  # qa at its nominal quota with p: may take from the higher-share queue qb
    (4, set()),  # qa would end above qb's share after taking: not fair
])
def test_fair_sharing_preemption(mine: float, victims: set[str]) -> None:
    # qc lends 4. qa runs 2 (its nominal), qb runs 6 (borrowing 4): cohort full.
    case = Case([queue("qa", 2, "c", reclaim_within_cohort="Any"), queue("qb", 2, "c"),
                 queue("qc", 4, "c")],
                [pend("p", "qa", mine)],
                running=[run("a0", "qa", ["n0"], 2)]
                + [run(f"b{i}", "qb", [f"n{i + 1}"], 2) for i in range(3)],
                policy=Policy(fair_sharing=True))
    d = check(case, set(), victims)
    assert all(p.reason == "fair_share" for p in d.preempt)


def test_classical_reclaim_needs_the_preemptor_under_nominal() -> None:
    # The same cohort without fair sharing: qa is at its nominal quota, so no reclaim.
    case = Case([queue("qa", 2, "c", reclaim_within_cohort="Any"), queue("qb", 2, "c"),
                 queue("qc", 4, "c")],
                [pend("p", "qa", 2)],
                running=[run("a0", "qa", ["n0"], 2)]
                + [run(f"b{i}", "qb", [f"n{i + 1}"], 2) for i in range(3)])
    check(case, set(), set())


@pytest.mark.parametrize(("order", "within", "victims"), [
    ("las", "LowerPriority", {"r"}),  # a lower level of the same priority outranks it
    ("las", "Never", set()),  # the queue's setting still rules: never is never
    ("fifo", "LowerPriority", set()),  # Kueue's order: equal priorities, no victim
])
def test_las_preempts_jobs_with_more_attained_service(order: str, within: str,
                                                      victims: set[str]) -> None:
    case = Case([queue("q", 4, within_queue=within)], [pend("p", "q", 4, attained_service=0.0)],
                running=[run("r", "q", ["n0"], 4, attained_service=500.0)],
                policy=Policy(order=order, las_thresholds=(100.0,)))  # type: ignore[arg-type]
    check(case, set(), victims)


def test_las_reclaims_from_a_borrower_by_level() -> None:
    # qa (nominal 4, using 2) reclaims 2 GPUs from qb, which borrows 2 over its nominal 4 on
    # one 8-GPU node. reclaim_within_cohort = "LowerPriority": under Kueue's order the equal
    # priorities protect qb's jobs; under las qb's jobs rank by level, and the one that ran
    # longest (level 2, then the least progress since its checkpoint) goes. Hand-computed:
    # levels split at 100 and 1,000 GPU-seconds: b-new 50 -> 0, b-mid 500 -> 1, b-old 5,000 -> 2.
    def case(order: str) -> Case:
        return Case([queue("qa", 4, "c", reclaim_within_cohort="LowerPriority"),
                     queue("qb", 4, "c")],
                    [pend("p", "qa", 2, attained_service=0.0)],
                    running=[run("a0", "qa", ["n0"], 2),
                             run("b-new", "qb", ["n0"], 2, attained_service=50.0),
                             run("b-mid", "qb", ["n0"], 2, attained_service=500.0),
                             run("b-old", "qb", ["n0"], 2, attained_service=5000.0)],
                    nodes=nodes(1),
                    policy=Policy(order=order,  # type: ignore[arg-type]
                                  las_thresholds=(100.0, 1000.0)))
    check(case("fifo"), set(), set())
    d = check(case("las"), set(), {"b-old"})
    assert [p.reason for p in d.preempt] == ["reclaim"]


# --- anti-starvation: a job pending longer than the age holds capacity until it fits ---

def starving_case(age: float | None, running_gpus: float = 6) -> Case:
    return Case([queue("q", 8)], [pend("big", "q", 4, t=0.0), pend("small", "q", 1, t=150.0)],
                running=[run("r", "q", ["n0"], running_gpus)] if running_gpus else [],
                nodes=nodes(1), now=200.0, policy=Policy(starvation_age=age))


@pytest.mark.parametrize(("age", "running", "expect"), [
    (None, 6, {"small"}),  # no aging: the small job backfills forever
    (100.0, 6, set()),  # big is starving: the flavor is held for it
    (300.0, 6, {"small"}),  # not pending long enough yet
    (100.0, 0, {"big", "small"}),  # once room frees up the starving job goes first
])
def test_starvation_reservation(age: float | None, running: float, expect: set[str]) -> None:
    d = check(starving_case(age, running), expect)
    if age == 100.0 and running:
        assert d.waiting["small"].code == "HeldForStarvingJob"
        assert "held for starving job big" in d.waiting["small"].message


def test_starving_job_goes_before_higher_priority() -> None:
    case = Case([queue("q", 4)], [pend("old", "q", 4, t=0.0), pend("vip", "q", 4, prio=9, t=150)],
                nodes=nodes(1), now=200.0, policy=Policy(starvation_age=100.0))
    check(case, {"old"})


# --- gangs and topology-aware placement ---

def racks_case(free: Sequence[float], job: PendingJob, per_rack: int = 2) -> Case:
    """Nodes of 8 GPUs, ``per_rack`` to a rack, with ``free`` GPUs left on each."""
    ns = nodes(len(free), racks=len(free) // per_rack)
    running = [run(f"fill{i}", "q", [n.name], 8 - f) for i, (n, f) in enumerate(zip(ns, free,
                                                                                      strict=True))
               if f < 8]
    return Case([queue("q", 1000)], [job], running=running, nodes=ns)


def placed(d: Decisions) -> tuple[str, ...]:
    assert len(d.admit) == 1, d.waiting
    return d.admit[0].nodes


def test_gang_all_or_nothing() -> None:
    d = racks_case([3, 3], pend("j", "q", 4, ranks=2)).run()
    assert d.admit == [] and "no nodes free" in d.waiting["j"].message
    assert d.waiting["j"].code == "WaitingForNodes"
    assert placed(racks_case([3, 3], pend("j", "q", 3, ranks=2)).run()) == ("n0", "n1")


def test_best_fit_node() -> None:
    assert placed(racks_case([8, 2, 8, 8], pend("j", "q", 2)).run()) == ("n1",)


def test_fewest_domains_prefers_one_node() -> None:
    # Two ranks of 4 fit on n2 alone: one node beats two.
    assert placed(racks_case([4, 4, 8, 0], pend("j", "q", 4, ranks=2)).run()) == ("n2", "n2")


@pytest.mark.parametrize(("free", "ranks", "required", "expect"), [
    # Rack r0 holds 1 rank of 4, rack r1 holds 2: the gang of 2 goes to r1.
    ([4, 0, 4, 4], 2, True, ("n2", "n3")),
    # A gang of 3 fits in no single rack: required fails, preferred spreads.
    ([4, 0, 4, 4], 3, True, None),
    ([4, 0, 4, 4], 3, False, ("n2", "n3", "n0")),
    # Best-fit rack (3 nodes a rack): r0 holds 3 ranks, r1 exactly 2 -> r1, keeping r0 whole.
    ([4, 4, 4, 4, 4, 0], 2, False, ("n3", "n4")),
])
def test_topology(free: list[float], ranks: int, required: bool,
                  expect: tuple[str, ...] | None) -> None:
    job = pend("j", "q", 4, ranks=ranks, topology="rack", topology_required=required)
    d = racks_case(free, job, per_rack=3 if len(free) == 6 else 2).run()
    if expect is None:
        assert d.admit == []
    else:
        assert placed(d) == expect


def test_topology_required_node_level() -> None:
    job = pend("j", "q", 4, ranks=2, topology="node", topology_required=True)
    assert racks_case([4, 4], job).run().admit == []
    assert placed(racks_case([4, 8], job).run()) == ("n1", "n1")


def gpu_models_case(job: PendingJob, a100_free: float = 8) -> Case:
    ns = nodes(2, flavor="a100", prefix="a") + nodes(2, flavor="h100", prefix="h")
    q = Queue("q", (quota(100, flavor="a100"), quota(100, flavor="h100")))
    running = [run("x", "q", ["a0"], 8 - a100_free, flavor="a100"),
               run("y", "q", ["a1"], 8, flavor="a100")] if a100_free < 8 else []
    return Case([q], [job], running=running, nodes=ns)


def test_gpu_model_constraint() -> None:
    d = gpu_models_case(pend("j", "q", 2, flavors=("h100",))).run()
    assert d.admit[0].flavor == "h100" and set(d.admit[0].nodes) <= {"h0", "h1"}


def test_flavors_tried_in_queue_order() -> None:
    assert gpu_models_case(pend("j", "q", 2)).run().admit[0].flavor == "a100"
    assert gpu_models_case(pend("j", "q", 2), a100_free=1).run().admit[0].flavor == "h100"


def test_never_fits_and_cordoned_nodes() -> None:
    d = Case([queue("q", 100)], [pend("huge", "q", 16)]).run()
    assert d.waiting["huge"].message.startswith("never fits")
    assert d.waiting["huge"].code == "NeverFits" and d.waiting["huge"].inadmissible
    cordoned = [n if n.name != "n0" else Node("n0", "gpu", n.capacity, n.domains, False)
                for n in nodes(2)]
    d = Case([queue("q", 100)], [pend("j", "q", 8, ranks=2)], nodes=cordoned).run()
    assert d.admit == [] and d.waiting["j"].code == "WaitingForNodes"
    # Only the cordoned node is large enough for one rank: the job waits for it to come back.
    big = [n if n.name != "n0" else Node("n0", "gpu", res(16, 64, UNLIMITED), n.domains,
                                          False) for n in nodes(2)]
    d = Case([queue("q", 100)], [pend("j", "q", 16)], nodes=big).run()
    assert d.waiting["j"].code == "NodeUnhealthy" and d.waiting["j"].inadmissible


def test_unknown_queue_and_level_are_explained() -> None:
    d = Case([queue("q", 8)], [pend("a", "nope"), pend("b", "q", topology="pod")]).run()
    assert "unknown queue" in d.waiting["a"].message
    assert "unknown topology level" in d.waiting["b"].message
    assert (d.waiting["a"].code, d.waiting["b"].code) == ("UnknownQueue", "UnknownTopology")


# --- no preemption ping-pong: the room a preemption frees goes to the preemptor ---

def replay(case: Case, cycles: int) -> tuple[Case, list[Decisions]]:
    """Run ``cycles`` cycles as the simulator does: victims stop at once and are requeued, the
    admitted start, and the jobs each cycle nominated are flagged for the next one."""
    out = []
    for _ in range(cycles):
        d = case.run()
        out.append(d)
        gone = {p.job for p in d.preempt}
        pending = {j.id: j for j in case.pending}
        requeued = [pend(str(r.id), r.queue, gpus_of(r.per_rank), prio=r.priority, t=case.now)
                    for r in case.running if r.id in gone]
        case.running = [r for r in case.running if r.id not in gone] + [
            run(str(a.job), a.queue, a.nodes, gpus_of(pending[a.job].per_rank),
                prio=pending[a.job].priority, flavor=a.flavor) for a in d.admit]
        admitted = {a.job for a in d.admit}
        case.pending = [j._replace(nominated=j.id in d.nominated) for j in case.pending
                        if j.id not in admitted] + requeued
        case.now += 1.0
    return case, out


def reclaim_behind_head(p_nominated: bool = False) -> Case:
    """qb borrows 1 GPU of the node's 4 and has a priority-5 job waiting; qa's head h needs to
    borrow and finds no node; behind it, p fits in qa's nominal quota. qc only lends."""
    queues = [queue("qa", 2, "c", within_queue="Never", reclaim_within_cohort="Any"),
              queue("qb", 2, "c"), queue("qc", 2, "c")]
    return Case(queues,
                [pend("h", "qa", 3, prio=3), pend("p", "qa", 1, t=1, nominated=p_nominated),
                 pend("b", "qb", 1, prio=5, t=2)],
                running=[run(f"b{i}", "qb", ["n0"], 1, prio=5) for i in range(3)],
                nodes=nodes(1, size=4))


def test_nominated_job_gets_the_room_first() -> None:
    # Not nominated: qb's higher-priority borrowing job takes the free GPU, so p, which fits in
    # qa's nominal quota, reclaims a GPU from qb: which b would take again next cycle.
    d = check(reclaim_behind_head(), {"b"}, {"b0"})
    assert d.nominated == {"p": ("b0",)}
    # Nominated in the last cycle: p goes first; b waits (qb is above its nominal quota).
    check(reclaim_behind_head(p_nominated=True), {"p"})


def test_no_preemption_ping_pong() -> None:
    case, decisions = replay(reclaim_behind_head(), cycles=6)
    assert sum(len(d.preempt) for d in decisions) == 1
    assert {str(r.id) for r in case.running} == {"b1", "b2", "b", "p"}


def test_reclaimer_behind_a_hopeless_head_goes_before_borrowers() -> None:
    # qa's head h (4 GPUs) fits neither quota nor nodes; p behind it fits in qa's nominal
    # quota. The first pass admits only such jobs, so p takes the free GPU before qb's
    # priority-5 job b, which would borrow, even without the nominated flag.
    case = reclaim_behind_head()
    case.pending[0] = pend("h", "qa", 4, prio=3)
    case.queues[2] = queue("qc", 0, "c")  # no spare quota in the cohort: h cannot borrow
    check(case, {"p"})


@pytest.mark.parametrize(("when_can_borrow", "flavor"), [("MayStopSearch", "a100"),
                                                          ("TryNextFlavor", "h100")])
def test_flavor_within_nominal_quota_before_borrowing(when_can_borrow: str, flavor: str) -> None:
    # The queue's first flavor has room only by borrowing, the second within its nominal quota.
    # Kueue's default stops at the first flavor that fits, borrowing or not.
    ns = nodes(1, flavor="a100", prefix="a") + nodes(1, flavor="h100", prefix="h")
    qa = Queue("qa", (quota(0, flavor="a100"), quota(4, flavor="h100")), cohort="c",
               when_can_borrow=when_can_borrow)  # type: ignore[arg-type]
    qb = Queue("qb", (quota(8, flavor="a100"), quota(4, flavor="h100")), cohort="c")
    d = check(Case([qa, qb], [pend("j", "qa", 2)], nodes=ns), {"j"})
    assert d.admit[0].flavor == flavor and d.admit[0].borrowing == (flavor == "a100")


def test_one_victim_per_job_when_one_frees_enough() -> None:
    # bob borrows 6 of alice's 12 GPUs (3 nodes x 4). a1 (4 GPUs) and a2 (2 x 1 GPU) reclaim:
    # once b1 stops for a1, bob borrows only 2 more, so a2 needs just one more victim.
    queues = [queue(n, 6, "lab", within_queue="LowerPriority", reclaim_within_cohort="Any")
              for n in ("alice", "bob")]
    case = Case(queues, [pend("a1", "alice", 4, prio=100, t=70), pend("a2", "alice", 1,
                                                                      ranks=2, t=70)],
                running=[run("b1", "bob", ["n0"], 4, progress=69.0),
                         run("b2", "bob", ["n1"], 4, progress=68.0),
                         run("b3", "bob", ["n2"], 4, prio=100, progress=67.0)],
                nodes=nodes(3, size=4))
    d = check(case, set(), {"b1", "b2"})
    assert d.nominated == {"a1": ("b2",), "a2": ("b1",)}


# --- why a job waits, as data ---

def test_waiting_for_quota_carries_the_numbers() -> None:
    """qa (nominal 4, may borrow 2 from cohort c) runs 3 GPUs; qb lends 4 and uses 3 of them.
    A 4-GPU job of qa finds 1 GPU left in its nominal quota and 1 more to borrow. With
    preemption the cycle looks at the job itself (and has its request); without, it sees that
    no job of qa can fit and gives the whole queue's reason (the same numbers, no request)."""
    qs = [queue("qa", 4, cohort="c", borrow=2, within_queue="LowerPriority"),
          queue("qb", 4, cohort="c")]
    running = [run("ra", "qa", ["n0"], 3, prio=9), run("rb", "qb", ["n1"], 3)]
    for policy, requested in ((Policy(), res(4, 1, 0)), (Policy(preemption=False), None)):
        why = Case(qs, [pend("j", "qa", 4)], running=running, policy=policy).run().waiting["j"]
        assert (why.code, why.flavor, why.inadmissible) == ("WaitingForQuota", "gpu", False)
        assert why.requested == requested
        assert (gpus_of(why.available), gpus_of(why.borrowable)) == (1, 1)  # type: ignore[arg-type]


def test_more_than_the_queue_can_ever_get_is_inadmissible() -> None:
    """Nominal 4 plus at most 2 borrowed: a 7-GPU gang can never be admitted to qa, even with
    the cohort idle; 6 GPUs can."""
    qs = [queue("qa", 4, cohort="c", borrow=2), queue("qb", 4, cohort="c")]
    d = Case(qs, [pend("big", "qa", 7), pend("ok", "qa", 6)]).run()
    assert admitted(d) == {"ok"}
    why = d.waiting["big"]
    assert why.code == "ExceedsMaxQuota" and why.inadmissible
    assert "can ever get (6 GPU" in why.message


@pytest.mark.parametrize("policy", [Policy(), Policy(preemption=False)])
def test_more_than_the_queue_can_ever_get_is_inadmissible_while_its_quota_is_full(
        policy: Policy) -> None:
    """qa's quota (4 GPUs) is all in use: the cycle finds no job of qa can fit now and gives
    the rest of the queue its reason, but a 7-GPU job never fits, whatever runs: it says so
    (it used to read WaitingForQuota while the quota was full)."""
    d = Case([queue("qa", 4)], [pend("big", "qa", 7), pend("small", "qa", 2)],
             running=[run("ra", "qa", ["n0"], 4)], policy=policy).run()
    big, small = d.waiting["big"], d.waiting["small"]
    assert (big.code, big.inadmissible, big.flavor) == ("ExceedsMaxQuota", True, "gpu")
    assert big.requested is not None and gpus_of(big.requested) == 7
    assert (small.code, small.inadmissible) == ("WaitingForQuota", False)


def test_free_nodes_outside_the_required_rack_fail_topology() -> None:
    """Two racks of 2 nodes, 4 GPUs free on one node of each rack: a gang of 2 x 4 GPUs held to
    one rack fails its topology although the cluster has the 8 GPUs free; without the
    constraint it would be placed."""
    job = pend("j", "q", 4, ranks=2, topology="rack", topology_required=True)
    d = racks_case([4, 0, 4, 0], job).run()
    assert d.waiting["j"].code == "TopologyPlacementFailed"
    assert placed(racks_case([4, 0, 4, 0], pend("j", "q", 4, ranks=2)).run()) == ("n0", "n2")


# --- position and estimated start ---

def test_positions_follow_the_schedulers_order() -> None:
    """Nominated first, then starving, then priority, then age; each queue on its own."""
    pending = [pend("old", "q", t=0.0), pend("vip", "q", prio=5, t=90.0),
               pend("nom", "q", t=80.0, nominated=True), pend("other", "q2", t=50.0),
               pend("young", "q", t=95.0)]
    snap = Snapshot(100.0, [queue("q", 8), queue("q2", 8)], nodes(1), [], pending)
    assert queue_positions(snap, Policy()) == {"nom": 1, "vip": 2, "old": 3, "young": 4,
                                               "other": 1}
    assert queue_positions(snap, Policy(starvation_age=50.0))["old"] == 2  # starving: before vip


def test_estimated_starts_replay_the_expected_ends() -> None:
    """One node of 8 GPUs, held by r until 150. a (8 GPUs, 30 s) starts when r ends; b and c
    (4 GPUs each) when a ends; d (8 GPUs) would need c's room, but c has no expected duration:
    no estimate for d."""
    running = [run("r", "q", ["n0"], 8)]
    pending = [pend("a", "q", 8, t=1.0, expected_duration=30.0),
               pend("b", "q", 4, t=2.0, expected_duration=10.0), pend("c", "q", 4, t=3.0),
               pend("d", "q", 8, t=4.0, expected_duration=5.0)]
    snap = Snapshot(100.0, [queue("q", 8)], nodes(1), running, pending)
    assert estimate_starts(snap, Policy(), {"r": 150.0}) == {"a": 150.0, "b": 180.0,
                                                               "c": 180.0}
    assert estimate_starts(snap, Policy(), {}) == {}  # r's end is unknown
    # A job overrunning its expected end is expected to end now; one being preempted too.
    assert estimate_starts(snap, Policy(), {"r": 50.0})["a"] == 100.0
    stopping = Snapshot(100.0, [queue("q", 8)], nodes(1), [run("r", "q", ["n0"], 8,
                                                               preempting=True)], pending)
    assert estimate_starts(stopping, Policy(), {})["a"] == 100.0


def test_a_job_avoids_the_nodes_it_must() -> None:
    """A retry avoids the node suspected of its failure: placed on n1 although n0 is the best
    fit; with every node that fits avoided, it waits for nodes; a preemption for it frees
    room only where it may go."""
    on_n1 = run("r", "q", ["n1"], 4)
    job = pend("retry", "q", 4, avoid=frozenset({"n0"}))
    d = check(Case([queue("q", 16)], [job], running=[on_n1], nodes=nodes(2, 8)), {"retry"})
    assert d.admit[0].nodes == ("n1",)
    full = run("big", "q", ["n1"], 8)
    d = check(Case([queue("q", 16)], [job], running=[full], nodes=nodes(2, 8)), set())
    assert d.waiting["retry"].code == "WaitingForNodes"
    low = [run("low0", "q", ["n0"], 8), run("low1", "q", ["n1"], 8)]
    high = pend("retry", "q", 4, prio=5, avoid=frozenset({"n0"}))
    check(Case([queue("q", 16, within_queue="LowerPriority")], [high], running=low,
               nodes=nodes(2, 8)), set(), {"low1"})
