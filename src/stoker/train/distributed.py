"""Process group and device for one rank, from the env that torchrun / elastic sets.

Without those variables the process is a world of one. A parallel strategy (ddp, fsdp) still
gets a one-rank process group then, so the same wrapping code runs everywhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from stoker.spec.errors import ConfigError
from stoker.spec.train import ParallelConfig, TrainSection
from stoker.train.host_alloc import keep_freed_memory


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    device: torch.device
    backend: str | None  # None: no process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_local_main(self) -> bool:
        return self.local_rank == 0


def resolve_device(choice: str, local_rank: int) -> torch.device:
    """``train.device``: auto = CUDA when present; each rank takes GPU ``LOCAL_RANK``."""
    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(None, "train.device", "'cuda' was asked for but CUDA is not available")
    if local_rank >= torch.cuda.device_count():
        raise ConfigError(None, "train.device", f"local rank {local_rank} has no GPU "
                          f"({torch.cuda.device_count()} visible)")
    return torch.device("cuda", local_rank)


def resolve_backend(choice: str, device: torch.device) -> str:
    if choice == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if choice == "nccl" and device.type != "cuda":
        raise ConfigError(None, "parallel.backend", "nccl needs CUDA devices; use gloo on CPU")
    return choice


def init_distributed(parallel: ParallelConfig, train: TrainSection) -> DistInfo:
    """Set the device (on CPU: glibc's thresholds, `host_alloc`) and join the process group
    described by RANK/WORLD_SIZE/... if any."""
    env = os.environ
    rank = int(env.get("RANK", 0))
    local_rank = int(env.get("LOCAL_RANK", 0))
    world_size = int(env.get("WORLD_SIZE", 1))
    local_world_size = int(env.get("LOCAL_WORLD_SIZE", world_size))
    device = resolve_device(train.device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        keep_freed_memory()
    backend = None
    if world_size > 1 or parallel.strategy != "none":
        backend = resolve_backend(parallel.backend, device)
        if not dist.is_initialized():
            _init_process_group(backend, rank, world_size, train.hang_timeout_s)
    return DistInfo(rank, local_rank, world_size, local_world_size, device, backend)


def _init_process_group(backend: str, rank: int, world_size: int, timeout_s: float) -> None:
    timeout = timedelta(seconds=timeout_s)
    if "MASTER_ADDR" in os.environ:
        dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timeout)
    else:  # a lone process (a script, a benchmark): an in-memory store is all it needs
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1,
                                timeout=timeout)


def destroy_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
