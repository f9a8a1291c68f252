"""Compiled blocks under context and tensor parallelism, and FSDP2 + TP (real processes, gloo):
the losses and gradients of one uncompiled rank over whole sequences, and each block compiled
once.

Traced with "aot_eager" (inductor's code generation is slow on a small CPU; dynamo and
AOTAutograd, where the layouts' collectives, DTensors and masks meet compile, are the same)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.parallel import loss_parallel

from stoker.ports import free_port
from stoker.spec.train import ModelShape, ParallelConfig
from stoker.train.context_parallel import ContextParallel
from stoker.train.parallel_dims import ParallelDims
from stoker.train.parallelize import build_model
from stoker.train.trainer import token_loss

SHAPE = ModelShape(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=64)
SEQ_LEN = 16
CPU = torch.device("cpu")


def batches() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randint(0, SHAPE.vocab_size, (2, SEQ_LEN + 1), generator=gen)
            for _ in range(2)]


def compiled_rank(rank: int, world: int, port: int, layout: dict[str, int], out_dir: str) -> None:
    """One rank with compiled blocks: each batch's loss averaged over the world (every rank
    holds a whole sequence's loss or one cp part of it, each part as often), and the gradient
    of the first block's norm weight after both batches."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    torch._dynamo.config.error_on_recompile = True
    try:
        parallel = ParallelConfig(strategy="fsdp", compile=True, **layout)
        dims = ParallelDims.build(parallel.layout(world), CPU)
        model = build_model(SHAPE, parallel, CPU, 3, world, dims=dims, compile_backend="aot_eager")
        cp = ContextParallel.apply([model], dims, SEQ_LEN, SHAPE, CPU) if dims.cp_enabled \
            else None
        losses = []
        for data in batches():
            inputs, targets = data[:, :-1], data[:, 1:]
            if cp is not None:
                inputs, targets = cp.shard(inputs), cp.shard(targets)
            with loss_parallel() if dims.tp_enabled else torch.enable_grad():
                loss = token_loss(model(inputs), targets)
                loss.backward()
            losses.append(loss.detach())
        mean = torch.stack(losses)
        dist.all_reduce(mean)
        grad = model.layers["0"].attention_norm.weight.grad
        if isinstance(grad, DTensor):
            grad = grad.full_tensor()
        torch.save({"losses": mean / world, "grad": grad}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize(("world", "layout"), [
    (2, {"cp": 2}),
    (2, {"tp": 2}),
    (4, {"cp": 2, "tp": 2}),
    (4, {"tp": 2, "dp_shard": 2}),  # every rank given the same batches
], ids=["cp2", "tp2", "cp2_tp2", "tp2_fsdp2"])
def test_compiled_blocks_follow_one_eager_rank(tmp_path: Path, world: int,
                                               layout: dict[str, int]) -> None:
    mp.spawn(compiled_rank, args=(world, free_port(), layout, str(tmp_path)), nprocs=world)
    model = build_model(SHAPE, ParallelConfig(strategy="none"), CPU, 3, 1)
    losses = []
    for data in batches():
        loss = token_loss(model(data[:, :-1]), data[:, 1:])
        loss.backward()
        losses.append(loss.detach())
    for rank in range(world):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        torch.testing.assert_close(got["losses"], torch.stack(losses))
        torch.testing.assert_close(got["grad"], model.layers["0"].attention_norm.weight.grad)
