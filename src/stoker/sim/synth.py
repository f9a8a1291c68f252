"""Synthetic traces: Poisson arrivals at a chosen load, heavy-tailed durations and job sizes
shaped like published GPU-cluster traces (most jobs use one GPU, a few use many nodes)."""

from __future__ import annotations

import math

import numpy as np

from stoker.sim.trace import SkipReport, Trace, TraceJob, TraceNode

# GPUs per job and their probabilities.
SIZES = (1, 2, 4, 8, 16, 32, 64)
WEIGHTS = (0.55, 0.12, 0.12, 0.13, 0.05, 0.02, 0.01)


def nodes(count: int, gpus_per_node: int = 8, per_rack: int = 16,
          model: str = "A100") -> list[TraceNode]:
    return [TraceNode(f"node-{i}", gpus_per_node, model, labels=(("rack", f"r{i // per_rack}"),))
            for i in range(count)]


def generate(jobs: int, cluster: list[TraceNode], load: float = 0.9, seed: int = 0,
             users: int = 16, median_hours: float = 0.5, sigma: float = 1.5,
             max_hours: float = 48.0) -> Trace:
    """`jobs` jobs whose offered GPU-hours are `load` times what `cluster` offers over the
    arrival window. Durations are log-normal (median `median_hours`, shape `sigma`), between
    one minute and `max_hours`."""
    rng = np.random.default_rng(seed)
    per_node = max(n.gpus for n in cluster)
    capacity = sum(n.gpus for n in cluster)
    sizes = rng.choice(SIZES, size=jobs, p=WEIGHTS)
    sizes = np.minimum(sizes, capacity)
    durations = np.clip(rng.lognormal(math.log(median_hours * 3600), sigma, jobs), 60.0,
                        max_hours * 3600)
    work = float(np.sum(sizes * durations))
    rate = load * capacity * jobs / work  # arrivals per second
    arrivals = np.cumsum(rng.exponential(1 / rate, jobs))
    arrivals -= arrivals[0]
    user = rng.integers(0, users, jobs)
    out = []
    for i in range(jobs):
        gpus = int(sizes[i])
        ranks = max(1, gpus // per_node)
        if gpus % ranks:
            ranks = gpus
        out.append(TraceJob(id=f"job-{i}", arrival=float(arrivals[i]),
                            duration=float(round(durations[i])), ranks=ranks,
                            gpus_per_rank=gpus // ranks, user=f"u{user[i]}",
                            vc=f"team{user[i] % 4}"))
    report = SkipReport(rows=jobs)
    return Trace(f"synthetic({jobs} jobs, load {load}, seed {seed})", "synthetic", out, report,
                 list(cluster))
