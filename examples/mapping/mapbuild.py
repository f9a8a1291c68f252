"""Building the map from many frames' predictions, and finding what changed since the last map.

    grid = FusedGrid.around(town)                       # the town's area at 0.5 m a cell
    grid.add(probabilities, believed_pose)              # per frame: [C, H, W] in the ego frame
    lines = grid.elements(threshold=0.5)                # the fused map's polylines
    moved = changed_elements(previous_map, grid)        # ids the new frames no longer support

Each frame's pixels are placed in the town's frame by the pose the vehicle believes (its
odometry drifts, so the fused lines blur where drives disagree), and every cell keeps the mean
probability of the frames that saw it. An element of the previous map is reported changed
when the new frames saw most of it (``seen``) and, along one unbroken stretch of at least
``stretch_m`` metres, no cell near it holds its class: a line that moved or was removed. A
stretch, not a share of the element: perception misses a line in short pieces (behind a parked
car, where paint is worn, a crossing's side), which a share adds up; works move metres of it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from metrics import vectorize
from sensors import RES, Pose, densify, pixel_centres, to_town
from world import CLASSES, Element, Town


@dataclass
class FusedGrid:
    origin: np.ndarray  # the town-frame position of cell (0, 0)'s corner (min x, min y)
    total: np.ndarray  # [C, GH, GW] summed probabilities (row 0 = lowest y)
    count: np.ndarray  # [GH, GW] frames that saw each cell

    @classmethod
    def around(cls, town: Town, margin: float = 40.0) -> FusedGrid:
        x0, y0, x1, y1 = town.bounds()
        origin = np.array([x0 - margin, y0 - margin])
        gw = int(np.ceil((x1 - x0 + 2 * margin) / RES))
        gh = int(np.ceil((y1 - y0 + 2 * margin) / RES))
        return cls(origin, np.zeros((len(CLASSES), gh, gw)), np.zeros((gh, gw)))

    def cells(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, cols, inside) of town-frame points."""
        cols = np.floor((points[:, 0] - self.origin[0]) / RES).astype(int)
        rows = np.floor((points[:, 1] - self.origin[1]) / RES).astype(int)
        inside = ((rows >= 0) & (rows < self.count.shape[0]) & (cols >= 0)
                  & (cols < self.count.shape[1]))
        return rows, cols, inside

    def add(self, probabilities: np.ndarray, pose: Pose) -> None:
        points = to_town(pixel_centres().reshape(-1, 2), pose)
        rows, cols, inside = self.cells(points)
        rows, cols = rows[inside], cols[inside]
        flat = probabilities.reshape(len(CLASSES), -1)[:, inside]
        hits = np.zeros_like(self.count)
        np.add.at(hits, (rows, cols), 1.0)
        seen = hits > 0
        for k in range(len(CLASSES)):
            sums = np.zeros_like(self.count)
            np.add.at(sums, (rows, cols), flat[k])
            self.total[k][seen] += sums[seen] / hits[seen]  # one vote per frame and cell
        self.count += seen

    def mean(self) -> np.ndarray:
        return np.where(self.count > 0, self.total / np.maximum(self.count, 1), 0.0)

    def centres(self) -> np.ndarray:
        gh, gw = self.count.shape
        xs = self.origin[0] + RES * (np.arange(gw) + 0.5)
        ys = self.origin[1] + RES * (np.arange(gh) + 0.5)
        return np.stack(np.meshgrid(xs, ys), axis=-1)

    def elements(self, threshold: float = 0.5) -> list[Element]:
        lines = vectorize(self.mean(), threshold, centres=self.centres())
        return [Element(f"fused-{i}", kind, points)
                for i, (kind, points, _score) in enumerate(lines)]

    def along(self, element: Element, mean: np.ndarray, step: float = RES / 2
              ) -> tuple[float, float, float]:
        """(share of the element's points the frames saw, share of those where no cell within
        a pixel holds its class at probability 0.5 (poses drift a little), and the longest
        unbroken stretch of such points, in metres)."""
        rows, cols, inside = self.cells(densify(element.points, step))
        seen = inside.copy()
        seen[inside] = self.count[rows[inside], cols[inside]] > 0
        if not seen.any():
            return 0.0, 0.0, 0.0
        k = CLASSES.index(element.kind)
        gh, gw = self.count.shape
        near = np.max([mean[k][np.clip(rows[seen] + dy, 0, gh - 1),
                               np.clip(cols[seen] + dx, 0, gw - 1)]
                       for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=0)
        missing = np.zeros(len(seen), dtype=bool)
        missing[seen] = near < 0.5
        return float(seen.mean()), float(missing[seen].mean()), longest_run(missing) * step


def longest_run(flags: np.ndarray) -> int:
    """The length of the longest run of True in ``flags``."""
    edges = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return int((ends - starts).max()) if len(starts) else 0


def changed_elements(previous: list[Element], grid: FusedGrid, seen: float = 0.8,
                     stretch_m: float = 10.0) -> set[str]:
    """Ids of the previous map's elements the new frames saw (at least ``seen`` of each) but
    do not support along an unbroken ``stretch_m`` metres or more."""
    mean = grid.mean()
    out = set()
    for e in previous:
        share, _, unsupported_m = grid.along(e, mean)
        if share >= seen and unsupported_m >= stretch_m:
            out.add(e.id)
    return out
