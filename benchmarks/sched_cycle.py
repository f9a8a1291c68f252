"""One scheduling cycle: 10,000 pending jobs, 1,000 nodes x 8 GPUs, 50 queues in 5 cohorts.

    .venv/bin/python benchmarks/sched_cycle.py [--pending 10000] [--nodes 1000] [--repeat 7]

The cluster is 4 zones x 5 blocks x 10 racks x 5 nodes, two GPU flavors (600 "h100" nodes,
400 "a100" nodes). Each of the 50 queues owns 1/50 of each flavor as nominal quota; queues
borrow within their cohort (some with borrowing or lending limits) and preempt by priority.
The cluster is first filled to about 90% by admitting jobs with the scheduler itself; then
10,000 jobs (1-32 GPUs, three priority classes, some with topology or GPU-model constraints,
from 8 tenants that share every queue) are pending, and `schedule` runs on that snapshot.

The scheduler keeps what it derives from the nodes and the running jobs between cycles, in the
caller's `SchedulerCache` (the layout, the quota tree, what the running jobs hold, the victim
candidates). Each row is one caller with a cache of its own (a reconciler runs one policy; a
cache shared by rows of different policies would hand each row another policy's victim
candidates). The policy rows are timed in the steady state, right after a cycle over the same
cluster and running jobs; "fifo, next cycle" is the cycle after a fifo cycle whose decisions
took effect (its admitted jobs running, its victims stopping, its nominated jobs flagged, every
other job the same object, as the simulator keeps them); "fifo, cold" after the node objects
were replaced, so that nothing kept applies (the first cycle after a restart).

Baselines, in the same run: building the snapshot's job objects from plain field tuples (what a
caller pays each cycle, at the least), and
a naive first-fit scan over the same pending jobs (no quotas, no topology, no preemption: each
job scans the node list for the first nodes with room).
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import replace

from stoker.bench.figures import figure
from stoker.sched import (
    GPU,
    UNLIMITED,
    AdmissionFairSharing,
    Decisions,
    FlavorQuota,
    Node,
    PendingJob,
    Policy,
    Queue,
    Resources,
    RunningJob,
    SchedulerCache,
    Snapshot,
    schedule,
)

TOPOLOGY = ("zone", "block", "rack")
SIZES = [1, 1, 2, 4, 4, 8, 8, 16, 32]


def gpus_cpus_memory(gpus: float, cpus: float, memory: int) -> Resources:
    """GPUs and CPUs (counted in thousandths) and bytes of memory."""
    return (round(gpus * 1000), round(cpus * 1000), memory)


def gpus_only(gpus: float) -> Resources:
    """A quota of GPUs alone (CPUs and memory unlimited)."""
    return (round(gpus * 1000), UNLIMITED, UNLIMITED)


def make_nodes(n: int) -> list[Node]:
    nodes = []
    for i in range(n):
        zone, block, rack = i // 250, (i // 50) % 5, (i // 5) % 10
        flavor = "h100" if i < n * 6 // 10 else "a100"
        nodes.append(Node(f"node-{i}", flavor, gpus_cpus_memory(8, 96, 1024 * 2**30),
                          (f"z{zone}", f"b{block}", f"r{rack}")))
    return nodes


def make_queues(n_nodes: int, n_queues: int = 50, n_cohorts: int = 5) -> list[Queue]:
    per_queue = {"h100": n_nodes * 6 // 10 * 8 / n_queues, "a100": n_nodes * 4 // 10 * 8 / n_queues}
    queues = []
    for q in range(n_queues):
        limit = gpus_only(per_queue["h100"]) if q % 3 == 0 else None
        quotas = tuple(
            FlavorQuota(flavor, gpus_only(gpus), borrowing_limit=limit,
                        lending_limit=gpus_only(gpus / 2) if q % 5 == 0 else None)
            for flavor, gpus in per_queue.items())
        queues.append(Queue(f"q{q}", quotas, cohort=f"c{q % n_cohorts}",
                            strategy="StrictFIFO" if q % 10 == 0 else "BestEffortFIFO",
                            within_queue="LowerPriority", reclaim_within_cohort="LowerPriority"))
    return queues


def make_job(rng: random.Random, i: int, n_queues: int, created: float) -> PendingJob:
    gpus = rng.choice(SIZES)
    ranks, per = (gpus // 8, 8) if gpus > 8 else (1, gpus)
    topology = "rack" if gpus >= 16 and rng.random() < 0.5 else None
    return PendingJob(
        id=i, queue=f"q{rng.randrange(n_queues)}", priority=rng.choice((0, 100, 1000)),
        created_at=created, ranks=ranks, per_rank=gpus_cpus_memory(per, per * 8, per * 64 * 2**30),
        flavors=("h100",) if rng.random() < 0.2 else None, topology=topology,
        topology_required=topology is not None and rng.random() < 0.5,
        expected_duration=rng.uniform(60, 86400), tenant=f"u{i % 8}")


def fill(nodes: list[Node], queues: list[Queue], rng: random.Random) -> list[RunningJob]:
    """Admit jobs with the scheduler until the cluster is about 90% full."""
    specs = {j.id: j for j in (make_job(rng, -i - 1, len(queues), 0.0) for i in range(4000))}
    for job in specs.values():  # running jobs carry no constraints
        specs[job.id] = PendingJob(job.id, job.queue, job.priority, 0.0, job.ranks, job.per_rank)
    decisions = schedule(Snapshot(0.0, queues, nodes, [], list(specs.values()), topology=TOPOLOGY),
                         Policy(preemption=False))
    capacity = 8 * len(nodes)
    running, used = [], 0.0
    for a in decisions.admit:
        job = specs[a.job]
        if used + job.per_rank[GPU] / 1000 * job.ranks > 0.9 * capacity:
            break
        used += job.per_rank[GPU] / 1000 * job.ranks
        # Admitted over time under changing pressure: running jobs have every priority.
        running.append(RunningJob(a.job, a.queue, rng.choice((0, 0, 100, 1000)), a.flavor,
                                  a.nodes, job.per_rank, started_at=0.0,
                                  progress=rng.uniform(0, 3600)))
    return running


def naive_first_fit(nodes: list[Node], running: list[RunningJob], pending: list[PendingJob]) -> int:
    free = {n.name: n.capacity[GPU] for n in nodes}
    for job in running:
        for name in job.nodes:
            free[name] -= job.per_rank[GPU]
    names = [n.name for n in nodes]
    admitted = 0
    for job in sorted(pending, key=lambda j: (-j.priority, j.created_at)):
        chosen: list[str] = []
        for name in names:
            if free[name] >= job.per_rank[GPU]:
                chosen.append(name)
                if len(chosen) == job.ranks:
                    break
        if len(chosen) == job.ranks:
            for name in chosen:
                free[name] -= job.per_rank[GPU]
            admitted += 1
    return admitted


def next_snapshot(snapshot: Snapshot, decided: Decisions, later: float = 10.0) -> Snapshot:
    """The cluster ``later`` seconds after ``decided`` took effect: the admitted jobs running
    where they were placed, the victims stopping, the nominated jobs flagged; every other job
    the same object."""
    admitted = {a.job: a for a in decided.admit}
    stopping = {p.job for p in decided.preempt}
    now = snapshot.now + later
    running = [r._replace(preempting=True) if r.id in stopping else r for r in snapshot.running]
    running += [RunningJob(p.id, p.queue, p.priority, admitted[p.id].flavor,
                           admitted[p.id].nodes, p.per_rank, p.created_at, now, tenant=p.tenant)
                for p in snapshot.pending if p.id in admitted]
    pending = [p._replace(nominated=True) if p.id in decided.nominated else p
               for p in snapshot.pending if p.id not in admitted]
    return replace(snapshot, now=now, running=running, pending=pending)


Variant = tuple[Callable[[], object] | None, Callable[[], object]]  # (untimed setup, timed)
BENCH_QUICK = ["--repeat", "3"]
# Each row's figure name for `stoker bench`.
FIGURE_NAMES = {"baseline: build snapshot": "build snapshot", "baseline: naive first-fit":
                "first-fit", "fifo": "fifo", "fifo, first victims' flavor": "fifo first victims",
                "fifo, fair sharing": "fifo fair sharing", "fifo, admission fair sh.": "fifo afs",
                "las": "las", "sjf": "sjf", "fifo, cold": "fifo cold",
                "fifo, next cycle": "fifo next cycle",
                "fifo, empty cluster": "fifo empty cluster"}


def timed(variants: dict[str, Variant], repeat: int,
          ) -> dict[str, tuple[float, float, object, list[float]]]:
    """Median CPU and wall seconds of each variant, its last result and every CPU time.

    The variants run interleaved (one of each, ``repeat`` times) so that load from other jobs
    on the shared machine falls on all of them alike, each after its setup and a full garbage
    collection. CPU time of this process is the headline: other jobs' load inflates wall time
    without changing the work done.
    """
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    wall: dict[str, list[float]] = {name: [] for name in variants}
    results: dict[str, object] = {}
    for _ in range(repeat):
        for name, (setup, fn) in variants.items():
            if setup is not None:
                setup()
            gc.collect()  # no variant pays for collecting another's garbage
            c0, w0 = time.process_time(), time.perf_counter()
            results[name] = fn()
            cpu[name].append(time.process_time() - c0)
            wall[name].append(time.perf_counter() - w0)
    return {name: (statistics.median(cpu[name]), statistics.median(wall[name]), results[name],
                   cpu[name]) for name in variants}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pending", type=int, default=10_000)
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    rng = random.Random(0)
    nodes = make_nodes(args.nodes)
    queues = make_queues(args.nodes)
    running = fill(nodes, queues, rng)
    fields = [tuple(make_job(rng, i, len(queues), rng.random() * 3600))
              for i in range(args.pending)]
    running_fields = [tuple(j) for j in running]

    def build() -> Snapshot:
        pending = [PendingJob(*f) for f in fields]
        current = [RunningJob(*f) for f in running_fields]
        return Snapshot(3600.0, queues, nodes, current, pending, topology=TOPOLOGY)

    snap = build()
    empty = Snapshot(3600.0, queues, nodes, [], snap.pending, topology=TOPOLOGY)
    idle = Snapshot(3600.0, queues, nodes, snap.running, [], topology=TOPOLOGY)
    cold = [snap]
    afs = Policy(admission_fair_sharing=AdmissionFairSharing(half_life=3600.0))
    used = replace(snap, tenant_usage={(q.name, f"u{t}"): float(t) for q in queues
                                       for t in range(8)})
    # Kueue's whenCanPreempt = MayStopSearch: the first flavor where victims make room wins
    # (the default, TryNextFlavor, looks for victims on every flavor to prefer reclaiming).
    first_victims = replace(snap, queues=[replace(q, when_can_preempt="MayStopSearch")
                                          for q in queues])

    def steady(snapshot: Snapshot, policy: Policy) -> Variant:
        """A cycle of ``policy`` on ``snapshot``, right after one over the same cluster and
        running jobs, by a caller of its own."""
        cache = SchedulerCache()
        schedule(snapshot, policy, cache)  # what the caller's earlier cycles left in its cache
        warm = replace(idle, queues=snapshot.queues)
        return (lambda: schedule(warm, policy, cache), lambda: schedule(snapshot, policy, cache))

    next_cache = SchedulerCache()
    after = next_snapshot(snap, schedule(snap, Policy(), SchedulerCache()))
    cold_cache = SchedulerCache()

    def forget() -> None:
        """New node objects: nothing kept from earlier cycles applies."""
        cold[0] = replace(snap, nodes=[replace(n) for n in nodes])

    empty_cache = SchedulerCache()
    variants: dict[str, Variant] = {
        "baseline: build snapshot": (None, build),
        "baseline: naive first-fit": (None, lambda: naive_first_fit(nodes, running,
                                                                    snap.pending)),
        "fifo": steady(snap, Policy()),
        "fifo, next cycle": (lambda: schedule(snap, Policy(), next_cache),
                             lambda: schedule(after, Policy(), next_cache)),
        "fifo, first victims' flavor": steady(first_victims, Policy()),
        "fifo, fair sharing": steady(snap, Policy(fair_sharing=True)),
        "fifo, admission fair sh.": steady(used, afs),
        "las": steady(snap, Policy(order="las")),
        "sjf": steady(snap, Policy(order="sjf")),
        "fifo, cold": (forget, lambda: schedule(cold[0], Policy(), cold_cache)),
        "fifo, empty cluster": (None, lambda: schedule(empty, Policy(), empty_cache)),
    }
    times = timed(variants, args.repeat)
    used = sum(j.per_rank[GPU] / 1000 * len(j.nodes) for j in running)
    print(f"{len(nodes)} nodes x 8 GPUs, {len(queues)} queues in 5 cohorts, {len(running)} "
          f"running jobs on {used / (8 * len(nodes)):.0%} of the GPUs, {len(snap.pending)} "
          f"pending; median of {args.repeat} interleaved runs")
    naive = times["baseline: naive first-fit"][0]
    print(f"{'':28} {'CPU ms':>8} {'wall ms':>8} {'vs naive':>8}")
    for name, (cpu, wall, result, _) in times.items():
        line = f"{name:28} {cpu * 1e3:8.1f} {wall * 1e3:8.1f} {cpu / naive:8.2f}"
        if isinstance(result, Decisions):
            line += (f"  {len(result.admit)} admitted, {len(result.preempt)} preempted, "
                     f"{len(result.nominated)} nominated")
        elif isinstance(result, int):
            line += f"  {result} admitted"
        print(line)
    report_figures(times)


def report_figures(times: dict[str, tuple[float, float, object, list[float]]]) -> None:
    """Each row's CPU times and, for the scheduler's rows, each run against the first-fit
    baseline of the same round (the variants run interleaved)."""
    naive = times["baseline: naive first-fit"][3]
    for name, (_, _, _, cpu) in times.items():
        short = FIGURE_NAMES[name]
        figure(f"{short} cycle", [c * 1e3 for c in cpu], "ms", "lower")
        if not name.startswith("baseline"):
            figure(f"{short} / first-fit", [c / n for c, n in zip(cpu, naive, strict=True)],
                   "x", "lower")


if __name__ == "__main__":
    main()
