"""A simulated annotator: labels with human errors, paid from a budget, audited on a sample.

    labels, report = annotate(truth, budget=50.0, rng=rng)                 # from scratch
    labels, report = annotate(truth, budget=50.0, rng=rng, prelabels=p)   # model-assisted

Labelling a frame from scratch costs 1.0; correcting a model's pre-label costs ``assisted``
(0.4). From scratch the annotator draws each class mask with, per frame, a ``jitter`` chance
of the whole class shifted one pixel and a ``miss`` chance of one line (a connected piece)
left out. From a pre-label the annotator fixes each wrong pixel of the model's with chance
1 − ``lapse`` and leaves the rest as the model had it. An audit compares a share ``audit`` of
the labelled frames with the truth; when their mean IoU is under ``accept`` the whole batch
is rejected and labelled again from scratch (paid again), once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from baseline import shift
from metrics import components


@dataclass(frozen=True)
class Annotator:
    jitter: float = 0.2
    miss: float = 0.1
    lapse: float = 0.3
    assisted: float = 0.4
    audit: float = 0.2
    accept: float = 0.6


def draw(truth: np.ndarray, who: Annotator, rng: np.random.Generator) -> np.ndarray:
    """One frame's masks [C, H, W] as the annotator draws them from scratch."""
    out = truth.copy()
    for k in range(len(out)):
        if rng.random() < who.jitter:
            dy, dx = [(0, 1), (0, -1), (1, 0), (-1, 0)][int(rng.integers(4))]
            out[k] = shift(out[k], dy, dx)
        pieces = components(out[k]) if rng.random() < who.miss else []
        if pieces:
            gone = pieces[int(rng.integers(len(pieces)))]
            out[k][gone[:, 0], gone[:, 1]] = False
    return out


def correct(prelabel: np.ndarray, truth: np.ndarray, who: Annotator,
            rng: np.random.Generator) -> np.ndarray:
    wrong = prelabel != truth
    fixed = wrong & (rng.random(truth.shape) >= who.lapse)
    return np.where(fixed, truth, prelabel)


def annotate(truth: np.ndarray, budget: float, rng: np.random.Generator,
             who: Annotator = Annotator(), prelabels: np.ndarray | None = None
             ) -> tuple[np.ndarray, dict[str, float]]:
    """Labels [n, C, H, W] for the first n frames of ``truth`` [N, C, H, W] the budget pays
    for, and the report (frames, spent, audit IoU, rejected)."""
    cost = who.assisted if prelabels is not None else 1.0
    n = min(len(truth), int(budget // cost))
    labels = np.stack([correct(prelabels[i], truth[i], who, rng) if prelabels is not None
                       else draw(truth[i], who, rng) for i in range(n)]) if n else truth[:0]
    spent = n * cost
    audit_iou = audit(labels, truth[:n], who, rng)
    rejected = audit_iou < who.accept
    if rejected:  # labelled again from scratch, as far as the rest of the budget goes
        redo = min(n, int(max(0.0, budget - spent) // 1.0))
        labels = np.stack([draw(truth[i], who, rng) for i in range(redo)]) if redo else \
            truth[:0]
        spent += redo
    return labels, {"frames": float(len(labels)), "spent": spent, "audit_iou": audit_iou,
                    "rejected": float(rejected)}


def audit(labels: np.ndarray, truth: np.ndarray, who: Annotator,
          rng: np.random.Generator) -> float:
    """Mean per-frame IoU of a sample of the labels (all classes' pixels together)."""
    if len(labels) == 0:
        return float("nan")
    size = max(1, round(who.audit * len(labels)))
    picked = rng.choice(len(labels), size=size, replace=False)
    ious = []
    for i in picked:
        union = (labels[i] | truth[i]).sum()
        ious.append((labels[i] & truth[i]).sum() / union if union else 1.0)
    return float(np.mean(ious))
