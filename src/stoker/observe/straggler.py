"""Live straggler detection on rank 0, from the section times every log step gathers anyway.

The scores are those of NVIDIA's resiliency extension (nvidia-resiliency-ext, straggler
detection), per section and rank, each over the median of the rank's last ``window`` steps:

- relative: (the fastest rank's time) / (this rank's time); 1.0 is the fastest rank;
- individual: (this rank's best time so far) / (its current time); 1.0 is its best.

Times are padded by `FLOOR_SHARE` of the fastest rank's step time before dividing, so that a
section of a few microseconds (the data wait behind a prefetching loader) cannot score 0.3 on
noise alone: with nearly nothing to do at its fastest, a section scores below 0.7 once it takes
more than about 11% of a step longer than that.

Only the sections in which a rank runs no collective say which rank is slow: ``data`` (the
loader) and ``host`` (the loop's own work between steps). Forward+backward and the optimizer
end in a collective (DDP's all-reduce, FSDP's reduce-scatter and all-gathers, the gradient
norm's all-reduce), where the ranks that came early wait for the last one: their times even
out, and what differs is the early ranks' wait, not the late rank's work. Their relative scores
are reported but never flag a rank; a rank is flagged when its worst relative score over
`FLAGGING` stays below ``threshold`` for ``patience`` consecutive log steps. The exposed
communication time (the wait inside those sections) is not measured.
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from stoker.spec.train import StragglerConfig

SECTIONS = ("data", "fwd_bwd", "optim", "host")
FLAGGING = ("data", "host")  # sections without a collective: a rank's time there is its own
FLOOR_SHARE = 0.25


def section_scores(times: Sequence[float], best: Sequence[float],
                   floor: float) -> tuple[list[float], list[float]]:
    """One section's relative and individual score of every rank, from each rank's current
    (median) time and best time, padded by ``floor`` seconds."""
    fastest = min(times)
    relative = [(fastest + floor) / (t + floor) for t in times]
    individual = [(b + floor) / (t + floor) for b, t in zip(best, times, strict=True)]
    return relative, individual


@dataclass
class Verdict:
    """What one log step adds to its record, and the events it raises."""

    record: dict[str, Any]
    flagged: list[tuple[int, str, float, int]] = field(default_factory=list)  # rank, section..
    cleared: list[tuple[int, float]] = field(default_factory=list)  # rank, score


class StragglerDetector:
    """Fed every step's section times of every rank (`add`), scored at each log step (`score`)."""

    def __init__(self, cfg: StragglerConfig, world_size: int) -> None:
        self.cfg = cfg
        self.world_size = world_size
        self.recent = [[deque[float](maxlen=cfg.window) for _ in SECTIONS]
                       for _ in range(world_size)]
        self.step_times = [deque[float](maxlen=cfg.window) for _ in range(world_size)]
        self.best = [[float("inf")] * len(SECTIONS) for _ in range(world_size)]
        self.below = [0] * world_size  # consecutive log steps under the threshold
        self.flagged: set[int] = set()

    def add(self, step_times: Sequence[float], sections: Sequence[Sequence[float]]) -> None:
        """One step: every rank's step time and its section times, in `SECTIONS` order."""
        for rank, (step_time, times) in enumerate(zip(step_times, sections, strict=True)):
            self.step_times[rank].append(step_time)
            for recent, t in zip(self.recent[rank], times, strict=True):
                recent.append(max(t, 0.0))

    def score(self) -> Verdict:
        """The scores over the window, and the ranks flagged or cleared at this log step."""
        medians = [[statistics.median(r) for r in rank] for rank in self.recent]
        for best, now in zip(self.best, medians, strict=True):
            best[:] = [min(b, m) for b, m in zip(best, now, strict=True)]
        floor = FLOOR_SHARE * min(statistics.median(s) for s in self.step_times)
        relative, individual = [], []
        for i in range(len(SECTIONS)):
            rel, ind = section_scores([m[i] for m in medians], [b[i] for b in self.best], floor)
            relative.append(rel)
            individual.append(ind)
        verdict = Verdict({})
        rank_relative = []
        for rank in range(self.world_size):
            score, section = min((relative[SECTIONS.index(name)][rank], name)
                                 for name in FLAGGING)
            rank_relative.append(score)
            self._judge(verdict, rank, section, score)
        verdict.record = {
            "relative": [round(s, 3) for s in rank_relative],
            "individual": [round(min(ind[r] for ind in individual), 3)
                           for r in range(self.world_size)],
            "sections": {name: [round(s, 3) for s in relative[i]]
                         for i, name in enumerate(SECTIONS)},
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
