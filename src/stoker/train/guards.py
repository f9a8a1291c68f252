"""The loss guard: catch a bad step before the optimizer applies it.

A step is bad when its loss or gradient norm is not finite, or (with ``spike_factor`` > 0) its
loss exceeds ``spike_factor`` times the median of the last ``window`` good losses, once
``warmup`` of them are known. The verdict is the configured action: "skip" (drop this step's
update, keep going) or "rollback" (reload the last committed checkpoint, as PaLM did for loss
spikes). Inputs must be the same on every rank (the reduced loss, the global gradient norm) so
that every rank reaches the same verdict without talking.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

Action = Literal["skip", "rollback"]


@dataclass(frozen=True)
class Verdict:
    action: Literal["ok", "skip", "rollback"]
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.action == "ok"


class LossGuard:
    def __init__(self, action: Action = "skip", spike_factor: float = 0.0, window: int = 50,
                 warmup: int = 10) -> None:
        if action not in ("skip", "rollback"):
            raise ValueError(f"loss guard action must be 'skip' or 'rollback', not {action!r}")
        self.action: Action = action
        self.spike_factor = spike_factor
        self.warmup = max(1, min(warmup, window))
        self.history: deque[float] = deque(maxlen=window)

    def check(self, loss: float, grad_norm: float) -> Verdict:
        """Judge one step; a good step's loss joins the running window."""
        if not math.isfinite(loss):
            return Verdict(self.action, f"loss is {loss}")
        if not math.isfinite(grad_norm):
            return Verdict(self.action, f"grad norm is {grad_norm}")
        if self.spike_factor > 0 and len(self.history) >= self.warmup:
            median = statistics.median(self.history)
            if loss > self.spike_factor * median:
                return Verdict(self.action, f"loss {loss:.4g} is above {self.spike_factor:g} x "
                               f"the running median {median:.4g}")
        self.history.append(loss)
        return Verdict("ok")

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history.clear()
        self.history.extend(float(x) for x in state["history"])
