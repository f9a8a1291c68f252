"""What each queue held of each flavor over a window, from the accounting store's allocations.

An allocation holds its GPUs and CPUs from admission to release (`stoker.control.accounting`),
so a queue's holding at any moment is the sum over the allocations it had then. The window is
cut into equal buckets and each bucket gets the time-weighted mean over it: an allocation
that covers half a bucket adds half its amount there. Pure functions: no I/O, no clock.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from stoker.control.store import AttemptRecord
from stoker.spec.resources import CPU, GPU

RESOURCES = (GPU, CPU)  # what an allocation record keeps
Key = tuple[str, str, str]  # queue, flavor, resource


def held_over_time(attempts: Iterable[AttemptRecord], start: float, end: float, buckets: int,
                   now: float) -> dict[Key, list[float]]:
    """Mean amount held per bucket of [``start``, ``end``), by queue, flavor and resource."""
    width = (end - start) / buckets
    held: dict[Key, list[float]] = defaultdict(lambda: [0.0] * buckets)
    for a in attempts:
        lo = max(a.admitted_at, start)
        hi = min(now if a.ended_at is None else a.ended_at, end)
        if hi <= lo:
            continue
        first, last = int((lo - start) // width), min(buckets - 1, int((hi - start) // width))
        for b in range(first, last + 1):
            edge = start + b * width
            share = (min(hi, edge + width) - max(lo, edge)) / width
            for resource, amount in zip(RESOURCES, (a.gpus, a.cpus), strict=True):
                if amount and share > 0:
                    held[(a.queue, a.flavor, resource)][b] += amount * share
    return dict(held)
