"""A procedural town and its HD map: the ground truth the mapping pipeline reconstructs.

    town = make_town(seed=0)                  # roads on a jittered grid, version 1 of the map
    later = with_construction(town, seed=1)   # version 2: construction zones moved some lines
    tiles = cut_into_tiles(later.elements)    # {(i, j): [Element, ...]} in 50 m tiles

The map holds the three classes HDMapNet and MapTR predict, as vector polylines in metres in
the town's frame (x east, y north): lane dividers (the line between the two directions and,
on wider roads, the lines between lanes), pedestrian crossings (the outline of each zebra, a
closed polyline) and road boundaries (each road's two edges). Roads run between the grid's
intersections; markings stop short of an intersection's box, as painted ones do.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import numpy as np

CLASSES = ("divider", "crossing", "boundary")
LANE_M = 3.5  # lane width
CLEAR_M = 10.0  # markings end this far from an intersection's centre
CROSSING_M = 4.0  # a zebra's depth along the road
TILE_M = 50.0


@dataclass(frozen=True)
class Element:
    """One map element: ``kind`` in `CLASSES`, ``points`` [N, 2] in metres."""

    id: str
    kind: str
    points: np.ndarray

    def length(self) -> float:
        return float(np.linalg.norm(np.diff(self.points, axis=0), axis=1).sum())


@dataclass(frozen=True)
class Road:
    a: int
    b: int
    lanes: int  # per direction

    @property
    def half_width(self) -> float:
        return self.lanes * LANE_M


@dataclass
class Town:
    seed: int
    nodes: np.ndarray  # [K, 2] intersections
    roads: list[Road]
    elements: list[Element]
    version: int = 1
    changed: set[str] = field(default_factory=set)  # ids of elements a construction zone moved

    def bounds(self) -> tuple[float, float, float, float]:
        pts = np.concatenate([e.points for e in self.elements])
        return (float(pts[:, 0].min()), float(pts[:, 1].min()),
                float(pts[:, 0].max()), float(pts[:, 1].max()))


# --- the road graph --------------------------------------------------------------------------

def make_town(seed: int, blocks: tuple[int, int] = (3, 3), block_m: float = 80.0,
              drop: float = 0.15) -> Town:
    """A grid of ``blocks`` city blocks with jittered intersections; a share ``drop`` of the
    streets is left out where the town stays connected; 1 or 2 lanes each way."""
    rng = np.random.default_rng(seed)
    nx, ny = blocks[0] + 1, blocks[1] + 1
    grid = np.array([(i * block_m, j * block_m) for j in range(ny) for i in range(nx)], float)
    nodes = grid + rng.uniform(-0.1, 0.1, grid.shape) * block_m
    edges = [(j * nx + i, j * nx + i + 1) for j in range(ny) for i in range(nx - 1)]
    edges += [(j * nx + i, (j + 1) * nx + i) for j in range(ny - 1) for i in range(nx)]
    kept = list(edges)
    for e in rng.permutation(len(edges)):
        trial = [k for k in kept if k != edges[e]]
        if rng.random() < drop and _connected(len(nodes), trial):
            kept = trial
    roads = [Road(a, b, int(rng.integers(1, 3))) for a, b in kept]
    elements: list[Element] = []
    for r, road in enumerate(roads):
        elements += road_elements(r, road, nodes, rng)
    return Town(seed, nodes, roads, elements)


def _connected(n: int, edges: list[tuple[int, int]]) -> bool:
    seen, todo = {0}, [0]
    links: dict[int, list[int]] = {}
    for a, b in edges:
        links.setdefault(a, []).append(b)
        links.setdefault(b, []).append(a)
    while todo:
        for m in links.get(todo.pop(), []):
            if m not in seen:
                seen.add(m)
                todo.append(m)
    return len(seen) == n


def road_elements(r: int, road: Road, nodes: np.ndarray,
                  rng: np.random.Generator) -> list[Element]:
    """A road's dividers and boundaries (offset lines along its axis, between the two
    intersections' clear zones) and a zebra at each end with probability 0.6."""
    start, end = nodes[road.a], nodes[road.b]
    axis = (end - start) / np.linalg.norm(end - start)
    normal = np.array([-axis[1], axis[0]])
    p0, p1 = start + CLEAR_M * axis, end - CLEAR_M * axis
    out = [Element(f"r{r}-divider-0", "divider", _line(p0, p1))]
    if road.lanes == 2:  # the lines between same-direction lanes
        for side in (-1, 1):
            shift = side * LANE_M * normal
            out.append(Element(f"r{r}-divider-{side:+d}", "divider", _line(p0 + shift, p1 + shift)))
    for side in (-1, 1):
        shift = side * road.half_width * normal
        out.append(Element(f"r{r}-boundary-{side:+d}", "boundary", _line(p0 + shift, p1 + shift)))
    for end_name, centre, inward in (("a", p0, axis), ("b", p1, -axis)):
        if rng.random() < 0.6:
            near, far = centre, centre + CROSSING_M * inward
            w = road.half_width * normal
            ring = np.array([near - w, near + w, far + w, far - w, near - w])
            out.append(Element(f"r{r}-crossing-{end_name}", "crossing", ring))
    return out


def _line(p0: np.ndarray, p1: np.ndarray, step: float = 2.0) -> np.ndarray:
    n = max(2, math.ceil(float(np.linalg.norm(p1 - p0)) / step) + 1)
    return np.linspace(p0, p1, n)


# --- map versions ----------------------------------------------------------------------------

def with_construction(town: Town, seed: int, zones: int = 2, shift_m: float = 1.75) -> Town:
    """Version ``town.version + 1``: on ``zones`` roads the centre divider moves sideways by
    ``shift_m`` over the road's middle third (a lane closed for works) and the lane lines there
    are gone; the ids of what changed are kept in ``changed``."""
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(town.roads), size=min(zones, len(town.roads)), replace=False)
    elements = {e.id: e for e in town.elements}
    changed: set[str] = set()
    for r in sorted(int(c) for c in chosen):
        divider = elements[f"r{r}-divider-0"]
        pts = divider.points.copy()
        axis = pts[-1] - pts[0]
        normal = np.array([-axis[1], axis[0]]) / np.linalg.norm(axis)
        t = np.linspace(0, 1, len(pts))
        bump = np.clip(np.minimum(t - 1 / 3, 2 / 3 - t) * 12, 0, 1)  # ramps in and out
        elements[divider.id] = replace(divider, points=pts + shift_m * bump[:, None] * normal)
        changed.add(divider.id)
        for side in ("-1", "+1"):
            gone = elements.pop(f"r{r}-divider-{side}", None)
            if gone is not None:
                changed.add(gone.id)
    return Town(town.seed, town.nodes, town.roads, list(elements.values()),
                town.version + 1, changed)


# --- tiles -----------------------------------------------------------------------------------

def cut_into_tiles(elements: Iterable[Element], size: float = TILE_M
                   ) -> dict[tuple[int, int], list[Element]]:
    """Each element clipped to the square tiles of side ``size`` it crosses (tile (i, j) covers
    x in [i·size, (i+1)·size), y likewise); a piece keeps its element's id and kind."""
    tiles: dict[tuple[int, int], list[Element]] = {}
    for e in elements:
        lo = np.floor(e.points.min(axis=0) / size).astype(int)
        hi = np.floor(e.points.max(axis=0) / size).astype(int)
        for i in range(lo[0], hi[0] + 1):
            for j in range(lo[1], hi[1] + 1):
                box = (i * size, j * size, (i + 1) * size, (j + 1) * size)
                for piece in clip_polyline(e.points, box):
                    tiles.setdefault((i, j), []).append(Element(e.id, e.kind, piece))
    return tiles


def clip_polyline(points: np.ndarray, box: tuple[float, float, float, float]
                  ) -> list[np.ndarray]:
    """The runs of a polyline inside an axis-aligned box (Liang-Barsky on each segment)."""
    runs: list[list[np.ndarray]] = []
    current: list[np.ndarray] = []
    for p, q in itertools.pairwise(points):
        seg = _clip_segment(p, q, box)
        if seg is None:
            if len(current) > 1:
                runs.append(current)
            current = []
            continue
        a, b = seg
        if not current or not np.allclose(current[-1], a):
            if len(current) > 1:
                runs.append(current)
            current = [a]
        current.append(b)
    if len(current) > 1:
        runs.append(current)
    return [np.array(run) for run in runs]


def _clip_segment(p: np.ndarray, q: np.ndarray, box: tuple[float, float, float, float]
                  ) -> tuple[np.ndarray, np.ndarray] | None:
    x0, y0, x1, y1 = box
    d = q - p
    t0, t1 = 0.0, 1.0
    for edge_p, edge_q in ((-d[0], p[0] - x0), (d[0], x1 - p[0]),
                           (-d[1], p[1] - y0), (d[1], y1 - p[1])):
        if edge_p == 0:
            if edge_q < 0:
                return None
            continue
        t = edge_q / edge_p
        if edge_p < 0:
            t0 = max(t0, t)
        else:
            t1 = min(t1, t)
        if t0 > t1:
            return None
    if t1 - t0 < 1e-12:
        return None
    return p + t0 * d, p + t1 * d


def to_geojson(elements: Iterable[Element]) -> dict[str, object]:
    """A GeoJSON FeatureCollection of LineStrings (metres in the town's frame)."""
    return {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"id": e.id, "class": e.kind},
         "geometry": {"type": "LineString", "coordinates": e.points.round(3).tolist()}}
        for e in elements]}
