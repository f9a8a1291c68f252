"""Scoring a predictor on frames: per-class IoU and Chamfer AP, overall and per condition.

    report = evaluate(predict, shards)   # predict(frame inputs dict) -> [C, H, W] probabilities

The truth for the vector metrics is the map itself, clipped to each frame's view
(`sensors.view_elements`), rebuilt from the frame's town seed and map version; the raster
truth is the frame's stored masks. A frame's predictions are matched only with its own truth;
the matches of all frames are pooled per class and threshold before the AP is taken.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

import numpy as np
from data import INPUTS, frame_inputs
from metrics import THRESHOLDS, IouCounts, ap_from_matches, match, vectorize
from sensors import Pose, view_elements
from world import CLASSES, Element, make_town, with_construction

Predict = Callable[[dict[str, np.ndarray]], np.ndarray]


@cache
def town_elements(seed: int, version: int) -> tuple[Element, ...]:
    town = make_town(seed)
    if version > 1:
        town = with_construction(town, seed=seed + 1000)
    return tuple(town.elements)


class Scores:
    """IoU counts and AP matches of one group of frames."""

    def __init__(self) -> None:
        self.iou = IouCounts()
        self.matches: dict[tuple[str, float], list[tuple[float, bool]]] = {
            (c, t): [] for c in CLASSES for t in THRESHOLDS}
        self.truths = dict.fromkeys(CLASSES, 0)
        self.frames = 0

    def add(self, probabilities: np.ndarray, masks: np.ndarray, truth: list[Element]) -> None:
        self.frames += 1
        self.iou.add(probabilities >= 0.5, masks)
        lines = vectorize(probabilities)
        for c in CLASSES:
            predicted = [(pts, score) for kind, pts, score in lines if kind == c]
            mine = [e.points for e in truth if e.kind == c]
            self.truths[c] += len(mine)
            for t in THRESHOLDS:
                self.matches[(c, t)] += match(predicted, mine, t)

    def report(self) -> dict[str, Any]:
        ap = {c: {str(t): ap_from_matches(self.matches[(c, t)], self.truths[c])
                  for t in THRESHOLDS} for c in CLASSES}
        values = [v for per in ap.values() for v in per.values() if not np.isnan(v)]
        return {"frames": self.frames, "iou": self.iou.iou(), "ap": ap,
                "mAP": float(np.mean(values)) if values else float("nan")}


def evaluate(predict: Predict, shards: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    overall, by_condition = Scores(), {}
    for shard in shards:
        elements = list(town_elements(int(shard["town"]), int(shard["version"])))
        for i in range(len(shard["inputs"])):
            probabilities = predict(frame_inputs(shard, i))
            pose = Pose(*map(float, shard["pose"][i]))
            truth = view_elements(elements, pose)
            condition = str(shard["condition"][i])
            for scores in (overall, by_condition.setdefault(condition, Scores())):
                scores.add(probabilities, shard["masks"][i], truth)
    return {"overall": overall.report(),
            "by_condition": {c: s.report() for c, s in sorted(by_condition.items())}}


def model_predictor(model: Any) -> Predict:
    """A trained `task.BevNet`'s class probabilities for a frame."""
    import torch

    model.eval()

    def predict(frame: dict[str, np.ndarray]) -> np.ndarray:
        x = torch.from_numpy(np.stack([frame[k] for k in INPUTS]))[None]
        with torch.no_grad():
            logits = model(x)[0, :len(CLASSES)]
        return torch.sigmoid(logits).numpy()

    return predict
