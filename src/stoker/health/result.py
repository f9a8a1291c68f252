"""What a health check found: pass or fail, the figure it measured against its rule, and how
long it took."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

CheckSet = Literal["prestart", "periodic", "light"]


@dataclass(frozen=True)
class CheckResult:
    name: str
    passed: bool
    value: float | None  # the measured figure, in ``unit``
    limit: float | None  # the rule: value >= limit (or <= for temperatures, counts)
    unit: str
    duration_s: float
    detail: str = ""
    blamed_ranks: tuple[int, ...] = ()  # a gang probe's ranks that failed on their own

    def line(self) -> str:
        verdict = "pass" if self.passed else "FAIL"
        if self.value is None:
            return f"{self.name}: {verdict} {self.detail}".rstrip()
        return (f"{self.name}: {verdict} {self.value:.4g} {self.unit} (limit {self.limit:.4g})"
                f"{' ' + self.detail if self.detail else ''}")


@dataclass(frozen=True)
class HealthReport:
    node: str
    check_set: CheckSet
    results: tuple[CheckResult, ...]
    duration_s: float

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def failures(self) -> tuple[CheckResult, ...]:
        return tuple(r for r in self.results if not r.passed)

    def reason(self) -> str:
        """One line naming every failed check, for a cordon's reason."""
        return "; ".join(r.line() for r in self.failures)

    def to_json(self) -> dict[str, Any]:
        return {"node": self.node, "set": self.check_set, "passed": self.passed,
                "duration_s": self.duration_s, "results": [asdict(r) for r in self.results]}
