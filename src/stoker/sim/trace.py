"""The normalized trace every loader returns: jobs, an optional node list, and a skip report.

Times are seconds from the trace's first arrival. A job is `ranks` gang members of
`gpus_per_rank` GPUs each; `gpu_milli` < 1000 marks a fractional single-GPU request (the
Alibaba trace's GPU sharing), which the simulator asks for as a fraction of a GPU (or, with
`whole_gpus`, rounds up to one GPU).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace


@dataclass(frozen=True, slots=True)
class TraceJob:
    id: str
    arrival: float
    duration: float
    ranks: int = 1
    gpus_per_rank: int = 1
    gpu_milli: int = 1000
    gpu_models: tuple[str, ...] = ()
    user: str = ""
    vc: str = ""
    priority: int = 0
    cpus_per_rank: float = 0.0
    memory_mib_per_rank: int = 0
    # The trace lets a single-rank request larger than every node it may use run as a gang
    # across nodes (`split_to_fit`); False: its ranks are exactly as the trace gives them.
    multi_node: bool = False

    @property
    def gpus(self) -> int:
        return self.ranks * self.gpus_per_rank

    @property
    def gpu_seconds(self) -> float:
        """Work of the job at its requested share of each GPU."""
        return self.gpus * self.gpu_milli / 1000 * self.duration


@dataclass(frozen=True, slots=True)
class TraceNode:
    name: str
    gpus: int
    model: str = ""
    cpus: float = 0.0
    memory_mib: int = 0
    labels: tuple[tuple[str, str], ...] = ()


@dataclass
class SkipReport:
    """How many input rows were read and, for each reason, how many were left out."""

    rows: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    notes: Counter[str] = field(default_factory=Counter)

    def skip(self, reason: str, count: int = 1) -> None:
        self.skipped[reason] += count

    def note(self, what: str, count: int = 1) -> None:
        """Something worth knowing about rows that were kept (e.g. fractional GPUs)."""
        self.notes[what] += count

    @property
    def kept(self) -> int:
        return self.rows - sum(self.skipped.values())

    def lines(self) -> list[str]:
        out = [f"{self.rows} rows read, {self.kept} jobs kept"]
        out += [f"skipped {n}: {why}" for why, n in sorted(self.skipped.items())]
        out += [f"note {n}: {what}" for what, n in sorted(self.notes.items())]
        return out

    def to_dict(self) -> dict[str, object]:
        return {"rows": self.rows, "kept": self.kept, "skipped": dict(self.skipped),
                "notes": dict(self.notes)}


@dataclass
class Trace:
    source: str
    format: str
    jobs: list[TraceJob]
    skips: SkipReport
    nodes: list[TraceNode] | None = None

    @property
    def gpu_seconds(self) -> float:
        return sum(j.gpu_seconds for j in self.jobs)

    @property
    def span(self) -> float:
        """Seconds from the first arrival to the last."""
        if not self.jobs:
            return 0.0
        return max(j.arrival for j in self.jobs) - min(j.arrival for j in self.jobs)

    def has_column(self, name: str) -> bool:
        return any(getattr(j, name) for j in self.jobs)


def rebase(jobs: list[TraceJob]) -> list[TraceJob]:
    """Shift arrivals so the first is at 0 and sort by (arrival, id order of input)."""
    if not jobs:
        return jobs
    t0 = min(j.arrival for j in jobs)
    order = sorted(range(len(jobs)), key=lambda i: jobs[i].arrival)
    return [replace(jobs[i], arrival=jobs[i].arrival - t0) for i in order]


def scale_arrivals(jobs: list[TraceJob], factor: float) -> list[TraceJob]:
    """Divide inter-arrival times by `factor`: 2.0 offers the same jobs twice as fast."""
    if factor == 1.0:
        return jobs
    return [replace(j, arrival=j.arrival / factor) for j in jobs]
