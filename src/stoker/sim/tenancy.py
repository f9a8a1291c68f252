"""Map trace jobs to queues (tenants): by a user or VC column, or by hashing the job id.

A column value that names a queue goes to that queue; any other value is hashed (CRC-32, stable
across runs and machines) onto the queue list, so one user always lands in one queue.
"""

from __future__ import annotations

import re
import zlib
from collections import Counter
from typing import Literal

from stoker.sim.trace import TraceJob
from stoker.spec.errors import ConfigError

TenantBy = Literal["auto", "vc", "user", "id"]


def resolve_by(jobs: list[TraceJob], by: str) -> Literal["vc", "user", "id"]:
    """'auto' picks the VC column when the trace has one, else user, else the job id."""
    if by == "auto":
        if any(j.vc for j in jobs):
            return "vc"
        return "user" if any(j.user for j in jobs) else "id"
    if by not in ("vc", "user", "id"):
        raise ConfigError("--tenant-by", None, f"unknown rule {by!r} (known: auto, vc, user, id)")
    if by != "id" and not any(getattr(j, by) for j in jobs):
        raise ConfigError("--tenant-by", by, "the trace has no values in this column")
    return by  # type: ignore[return-value]


def key(job: TraceJob, by: str) -> str:
    return str(getattr(job, by))


def assign(jobs: list[TraceJob], queues: list[str], by: str) -> list[str]:
    """The queue of each job, in order."""
    known = set(queues)
    out = []
    for job in jobs:
        value = key(job, by)
        out.append(value if value in known else queues[zlib.crc32(value.encode()) % len(queues)])
    return out


def default_queues(jobs: list[TraceJob], by: str, max_tenants: int) -> list[str]:
    """Queues for a cluster with no cluster.toml: the column's values when there are at most
    `max_tenants` of them (busiest first), else `max_tenants` hashed buckets t0, t1, ..."""
    counts = Counter(key(j, by) for j in jobs) if by != "id" else Counter()
    if counts and len(counts) <= max_tenants:
        names = [v for v, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
        if all(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", n) for n in names):
            return names
    return [f"t{i}" for i in range(max_tenants)]
