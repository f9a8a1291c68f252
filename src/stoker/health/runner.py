"""The check sets: ``prestart`` before a gang starts on a node, ``periodic`` on idle nodes (the
full set), ``light`` on busy ones (device state only, nothing that competes with the job)."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from stoker.health import collective, probes
from stoker.health.faults import faults_for
from stoker.health.result import CheckResult, CheckSet, HealthReport
from stoker.spec.health import HealthConfig


def run_checks(node: str, check_set: CheckSet, config: HealthConfig, ckpt_path: Path,
               gang_ranks: int = 1, gpus: int | None = None, cpus: float | None = None,
               faults_text: str | None = None) -> HealthReport:
    """Run one set on this machine as node ``node``; ``gang_ranks`` processes for the
    all-reduce (0: none, the caller probes the gang's link itself)."""
    start = time.perf_counter()
    faults = faults_for(node, faults_text)
    use_gpu = torch.cuda.is_available()
    device = torch.device("cuda", 0) if use_gpu else torch.device("cpu")
    results: list[CheckResult] = [probes.device_state(config, faults, gpus, cpus)]
    if check_set != "light":
        results += [probes.matmul(config, faults, device),
                    probes.disk_free(config, faults, ckpt_path),
                    probes.disk_write(config, ckpt_path)]
    if check_set != "light" and gang_ranks:
        results.append(collective.allreduce(config, [faults] * gang_ranks, use_gpu))
    return HealthReport(node, check_set, tuple(results), time.perf_counter() - start)
