"""The map-reconstruction workload's world (examples/mapping/world.py, sensors.py): the town's
map, its versions and tiles, and the drives' BEV frames, against hand-worked cases."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "examples" / "mapping"))

from sensors import (
    RES,
    Conditions,
    H,
    Pose,
    W,
    drifting,
    drive,
    pixel_centres,
    rasterize,
    road_surface,
    sense,
    shadowed,
    to_ego,
    to_town,
)
from world import (
    CLASSES,
    Element,
    clip_polyline,
    cut_into_tiles,
    make_town,
    to_geojson,
    with_construction,
)


def test_a_town_is_connected_repeatable_and_has_every_class() -> None:
    town = make_town(seed=3)
    again = make_town(seed=3)
    assert [e.id for e in town.elements] == [e.id for e in again.elements]
    assert all(np.array_equal(a.points, b.points)
               for a, b in zip(town.elements, again.elements, strict=True))
    assert {e.kind for e in town.elements} == set(CLASSES)
    links = {n: set() for n in range(len(town.nodes))}
    for r in town.roads:
        links[r.a].add(r.b)
        links[r.b].add(r.a)
    seen, todo = {0}, [0]
    while todo:
        for m in links[todo.pop()] - seen:
            seen.add(m)
            todo.append(m)
    assert len(seen) == len(town.nodes)
    assert make_town(seed=4).nodes.tolist() != town.nodes.tolist()


def test_clip_polyline_by_hand() -> None:
    box = (0.0, 0.0, 10.0, 10.0)
    line = np.array([[-5.0, 5.0], [5.0, 5.0], [15.0, 5.0]])
    (piece,) = clip_polyline(line, box)
    assert piece.tolist() == [[0.0, 5.0], [5.0, 5.0], [10.0, 5.0]]
    # out, in, out, in again: two runs
    zigzag = np.array([[-1.0, 1.0], [1.0, 1.0], [1.0, 12.0], [2.0, 12.0], [2.0, 9.0]])
    runs = clip_polyline(zigzag, box)
    assert [r.tolist() for r in runs] == [[[0.0, 1.0], [1.0, 1.0], [1.0, 10.0]],
                                          [[2.0, 10.0], [2.0, 9.0]]]
    assert clip_polyline(np.array([[20.0, 20.0], [30.0, 30.0]]), box) == []


def test_tiles_hold_every_element_whole() -> None:
    town = make_town(seed=0)
    tiles = cut_into_tiles(town.elements, size=50.0)
    for e in town.elements:
        pieces = [p for t in tiles.values() for p in t if p.id == e.id]
        assert sum(p.length() for p in pieces) == pytest.approx(e.length(), rel=1e-9)
    for (i, j), pieces in tiles.items():
        low, high = np.array([i, j]) * 50.0 - 1e-9, np.array([i + 1, j + 1]) * 50.0 + 1e-9
        assert all(((p.points >= low) & (p.points <= high)).all() for p in pieces)
    geo = to_geojson(tiles[next(iter(tiles))])
    assert geo["type"] == "FeatureCollection" and geo["features"]


def test_construction_moves_the_centre_divider_and_removes_lane_lines() -> None:
    town = make_town(seed=0)
    later = with_construction(town, seed=1, zones=2)
    assert later.version == 2 and later.changed
    before = {e.id: e for e in town.elements}
    after = {e.id: e for e in later.elements}
    for id_ in later.changed:
        if id_ in after:  # moved: the middle third by 1.75 m, the ends where they were
            old, new = before[id_].points, after[id_].points
            shift = np.linalg.norm(new - old, axis=1)
            assert shift.max() == pytest.approx(1.75) and shift[0] == shift[-1] == 0
        else:
            assert "divider-" in id_ and not id_.endswith("-0")  # a lane line, removed
    assert all(np.array_equal(before[i].points, after[i].points)
               for i in after if i not in later.changed)


def test_ego_frame_and_rasters_by_hand() -> None:
    pose = Pose(100.0, 50.0, math.pi / 2)  # facing north
    ego = to_ego(np.array([[100.0, 60.0], [90.0, 50.0]]), pose)
    np.testing.assert_allclose(ego, [[10.0, 0.0], [0.0, 10.0]], atol=1e-9)  # ahead; left
    np.testing.assert_allclose(to_town(ego, pose), [[100.0, 60.0], [90.0, 50.0]])
    # A divider crossing the view 10 m ahead, left to right: one column, every row.
    line = Element("d", "divider", np.array([[80.0, 60.25], [120.0, 60.25]]))
    masks = rasterize([line], pose)
    assert masks.shape == (3, H, W) and not masks[1:].any()
    cols = np.nonzero(masks[0].any(axis=0))[0]
    assert cols.tolist() == [int((10.25 + 30) / RES)] and masks[0].any(axis=1).all()


def test_drives_stay_on_the_road_and_drift() -> None:
    town = make_town(seed=0)
    poses = drive(town, seed=0, frames=60)
    assert len(poses) == 60
    centre = (H // 2, W // 2)
    assert all(road_surface(town, p)[centre] for p in poses[::10])
    believed = drifting(poses, seed=0)
    errors = [math.hypot(a.x - b.x, a.y - b.y) for a, b in zip(poses, believed, strict=True)]
    assert errors[0] < 0.2 and np.mean(errors[-10:]) > np.mean(errors[:10])  # a random walk


def test_a_frame_shows_paint_bright_and_nothing_behind_a_car() -> None:
    town = make_town(seed=0)
    pose = drive(town, seed=0, frames=5)[-1]
    rng = np.random.default_rng(0)
    frame = sense(town, pose, Conditions(), rng, cars=0)
    labels = rasterize(town.elements, pose)
    paint = labels[0] & (frame["intensity"] > 0)
    asphalt = road_surface(town, pose) & ~labels.any(axis=0) & (frame["intensity"] > 0)
    assert frame["intensity"][paint].mean() > frame["intensity"][asphalt].mean() + 0.4
    worn = sense(town, pose, Conditions(worn=True), np.random.default_rng(0), cars=0)
    assert worn["intensity"][paint].mean() < frame["intensity"][paint].mean() - 0.3
    assert (frame["camera"][:, : W // 2] == 0).all()  # nothing seen behind
    hidden = shadowed([(10.0, 0.0, 4.5, 1.8)])
    centres = pixel_centres()
    assert hidden[np.argmin(np.abs(centres[:, 0, 1]))][np.argmin(np.abs(centres[0, :, 0] - 20))]
    assert not hidden[np.argmin(np.abs(centres[:, 0, 1]))][np.argmin(np.abs(centres[0, :, 0] - 5))]
    with_cars = sense(town, pose, Conditions(), np.random.default_rng(1), cars=2)
    assert with_cars["parked"].shape == (2, 4)
    assert (with_cars["intensity"][shadowed([tuple(c) for c in with_cars["parked"]])] == 0).all()
