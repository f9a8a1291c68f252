"""Live straggler detection on rank 0, from the section times every log step gathers anyway.

The scores are those of NVIDIA's resiliency extension (nvidia-resiliency-ext, straggler
detection), per section and rank, each over the median of the rank's last ``window`` steps:

- relative: (the fastest rank's time) / (this rank's time); 1.0 is the fastest rank;
- individual: (this rank's best time so far) / (its current time); 1.0 is its best.

Times are padded by `FLOOR_SHARE` of the fastest rank's step time before dividing, so that a
section of a few microseconds (the data wait behind a prefetching loader) cannot score 0.3 on
noise alone: with nearly nothing to do at its fastest, a section scores below 0.7 once it takes
more than about 11% of a step longer than that.

A rank's time says it is slow only where it is its own: ``data`` (the loader), ``host`` (the
loop's own work between steps) and ``compute`` (forward+backward and optimizer less the time
blocked waiting on collectives, ``comm``; measured on CPU only, see `stoker.observe.metrics`).
Forward+backward and the optimizer end in a collective (DDP's all-reduce, FSDP's reduce-scatter
and all-gathers, the gradient norm's all-reduce), where the ranks that came early wait for the
last one: their times even out, and what differs is the early ranks' wait (``comm``), not the
late rank's work. The scores of ``fwd_bwd``, ``optim`` and ``comm`` are reported but never flag
a rank; a rank is flagged when its worst relative score over `FLAGGING` stays below
``threshold`` for ``patience`` consecutive log steps, counted once the window is full. A
section not measured (NaN: ``compute`` and ``comm`` on CUDA) scores None and flags nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from stoker.spec.train import StragglerConfig

SECTIONS = ("data", "fwd_bwd", "optim", "host", "compute", "comm")
FLAGGING = ("data", "host", "compute")  # a rank's time there is its own, no peer's wait
FLOOR_SHARE = 0.25


def section_scores(times: torch.Tensor, best: torch.Tensor,
                   floor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The relative and individual scores, [ranks, sections], from each rank's current
    (median) and best time of each section, [ranks, sections], padded by ``floor`` seconds."""
    relative = (times.min(dim=0).values + floor) / (times + floor)
    individual = (best + floor) / (times + floor)
    return relative, individual


@dataclass
class Verdict:
    """What one log step adds to its record, and the events it raises."""

    record: dict[str, Any]
    flagged: list[tuple[int, str, float, int]] = field(default_factory=list)  # rank, section..
    cleared: list[tuple[int, float]] = field(default_factory=list)  # rank, score


class StragglerDetector:
    """Fed every step's section times of every rank (`add`), scored at each log step (`score`).
    The last ``window`` steps are kept in one ring buffer, [window, ranks, sections + 1] (the
    step time last), so that a log step's medians are one call however many the ranks."""

    def __init__(self, cfg: StragglerConfig, world_size: int) -> None:
        self.cfg = cfg
        self.world_size = world_size
        self.recent = torch.zeros(cfg.window, world_size, len(SECTIONS) + 1,
                                  dtype=torch.float64)
        self.filled = 0
        self.best = torch.full((world_size, len(SECTIONS)), float("inf"), dtype=torch.float64)
        self.below = [0] * world_size  # consecutive log steps under the threshold
        self.flagged: set[int] = set()
        self._flagging = [SECTIONS.index(name) for name in FLAGGING]

    def add(self, step_times: Sequence[float], sections: Sequence[Sequence[float]]) -> None:
        """One step: every rank's step time and its section times, in `SECTIONS` order."""
        row = torch.tensor([[*times, step_time]
                            for step_time, times in zip(step_times, sections, strict=True)],
                           dtype=torch.float64)
        self.recent[self.filled % self.cfg.window] = row.clamp(min=0.0)
        self.filled += 1

    def score(self) -> Verdict:
        """The scores over the window, and the ranks flagged or cleared at this log step."""
        medians = self.recent[:min(self.filled, self.cfg.window)].quantile(0.5, dim=0)
        times = medians[:, :len(SECTIONS)]
        self.best = torch.minimum(self.best, times)
        floor = FLOOR_SHARE * float(medians[:, -1].min())
        relative, individual = section_scores(times, self.best, floor)
        worst, at = relative[:, self._flagging].nan_to_num(nan=math.inf).min(dim=1)
        verdict = Verdict({})
        if self.filled >= self.cfg.window:  # a median over fewer steps is too noisy to judge
            for rank, (score, i) in enumerate(zip(worst.tolist(), at.tolist(), strict=True)):
                self._judge(verdict, rank, FLAGGING[i], score)
        verdict.record = {
            "relative": _rounded(worst),
            "individual": _rounded(individual.nan_to_num(nan=math.inf).min(dim=1).values),
            "sections": {name: _rounded(relative[:, i]) for i, name in enumerate(SECTIONS)},
            "flagged": sorted(self.flagged),
        }
        return verdict

    def _judge(self, verdict: Verdict, rank: int, section: str, score: float) -> None:
        if score >= self.cfg.threshold:
            self.below[rank] = 0
            if rank in self.flagged:
                self.flagged.discard(rank)
                verdict.cleared.append((rank, score))
            return
        self.below[rank] += 1
        if self.below[rank] >= self.cfg.patience and rank not in self.flagged:
            self.flagged.add(rank)
            verdict.flagged.append((rank, section, score, self.below[rank]))


def _rounded(scores: torch.Tensor) -> list[float | None]:
    """Rounded scores; None for a section not measured."""
    return [None if math.isnan(x) else round(x, 3) for x in scores.tolist()]
