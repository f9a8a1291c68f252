"""Pre-start health checks of an admitted gang's nodes, run off the reconciler's thread.

The reconciler asks for a verdict each cycle; the first ask starts the checks, later asks
return None until they are done. Each node gets the single-node probes with its own faults;
the gang's nodes then run one all-reduce together (one process per node, two on a one-node
gang, so its link is exercised as well).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from stoker.health import collective
from stoker.health.faults import faults_for
from stoker.health.result import CheckResult, HealthReport
from stoker.health.runner import run_checks
from stoker.spec.health import HealthConfig


@dataclass(frozen=True)
class GangVerdict:
    reports: tuple[HealthReport, ...]  # one per node, in the gang's order
    gang: CheckResult  # the all-reduce among the nodes

    @property
    def passed(self) -> bool:
        return self.gang.passed and all(r.passed for r in self.reports)

    def bad_nodes(self) -> dict[str, str]:
        """Node -> why, for the nodes to cordon."""
        bad = {r.node: r.reason() for r in self.reports if not r.passed}
        for rank in self.gang.blamed_ranks:
            node = self.reports[rank % len(self.reports)].node
            bad[node] = "; ".join(filter(None, (bad.get(node), self.gang.line())))
        return bad

    def reason(self) -> str:
        lines = [f"{r.node}: {r.reason()}" for r in self.reports if not r.passed]
        return "; ".join(lines + ([] if self.gang.passed else [self.gang.line()]))


class PrestartGate:
    def __init__(self, config: HealthConfig, scratch: Path, wake: Callable[[], None]) -> None:
        faults_for("")  # a malformed fault switch stops the server here, not a check later
        self.config = config
        self.scratch = scratch  # where the disk probes write
        self.wake = wake
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stoker-health")
        self._checks: dict[tuple[int, int], Future[GangVerdict]] = {}
        self._lock = threading.Lock()

    def verdict(self, job: int, attempt: int, nodes: Sequence[str]) -> GangVerdict | None:
        """The checks' verdict for this attempt's nodes, or None while they run."""
        key = (job, attempt)
        with self._lock:
            future = self._checks.get(key)
            if future is None:
                future = self._pool.submit(self.check, tuple(dict.fromkeys(nodes)))
                future.add_done_callback(lambda _: self.wake())
                self._checks[key] = future
                return None
            if not future.done():
                return None
            del self._checks[key]
        return future.result()

    def check(self, nodes: tuple[str, ...]) -> GangVerdict:
        reports = tuple(run_checks(node, "prestart", self.config, self.scratch, gang_ranks=0)
                        for node in nodes)
        faults = [faults_for(node) for node in nodes]
        gang = collective.allreduce(self.config, faults if len(faults) > 1 else faults * 2,
                                    torch.cuda.is_available())
        return GangVerdict(reports, gang)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
