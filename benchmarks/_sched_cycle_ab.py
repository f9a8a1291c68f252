"""Two versions of the scheduler in one process: the same decisions, and which is faster.

    PYTHONPATH=src .venv/bin/python benchmarks/_sched_cycle_ab.py --base /tmp/base/src \
        [--pairs 15] [--check-only] [--pending 10000]

``--base``: the ``src`` folder of another checkout (e.g. ``git worktree add /tmp/base REV``);
the other version is this checkout's ``src``. Each version imports its own modules and builds
its own snapshot of `benchmarks/sched_cycle.py`'s cluster (the same seed), so the two share no
objects. First every policy row's `Decisions` (admissions, preemptions, nominations, waiting
reasons with their messages, in order) are compared, steady (after a cycle without pending
jobs on the cache), cold (new node objects) and without a cache; then the fifo row, steady and
cold, is timed cycle by cycle, the versions alternately, so that load from other work on the
machine falls on both alike. CPU ms of this process; new/base is the median of the pairs'
ratios.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib
import importlib.util
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent


def load(src: Path, tag: str) -> tuple[ModuleType, ModuleType]:
    """``stoker.sched`` from ``src`` and the benchmark module run against it."""
    for name in [m for m in sys.modules if m == "stoker" or m.startswith("stoker.")]:
        del sys.modules[name]
    sys.path.insert(0, str(src))
    try:
        sched = importlib.import_module("stoker.sched")
        spec = importlib.util.spec_from_file_location(f"sched_cycle_{tag}",
                                                      HERE / "sched_cycle.py")
        assert spec is not None and spec.loader is not None
        bench = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench)
    finally:
        sys.path.remove(str(src))
    assert Path(sched.__file__).is_relative_to(src), sched.__file__
    return sched, bench


def plain(obj: object) -> object:
    """``obj`` made of tuples, comparable across two copies of the modules."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return (type(obj).__name__, *(plain(getattr(obj, f.name))
                                      for f in dataclasses.fields(obj)))
    if isinstance(obj, dict):
        return ("dict", *((plain(k), plain(v)) for k, v in obj.items()))
    if isinstance(obj, list | tuple):
        return tuple(plain(x) for x in obj)
    return obj


Row = tuple[Callable[[], object], Callable[[], Any]]  # (untimed setup, the cycle)


class Version:
    """One version's snapshot of the benchmark's cluster and its policy rows."""

    def __init__(self, src: Path, tag: str, pending: int) -> None:
        s, b = self.sched, self.bench = load(src, tag)
        rng = random.Random(0)
        nodes = b.make_nodes(1000)
        queues = b.make_queues(1000)
        running = b.fill(nodes, queues, rng)
        jobs = [b.make_job(rng, i, len(queues), rng.random() * 3600) for i in range(pending)]
        snap = s.Snapshot(3600.0, queues, nodes, running, jobs, topology=b.TOPOLOGY)
        idle = replace(snap, pending=[])
        self.cache = s.SchedulerCache()
        first = [replace(q, when_can_preempt="MayStopSearch") for q in queues]
        used = replace(snap, tenant_usage={(q.name, f"u{t}"): float(t) for q in queues
                                           for t in range(8)})
        afs = s.Policy(admission_fair_sharing=s.AdmissionFairSharing(half_life=3600.0))
        policies: dict[str, tuple[Any, Any]] = {
            "fifo": (snap, s.Policy()),
            "fifo, first victims' flavor": (replace(snap, queues=first), s.Policy()),
            "fifo, fair sharing": (snap, s.Policy(fair_sharing=True)),
            "fifo, admission fair sharing": (used, afs),
            "las": (snap, s.Policy(order="las")),
            "sjf": (snap, s.Policy(order="sjf")),
            "victim order kueue": (snap, s.Policy(victim_order="kueue")),
            "victim order kueue, fair sharing": (snap, s.Policy(victim_order="kueue",
                                                                fair_sharing=True)),
            "las, fair sharing": (snap, s.Policy(order="las", fair_sharing=True)),
            "hold quota without victims": (snap, s.Policy(hold_quota_without_victims=True)),
            "fifo, empty cluster": (replace(snap, running=[]), s.Policy()),
        }
        self.rows: dict[str, Row] = {}
        for name, (shot, policy) in policies.items():
            self.rows[f"{name}, steady"] = self._steady(shot, replace(idle, queues=shot.queues),
                                                        policy)
            self.rows[f"{name}, cold"] = self._cold(shot, policy)
            self.rows[f"{name}, no cache"] = (lambda: None,
                                              lambda shot=shot, p=policy: s.schedule(shot, p))

    def _steady(self, shot: Any, idle: Any, policy: Any) -> Row:
        s = self.sched

        def setup() -> None:  # with the row's own policy: the victims are kept by their ranking
            s.schedule(idle, policy, self.cache)
        return setup, lambda: s.schedule(shot, policy, self.cache)

    def _cold(self, shot: Any, policy: Any) -> Row:
        s = self.sched
        fresh = [shot]

        def setup() -> None:
            fresh[0] = replace(shot, nodes=[replace(n) for n in shot.nodes])
        return setup, lambda: s.schedule(fresh[0], policy, self.cache)


def check(base: Version, new: Version) -> bool:
    same = True
    for name in base.rows:
        results = []
        for v in (base, new):
            setup, run = v.rows[name]
            setup()
            results.append(plain(run()))
            setup()  # and again right after the same cycle
            results.append(plain(run()))
        equal = results[0] == results[2] and results[1] == results[3]
        same &= equal
        print(f"{name:44} {'same' if equal else 'DIFFERENT'}")
    return same


def timed(version: Version, name: str) -> float:
    setup, run = version.rows[name]
    setup()
    gc.collect()
    t0 = time.process_time()
    run()
    return time.process_time() - t0


def race(base: Version, new: Version, names: list[str], pairs: int) -> None:
    for name in names:
        times: dict[str, list[float]] = {"base": [], "new": []}
        for n in range(pairs):
            order = [("base", base), ("new", new)] if n % 2 == 0 else [("new", new),
                                                                        ("base", base)]
            for tag, v in order:
                times[tag].append(timed(v, name))
        ratios = [n / b for b, n in zip(times["base"], times["new"], strict=True)]
        b, n = times["base"], times["new"]
        print(f"{name:20} base {statistics.median(b) * 1e3:6.1f} (min {min(b) * 1e3:5.1f}) "
              f"new {statistics.median(n) * 1e3:6.1f} (min {min(n) * 1e3:5.1f}) ms, "
              f"new/base {statistics.median(ratios):.3f}, {pairs} pairs")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", type=Path, required=True)
    ap.add_argument("--pending", type=int, default=10_000)
    ap.add_argument("--pairs", type=int, default=15)
    ap.add_argument("--check-only", action="store_true")
    ap.add_argument("--time-only", action="store_true")
    args = ap.parse_args()
    base = Version(args.base.resolve(), "base", args.pending)
    new = Version(HERE.parent / "src", "new", args.pending)
    if not args.time_only and not check(base, new):
        sys.exit(1)
    if not args.check_only:
        race(base, new, ["fifo, steady", "fifo, cold"], args.pairs)


if __name__ == "__main__":
    main()
