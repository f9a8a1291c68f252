"""Context parallelism's cut of the sequence (the trajectories under cp are in
test_train_layouts.py, resumes across layouts in test_train_layout_resume.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from stoker.spec.train import ModelShape, ParallelConfig
from stoker.train.context_parallel import ContextParallel, GatheredAttention, positions_of
from stoker.train.launch import free_port
from stoker.train.model import causal_attention
from stoker.train.parallel_dims import ParallelDims
from stoker.train.parallelize import build_model
from stoker.train.trainer import token_loss

SHAPE = ModelShape(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=64)
SEQ_LEN = 16


@pytest.mark.parametrize(("seq_len", "cp"), [(32, 2), (64, 4), (24, 3), (8, 1)])
def test_the_ranks_hold_every_position_once_with_equal_causal_work(seq_len: int, cp: int) -> None:
    held = [positions_of(seq_len, cp, r) for r in range(cp)]
    assert sorted(p for mine in held for p in mine) == list(range(seq_len))
    assert all(len(mine) == seq_len // cp for mine in held)
    # Under the causal mask a query at position p attends to p + 1 keys.
    work = {sum(p + 1 for p in mine) for mine in held}
    assert len(work) == 1


def test_rank_r_holds_chunks_r_and_its_mirror() -> None:
    assert positions_of(16, 2, 0) == [0, 1, 2, 3, 12, 13, 14, 15]
    assert positions_of(16, 2, 1) == [4, 5, 6, 7, 8, 9, 10, 11]


@pytest.mark.parametrize("end", [16, 48, 64])
def test_a_chunk_attends_as_its_rows_of_full_causal_attention(end: int) -> None:
    """Queries at positions [end - n, end) over the keys of [0, end) under the chunk's mask:
    the same rows as causal attention over the whole prefix (grouped-query heads too)."""
    n = 16
    attend = GatheredAttention(None, (0, 3), n, torch.arange(4 * n),  # type: ignore[arg-type]
                               torch.float32)
    gen = torch.Generator().manual_seed(0)
    queries = torch.randn(2, 4, end, 32, generator=gen)
    k, v = (torch.randn(2, 2, end, 32, generator=gen) for _ in range(2))
    q = queries[:, :, end - n:]
    full = causal_attention(queries, k, v)[:, :, end - n:]
    torch.testing.assert_close(causal_attention(q, k, v, attend.mask(end, q)), full)
    assert attend.mask(end, q) is attend.mask(end, q)  # made once, shared by every call


def batches() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randint(0, SHAPE.vocab_size, (2, SEQ_LEN + 1), generator=gen)
            for _ in range(2)]


def compiled_cp_rank(rank: int, port: int, out_dir: str) -> None:
    """One rank of cp=2 with compiled blocks: each batch's loss over the whole group, and the
    gradient of its first block's norm weight after both."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    torch._dynamo.config.error_on_recompile = True  # the masks are made before tracing
    try:
        cpu = torch.device("cpu")
        parallel = ParallelConfig(strategy="fsdp", cp=2, compile=True)
        dims = ParallelDims.build(parallel.layout(2), cpu)
        model = build_model(SHAPE, parallel, cpu, 3, 2, dims=dims, compile_backend="aot_eager")
        cp = ContextParallel.apply([model], dims, SEQ_LEN, SHAPE, cpu)
        losses = []
        for data in batches():
            loss = token_loss(model(cp.shard(data[:, :-1])), cp.shard(data[:, 1:]))
            loss.backward()
            losses.append(loss.detach())
        mean = torch.stack(losses)
        dist.all_reduce(mean)
        # FSDP's reduce-scatter averages over dp_shard x cp: the mean of the two ranks' losses
        grad = model.layers["0"].attention_norm.weight.grad.full_tensor()
        torch.save({"losses": mean / 2, "grad": grad}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_compiled_blocks_under_cp_follow_one_eager_rank(tmp_path: Path) -> None:
    """cp=2 with each block compiled (the gather, the masks and the two chunks in one graph,
    no recompile): the losses and gradients of one uncompiled rank over whole sequences."""
    mp.spawn(compiled_cp_rank, args=(free_port(), str(tmp_path)), nprocs=2)
    model = build_model(SHAPE, ParallelConfig(strategy="none"), torch.device("cpu"), 3, 1)
    losses = []
    for data in batches():
        loss = token_loss(model(data[:, :-1]), data[:, 1:])
        loss.backward()
        losses.append(loss.detach())
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        torch.testing.assert_close(got["losses"], torch.stack(losses))
        torch.testing.assert_close(got["grad"], model.layers["0"].attention_norm.weight.grad)
