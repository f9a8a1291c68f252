"""How much of a slow disk the loader's prefetch thread hides from the step loop.

    .venv/bin/python benchmarks/data_prefetch.py [--read-ms 15] [--compute-ms 25] [--steps 40]
                                                 [--repeats 3]

A `TokenLoader` over a small byte-level dataset (prepared in a temp directory) whose every
micro-batch costs an extra ``--read-ms`` of sleep (a slow disk), read by a loop that "computes"
for ``--compute-ms`` (a sleep) between batches. The time each ``next()`` blocks the loop is
measured with ``prefetch=0`` (the baseline: the batch is made when asked for) and with the
default ``prefetch=2``, alternating, ``--repeats`` times. The figure is the median wait per
batch and the ratio prefetch / baseline. With compute longer than the read, the prefetch thread
should hide nearly all of it (this was a test's threshold: median wait < 5 ms).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stoker.bench.figures import figure
from stoker.train import data as data_mod
from stoker.train.data import TokenLoader
from stoker.train.shards import prepare

SEQ, GLOBAL, MICRO = 64, 8, 2
BENCH_QUICK = ["--steps", "20", "--repeats", "2"]


def make_dataset(root: Path) -> Path:
    words = ("def return self import class lambda yield x y 0 42 ( ) : # " * 8).split()
    text = "\n".join(" ".join(words[(i + j) % len(words)] for j in range(40))
                     for i in range(4000))
    corpus = root / "corpus.txt"
    corpus.write_text(text)
    out = root / "shards"
    prepare([corpus], out, progress=False)
    return out


def slow_disk(read_s: float) -> Callable[..., Any]:
    real = data_mod._make_batch

    def make(*args: Any) -> Any:
        time.sleep(read_s)
        return real(*args)

    return make


def waits(shards: Path, prefetch: int, steps: int, compute_s: float) -> list[float]:
    """Seconds each ``next()`` blocked the loop (the first batch, made cold, left out)."""
    out = []
    with TokenLoader(shards, "train", SEQ, GLOBAL, MICRO, prefetch=prefetch) as loader:
        it = iter(loader)
        next(it)
        for _ in range(steps):
            time.sleep(compute_s)
            t0 = time.perf_counter()
            next(it)
            out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--read-ms", type=float, default=15.0)
    p.add_argument("--compute-ms", type=float, default=25.0)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="prefetch-bench-") as tmp:
        shards = make_dataset(Path(tmp))
        data_mod._make_batch = slow_disk(args.read_ms / 1e3)  # type: ignore[assignment]
        base: list[float] = []
        ahead: list[float] = []
        ratios: list[float] = []
        for r in range(args.repeats):
            base_r = waits(shards, 0, args.steps, args.compute_ms / 1e3)
            ahead_r = waits(shards, 2, args.steps, args.compute_ms / 1e3)
            base += base_r
            ahead += ahead_r
            ratios.append(statistics.median(ahead_r) / statistics.median(base_r))
            print(f"repeat {r}: median wait {statistics.median(base) * 1e3:.2f} ms without "
                  f"prefetch, {statistics.median(ahead) * 1e3:.3f} ms with", flush=True)
    result = {"read_ms": args.read_ms, "compute_ms": args.compute_ms,
              "batches_per_arm": len(base),
              "baseline_prefetch0_wait_ms_median": statistics.median(base) * 1e3,
              "prefetch2_wait_ms_median": statistics.median(ahead) * 1e3,
              "prefetch2_wait_ms_p90": statistics.quantiles(ahead, n=10)[-1] * 1e3,
              "ratio": statistics.median(ahead) / statistics.median(base)}
    print(json.dumps(result, indent=1))
    figure("prefetch / no prefetch", ratios, "x", "lower")
    figure("prefetch wait", [w * 1e3 for w in ahead], "ms", "lower")
    figure("no prefetch wait", [w * 1e3 for w in base], "ms", "lower")


if __name__ == "__main__":
    main()
