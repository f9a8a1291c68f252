"""The collective probe: an all-reduce among a gang's ranks, its bus bandwidth against the
expected one. One process per rank, gloo on CPU (127.0.0.1) or NCCL on GPUs."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from stoker.health.faults import Faults
from stoker.health.result import CheckResult
from stoker.ports import free_port
from stoker.spec.health import HealthConfig

CPU_BYTES = 16 << 20
GPU_BYTES = 256 << 20
ROUNDS = 5
TIMEOUT = timedelta(seconds=20)
ERROR_CHARS = 160
# What a rank sees when another rank of the collective died (gloo, NCCL).
PEER_LOST = ("Connection reset by peer", "Connection closed by peer", "Broken pipe",
             "Read error", "remote process exited", "NCCL communicator was aborted")


def allreduce(config: HealthConfig, faults: Sequence[Faults], use_gpu: bool = False
              ) -> CheckResult:
    """Bus bandwidth (GB/s) of the best of ROUNDS all-reduces, one process per entry of
    ``faults`` (the faults injected on that rank's node)."""
    start = time.perf_counter()
    limit = config.min_allreduce_gbps
    ranks = len(faults)
    failing = tuple(r for r, f in enumerate(faults) if f.has("fail_collective"))
    if ranks < 2:
        return CheckResult("allreduce", True, None, None, "GB/s", 0.0, "one rank: nothing to probe")
    result = mp.get_context("spawn").SimpleQueue()
    port = free_port()
    try:
        mp.start_processes(_rank, args=(ranks, port, use_gpu, failing, result), nprocs=ranks,
                           start_method="spawn")
    except Exception:  # a rank raised: the probe failed, with every rank's error
        errors = _errors(result)
        detail = "; ".join(f"rank {r}: {text}" for r, text in errors) or "a rank died"
        return CheckResult("allreduce", False, None, limit, "GB/s",
                           time.perf_counter() - start, f"{ranks} ranks: {detail}",
                           blamed_ranks=_blamed(errors))
    gbps = float(result.get()[1])
    return CheckResult("allreduce", gbps >= limit, gbps, limit, "GB/s",
                       time.perf_counter() - start, f"{ranks} ranks")


def _rank(rank: int, world: int, port: int, use_gpu: bool, failing: tuple[int, ...],
          result: mp.SimpleQueue) -> None:  # type: ignore[type-arg]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    backend = "nccl" if use_gpu else "gloo"
    device = torch.device("cuda", rank) if use_gpu else torch.device("cpu")
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=TIMEOUT)
    try:
        _measure(rank, world, device, use_gpu, rank in failing, result)
    except Exception as e:
        result.put((rank, f"{type(e).__name__}: {str(e).strip()[:ERROR_CHARS]}"))
        raise
    finally:
        dist.destroy_process_group()


def _measure(rank: int, world: int, device: torch.device, use_gpu: bool, fail: bool,
             result: mp.SimpleQueue) -> None:  # type: ignore[type-arg]
    if fail:
        raise RuntimeError("injected: the collective failed on this node's link")
    size = GPU_BYTES if use_gpu else CPU_BYTES
    tensor = torch.ones(size // 4, dtype=torch.float32, device=device)
    dist.all_reduce(tensor)  # warm-up: connection set-up
    best = float("inf")
    for _ in range(ROUNDS):
        if use_gpu:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        dist.all_reduce(tensor)
        if use_gpu:
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    if rank == 0:  # ring all-reduce moves 2(n-1)/n of the buffer per rank
        result.put((0, size * 2 * (world - 1) / world / best / 1e9))


def _errors(result: mp.SimpleQueue) -> list[tuple[int, str]]:  # type: ignore[type-arg]
    """The ranks' errors, by rank: the one that failed first is usually not rank 0."""
    errors = []
    while not result.empty():
        errors.append(result.get())
    return sorted(errors)


def _blamed(errors: list[tuple[int, str]]) -> tuple[int, ...]:
    """Ranks that failed on their own, not because a peer went away."""
    return tuple(r for r, text in errors if not any(m in text for m in PEER_LOST))
