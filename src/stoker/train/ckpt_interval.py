"""``checkpoint.interval = "auto"``: the checkpoint interval that loses the least time.

Checkpointing every τ seconds costs C per save; a failure (mean time between failures M for the
whole gang) loses on average τ/2 of work plus the restart. Young's first-order optimum is
τ = √(2CM); Daly's higher-order one, used here, is

    τ = √(2CM) · [1 + ⅓·√(C/2M) + ⅑·(C/2M)] − C      for C < 2M
    τ = M                                            otherwise

(J. W. Young, CACM 1974; J. T. Daly, FGCS 2006). The result is kept within the configured floor
and ceiling (``checkpoint.auto_min_minutes``, ``checkpoint.auto_max_minutes``).

C is the stall the step loop pays per save as rank 0 measures it (`Checkpointer`'s
``stall_s``: for an async save, waiting for the previous save, the barrier before writing and
waiting for the state to be staged; for a synchronous save, the whole write), the mean of the
last `COST_WINDOW` saves made the configured way. Until the first save is measured, the
interval is the floor, so that the first measurement comes early.

M comes from the control plane when the job runs under it: the cluster's observed rate of
infrastructure failures per node-hour (``STOKER_FAILURES_PER_NODE_HOUR``) times the job's node
count (``STOKER_NODE_COUNT``), fixed for the attempt. Otherwise (a plain ``stoker train``, or a
cluster with no infrastructure failure in its window) it is ``checkpoint.mtbf_hours``.
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from stoker.spec.train import CheckpointConfig

RATE_ENV = "STOKER_FAILURES_PER_NODE_HOUR"  # the cluster's infra failures per node-hour
NODES_ENV = "STOKER_NODE_COUNT"  # the nodes of this job's gang
COST_WINDOW = 4  # saves whose mean stall is C


def young(cost_s: float, mtbf_s: float) -> float:
    """Young's optimum √(2CM)."""
    return math.sqrt(2 * cost_s * mtbf_s)


def daly(cost_s: float, mtbf_s: float) -> float:
    """Daly's higher-order optimum; M itself once C ≥ 2M (a save costs as much as it saves)."""
    if cost_s >= 2 * mtbf_s:
        return mtbf_s
    r = cost_s / (2 * mtbf_s)
    return young(cost_s, mtbf_s) * (1 + math.sqrt(r) / 3 + r / 9) - cost_s


def clamp(seconds: float, floor_s: float, ceiling_s: float) -> float:
    return min(max(seconds, floor_s), ceiling_s)


@dataclass(frozen=True)
class Mtbf:
    """The gang's mean time between failures and where it came from."""

    seconds: float
    source: str  # "cluster" (the control plane's observed rate) or "config" (mtbf_hours)
    rate_per_node_hour: float | None = None
    nodes: int | None = None


def gang_mtbf(cfg: CheckpointConfig, env: Mapping[str, str] | None = None) -> Mtbf:
    """M for this attempt: the cluster's rate × node count when the control plane gave a
    positive rate, else ``checkpoint.mtbf_hours``. Unreadable values count as absent."""
    env = os.environ if env is None else env
    try:
        rate = float(env.get(RATE_ENV, ""))
        nodes = int(env.get(NODES_ENV, "1"))
    except ValueError:
        rate, nodes = 0.0, 1
    if math.isfinite(rate) and rate > 0 and nodes > 0:
        return Mtbf(3600.0 / (rate * nodes), "cluster", rate, nodes)
    return Mtbf(cfg.mtbf_hours * 3600.0, "config")


@dataclass(frozen=True)
class Interval:
    """One evaluation of the interval: what went in and what came out (an event's fields)."""

    interval_s: float
    cost_s: float | None  # None: no save measured yet (the interval is the floor)
    mtbf_s: float
    mtbf_source: str
    optimum_s: float | None  # Daly's τ before the floor and ceiling
    floor_s: float
    ceiling_s: float
    rate_per_node_hour: float | None = None  # the cluster's, when M comes from it
    nodes: int | None = None

    def fields(self) -> dict[str, object]:
        return {"interval_s": self.interval_s, "cost_s": self.cost_s, "mtbf_s": self.mtbf_s,
                "mtbf_source": self.mtbf_source, "rate_per_node_hour": self.rate_per_node_hour,
                "nodes": self.nodes, "optimum_s": self.optimum_s, "floor_s": self.floor_s,
                "ceiling_s": self.ceiling_s}


class AutoInterval:
    """Rank 0's running choice of interval: re-evaluated on each measured save."""

    def __init__(self, cfg: CheckpointConfig, mtbf: Mtbf) -> None:
        self.floor_s = cfg.auto_min_minutes * 60
        self.ceiling_s = cfg.auto_max_minutes * 60
        self.mtbf = mtbf
        self.costs: deque[float] = deque(maxlen=COST_WINDOW)
        self.current = self._evaluate()

    @property
    def seconds(self) -> float:
        return self.current.interval_s

    def measured(self, cost_s: float) -> Interval:
        """Record one save's stall and re-evaluate."""
        self.costs.append(max(0.0, cost_s))
        self.current = self._evaluate()
        return self.current

    def _evaluate(self) -> Interval:
        m = self.mtbf
        cost = sum(self.costs) / len(self.costs) if self.costs else None
        optimum = None if cost is None else daly(cost, m.seconds)
        interval = (self.floor_s if optimum is None
                    else clamp(optimum, self.floor_s, self.ceiling_s))
        return Interval(interval, cost, m.seconds, m.source, optimum, self.floor_s,
                        self.ceiling_s, m.rate_per_node_hour, m.nodes)
