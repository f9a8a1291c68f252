"""Scheduler properties over random clusters, queues and jobs (hypothesis).

Each example runs two cycles: the first admits jobs into an empty cluster (they become the
running jobs, with random priorities and progress), the second is checked: decisions are
consistent, never over node capacity, never beyond nominal + borrowing limit, lending limits
held, gangs whole and placed as asked; and a job never waits behind a lower-priority job of its
queue when the queue allows preemption.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from random import Random

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sched_helpers import res
from stoker.sched import (
    GPU,
    UNLIMITED,
    AdmissionFairSharing,
    Admit,
    Decisions,
    FlavorQuota,
    Node,
    PendingJob,
    Policy,
    Queue,
    Resources,
    ResourceSpace,
    Role,
    RunningJob,
    Snapshot,
    held,
    schedule,
)
from stoker.sched.cache import SchedulerCache
from stoker.sched.nodes import Layout

FLAVORS = ("f0", "f1")
TOPOLOGY = ("rack",)
TENANTS = ("", "a", "b")
SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# Every property below runs on four resources: GPUs and CPUs in thousandths, memory in bytes
# and a vendor's resource in whole units; some queues split them in Kueue's resource groups.
SPACE = ResourceSpace(("gpu", "cpu", "memory", "example.com/ib"))
G, C, M, V = range(4)
NO = UNLIMITED
INF4 = (NO,) * 4


def vec(gpu: int = 0, cpu: int = 0, memory: int = 0, ib: int = 0) -> Resources:
    return (gpu, cpu, memory, ib)


def limit(draw: st.DrawFn, top: int, unit: int = 1000) -> int:
    value = draw(st.one_of(st.none(), st.integers(0, top)))
    return NO if value is None else value * unit


def flavor_quota(draw: st.DrawFn, flavor: str, covered: Sequence[int], cohort: str | None
                 ) -> FlavorQuota:
    """A quota of the ``covered`` resources (the others unlimited)."""
    tops = {G: (16, 1000), C: (24, 500), V: (6, 1)}  # (most, unit): CPUs in half CPUs
    nominal, borrow, lend = [NO] * 4, [NO] * 4, [NO] * 4
    for r in covered:
        top, unit = tops[r]
        nominal[r] = draw(st.integers(0, top)) * unit
        if cohort:
            borrow[r] = limit(draw, top // 2, unit)
            lend[r] = limit(draw, nominal[r] // unit, unit)
    return FlavorQuota(flavor, tuple(nominal), tuple(borrow) if cohort else None,
                       tuple(lend) if cohort else None)


@st.composite
def clusters(draw: st.DrawFn) -> tuple[list[Node], list[Queue]]:
    flavors = FLAVORS[: draw(st.integers(1, 2))]
    nodes = [Node(f"{f}-n{i}", f, vec(draw(st.sampled_from([2, 4, 8])) * 1000,
                                      draw(st.integers(4, 32)) * 500, NO,
                                      draw(st.sampled_from([0, 2, 4]))), (f"r{i % 2}",),
                  schedulable=draw(st.booleans()) or i == 0)
             for f in flavors for i in range(draw(st.integers(1, 5)))]
    queues = []
    for q in range(draw(st.integers(1, 4))):
        cohort = draw(st.sampled_from([None, "c0", "c1"]))
        order = draw(st.permutations(flavors))
        if draw(st.booleans()):  # one group: each flavor limits GPUs, maybe CPUs and the vendor's
            covered = [G] + [r for r in (C, V) if draw(st.booleans())]
            quotas = [flavor_quota(draw, f, covered, cohort) for f in order]
            groups: tuple[tuple[str, ...], ...] = ()
        else:  # Kueue's groups: CPUs under "shared" (no node has it), GPUs + IB per node kind
            quotas = [flavor_quota(draw, "shared", [C], cohort)]
            quotas += [flavor_quota(draw, f, [G, V], cohort) for f in order]
            groups = (("shared",), tuple(order))
        queues.append(Queue(
            f"q{q}", tuple(quotas), cohort=cohort,
            strategy=draw(st.sampled_from(["StrictFIFO", "BestEffortFIFO"])),
            within_queue=draw(st.sampled_from(["Never", "LowerPriority",
                                               "LowerOrNewerEqualPriority"])),
            reclaim_within_cohort=draw(st.sampled_from(["Never", "LowerPriority", "Any"])),
            borrow_within_cohort=draw(st.sampled_from(["Never", "LowerPriority"])),
            fair_weight=draw(st.sampled_from([0.5, 1.0, 2.0])), groups=groups))
    return nodes, queues


@st.composite
def jobs(draw: st.DrawFn, queues: Sequence[Queue], prefix: str, t0: float
         ) -> list[PendingJob]:
    out = []
    for i in range(draw(st.integers(0, 10))):
        topology = draw(st.sampled_from([None, "rack", "node"]))
        out.append(PendingJob(
            f"{prefix}{i}", draw(st.sampled_from([q.name for q in queues])),
            draw(st.integers(0, 3)), t0 + draw(st.integers(0, 50)), draw(st.integers(1, 4)),
            vec(draw(st.sampled_from([500, 1000, 2000, 4000])),
                draw(st.sampled_from([0, 500, 1000, 2000])), 0, draw(st.sampled_from([0, 0, 1]))),
            flavors=draw(st.sampled_from([None, ("f0",), ("f1",)])), topology=topology,
            topology_required=draw(st.booleans()) if topology else False,
            attained_service=draw(st.sampled_from([0.0, 5000.0])),
            tenant=draw(st.sampled_from(TENANTS)),
            roles=tuple(draw(roles()) for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2])))),
            avoid=frozenset(draw(st.sampled_from([(), (), (), ("f0-n0",), ("f0-n1", "f1-n0")]))),
        ))
    return out


@st.composite
def roles(draw: st.DrawFn) -> Role:
    """A further role of a multi-role job."""
    topology = draw(st.sampled_from([None, "rack", "node"]))
    return Role(draw(st.integers(1, 3)),
                vec(draw(st.sampled_from([0, 500, 1000, 2000])),
                    draw(st.sampled_from([500, 1000, 2000])), 0, 0),
                flavors=draw(st.sampled_from([None, ("f0",), ("f1",)])), topology=topology,
                topology_required=draw(st.booleans()) if topology else False)


def parts(job: PendingJob, a: Admit) -> list[tuple[str, tuple[str, ...], Resources, int,
                                                   PendingJob | Role]]:
    """Each role of an admitted job: (flavor, nodes, per rank, ranks, what it asked)."""
    out: list[tuple[str, tuple[str, ...], Resources, int, PendingJob | Role]] = [
        (a.flavor, a.nodes, job.per_rank, job.ranks, job)]
    assert len(a.roles) == len(job.roles)
    out += [(r.flavor, r.nodes, role.per_rank, role.ranks, role)
            for r, role in zip(a.roles, job.roles, strict=True)]
    return out


policies = st.builds(Policy, order=st.sampled_from(["fifo", "sjf", "las"]),
                     fair_sharing=st.booleans(), preemption=st.booleans(),
                     starvation_age=st.sampled_from([None, 30.0]),
                     max_preemption_attempts=st.integers(1, 4),
                     admission_fair_sharing=st.sampled_from(
                         [None, AdmissionFairSharing(half_life=600.0, sampling_interval=60.0)]))


World = tuple[Snapshot, Policy, Snapshot]  # (the snapshot checked, its policy, the warm-up)


@st.composite
def worlds(draw: st.DrawFn) -> World:
    nodes, queues = draw(clusters())
    first = draw(jobs(queues, "r", 0.0))
    empty = Snapshot(0.0, queues, nodes, [], first, topology=TOPOLOGY, resources=SPACE)
    warmup = schedule(empty, Policy(preemption=False))
    by_id = {j.id: j for j in first}
    running = []
    for a in warmup.admit:  # a multi-role job: one entry per role, as the snapshot has it
        prio, progress = draw(st.integers(0, 3)), draw(st.floats(0, 100))
        service, preempting = draw(st.sampled_from([0.0, 5000.0])), draw(st.booleans())
        running += [RunningJob(a.job, a.queue, prio, flavor, on, per_rank,
                               created_at=by_id[a.job].created_at, progress=progress,
                               attained_service=service, preempting=preempting)
                    for flavor, on, per_rank, _, _ in parts(by_id[a.job], a)]
    pending = draw(jobs(queues, "p", 50.0))
    usage = {(q.name, t): draw(st.sampled_from([0.0, 1.0, 4.0])) for q in queues for t in TENANTS}
    return (Snapshot(100.0, queues, nodes, running, pending, topology=TOPOLOGY,
                     tenant_usage=usage, resources=SPACE), draw(policies), empty)


def charged_to(queue: Queue, flavor: str) -> list[tuple[str, list[int]]]:
    """Where a job of ``queue`` on ``flavor``'s nodes is charged: (flavor, its resources).
    One group: all to ``flavor``. Several: ``flavor`` in its group, each other group's first
    flavor for that group's resources (those its quota limits)."""
    if not queue.groups:
        return [(flavor, list(range(len(SPACE))))]
    quotas = {fq.flavor: fq for fq in queue.quotas}
    out = []
    for group in queue.groups:
        name = flavor if flavor in group else group[0]
        out.append((name, [r for r, v in enumerate(quotas[name].nominal) if v < UNLIMITED]))
    return out


def usage(snap: Snapshot, d: Decisions) -> dict[tuple[str, str], list[int]]:
    """What is in use per (queue, flavor charged) and resource once the decisions apply (the
    victims still run)."""
    pending = {j.id: j for j in snap.pending}
    queues = {q.name: q for q in snap.queues}
    used: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0] * len(SPACE))
    held = [(r.queue, r.flavor, r.per_rank, len(r.nodes)) for r in snap.running]
    held += [(a.queue, flavor, per_rank, len(on)) for a in d.admit
             for flavor, on, per_rank, _, _ in parts(pending[a.job], a)]
    for queue, flavor, per_rank, ranks in held:
        for name, resources in charged_to(queues[queue], flavor):
            for r in resources:
                used[(queue, name)][r] += per_rank[r] * ranks
    return used


@SETTINGS
@given(worlds())
def test_decisions_are_consistent(world: World) -> None:
    snap, policy, _ = world
    d = schedule(snap, policy)
    pending = {j.id: j for j in snap.pending}
    running = {j.id for j in snap.running}
    admitted = [a.job for a in d.admit]
    assert len(set(admitted)) == len(admitted) and set(admitted) <= set(pending)
    assert not set(admitted) & set(d.waiting)
    assert set(admitted) | set(d.waiting) == set(pending)
    victims = [p.job for p in d.preempt]
    assert len(set(victims)) == len(victims) and set(victims) <= running
    assert {p.by for p in d.preempt} <= set(d.nominated)
    assert set(d.nominated) <= set(d.waiting)
    preempting = {j.id for j in snap.running if j.preempting}
    assert set(victims) | preempting >= {v for vs in d.nominated.values() for v in vs}
    if not policy.preemption:
        assert not d.preempt and not d.nominated


@SETTINGS
@given(worlds(), st.randoms(use_true_random=False))
def test_decisions_do_not_depend_on_earlier_cycles(world: World, rng: Random) -> None:
    """What a cycle keeps in the caller's cache for the next (the nodes' layout, the quota
    tree, what running jobs hold) is a memo: the same snapshot gives the same decisions
    whatever ran before on that cache, and without one."""
    snap, policy, empty = world
    cold = schedule(snap, policy)
    cache = SchedulerCache()
    schedule(empty, policy, cache)
    kept = [j for j in snap.running if rng.random() < 0.5]
    schedule(replace(snap, running=kept + [j._replace() for j in snap.running[:2]]), policy,
             cache)
    assert schedule(snap, policy, cache) == cold
    assert schedule(snap, policy, cache) == cold
    assert schedule(replace(snap, nodes=[replace(n) for n in snap.nodes]), policy, cache) == cold


@SETTINGS
@given(worlds())
def test_gangs_whole_and_placed_as_asked(world: World) -> None:
    for snap, policy in (world[:2], (world[2], world[1])):  # also on the empty cluster
        check_gangs(snap, schedule(snap, policy))


def check_gangs(snap: Snapshot, d: Decisions) -> None:
    pending = {j.id: j for j in snap.pending}
    nodes = {n.name: n for n in snap.nodes}
    queues = {q.name: q for q in snap.queues}
    for a in d.admit:  # every role of a multi-role job: all of them or none
        for flavor, on, _, ranks, asked in parts(pending[a.job], a):
            assert len(on) == ranks
            assert not set(on) & pending[a.job].avoid
            assert all(nodes[n].flavor == flavor and nodes[n].schedulable for n in on)
            assert flavor in {fq.flavor for fq in queues[a.queue].quotas}
            assert asked.flavors is None or flavor in asked.flavors
            if asked.topology_required and asked.topology == "node":
                assert len(set(on)) == 1
            if asked.topology_required and asked.topology == "rack":
                assert len({nodes[n].domains for n in on}) == 1


@SETTINGS
@given(worlds())
def test_never_over_node_capacity(world: World) -> None:
    snap, policy, _ = world
    d = schedule(snap, policy)
    pending = {j.id: j for j in snap.pending}
    size = len(snap.resources)
    used: dict[str, list[int]] = defaultdict(lambda: [0] * size)
    placements = [(r.nodes, r.per_rank) for r in snap.running]
    placements += [(on, per_rank) for a in d.admit
                   for _, on, per_rank, _, _ in parts(pending[a.job], a)]
    for on, per_rank in placements:
        for name in on:
            for r in range(size):
                used[name][r] += per_rank[r]
    for node in snap.nodes:
        assert all(used[node.name][r] <= node.capacity[r] for r in range(size)), node


@SETTINGS
@given(worlds())
def test_quota_limits_held(world: World) -> None:
    """Every resource of every (queue, flavor) stays within nominal + borrowing limit, and the
    cohort's lending limits hold, resource by resource, resource groups included."""
    snap, policy, _ = world
    d = schedule(snap, policy)
    used = usage(snap, d)
    cohorts: dict[tuple[str, str, int], list[tuple[str, FlavorQuota]]] = defaultdict(list)
    for q in snap.queues:
        for fq in q.quotas:
            for r in range(len(SPACE)):
                if fq.nominal[r] >= UNLIMITED:
                    continue
                u = used[(q.name, fq.flavor)][r]
                borrow = (fq.borrowing_limit or INF4)[r]
                if q.cohort is None:
                    assert u <= fq.nominal[r], (q.name, fq.flavor, r)  # no cohort: nominal
                else:
                    assert u <= fq.nominal[r] + borrow, (q.name, fq.flavor, r)
                    cohorts[(q.cohort, fq.flavor, r)].append((q.name, fq))
    for (_, _, r), members in cohorts.items():
        # Lending limits: what the cohort's queues use beyond the quota each keeps for itself
        # never exceeds what they lend; so every queue can always get its guaranteed part.
        lent = beyond = 0
        for name, fq in members:
            lend = (fq.lending_limit or INF4)[r]
            kept = max(0, fq.nominal[r] - lend) if lend < UNLIMITED else 0
            lent += fq.nominal[r] - kept
            beyond += max(0, used[(name, fq.flavor)][r] - kept)
        assert beyond <= lent


@SETTINGS
@given(worlds())
def test_fair_sharing_among_one_tenant_changes_nothing(world: World) -> None:
    """Admission fair sharing only reorders a queue's tenants: with one, it decides as off."""
    snap, policy, _ = world
    one = replace(snap, pending=[j._replace(tenant="") for j in snap.pending])
    afs = AdmissionFairSharing(half_life=600.0, sampling_interval=60.0)
    assert schedule(one, replace(policy, admission_fair_sharing=afs)) == \
        schedule(one, replace(policy, admission_fair_sharing=None))


@st.composite
def one_queue(draw: st.DrawFn) -> tuple[Snapshot, Policy]:
    """One queue that preempts lower priority, 1-rank jobs, nodes of 4 GPUs."""
    nodes = [Node(f"n{i}", "f0", res(4, 64, UNLIMITED)) for i in range(draw(
        st.integers(1, 3)))]
    q = Queue("q", (FlavorQuota("f0", res(draw(st.integers(1, 12)), UNLIMITED, UNLIMITED)),),
              within_queue="LowerPriority",
              strategy=draw(st.sampled_from(["StrictFIFO", "BestEffortFIFO"])))
    first = [PendingJob(f"r{i}", "q", 0, 0.0, 1, res(draw(st.integers(1, 4)), 1, 0))
             for i in range(draw(st.integers(0, 8)))]
    warmup = schedule(Snapshot(0.0, [q], nodes, [], first), Policy(preemption=False))
    by_id = {j.id: j for j in first}
    running = [RunningJob(a.job, "q", draw(st.integers(0, 3)), "f0", a.nodes,
                          by_id[a.job].per_rank, progress=draw(st.floats(0, 10)))
               for a in warmup.admit]
    pending = [PendingJob(f"p{i}", "q", draw(st.integers(0, 3)), float(i), 1,
                          res(draw(st.integers(1, 4)), 1, 0))
               for i in range(draw(st.integers(1, 5)))]
    return Snapshot(10.0, [q], nodes, running, pending), Policy()


@SETTINGS
@given(one_queue())
def test_no_job_waits_behind_lower_priority(world: tuple[Snapshot, Policy]) -> None:
    snap, policy = world
    d = schedule(snap, policy)
    q = snap.queues[0]
    nominal = q.quotas[0].nominal[GPU]
    first = min(snap.pending, key=lambda j: (-j.priority, j.created_at))
    need = first.per_rank[GPU]
    # Only jobs of at least its priority may keep running: is there room without the others?
    keep = [r for r in snap.running if r.priority >= first.priority]
    quota_room = nominal - sum(r.per_rank[GPU] for r in keep) >= need
    node_room = any(n.capacity[GPU] - sum(r.per_rank[GPU] for r in keep if r.nodes[0] == n.name)
                    >= need for n in snap.nodes)
    if quota_room and node_room:
        assert first.id in {a.job for a in d.admit} or first.id in d.nominated, d.waiting


@st.composite
def workloads(draw: st.DrawFn) -> list[tuple[float, float, float]]:
    """(arrival, GPUs, duration) of jobs for one 8-GPU node; big ones can starve."""
    return [(float(draw(st.integers(0, 40))), float(draw(st.sampled_from([1, 2, 6, 8]))),
             float(draw(st.integers(1, 10)))) for _ in range(draw(st.integers(1, 12)))]


@settings(max_examples=40, deadline=None)
@example([(1.0, 8.0, 1.0)] + [(5.0 * i, 1.0, 10.0) for i in range(9)])  # a stream of small jobs
@given(workloads())
def test_starving_jobs_are_admitted_eventually(work: list[tuple[float, float, float]]) -> None:
    """Replay the jobs cycle by cycle; with a starvation age every job starts in bounded time."""
    nodes = [Node("n0", "f0", res(8, 64, UNLIMITED))]
    queue = Queue("q", (FlavorQuota("f0", res(8, UNLIMITED, UNLIMITED)),))
    age, longest = 20.0, max(d for _, _, d in work)
    ends: dict[str, float] = {}
    running: list[RunningJob] = []
    started: dict[str, float] = {}
    now = 0.0
    while len(started) < len(work) and now < 1000:
        running = [r for r in running if ends[str(r.id)] > now]
        pending = [PendingJob(f"j{i}", "q", 0, t, 1, res(g, 1, 0))
                   for i, (t, g, _) in enumerate(work) if t <= now and f"j{i}" not in started]
        d = schedule(Snapshot(now, [queue], nodes, running, pending),
                     Policy(starvation_age=age))
        for a in d.admit:
            i = int(str(a.job)[1:])
            started[str(a.job)] = now
            ends[str(a.job)] = now + work[i][2]
            running.append(RunningJob(a.job, "q", 0, a.flavor, a.nodes,
                                      res(work[i][1], 1, 0)))
        now += 1.0
    assert len(started) == len(work)
    for i, (t, _, _) in enumerate(work):
        # Starving after `age`; then the node drains (one job length) for each older job and
        # for it: nothing younger is admitted meanwhile.
        older = sum(1 for j, (u, _, _) in enumerate(work) if (u, j) < (t, i))
        assert started[f"j{i}"] - t <= age + (older + 1) * longest + 1, (i, started)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_held_state_follows_the_running_jobs(data: st.DataObject) -> None:
    """Kept from cycle to cycle and updated by difference (jobs taken out, put in, reordered,
    rebuilt as new objects, listed twice), the held state equals one built afresh."""
    nodes = [Node(f"n{i}", "f0", res(8, 16, UNLIMITED), (f"r{i % 2}",)) for i in range(4)]
    static = Layout(nodes, TOPOLOGY)
    pool = [RunningJob(f"j{i}", f"q{i % 2}", 0, "f0",
                       tuple(f"n{data.draw(st.integers(0, 3))}" for _ in range(ranks)),
                       res(data.draw(st.sampled_from([0.5, 1, 2])), 1, 0))
            for i, ranks in enumerate(data.draw(st.lists(st.integers(1, 3), max_size=12)))]
    state = held.Held(static)
    shape = res(2, 1, 0)
    state.pools["f0"].group_capacity(shape, state.free)  # kept up to date from here on
    running: list[RunningJob] = []
    for _ in range(data.draw(st.integers(1, 6))):
        step = data.draw(st.sampled_from(["out", "in", "rebuild", "shuffle", "twice"]))
        if step == "out" and running:
            running.pop(data.draw(st.integers(0, len(running) - 1)))
        elif step == "in" and pool:
            running.append(pool[data.draw(st.integers(0, len(pool) - 1))])
        elif step == "rebuild" and running:
            running = [j._replace() for j in running]
        elif step == "shuffle":
            running = data.draw(st.permutations(running))
        elif step == "twice" and running:
            running.insert(0, running[-1])
        state.update(running)
        fresh = held.Held(static)
        fresh.update(running)
        assert state.free == fresh.free
        assert {k: v for k, v in state.usage.items() if any(v)} == fresh.usage
        for flavor, p in state.pools.items():
            assert p.buckets == fresh.pools[flavor].buckets
            assert p.total == fresh.pools[flavor].total
        assert state.pools["f0"].cache[shape] == fresh.pools["f0"].group_capacity(shape,
                                                                                  fresh.free)
