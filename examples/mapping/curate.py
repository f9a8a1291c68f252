"""Which frames to label: coverage of the map, rare conditions, the model's doubt, no twins.

    chosen = select(pool, budget=60)                      # first round
    chosen = select(pool, budget=60, uncertainty=doubt)   # later rounds: the model's entropy

``pool`` is a list of frame records (town, believed pose, condition). Greedy: each pick takes
the frame with the highest score, where a frame's score is the sum over the map tiles its view
touches of 1 / (1 + frames already picked there), plus ``rarity`` x (the pool's most common
condition's count / its condition's count − 1) (0 for the most common, more for rarer ones), plus
``doubt`` x its uncertainty (0..1) when given. A frame within ``twin_m`` metres and
``twin_deg`` degrees of one already picked in the same town is a near-duplicate and skipped.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np
from sensors import X_M, Y_M
from world import TILE_M


@dataclass(frozen=True)
class Candidate:
    key: tuple[int, int]  # (shard, frame)
    town: int
    x: float
    y: float
    yaw: float
    condition: str


def candidates(shards: list[dict[str, np.ndarray]]) -> list[Candidate]:
    return [Candidate((s, i), int(shard["town"]), float(p[0]), float(p[1]), float(p[2]),
                      str(c))
            for s, shard in enumerate(shards)
            for i, (p, c) in enumerate(zip(shard["believed"], shard["condition"], strict=True))]


def tiles_seen(c: Candidate, size: float = TILE_M) -> set[tuple[int, int, int]]:
    """The (town, i, j) tiles the frame's view rectangle touches (its corners' tiles and the
    ones between)."""
    cos, sin = math.cos(c.yaw), math.sin(c.yaw)
    corners = [(c.x + cos * dx - sin * dy, c.y + sin * dx + cos * dy)
               for dx in (-X_M, X_M) for dy in (-Y_M, Y_M)]
    xs, ys = [p[0] for p in corners], [p[1] for p in corners]
    return {(c.town, i, j)
            for i in range(math.floor(min(xs) / size), math.floor(max(xs) / size) + 1)
            for j in range(math.floor(min(ys) / size), math.floor(max(ys) / size) + 1)}


def select(pool: list[Candidate], budget: int, rarity: float = 0.5, doubt: float = 2.0,
           uncertainty: dict[tuple[int, int], float] | None = None, twin_m: float = 2.0,
           twin_deg: float = 15.0) -> list[Candidate]:
    counts = Counter(c.condition for c in pool)
    common = max(counts.values()) if counts else 1
    seen = {c.key: tiles_seen(c) for c in pool}
    covered: Counter[tuple[int, int, int]] = Counter()
    chosen: list[Candidate] = []
    left = list(pool)
    while left and len(chosen) < budget:
        def score(c: Candidate) -> float:
            s = sum(1 / (1 + covered[t]) for t in seen[c.key])
            s += rarity * (common / counts[c.condition] - 1)
            if uncertainty is not None:
                s += doubt * uncertainty.get(c.key, 0.0)
            return s

        best = max(left, key=score)
        left.remove(best)
        if any(twin(best, c, twin_m, twin_deg) for c in chosen):
            continue
        chosen.append(best)
        covered.update(seen[best.key])
    return chosen


def twin(a: Candidate, b: Candidate, metres: float, degrees: float) -> bool:
    turn = abs((a.yaw - b.yaw + math.pi) % (2 * math.pi) - math.pi)
    return (a.town == b.town and math.hypot(a.x - b.x, a.y - b.y) < metres
            and math.degrees(turn) < degrees)


def coverage(chosen: list[Candidate], pool: list[Candidate]) -> float:
    """The share of the tiles the pool sees that the chosen frames see."""
    every = set().union(*(tiles_seen(c) for c in pool)) if pool else set()
    got = set().union(*(tiles_seen(c) for c in chosen)) if chosen else set()
    return len(got) / len(every) if every else 0.0
