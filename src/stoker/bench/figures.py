"""What a benchmark script reports to `stoker bench`: named figures, each with its samples.

A script calls `figure(...)` for every number it wants kept. Run by hand it costs nothing (the
call returns at once); run by `stoker bench`, which names a file in ``STOKER_BENCH_FIGURES``,
each call appends one JSON line there. Standard library only: benchmarks import it before torch.

A script may also declare ``BENCH_QUICK = ["--flag", "value", ...]`` at module level: the
arguments `stoker bench --quick` runs it with (read with `ast`, never by importing the script).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Literal

ENV = "STOKER_BENCH_FIGURES"
Better = Literal["lower", "higher"]


def figure(name: str, samples: float | Sequence[float], unit: str, better: Better) -> None:
    """Report one figure: every measured sample (repeats), its unit, and which way is better.

    Prefer ratios against a baseline measured in the same run (unit ``"x"``): these machines are
    shared and noisy, and a ratio carries over between runs where an absolute time does not.
    """
    path = os.environ.get(ENV)
    if not path:
        return
    values = [float(samples)] if isinstance(samples, int | float) else [float(s) for s in samples]
    if not values or not all(math.isfinite(v) for v in values):
        raise ValueError(f"figure {name!r}: samples must be finite numbers, got {values}")
    if better not in ("lower", "higher"):
        raise ValueError(f"figure {name!r}: better must be 'lower' or 'higher', got {better!r}")
    line = {"name": name, "unit": unit, "better": better, "samples": values}
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps(line) + "\n")
