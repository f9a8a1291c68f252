"""Drives through a town and what the vehicle senses: bird's-eye-view rasters around the ego.

    poses = drive(town, seed=0, frames=40)                    # true poses along a route
    frame = sense(town, poses[10], Conditions(rain=True), rng)
    labels = rasterize(town.elements, poses[10])              # [3, H, W] ground-truth masks

The BEV grid is HDMapNet's layout at a CPU-sized resolution: ``X_M`` metres ahead and behind
along the heading, ``Y_M`` to each side, ``RES`` metres a pixel; row 0 is the ego's left, column
0 the farthest behind. A frame has a lidar-like height and intensity raster (paint is bright,
asphalt darker, the ground beyond the road darker still; Gaussian noise, returns dropping out
more with range, nothing behind the parked cars that occlude the view), a camera-like channel
(the intensity ahead only, blurred more with distance, as a perspective view loses detail),
and the pose as the vehicle believes it (the true pose plus a drifting error). Conditions: worn
paint (markings dimmer), rain (more noise and dropouts); construction zones come from the map
version the town is in.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
import torch.nn.functional as F
from world import CLASSES, LANE_M, Element, Town, clip_polyline

X_M, Y_M, RES = 30.0, 15.0, 0.5
H, W = int(2 * Y_M / RES), int(2 * X_M / RES)  # 60 x 120 pixels
CAR = (4.5, 1.8, 1.5)  # length, width, height in metres


@dataclass(frozen=True)
class Pose:
    x: float
    y: float
    yaw: float  # radians, 0 = east


@dataclass(frozen=True)
class Conditions:
    worn: bool = False
    rain: bool = False

    @property
    def name(self) -> str:
        return "+".join(n for n, on in (("worn", self.worn), ("rain", self.rain)) if on) or "clear"


# --- frames -----------------------------------------------------------------------------------

def to_ego(points: np.ndarray, pose: Pose) -> np.ndarray:
    """Town-frame points [N, 2] in the ego's frame (x ahead, y to the left)."""
    c, s = math.cos(pose.yaw), math.sin(pose.yaw)
    d = points - np.array([pose.x, pose.y])
    return np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1]], axis=1)


def to_town(points: np.ndarray, pose: Pose) -> np.ndarray:
    c, s = math.cos(pose.yaw), math.sin(pose.yaw)
    return np.stack([c * points[:, 0] - s * points[:, 1] + pose.x,
                     s * points[:, 0] + c * points[:, 1] + pose.y], axis=1)


@cache
def pixel_centres() -> np.ndarray:
    """Every pixel's centre in the ego frame: [H, W, 2] (one read-only array, made once)."""
    xs = -X_M + RES * (np.arange(W) + 0.5)
    ys = Y_M - RES * (np.arange(H) + 0.5)
    centres = np.stack(np.meshgrid(xs, ys), axis=-1)
    centres.setflags(write=False)
    return centres


def to_pixels(ego: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, columns, inside) of ego-frame points."""
    cols = np.floor((ego[:, 0] + X_M) / RES).astype(int)
    rows = np.floor((Y_M - ego[:, 1]) / RES).astype(int)
    inside = (cols >= 0) & (cols < W) & (rows >= 0) & (rows < H)
    return rows, cols, inside


REACH = math.hypot(X_M, Y_M) + RES  # no pixel of the view is farther from the ego


def in_reach(elements: list[Element], pose: Pose) -> list[Element]:
    """The elements whose bounding box comes within `REACH` of the ego: the only ones that can
    touch a pixel of the view (a culling that leaves every raster as it was)."""
    here = np.array([pose.x, pose.y])
    return [e for e in elements
            if np.linalg.norm(np.maximum(0.0, np.maximum(e.points.min(axis=0) - here,
                                                         here - e.points.max(axis=0))))
            <= REACH]


def rasterize(elements: list[Element], pose: Pose) -> np.ndarray:
    """[3, H, W] bool: the pixels each class's polylines pass through (sampled every RES/4)."""
    masks = np.zeros((len(CLASSES), H, W), dtype=bool)
    for e in in_reach(elements, pose):
        dense = densify(to_ego(e.points, pose), RES / 4)
        rows, cols, inside = to_pixels(dense)
        masks[CLASSES.index(e.kind), rows[inside], cols[inside]] = True
    return masks


DIRECTIONS = 8  # orientation bins over 180 degrees (a line has no heading)


def directions(elements: list[Element], pose: Pose) -> np.ndarray:
    """[H, W] int: the orientation bin of the line through each pixel (the last drawn wins),
    -1 where there is none: HDMapNet's direction target, without the sign."""
    out = np.full((H, W), -1, dtype=np.int64)
    for e in in_reach(elements, pose):
        ego = to_ego(e.points, pose)
        for p, q in itertools.pairwise(ego):
            angle = math.atan2(q[1] - p[1], q[0] - p[0]) % math.pi
            rows, cols, inside = to_pixels(densify(np.stack([p, q]), RES / 4))
            out[rows[inside], cols[inside]] = int(angle / math.pi * DIRECTIONS) % DIRECTIONS
    return out


def view_elements(elements: list[Element], pose: Pose) -> list[Element]:
    """The map's elements in the ego frame, clipped to the view: the true polylines a frame's
    predictions are scored against (as MapTR clips the map to its perception range)."""
    out = []
    for e in elements:
        for piece in clip_polyline(to_ego(e.points, pose), (-X_M, -Y_M, X_M, Y_M)):
            out.append(Element(e.id, e.kind, piece))
    return out


def densify(points: np.ndarray, step: float) -> np.ndarray:
    out = [points[:1]]
    for p, q in itertools.pairwise(points):
        n = max(1, math.ceil(float(np.linalg.norm(q - p)) / step))
        out.append(p + (q - p) * (np.arange(1, n + 1) / n)[:, None])
    return np.concatenate(out)


def road_surface(town: Town, pose: Pose) -> np.ndarray:
    """[H, W] bool: pixels on a road or in an intersection."""
    centres = to_town(pixel_centres().reshape(-1, 2), pose)
    on = np.zeros(len(centres), dtype=bool)
    for road in town.roads:
        a, b = town.nodes[road.a], town.nodes[road.b]
        ab = b - a
        t = np.clip(((centres - a) @ ab) / (ab @ ab), 0, 1)
        on |= np.linalg.norm(centres - (a + t[:, None] * ab), axis=1) <= road.half_width
    for node in town.nodes:
        on |= np.linalg.norm(centres - node, axis=1) <= 2 * LANE_M + 1.0
    return on.reshape(H, W)


# --- driving ----------------------------------------------------------------------------------

def drive(town: Town, seed: int, frames: int, speed: float = 8.0, dt: float = 0.5
          ) -> list[Pose]:
    """True poses every ``dt`` seconds at ``speed`` along a random route, in the right-hand
    lane nearest the centre, turning at random at each intersection (no U-turns where there is
    another way)."""
    rng = np.random.default_rng(seed)
    links: dict[int, list[int]] = {}
    for r in town.roads:
        links.setdefault(r.a, []).append(r.b)
        links.setdefault(r.b, []).append(r.a)
    here = int(rng.choice(sorted(links)))
    there = int(rng.choice(links[here]))
    travelled, poses = 0.0, []
    while len(poses) < frames:
        a, b = town.nodes[here], town.nodes[there]
        length = float(np.linalg.norm(b - a))
        axis = (b - a) / length
        right = np.array([axis[1], -axis[0]])
        while travelled <= length and len(poses) < frames:
            p = a + travelled * axis + (LANE_M / 2) * right
            poses.append(Pose(float(p[0]), float(p[1]), math.atan2(axis[1], axis[0])))
            travelled += speed * dt
        travelled -= length
        choices = [n for n in links[there] if n != here] or [here]
        here, there = there, int(rng.choice(choices))
    return poses


def drifting(poses: list[Pose], seed: int, sigma_m: float = 0.05, sigma_rad: float = 0.002
             ) -> list[Pose]:
    """The poses as the vehicle's odometry has them: a random walk added to each."""
    rng = np.random.default_rng(seed)
    ex = np.cumsum(rng.normal(0, sigma_m, len(poses)))
    ey = np.cumsum(rng.normal(0, sigma_m, len(poses)))
    eyaw = np.cumsum(rng.normal(0, sigma_rad, len(poses)))
    return [Pose(p.x + float(dx), p.y + float(dy), p.yaw + float(dyaw))
            for p, dx, dy, dyaw in zip(poses, ex, ey, eyaw, strict=True)]


# --- sensing ----------------------------------------------------------------------------------

def sense(town: Town, pose: Pose, conditions: Conditions, rng: np.random.Generator,
          cars: int = 3) -> dict[str, np.ndarray]:
    """One frame at the true ``pose``: ``height``, ``intensity`` and ``camera`` [H, W] float32,
    and ``parked`` [cars, 4] (x, y, length, width in the ego frame) of the occluders."""
    road = road_surface(town, pose)
    marks = rasterize(town.elements, pose)
    paint = marks[CLASSES.index("divider")] | marks[CLASSES.index("crossing")]
    curb = marks[CLASSES.index("boundary")]
    intensity = np.where(road, 0.3, 0.1).astype(np.float32)
    intensity[paint] = 0.45 if conditions.worn else 0.9
    height = np.zeros((H, W), np.float32)
    height[curb] = 0.15
    parked = park(road, rng, cars)
    centres = pixel_centres()
    for x, y, length, width in parked:
        box = ((np.abs(centres[..., 0] - x) <= length / 2)
               & (np.abs(centres[..., 1] - y) <= width / 2))
        height[box], intensity[box] = CAR[2], 0.2
    noise, dropout = (0.06, 0.25) if conditions.rain else (0.02, 0.08)
    ranges = np.linalg.norm(centres, axis=-1)
    lost = rng.random((H, W)) < dropout * ranges / ranges.max()
    lost |= shadowed(parked)
    intensity = intensity + rng.normal(0, noise, (H, W)).astype(np.float32)
    height = height + rng.normal(0, noise / 2, (H, W)).astype(np.float32)
    intensity[lost], height[lost] = 0.0, 0.0
    return {"height": height, "intensity": np.clip(intensity, 0, 1), "camera": camera(intensity),
            "parked": np.array(parked, dtype=np.float32).reshape(-1, 4)}


def park(road: np.ndarray, rng: np.random.Generator, n: int) -> list[tuple[float, float,
                                                                         float, float]]:
    """Cars on road pixels at least 6 m from the ego, along the ego's axis."""
    centres = pixel_centres()[road]
    far = centres[np.linalg.norm(centres, axis=1) >= 6.0]
    if len(far) == 0:
        return []
    picks = far[rng.choice(len(far), size=min(n, len(far)), replace=False)]
    return [(float(x), float(y), CAR[0], CAR[1]) for x, y in picks]


def shadowed(parked: list[tuple[float, float, float, float]]) -> np.ndarray:
    """[H, W] bool: pixels a car hides from a sensor at the ego's origin (farther than the car
    and within the angles its corners span)."""
    centres = pixel_centres()
    angle = np.arctan2(centres[..., 1], centres[..., 0])
    dist = np.linalg.norm(centres, axis=-1)
    hidden = np.zeros((H, W), dtype=bool)
    for x, y, length, width in parked:
        corners = np.array([(x + sx * length / 2, y + sy * width / 2)
                            for sx in (-1, 1) for sy in (-1, 1)])
        angles = np.arctan2(corners[:, 1], corners[:, 0])
        mid = math.atan2(y, x)
        spread = np.abs(np.angle(np.exp(1j * (angles - mid)))).max()
        off = np.abs(np.angle(np.exp(1j * (angle - mid))))
        hidden |= (off <= spread) & (dist > np.linalg.norm(corners, axis=1).min())
    return hidden


def camera(intensity: np.ndarray) -> np.ndarray:
    """The intensity ahead of the ego (behind it: 0), box-blurred over 1, 3 and 5 pixels for
    the near, middle and far thirds of the range."""
    image = torch.from_numpy(intensity)[None, None]
    blurred = [F.avg_pool2d(image, k, stride=1, padding=k // 2, count_include_pad=False)[0, 0]
               .numpy() for k in (1, 3, 5)]
    ahead = pixel_centres()[..., 0]
    band = np.clip((ahead / (X_M / 3)).astype(int), 0, 2)
    out = np.choose(band, blurred).astype(np.float32)
    out[ahead < 0] = 0.0
    return out
