"""Goodput of the control plane's jobs from the store: per job, and summed per tenant, queue
and cluster over a window (`stoker.control.goodput` does the accounting); and the GPU- and
CPU-hours of their allocations, with their cost (`accounting_report`, over
`stoker.control.accounting`).

A finished job's figures never change, so its all-time goodput is kept (by id and version).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

from stoker.control import accounting
from stoker.control.goodput import Goodput, account, total
from stoker.control.run_telemetry import read_telemetry
from stoker.control.snapshot import job_spec
from stoker.control.states import TERMINAL
from stoker.control.store import EventRecord, JobRecord, Store
from stoker.spec.api import AccountingReport, AccountingRow, GoodputView, Hours, UsageRow


class GoodputBook:
    def __init__(self, store: Store, jobs_dir: Path, keep: int = 100_000) -> None:
        self.store = store
        self.jobs_dir = jobs_dir
        self.keep = keep
        self._lock = threading.Lock()
        self._done: dict[tuple[int, int], Goodput] = {}

    def job(self, job: JobRecord, now: float, since: float | None = None,
            events: Sequence[EventRecord] | None = None) -> Goodput:
        """One job's goodput from ``since`` (None: all time) to ``now``."""
        key = (job.id, job.version)
        cached = since is None and job.state in TERMINAL
        if cached:
            with self._lock:
                if key in self._done:
                    return self._done[key]
        if events is None:
            events = self.store.events(job.id)
        try:
            spec = job_spec(job)
            ranks, gpus = spec.total_ranks, spec.resources.gpu_count
            if spec.roles is not None:  # GPUs per rank: the roles' average (GPU-seconds add up)
                gpus = sum(r.ranks * r.resources.gpu_count for r in spec.job_roles()) / ranks
        except Exception:  # a stored spec that no longer parses: count one rank
            ranks, gpus = 1, 0.0
        train = job.spec.get("train") if isinstance(job.spec, dict) else None
        telemetry = read_telemetry(self.jobs_dir, job.id, train)
        result = account(events, ranks, gpus, telemetry, now, since)
        if cached:
            with self._lock:
                if len(self._done) >= self.keep:
                    self._done.clear()
                self._done[key] = result
        return result

    def usage(self, jobs: Sequence[JobRecord], now: float, since: float | None = None
              ) -> list[UsageRow]:
        """The cluster's row, then one per tenant and per queue, over ``jobs``."""
        parts = self.per_job(jobs, now, since)
        rows = [_row("cluster", "all", [g for _, g in parts])]
        for scope in ("tenant", "queue"):
            groups: dict[str, list[Goodput]] = defaultdict(list)
            for j, g in parts:
                groups[j.tenant if scope == "tenant" else j.queue].append(g)
            rows += [_row(scope, name, gs) for name, gs in sorted(groups.items())]
        return rows

    def per_job(self, jobs: Sequence[JobRecord], now: float, since: float | None = None
                ) -> list[tuple[JobRecord, Goodput]]:
        """Each job's goodput, those with nothing in the window left out (one read of the
        events)."""
        by_job: dict[int, list[EventRecord]] = defaultdict(list)
        wanted = {j.id for j in jobs}
        for e in self.store.events():
            if e.job_id in wanted:
                by_job[e.job_id].append(e)
        parts = [(j, self.job(j, now, since, by_job.get(j.id, []))) for j in jobs]
        return [(j, g) for j, g in parts if g.allocated_s > 0 or g.queued_s > 0]


def _row(scope: str, name: str, parts: list[Goodput]) -> UsageRow:
    return UsageRow(scope=scope, name=name, jobs=len(parts), goodput=goodput_view(total(parts)))


def goodput_view(g: Goodput) -> GoodputView:
    return GoodputView(allocated_s=g.allocated_s, productive_s=g.productive_s, ratio=g.ratio,
                       lost=dict(g.lost), queued_s=g.queued_s, gpu_s=g.gpu_s, holds=g.holds,
                       telemetry=g.telemetry)


def accounting_report(store: Store, prices: Mapping[str, float], tenant: str | None, by: str,
                      start: float | None, end: float | None, now: float) -> AccountingReport:
    """GPU- and CPU-hours grouped ``by`` tenant, queue, flavor or job over [``start``,
    ``end``) (``end`` at most ``now``), of every tenant or ``tenant``'s alone."""
    end = now if end is None else min(end, now)
    held = store.attempts(start=start, end=end, tenant=tenant)
    groups = accounting.account(held, by, start, end, prices)
    rows = [_accounting_row(key, tally, prices) for key, tally in groups.items()]
    if by == "job":
        rows = [_with_job(row, store.get_job(int(row.key))) for row in rows]
    totals = _accounting_row("total", accounting.total(list(groups.values())), prices)
    return AccountingReport(by=by, start=start, end=end, rows=rows, total=totals,
                            prices=dict(prices))


def _hours(seconds: Mapping[str, float]) -> Hours:
    h = {k: v / 3600.0 for k, v in seconds.items()}
    return Hours(total=sum(h.values()), **h)


def _accounting_row(key: str, tally: accounting.Tally, prices: Mapping[str, float]
                    ) -> AccountingRow:
    return AccountingRow(key=key, attempts=len(tally.holds), gpu_hours=_hours(tally.gpu_s),
                         cpu_hours=_hours(tally.cpu_s), cost=tally.cost if prices else None)


def _with_job(row: AccountingRow, job: JobRecord | None) -> AccountingRow:
    if job is None:
        return row
    return row.model_copy(update={"tenant": job.tenant, "queue": job.queue, "name": job.name})
