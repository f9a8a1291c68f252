"""The non-learned baseline the BEV model must beat: thresholds and morphology on a frame.

Paint is where the lidar intensity is above ``PAINT``; gaps of a pixel are closed. A paint
component that spreads in two directions (its second principal spread over a third of its
first: a zebra's outline) is a crossing, any other a divider. A road boundary is a curb: a
height step between ``CURB`` and ``CAR_FLOOR`` metres, without the lone pixels noise makes.
Worn paint falls under the intensity threshold: the baseline misses it, as thresholding a
faded line does.
"""

from __future__ import annotations

import numpy as np
from metrics import components
from world import CLASSES

PAINT = 0.6
CURB, CAR_FLOOR = 0.08, 0.5


def shift(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    out = np.zeros_like(mask)
    h, w = mask.shape
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        mask[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def dilate(mask: np.ndarray) -> np.ndarray:
    return np.logical_or.reduce([shift(mask, dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)])


def erode(mask: np.ndarray) -> np.ndarray:
    return np.logical_and.reduce([shift(mask, dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)])


def predict(frame: dict[str, np.ndarray]) -> np.ndarray:
    """[3, H, W] probabilities (0 or 1) for divider, crossing, boundary."""
    paint = frame["intensity"] > PAINT
    paint = erode(dilate(paint)) | paint  # close one-pixel gaps, keep thin lines
    out = np.zeros((len(CLASSES), *paint.shape))
    for pixels in components(paint):
        k = CLASSES.index("crossing" if _spread(pixels) > 1 / 3 else "divider")
        out[k, pixels[:, 0], pixels[:, 1]] = 1.0
    curb = (frame["height"] > CURB) & (frame["height"] < CAR_FLOOR)
    out[CLASSES.index("boundary")] = curb & (neighbours(curb) >= 1)  # lone pixels are noise
    return out


def neighbours(mask: np.ndarray) -> np.ndarray:
    """How many of each pixel's 8 neighbours are set."""
    return sum(shift(mask, dy, dx).astype(int) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
               if (dy, dx) != (0, 0))


def _spread(pixels: np.ndarray) -> float:
    if len(pixels) < 3:
        return 0.0
    s = np.linalg.svd(pixels - pixels.mean(axis=0), compute_uv=False)
    return float(s[1] / s[0]) if s[0] > 0 else 0.0
