"""The map metrics (examples/mapping/metrics.py) against hand-computed cases: raster IoU,
Chamfer distance, average precision at each threshold, and vectorising masks."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "examples" / "mapping"))

from metrics import (
    IouCounts,
    ap_from_matches,
    average_precision,
    chamfer,
    match,
    vectorize,
)
from sensors import H, Pose, W, rasterize
from world import Element


def test_iou_sums_over_frames_before_dividing() -> None:
    counts = IouCounts()
    pred, truth = np.zeros((3, H, W), bool), np.zeros((3, H, W), bool)
    pred[0, 0, 0:4] = True
    truth[0, 0, 2:6] = True  # 2 shared of 6
    counts.add(pred, truth)
    pred2, truth2 = np.zeros((3, H, W), bool), np.zeros((3, H, W), bool)
    truth2[0, 5, 0:2] = True  # missed: 0 of 2
    pred2[2, 1, 1] = truth2[2, 1, 1] = True
    counts.add(pred2, truth2)
    iou = counts.iou()
    assert iou["divider"] == pytest.approx(2 / 8) and iou["boundary"] == 1.0
    assert math.isnan(iou["crossing"])  # no pixel of it anywhere


def line(y: float, x0: float = 0.0, x1: float = 10.0) -> np.ndarray:
    return np.array([[x0, y], [x1, y]])


def test_chamfer_by_hand() -> None:
    assert chamfer(line(0), line(1)) == pytest.approx(1.0)
    assert chamfer(line(0), line(0)[::-1]) == pytest.approx(0.0, abs=1e-12)
    # 0..10 against 0..5 on the same line: the half beyond 5 is 2.5 m from 5 on average,
    # one way (mean over 0..10: half the points at 0, half at mean 2.5 -> 1.25); 0 the other
    assert chamfer(line(0), line(0, 0, 5)) == pytest.approx(1.25 / 2, abs=0.06)


def test_average_precision_at_each_threshold_by_hand() -> None:
    truth = [line(0), line(5)]
    predicted = [(line(0.3), 0.9), (line(5.8), 0.8), (line(40), 0.95)]
    # By score: the far line (false), then 0.3 m off (true at every threshold), then 0.8 m off
    # (true from 1.0 m). At 0.5 m: recall 0, .5, .5 with precision 0, .5, .33: AP = .5 x .5.
    assert average_precision(predicted, truth, 0.5) == pytest.approx(0.25)
    # At 1.0 and 1.5 m: recall .5 at precision .5, then 1 at 2/3; monotone: 2/3 throughout.
    assert average_precision(predicted, truth, 1.0) == pytest.approx(2 / 3)
    assert average_precision(predicted, truth, 1.5) == pytest.approx(2 / 3)
    assert average_precision([], truth, 1.0) == 0.0
    assert math.isnan(average_precision(predicted, [], 1.0))


def test_a_true_line_matches_one_prediction_only() -> None:
    matches = match([(line(0.1), 0.9), (line(0.2), 0.8)], [line(0)], 0.5)
    assert matches == [(0.9, True), (0.8, False)]
    assert ap_from_matches(matches, 1) == pytest.approx(1.0)  # the first is right at recall 1


def test_vectorized_masks_come_back_as_the_lines_drawn() -> None:
    pose = Pose(0.0, 0.0, 0.0)
    divider = Element("d", "divider", np.array([[-20.0, 3.0], [25.0, 5.0]]))
    crossing = Element("c", "crossing", np.array([[5.0, -10.0], [5.0, -4.0], [9.0, -4.0],
                                                  [9.0, -10.0], [5.0, -10.0]]))
    probabilities = rasterize([divider, crossing], pose).astype(float) * 0.8
    lines = vectorize(probabilities)
    assert sorted(kind for kind, _, _ in lines) == ["crossing", "divider"]
    for kind, points, score in lines:
        truth = divider.points if kind == "divider" else crossing.points
        assert chamfer(points, truth) < 0.35, kind  # within a pixel of what was drawn
        assert score == pytest.approx(0.8)


def test_the_baseline_finds_clear_paint_and_misses_worn_paint() -> None:
    from baseline import predict
    from sensors import Conditions, drive, sense
    from world import make_town

    town = make_town(seed=0)
    scores = {}
    for name, conditions in (("clear", Conditions()), ("worn", Conditions(worn=True))):
        counts = IouCounts()
        for i, pose in enumerate(drive(town, seed=1, frames=30)[::3]):
            frame = sense(town, pose, conditions, np.random.default_rng(i), cars=1)
            counts.add(predict(frame) > 0.5, rasterize(town.elements, pose))
        scores[name] = counts.iou()
    assert scores["clear"]["divider"] > 0.5 and scores["clear"]["boundary"] > 0.5
    assert scores["worn"]["divider"] < 0.1  # under the paint threshold
    assert scores["worn"]["boundary"] == pytest.approx(scores["clear"]["boundary"], abs=0.05)
