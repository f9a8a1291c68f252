"""Multi-role jobs (Kueue's pod sets): each role its own gang, resources and flavor; the job is
admitted all or nothing.

Units as in test_sched_scenarios: GPUs; every rank asks 1 CPU and no memory unless a role says.
"""

from __future__ import annotations

from sched_helpers import res
from stoker.sched import (
    FlavorQuota,
    Node,
    PendingJob,
    Policy,
    Queue,
    Role,
    RoleAdmit,
    Snapshot,
    estimate_starts,
)
from test_sched_scenarios import INF3, Case, check, gpus, nodes, pend, queue, run

CPU_ONLY = res(0, 2, 0)  # a launcher: no GPU, 2 CPUs


def gpu_and_cpu_nodes() -> list[Node]:
    """Two 8-GPU nodes of flavor "h" and one CPU node (4 CPUs) of flavor "cpu"."""
    cpu = Node("c0", "cpu", res(0, 4, 2**40), ("z", "r9"))
    return [*nodes(2, 8, flavor="h", prefix="h"), cpu]


def two_flavor_queue(h: float = 16) -> Queue:
    return Queue("q", (FlavorQuota("h", gpus(h), INF3, INF3), FlavorQuota("cpu", INF3, INF3,
                                                                           INF3)))


def trainer_and_launcher(job_id: str = "rl", trainer_ranks: int = 2, prio: int = 0,
                         t: float = 0.0) -> PendingJob:
    """A trainer gang of ``trainer_ranks`` x 4 GPUs on "h", plus one launcher on "cpu"."""
    return pend(job_id, "q", 4, trainer_ranks, prio=prio, t=t, flavors=("h",),
                roles=(Role(1, CPU_ONLY, flavors=("cpu",)),))


def test_each_role_on_its_own_flavor() -> None:
    case = Case([two_flavor_queue()], [trainer_and_launcher()], nodes=gpu_and_cpu_nodes())
    d = check(case, {"rl"})
    a = d.admit[0]
    assert a.flavor == "h" and len(a.nodes) == 2 and set(a.nodes) <= {"h0", "h1"}
    assert a.roles == (RoleAdmit("cpu", ("c0",)),)


def test_all_or_nothing_when_a_later_role_does_not_fit() -> None:
    """The trainer fits, the launcher does not (its node is full): nothing of the job starts,
    its reason names the role, and the room the trainer would have taken goes to the next job."""
    busy = run("cpu-hog", "q", ["c0"], 0, flavor="cpu")._replace(per_rank=res(0, 4, 0))
    case = Case([two_flavor_queue()], [trainer_and_launcher(), pend("next", "q", 8, 2, t=1.0,
                                                                    flavors=("h",))],
                running=[busy], nodes=gpu_and_cpu_nodes())
    d = check(case, {"next"})
    why = d.waiting["rl"]
    assert why.code == "WaitingForNodes" and why.message.startswith("role 2 of 2: cpu:"), why
    assert sorted(d.admit[0].nodes) == ["h0", "h1"]


def test_roles_share_the_queue_quota() -> None:
    """Each role alone fits the queue's 8 GPUs; both together (6 + 4) do not."""
    queue_8 = Queue("q", (FlavorQuota("h", gpus(8), INF3, INF3),))
    job = pend("both", "q", 6, 1, flavors=("h",), roles=(Role(2, res(2, 1, 0)),))
    d = check(Case([queue_8], [job], nodes=nodes(2, 8, flavor="h", prefix="h")), set())
    assert d.waiting["both"].code == "WaitingForQuota"
    assert d.waiting["both"].message.startswith("role 2 of 2:")
    fits = pend("fits", "q", 4, 1, flavors=("h",), roles=(Role(2, res(2, 1, 0)),))
    check(Case([queue_8], [fits], nodes=nodes(2, 8, flavor="h", prefix="h")), {"fits"})


def test_a_role_that_borrows_waits_for_the_borrowing_pass() -> None:
    """In a cohort, a job whose second role borrows is admitted after a job of another queue
    that fits its nominal quota, though it is older: as a single-role job that borrows."""
    queues = [queue("qa", 4, "c"), queue("qb", 4, "c")]
    borrower = pend("roles", "qa", 4, 1, t=0.0, roles=(Role(1, res(2, 1, 0)),))
    plain = pend("plain", "qb", 4, 1, t=5.0)
    d = check(Case(queues, [borrower, plain], nodes=nodes(1, 8)), {"plain"})
    assert d.waiting["roles"].code in ("WaitingForQuota", "WaitingForNodes")
    d = check(Case(queues, [borrower], nodes=nodes(1, 8)), {"roles"})
    assert d.admit[0].borrowing


def test_a_running_multi_role_job_is_preempted_once() -> None:
    """Listed once per role, both on n0: a higher-priority job that needs the whole node
    preempts the job once, and waits for it."""
    parts = [run("mr", "q", ["n0"], 4), run("mr", "q", ["n0"], 4)]
    case = Case([queue("q", 8, within_queue="LowerPriority")], [pend("p", "q", 8, prio=5)],
                running=parts, nodes=nodes(1, 8))
    d = check(case, set(), {"mr"})
    assert len(d.preempt) == 1 and d.nominated == {"p": ("mr",)}


def test_a_running_role_holds_its_nodes_and_quota() -> None:
    """A running job's second role (on h1) is charged like a job: a 16-GPU queue with 8 + 4
    GPUs held has room for 4 more, and h1 has 4 free."""
    parts = [run("mr", "q", ["h0"], 8, flavor="h"), run("mr", "q", ["h1"], 4, flavor="h")]
    case = Case([two_flavor_queue()], [pend("six", "q", 6, flavors=("h",)),
                                       pend("four", "q", 4, t=1.0, flavors=("h",))],
                running=parts, nodes=gpu_and_cpu_nodes())
    d = check(case, {"four"})
    assert d.admit[0].nodes == ("h1",)


def test_start_estimate_of_a_multi_role_job() -> None:
    """The trainer needs both GPU nodes, which a running job holds until t=150."""
    running = [run("r", "q", ["h0", "h1"], 8, flavor="h")]
    snap = Snapshot(100.0, [two_flavor_queue()], gpu_and_cpu_nodes(), running,
                    [trainer_and_launcher(trainer_ranks=4)])
    assert estimate_starts(snap, Policy(), {"r": 150.0}) == {"rl": 150.0}


def test_single_role_jobs_are_unchanged_by_a_multi_role_job_that_waits() -> None:
    """A multi-role job that cannot be admitted leaves the same free room to the jobs after
    it as if it were not there (its roles' tentative charges are undone)."""
    busy = run("cpu-hog", "q", ["c0"], 0, flavor="cpu")._replace(per_rank=res(0, 4, 0))
    later = [pend(f"j{i}", "q", 4, 1, t=1.0 + i, flavors=("h",)) for i in range(5)]
    with_it = Case([two_flavor_queue()], [trainer_and_launcher(), *later], running=[busy],
                   nodes=gpu_and_cpu_nodes()).run()
    without = Case([two_flavor_queue()], later, running=[busy], nodes=gpu_and_cpu_nodes()).run()
    assert with_it.admit == without.admit
