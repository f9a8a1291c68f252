"""Which checkpoints to delete: keep the last K committed, plus every Mth step for good.

``checkpoint.keep_last = K`` keeps the K newest committed checkpoints.
``checkpoint.keep_every = M`` (0: off) keeps, for good, every checkpoint whose step is a
multiple of M. The newest committed checkpoint and any save in flight are never deleted, nor is
anything newer than the newest committed one (a save may still be writing it). Uncommitted
(torn) directories older than the newest committed checkpoint are garbage and go.
"""

from __future__ import annotations

from collections.abc import Iterable


def to_delete(committed: Iterable[int], uncommitted: Iterable[int], keep_last: int,
              keep_every: int, in_flight: Iterable[int] = ()) -> list[int]:
    """The steps whose directories may be removed, oldest first."""
    done = sorted(set(committed))
    if not done:
        return []
    latest = done[-1]
    keep = set(done[-max(keep_last, 1):]) | set(in_flight) | {latest}
    if keep_every > 0:
        keep |= {s for s in done if s % keep_every == 0}
    doomed = {s for s in done if s not in keep}
    doomed |= {s for s in uncommitted if s < latest and s not in keep}
    return sorted(doomed)
