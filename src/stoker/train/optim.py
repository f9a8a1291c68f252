"""AdamW and the learning-rate schedules: linear warmup, then cosine, WSD or constant."""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor
from torch.optim.lr_scheduler import LambdaLR

from stoker.spec.train import OptimConfig


def build_optimizer(model: nn.Module, cfg: OptimConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (norm gains and biases are left alone).

    The fused kernel is used on CUDA unless ``optim.fused = "off"``; ``"on"`` forces it on CPU too.
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    fused = cfg.fused == "on" or (cfg.fused == "auto" and device.type == "cuda")
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
        fused=fused, foreach=None if fused else True,
    )


def lr_factor(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """The multiplier of ``optim.lr`` used by optimizer step ``step`` (0-based)."""
    warmup = min(cfg.warmup_steps, total_steps)
    if step < warmup:
        return (step + 1) / warmup
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "cosine":
        progress = (step - warmup) / max(1, total_steps - warmup - 1)
        cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * cosine
    # WSD: stable at the peak, then a linear decay over the last decay_fraction of training.
    decay_steps = max(1, round(cfg.decay_fraction * (total_steps - warmup)))
    decay_start = total_steps - decay_steps
    if step < decay_start:
        return 1.0
    progress = (step - decay_start + 1) / decay_steps
    return 1.0 - (1.0 - cfg.min_lr_ratio) * min(1.0, progress)


def shifted_lr_factor(step: int, cfg: OptimConfig, total_steps: int, start: int) -> float:
    """`lr_factor` of a schedule that began at step ``start`` (``--restart-schedule``) and
    ends at ``total_steps``."""
    return lr_factor(step - start, cfg, max(1, total_steps - start))


def schedule_fn(cfg: OptimConfig, total_steps: int, start: int = 0) -> functools.partial[float]:
    # A partial, not a lambda: LambdaLR then saves only its (empty) __dict__, and it pickles.
    if start == 0:
        return functools.partial(lr_factor, cfg=cfg, total_steps=total_steps)
    return functools.partial(shifted_lr_factor, cfg=cfg, total_steps=total_steps, start=start)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int
) -> LambdaLR:
    return LambdaLR(optimizer, schedule_fn(cfg, total_steps))


def clip_grad_norm_(params: Iterable[torch.Tensor], max_norm: float,
                    pp_group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Clip gradients to ``max_norm`` (0 = only measure) and return the global norm.

    With FSDP2 or tp the gradients are DTensor shards: their norm is a partial DTensor, reduced
    across ranks by ``full_tensor()`` before clipping. Under pipeline parallelism each rank
    holds only its stages' gradients: the squared norms are summed over ``pp_group``.
    """
    params = [p for p in params if p.grad is not None]
    grads = [p.grad for p in params if p.grad is not None]
    total = nn.utils.get_total_norm(grads, foreach=True)
    if isinstance(total, DTensor):
        total = total.full_tensor()
    if pp_group is not None:
        total = total ** 2
        dist.all_reduce(total, group=pp_group)
        total = total.sqrt()
    if max_norm > 0:
        nn.utils.clip_grads_with_norm_(params, max_norm, total, foreach=True)
    return total
