"""Periodic node health checks, off the reconciler's thread: every ``periodic_interval`` the
full set on each idle node (a node the checks cordoned included: its passes bring it back),
every ``light_interval`` the light set (device state) on each busy one.

The reconciler hands over the nodes each cycle (`start`) and records the reports that have
finished (`finished`); a check never holds a cycle. Each node runs one check at a time, and its
next one of a set is due an interval after the last one of that set ended (after start-up: an
interval after the last one stored, or after the node is first seen). On one machine every
node of ``cluster.toml`` is this machine: its checks run here under the node's name (so the
test-only fault switches of that node apply). The gang all-reduce is not part of the periodic
set (it needs a process per rank and seconds to start): the pre-start gate probes it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from stoker.control.store import CheckOutcome, NodeRecord
from stoker.health.faults import faults_for
from stoker.health.result import CheckResult, CheckSet, HealthReport
from stoker.health.runner import run_checks
from stoker.spec.health import HealthConfig


def outcome(report: HealthReport, at: float) -> CheckOutcome:
    """What the store records of a report."""
    return CheckOutcome(report.check_set, report.passed, report.reason(),
                        {**report.to_json(), "at": at})


class PeriodicChecks:
    def __init__(self, config: HealthConfig, scratch: Path, wake: Callable[[], None],
                 clock: Callable[[], float] = time.time) -> None:
        faults_for("")  # a malformed fault switch stops the server here, not a check later
        self.config = config
        self.scratch = scratch
        self.wake = wake
        self.clock = clock
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stoker-checks")
        self._running: dict[str, Future[CheckOutcome]] = {}
        self._due: dict[tuple[str, str], float] = {}

    def interval(self, check_set: str) -> float:
        return self.config.light_interval if check_set == "light" else \
            self.config.periodic_interval

    def start(self, nodes: Sequence[NodeRecord], busy: Collection[str], now: float) -> None:
        """Start the checks that are due: ``busy`` nodes get the light set, the others the
        full one."""
        for node in nodes:
            if node.name in self._running:
                continue
            check_set: CheckSet = "light" if node.name in busy else "periodic"
            key = (node.name, check_set)
            if key not in self._due:
                last = (node.last_checks or {}).get(check_set, {}).get("at")
                self._due[key] = (now if last is None else last) + self.interval(check_set)
            if now < self._due[key]:
                continue
            future = self._pool.submit(self._check, node.name, check_set)
            future.add_done_callback(lambda _: self.wake())
            self._running[node.name] = future

    def finished(self) -> list[tuple[str, CheckOutcome]]:
        """The checks that ended since the last call: (node, outcome)."""
        done = [(name, f) for name, f in self._running.items() if f.done()]
        results = []
        for name, future in done:
            del self._running[name]
            result = future.result()
            self._due[(name, result.check_set)] = self.clock() + self.interval(result.check_set)
            results.append((name, result))
        return results

    def _check(self, node: str, check_set: CheckSet) -> CheckOutcome:
        start = time.perf_counter()
        try:
            report = run_checks(node, check_set, self.config, self.scratch, gang_ranks=0)
        except Exception as e:  # a probe that cannot run at all is a failed check
            error = CheckResult("error", False, None, None, "", time.perf_counter() - start,
                                f"{type(e).__name__}: {e}")
            report = HealthReport(node, check_set, (error,), time.perf_counter() - start)
        return outcome(report, self.clock())

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
