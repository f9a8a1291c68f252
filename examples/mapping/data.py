"""Frames for training and evaluation: drives through towns, each frame with its inputs, its
true masks and direction bins, its poses (true and believed) and its condition.

    shard = make_frames(town_seed=3, drives=4, frames=30, version=1)
    save(shard, path); shard = load(path)

A town's drives take turns at the conditions (clear, worn paint, rain, both), so every shard
holds all of them; version 2 of a town has its construction zones. Inputs are float16 [N, 3,
H, W] (height, intensity, camera), masks bool [N, 3, H, W], directions int8 [N, H, W].
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from sensors import Conditions, directions, drifting, drive, rasterize, sense
from world import make_town, with_construction

CONDITIONS = (Conditions(), Conditions(worn=True), Conditions(rain=True),
              Conditions(worn=True, rain=True))
INPUTS = ("height", "intensity", "camera")


def make_frames(town_seed: int, drives: int, frames: int, version: int = 1,
                every: int = 2) -> dict[str, Any]:
    """``drives`` drives of ``frames`` poses each through the town, one frame every ``every``
    poses (4 m at 8 m/s and 0.5 s)."""
    town = make_town(town_seed)
    if version > 1:
        town = with_construction(town, seed=town_seed + 1000)
    out: dict[str, list[Any]] = {k: [] for k in ("inputs", "masks", "directions", "pose",
                                                 "believed", "condition", "drive")}
    for d in range(drives):
        conditions = CONDITIONS[d % len(CONDITIONS)]
        poses = drive(town, seed=town_seed * 100 + d, frames=frames)[::every]
        believed = drifting(poses, seed=town_seed * 100 + d)
        rng = np.random.default_rng(town_seed * 100 + d)
        for pose, guess in zip(poses, believed, strict=True):
            frame = sense(town, pose, conditions, rng)
            out["inputs"].append(np.stack([frame[k] for k in INPUTS]).astype(np.float16))
            out["masks"].append(rasterize(town.elements, pose))
            out["directions"].append(directions(town.elements, pose).astype(np.int8))
            out["pose"].append((pose.x, pose.y, pose.yaw))
            out["believed"].append((guess.x, guess.y, guess.yaw))
            out["condition"].append(conditions.name)
            out["drive"].append(d)
    shard = {k: np.array(v) for k, v in out.items()}
    shard["town"] = np.array(town_seed)
    shard["version"] = np.array(town.version)
    return shard


def frame_inputs(shard: dict[str, Any], i: int) -> dict[str, np.ndarray]:
    """Frame ``i``'s inputs by name (float32), as `sensors.sense` made them."""
    return {k: shard["inputs"][i][j].astype(np.float32) for j, k in enumerate(INPUTS)}


def save(shard: dict[str, Any], path: Path) -> None:
    with path.open("wb") as f:  # np.savez would add .npz to a path without it
        np.savez_compressed(f, **shard)


def load(path: Path) -> dict[str, Any]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}
