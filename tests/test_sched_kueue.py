"""Kueue's admission rules, one scenario each, written from Kueue's documented behaviour (its
ClusterQueue, preemption and hierarchical-cohort docs, and pkg/scheduler): the expected
admissions, victims and waiting reasons.

Units as in test_sched_scenarios: GPUs; every job asks 1 CPU per rank and no memory.
"""

from __future__ import annotations

import pytest

from stoker.sched import Cohort, Node, Policy, Queue, SchedulerCache, Snapshot, schedule
from test_sched_scenarios import Case, check, nodes, pend, queue, quota, run


def two_flavors(a_gpus: float = 8, h_gpus: float = 8) -> list[Node]:
    """One node of flavor "a" (a0) and one of flavor "h" (h0)."""
    return nodes(1, a_gpus, flavor="a", prefix="a") + nodes(1, h_gpus, flavor="h", prefix="h")


# --- (h) victim order: other queues' borrowers before the preemptor's own queue ---

def victim_order_case(policy: Policy) -> Case:
    """qa (nominal 4) runs a0 (priority 0); qb (nominal 4) borrows 4 with b0 and b1
    (priority 5). One 8-GPU node: full. p (qa, priority 9) needs 2: it fits qa's nominal quota,
    so it may reclaim from qb or preempt a0."""
    queues = [queue("qa", 4, "c", within_queue="LowerPriority", reclaim_within_cohort="Any"),
              queue("qb", 4, "c")]
    running = [run("a0", "qa", ["n0"], 2, started_at=90.0, progress=1.0),
               run("b0", "qb", ["n0"], 2, prio=5, started_at=50.0, progress=100.0),
               run("b1", "qb", ["n0"], 2, prio=5, started_at=20.0, progress=10.0),
               run("b2", "qb", ["n0"], 2, prio=5, started_at=10.0, progress=500.0)]
    return Case(queues, [pend("p", "qa", 2, prio=9)], running=running, nodes=nodes(1),
                policy=policy)


@pytest.mark.parametrize(("order", "victim"), [
    ("stoker", "b1"),  # least work lost: b1 has the least progress since its checkpoint
    ("kueue", "b0"),  # Kueue: the most recently admitted
])
def test_victim_order_takes_other_queues_borrowers_first(order: str, victim: str) -> None:
    # a0 has the lowest priority, but it is in p's own queue: Kueue takes borrowers first.
    d = check(victim_order_case(Policy(victim_order=order)), set(), {victim})  # type: ignore[arg-type]
    assert d.preempt[0].reason == "reclaim" and d.nominated == {"p": (victim,)}
    assert d.waiting["p"].code == "WaitingForVictims"


def test_victims_kept_between_cycles_follow_each_cycle_s_order() -> None:
    # The cache keeps a cycle's victim candidates for the next over the same running jobs;
    # a cycle that ranks victims otherwise must not reuse them, nor the victims chosen before.
    case = victim_order_case(Policy())
    snap = Snapshot(case.now, case.queues, case.nodes, case.running, case.pending,
                    topology=("zone", "rack"))
    cache = SchedulerCache()
    for order, victim in (("kueue", "b0"), ("stoker", "b1"), ("stoker", "b1"), ("kueue", "b0")):
        d = schedule(snap, Policy(victim_order=order), cache)  # type: ignore[arg-type]
        assert d.nominated == {"p": (victim,)}


def test_victim_order_ties_go_to_the_most_recently_started() -> None:
    # Within the queue, same priority, same progress: the most recently started goes first.
    case = Case([queue("q", 4, within_queue="LowerPriority")], [pend("p", "q", 2, prio=5)],
                running=[run("old", "q", ["n0"], 2, started_at=10.0),
                         run("new", "q", ["n0"], 2, started_at=60.0)], nodes=nodes(1, 4))
    for order in ("stoker", "kueue"):
        case.policy = Policy(victim_order=order)  # type: ignore[arg-type]
        check(case, set(), {"new"})


# --- (g) flavor fungibility: whenCanBorrow, whenCanPreempt, preference ---

def fungibility_case(first: str, **fungibility: str) -> Case:
    """qa may use flavors a and h (``first`` is tried first). On a it is at its nominal quota
    with a0 (priority 0) and nobody lends: p (2 GPUs, priority 5) needs a0 preempted. On h it
    runs 2 of its nominal 2 and qb lends 4: p fits by borrowing."""
    flavors = {"a": quota(4, flavor="a"), "h": quota(2, flavor="h")}
    order = (first, "h" if first == "a" else "a")
    qa = Queue("qa", tuple(flavors[f] for f in order), cohort="c", within_queue="LowerPriority",
               **fungibility)  # type: ignore[arg-type]
    qb = Queue("qb", (quota(0, flavor="a"), quota(4, flavor="h")), cohort="c")
    running = [run("a0", "qa", ["a0"], 4, flavor="a"), run("h0", "qa", ["h0"], 2, flavor="h")]
    return Case([qa, qb], [pend("p", "qa", 2, prio=5)], running=running, nodes=two_flavors())


def test_when_can_preempt_tries_the_next_flavor() -> None:
    # Kueue's default (TryNextFlavor): a flavor where it fits, even borrowing, beats one where
    # it must preempt.
    d = check(fungibility_case("a"), {"p"})
    assert d.admit[0].flavor == "h" and d.admit[0].borrowing
    # MayStopSearch: the first flavor where preemption makes room ends the search.
    d = check(fungibility_case("a", when_can_preempt="MayStopSearch"), set(), {"a0"})
    assert d.preempt[0].reason == "within_queue" and d.waiting["p"].flavor == "a"


@pytest.mark.parametrize(("preference", "victims"), [
    ("BorrowingOverPreemption", set()),  # borrow on h rather than preempt on a
    ("PreemptionOverBorrowing", {"a0"}),  # preempt on a rather than borrow on h
])
def test_flavor_preference(preference: str, victims: set[str]) -> None:
    # h first; the queue tries every flavor, so the preference decides between them.
    d = check(fungibility_case("h", when_can_borrow="TryNextFlavor",
                               when_can_preempt="TryNextFlavor", flavor_preference=preference),
              set() if victims else {"p"}, victims)
    assert not victims or d.waiting["p"].code == "WaitingForVictims"


# --- (b) a head that finds no victims holds its quota for the rest of the cycle ---

def hold_case(reclaim: str, policy: Policy) -> Case:
    """Cohort of 8: qa (nominal 4) runs 2 at priority 10, qb (nominal 4) runs its 4, qc
    (nominal 0) lends nothing. p (qa, 4 GPUs, priority 5) fits qa's nominal quota by size but
    not the 2 GPUs left: it needs preemption and finds no victims (its own job has a higher
    priority, qb does not borrow). c1 (qc) could borrow the 2 GPUs left."""
    queues = [queue("qa", 4, "c", within_queue="LowerPriority", reclaim_within_cohort=reclaim),
              queue("qb", 4, "c"), queue("qc", 0, "c")]
    running = [run("a0", "qa", ["n0"], 2, prio=10), run("b0", "qb", ["n1"], 4)]
    return Case(queues, [pend("p", "qa", 4, prio=5), pend("c1", "qc", 2, t=1)],
                running=running, policy=policy)


@pytest.mark.parametrize(("reclaim", "hold", "expect"), [
    ("LowerPriority", True, set()),  # p keeps the quota it could use: c1 cannot borrow it
    ("Any", True, {"c1"}),  # a queue that can always reclaim holds nothing
    ("LowerPriority", False, {"c1"}),  # the option off (Stoker's default)
])
def test_head_without_victims_holds_its_quota(reclaim: str, hold: bool, expect: set[str]) -> None:
    d = check(hold_case(reclaim, Policy(hold_quota_without_victims=hold)), expect)
    assert d.waiting["p"].code == "WaitingForQuota" and "p" not in d.nominated
    if not expect:
        assert d.waiting["c1"].code == "WaitingForQuota"


def test_a_hold_does_not_block_its_own_queue() -> None:
    # Kueue would take qa's next job as the head of a later cycle, with p set aside.
    case = hold_case("LowerPriority", Policy(hold_quota_without_victims=True))
    case.pending.append(pend("a2", "qa", 2, t=2))
    check(case, {"a2"})


# --- (e) flavors are chosen as the cycle starts; a head that no longer fits is skipped ---

def test_head_whose_flavor_was_taken_is_skipped_not_reassigned() -> None:
    """qa owns no quota; qb owns 4 GPUs of a and 4 of h, idle. As the cycle starts, qa's head
    p1 fits flavor a by borrowing (Kueue stops there). qb's job p2 fits qb's nominal quota, so
    it goes first and takes a. p1 then waits for the next cycle instead of moving to h. p3,
    behind p1, comes up after: its flavor is chosen then, and h has room."""
    qa = Queue("qa", (quota(0, flavor="a"), quota(0, flavor="h")), cohort="c")
    qb = Queue("qb", (quota(4, flavor="a"), quota(4, flavor="h")), cohort="c")
    d = check(Case([qa, qb], [pend("p1", "qa", 4), pend("p2", "qb", 4, flavors=("a",), t=1),
                              pend("p3", "qa", 2, t=2)], nodes=two_flavors()), {"p2", "p3"})
    assert {str(a.job): a.flavor for a in d.admit} == {"p2": "a", "p3": "h"}
    why = d.waiting["p1"]
    assert why.code == "WaitingForQuota" and why.flavor == "a"
    assert "no longer fits" in why.message and "cycle started" in why.message


# --- (f) a flavor where the head can reclaim beats one where it preempts in its own queue ---

def reclaim_flavor_case(**fungibility: str) -> Case:
    """qa (flavors a, h; nominal 4 of each) runs a0 (priority 0) on its whole a quota; qb
    (no quota of its own) borrows qa's h quota with b0. p (qa, 4 GPUs, priority 5): on a it
    would preempt a0 in its own queue, on h it reclaims from qb."""
    qa = Queue("qa", (quota(4, flavor="a"), quota(4, flavor="h")), cohort="c",
               within_queue="LowerPriority", reclaim_within_cohort="Any",
               **fungibility)  # type: ignore[arg-type]
    qb = Queue("qb", (quota(0, flavor="a"), quota(0, flavor="h")), cohort="c")
    running = [run("a0", "qa", ["a0"], 4, flavor="a"), run("b0", "qb", ["h0"], 4, flavor="h")]
    return Case([qa, qb], [pend("p", "qa", 4, prio=5)], running=running, nodes=two_flavors())


def test_reclaiming_flavor_beats_preempting_in_own_queue() -> None:
    d = check(reclaim_flavor_case(), set(), {"b0"})
    assert d.preempt[0].reason == "reclaim" and d.waiting["p"].flavor == "h"
    # Stopping at the first flavor where preemption makes room takes a0 instead.
    d = check(reclaim_flavor_case(when_can_preempt="MayStopSearch"), set(), {"a0"})
    assert d.preempt[0].reason == "within_queue"


# --- (a) preemption only for a request within the queue's nominal quota ---

def nominal_case(request: float, borrow_within: str) -> Case:
    """qa (nominal 4) runs a0 (priority 0) on all of it; qb (nominal 4) runs 2 and lends the
    rest. p (qa, priority 5) asks ``request`` GPUs."""
    queues = [queue("qa", 4, "c", within_queue="LowerPriority",
                    reclaim_within_cohort="LowerPriority", borrow_within_cohort=borrow_within),
              queue("qb", 4, "c")]
    running = [run("a0", "qa", ["n0"], 4), run("b0", "qb", ["n1"], 2)]
    return Case(queues, [pend("p", "qa", request, prio=5)], running=running)


@pytest.mark.parametrize(("asked", "borrow_within", "victims"), [
    (4, "Never", {"a0"}),  # within the nominal quota: preempting a0 makes room
    (6, "Never", set()),  # above it: Kueue does not look for victims (it would have to borrow)
    (6, "LowerPriority", {"a0"}),  # borrow_within_cohort allows preempting while borrowing
])
def test_preemption_needs_the_request_within_nominal_quota(asked: float, borrow_within: str,
                                                           victims: set[str]) -> None:
    d = check(nominal_case(asked, borrow_within), set(), victims)
    assert d.waiting["p"].code == ("WaitingForVictims" if victims else "WaitingForQuota")


# --- (c) heads ordered by how far up the cohort tree they borrow, then priority, then age ---

def borrowing_level_case(tree: bool) -> Case:
    """qa, qb, qc each run 2 GPUs; qc owns 4, so 2 GPUs are free. a (qa, priority 9, oldest)
    and b (qb, priority 0) both must borrow 2. In the tree (org: team1 = qa; team2 = qb, qc) b
    borrows within team2, a from the whole org; in one flat cohort both borrow from it."""
    cohorts = [Cohort("org"), Cohort("team1", "org"), Cohort("team2", "org")] if tree else []
    c1, c2 = ("team1", "team2") if tree else ("org", "org")
    queues = [queue("qa", 2, c1), queue("qb", 2, c2), queue("qc", 4, c2)]
    running = [run("ra", "qa", ["n0"], 2), run("rb", "qb", ["n1"], 2), run("rc", "qc", ["n2"], 2)]
    return Case(queues, [pend("a", "qa", 2, prio=9, t=0), pend("b", "qb", 2, t=5)],
                running=running, cohorts=cohorts)


@pytest.mark.parametrize(("tree", "expect"), [
    (True, {"b"}),  # less borrowing first, whatever the priority
    (False, {"a"}),  # the same level: priority decides
])
def test_heads_ordered_by_borrowing_level(tree: bool, expect: set[str]) -> None:
    d = check(borrowing_level_case(tree), expect)
    loser = ({"a", "b"} - expect).pop()
    assert d.waiting[loser].code == "WaitingForQuota"


# --- (d) hierarchical reclaim: take back what others borrow of one's own sub-cohort ---

def hierarchical_case(tree: bool) -> Case:
    """team1 = qa (nominal 2) and qa2 (nominal 4, idle); team2 = qx (nominal 2), which runs
    four 2-GPU jobs: it borrows all 6 GPUs of team1. p (qa, 4 GPUs) must borrow 2 beyond qa's
    nominal quota, but team1 holds it. In one flat cohort there is no sub-cohort to hold it."""
    cohorts = [Cohort("org"), Cohort("team1", "org"), Cohort("team2", "org")] if tree else []
    c1, c2 = ("team1", "team2") if tree else ("org", "org")
    queues = [queue("qa", 2, c1, reclaim_within_cohort="Any"), queue("qa2", 4, c1),
              queue("qx", 2, c2)]
    running = [run(f"x{i}", "qx", [f"n{i}"], 2, started_at=float(i)) for i in range(4)]
    return Case(queues, [pend("p", "qa", 4)], running=running, cohorts=cohorts)


def test_hierarchical_reclaim_then_borrow_within_the_sub_cohort() -> None:
    d = check(hierarchical_case(tree=True), set(), {"x3", "x2"})  # most recently started first
    assert all(p.reason == "reclaim" for p in d.preempt)
    assert d.waiting["p"].code == "WaitingForVictims"
    # Flat: p's request is above qa's nominal quota and nothing lower in the tree holds it.
    d = check(hierarchical_case(tree=False), set(), set())
    assert d.waiting["p"].code == "WaitingForQuota"


def test_no_reclaim_from_a_sub_cohort_within_its_quota() -> None:
    """org = team1 (qa: nominal 4; qa2: none) + team2 (qx: 2; qy: 6), 12 GPUs. qa2 borrows qa's
    4 GPUs inside team1; qx borrows 4 of qy's inside team2, and team2 as a whole stays within
    its quota. p (qa, 4 GPUs) takes back what qa2 borrows, not qx's jobs, although those have
    the lower priority: qx takes nothing of team1's (Kueue checks every cohort between the
    victim's queue and the cohort it shares with the preemptor)."""
    cohorts = [Cohort("org"), Cohort("team1", "org"), Cohort("team2", "org")]
    queues = [queue("qa", 4, "team1", reclaim_within_cohort="Any"), queue("qa2", 0, "team1"),
              queue("qx", 2, "team2"), queue("qy", 6, "team2")]
    running = ([run(f"a{i}", "qa2", [f"n{i}"], 2, started_at=float(i)) for i in range(2)]
               + [run(f"x{i}", "qx", [f"n{i + 2}"], 2, prio=-1) for i in range(3)])
    d = check(Case(queues, [pend("p", "qa", 4)], running=running, cohorts=cohorts),
              set(), {"a1"})
    assert d.preempt[0].reason == "reclaim"
