"""How well a predicted map matches the true one: raster IoU (as HDMapNet) and, after turning
predicted masks into polylines, Chamfer-distance average precision (as MapTR).

    counts = IouCounts(); counts.add(pred_masks, true_masks); counts.iou()   # per class
    lines = vectorize(probabilities)            # [(class, points [N, 2] m ego, score), ...]
    ap = average_precision(predicted, truth, threshold=1.0)   # one class, one threshold

Chamfer distance between two polylines: each resampled to ``SAMPLES`` points evenly spaced
along its length; the mean distance from each point of one to the nearest point of the other,
averaged over both directions. A prediction matches a true line of its class when their
distance is below the threshold (0.5, 1.0, 1.5 m); predictions are taken in order of score,
each matching the nearest true line not matched yet. AP is the area under the precision-recall
curve with precision made monotone (all points, as VOC since 2010); mAP the mean over classes
and thresholds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from sensors import RES, pixel_centres
from world import CLASSES

SAMPLES = 50
THRESHOLDS = (0.5, 1.0, 1.5)


# --- rasters ---------------------------------------------------------------------------------

@dataclass
class IouCounts:
    """Intersections and unions per class, summed over frames (a dataset's IoU, not a mean of
    frames' IoUs)."""

    intersection: np.ndarray = field(default_factory=lambda: np.zeros(len(CLASSES)))
    union: np.ndarray = field(default_factory=lambda: np.zeros(len(CLASSES)))

    def add(self, pred: np.ndarray, truth: np.ndarray) -> None:
        """Masks [C, H, W] bool."""
        self.intersection += (pred & truth).sum(axis=(1, 2))
        self.union += (pred | truth).sum(axis=(1, 2))

    def iou(self) -> dict[str, float]:
        return {c: float(i / u) if u else math.nan
                for c, i, u in zip(CLASSES, self.intersection, self.union, strict=True)}


# --- polylines -------------------------------------------------------------------------------

def resample(points: np.ndarray, n: int = SAMPLES) -> np.ndarray:
    """``n`` points evenly spaced along a polyline's length (a point: n copies of it)."""
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    along = np.concatenate([[0.0], np.cumsum(seg)])
    if along[-1] == 0:
        return np.repeat(points[:1], n, axis=0)
    at = np.linspace(0, along[-1], n)
    return np.stack([np.interp(at, along, points[:, k]) for k in range(2)], axis=1)


def chamfer(a: np.ndarray, b: np.ndarray) -> float:
    """Symmetric Chamfer distance of two polylines, resampled (see the module's doc)."""
    pa, pb = resample(a), resample(b)
    d = np.linalg.norm(pa[:, None, :] - pb[None, :, :], axis=-1)
    return float((d.min(axis=1).mean() + d.min(axis=0).mean()) / 2)


def average_precision(predicted: Sequence[tuple[np.ndarray, float]],
                      truth: Sequence[np.ndarray], threshold: float) -> float:
    """AP of one class's (polyline, score) predictions against its true polylines, over a set
    of frames already flattened (each frame's lines compared within the frame: pass frames
    through `match` and `ap_from_matches` to keep them apart)."""
    return ap_from_matches(match(predicted, truth, threshold), len(truth))


def match(predicted: Sequence[tuple[np.ndarray, float]], truth: Sequence[np.ndarray],
          threshold: float) -> list[tuple[float, bool]]:
    """(score, true positive) per prediction, greedily in order of score."""
    taken: set[int] = set()
    out: list[tuple[float, bool]] = []
    for line, score in sorted(predicted, key=lambda p: -p[1]):
        best, best_d = -1, threshold
        for i, t in enumerate(truth):
            if i not in taken and (d := chamfer(line, t)) < best_d:
                best, best_d = i, d
        if best >= 0:
            taken.add(best)
        out.append((score, best >= 0))
    return out


def ap_from_matches(matches: Sequence[tuple[float, bool]], n_truth: int) -> float:
    """Area under the precision-recall curve of matches pooled over frames."""
    if n_truth == 0:
        return math.nan
    ordered = sorted(matches, key=lambda m: -m[0])
    tp = np.cumsum([m[1] for m in ordered], dtype=float)
    fp = np.cumsum([not m[1] for m in ordered], dtype=float)
    if len(ordered) == 0:
        return 0.0
    recall = np.concatenate([[0.0], tp / n_truth])
    precision = np.concatenate([[1.0], tp / np.maximum(tp + fp, 1)])
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # monotone, from the right
    return float(np.sum((recall[1:] - recall[:-1]) * precision[1:]))


# --- masks to polylines ------------------------------------------------------------------------

def components(mask: np.ndarray) -> list[np.ndarray]:
    """The 8-connected components of a [H, W] bool mask, each as its pixels' (row, col)."""
    seen = np.zeros_like(mask, dtype=bool)
    out = []
    for r, c in zip(*np.nonzero(mask), strict=True):
        if seen[r, c]:
            continue
        seen[r, c] = True
        todo, pixels = [(r, c)], []
        while todo:
            y, x = todo.pop()
            pixels.append((y, x))
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    v, u = y + dy, x + dx
                    if (0 <= v < mask.shape[0] and 0 <= u < mask.shape[1] and mask[v, u]
                            and not seen[v, u]):
                        seen[v, u] = True
                        todo.append((v, u))
        out.append(np.array(pixels))
    return out


def vectorize(probabilities: np.ndarray, threshold: float = 0.5, min_pixels: int = 4,
              centres: np.ndarray | None = None) -> list[tuple[str, np.ndarray, float]]:
    """Polylines (in metres, in the frame of ``centres`` [H, W, 2], the pixels' centres:
    default the ego frame's) from per-class probabilities [C, H, W]: each component of the
    thresholded mask is ordered along its main axis (a crossing's outline, a ring, around its
    centre) and thinned to a point every metre; its score is its pixels' mean probability."""
    centres = pixel_centres() if centres is None else centres
    lines = []
    for k, kind in enumerate(CLASSES):
        for pixels in components(probabilities[k] >= threshold):
            if len(pixels) < min_pixels:
                continue
            pts = centres[pixels[:, 0], pixels[:, 1]]
            ordered = _ring(pts) if kind == "crossing" else _along(pts)
            score = float(probabilities[k][pixels[:, 0], pixels[:, 1]].mean())
            lines.append((kind, _thin(ordered, 1.0), score))
    return lines


def _along(pts: np.ndarray) -> np.ndarray:
    """Points ordered along their principal axis, neighbours within one axis step averaged."""
    centred = pts - pts.mean(axis=0)
    axis = np.linalg.svd(centred, full_matrices=False)[2][0]
    t = centred @ axis
    bins = np.round(t / RES).astype(int)
    return np.array([pts[bins == b].mean(axis=0) for b in np.unique(bins)])


def _ring(pts: np.ndarray) -> np.ndarray:
    centre = pts.mean(axis=0)
    order = np.argsort(np.arctan2(pts[:, 1] - centre[1], pts[:, 0] - centre[0]))
    ring = pts[order]
    return np.concatenate([ring, ring[:1]])


def _thin(points: np.ndarray, step: float) -> np.ndarray:
    kept = [points[0]]
    for p in points[1:]:
        if np.linalg.norm(p - kept[-1]) >= step:
            kept.append(p)
    if len(kept) == 1 or not np.array_equal(kept[-1], points[-1]):
        kept.append(points[-1])
    return np.array(kept)
