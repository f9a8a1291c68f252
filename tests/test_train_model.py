"""The reference transformer and build_model: causality, init, GQA, AC, compile, DDP, FSDP2."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import DTensor

from stoker.observe.flops import total_params
from stoker.ports import free_port
from stoker.spec.train import PRESETS, ModelShape, ParallelConfig
from stoker.train.model import Attention, Transformer, apply_rope, rope_table
from stoker.train.parallelize import (
    apply_compile,
    autocast_context,
    build_model,
    resolve_dtype,
)

TINY = PRESETS["tiny"]
CPU = torch.device("cpu")


def tokens(batch: int = 2, seq_len: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, TINY.vocab_size, (batch, seq_len),
                         generator=torch.Generator().manual_seed(seed))


def build(shape: ModelShape = TINY, seed: int = 0, **parallel: object) -> nn.Module:
    config = ParallelConfig(strategy="none", **parallel)  # type: ignore[arg-type]
    return build_model(shape, config, CPU, seed, world_size=1)


def loss_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    logits = model(x[:, :-1])
    return F.cross_entropy(logits.flatten(0, 1).float(), x[:, 1:].flatten())


def full_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameter values by name, gathered from shards, without any wrapper prefix."""
    state = {}
    for name, value in model.state_dict().items():
        if isinstance(value, DTensor):
            value = value.full_tensor()
        state[name.removeprefix("module.")] = value.detach().clone()
    return state


def test_forward_shape_and_dtype() -> None:
    logits = build()(tokens())
    assert logits.shape == (2, 16, TINY.vocab_size)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


def test_causal_future_tokens_do_not_change_past_logits() -> None:
    model = build()
    x = tokens()
    changed = x.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % TINY.vocab_size
    before, after = model(x), model(changed)
    torch.testing.assert_close(before[:, :10], after[:, :10], rtol=0, atol=0)
    assert not torch.allclose(before[:, 10:], after[:, 10:])


def test_rope_scores_depend_only_on_relative_position() -> None:
    q, k = torch.randn(2, 1, 1, 1, 32, generator=torch.Generator().manual_seed(0)).unbind(0)
    rope = rope_table(32, 64, 10000.0, CPU)

    def score(m: int, n: int) -> torch.Tensor:  # query at position m, key at position n
        return (apply_rope(q, rope[m:m + 1]) * apply_rope(k, rope[n:n + 1])).sum()

    torch.testing.assert_close(score(0, 0), (q * k).sum())  # position 0: no rotation
    torch.testing.assert_close(score(9, 4), score(50, 45))
    torch.testing.assert_close(score(3, 3), score(60, 60))
    assert not torch.allclose(score(9, 4), score(9, 5))


def reference_attention(attn: Attention, x: torch.Tensor, theta: float) -> torch.Tensor:
    """The attention as first written: a fresh fp32 cos/sin table, pairs rotated with
    stack/unbind, KV heads repeated, and attention spelled out with an explicit causal mask."""
    B, T, _ = x.shape
    hd = attn.head_dim
    inv_freq = 1.0 / theta ** (torch.arange(0, hd, 2).float() / hd)
    angles = torch.outer(torch.arange(T).float(), inv_freq)
    cos, sin = angles.cos()[:, None, :], angles.sin()[:, None, :]

    def rotate(t: torch.Tensor) -> torch.Tensor:
        t0, t1 = t.float().unflatten(-1, (-1, 2)).unbind(-1)
        return torch.stack((t0 * cos - t1 * sin, t0 * sin + t1 * cos), dim=-1).flatten(-2)

    q = rotate(attn.wq(x).view(B, T, attn.n_heads, hd)).transpose(1, 2)
    k = rotate(attn.wk(x).view(B, T, attn.n_kv_heads, hd)).transpose(1, 2)
    v = attn.wv(x).view(B, T, attn.n_kv_heads, hd).transpose(1, 2)
    group = attn.n_heads // attn.n_kv_heads
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = q @ k.transpose(-1, -2) / hd ** 0.5
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    y = scores.softmax(-1) @ v
    return attn.wo(y.transpose(1, 2).reshape(B, T, -1))


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1], ids=["mha", "gqa", "mqa"])
def test_attention_equals_reference_across_sequence_lengths(n_kv_heads: int) -> None:
    shape = TINY.model_copy(update={"n_kv_heads": n_kv_heads, "rope_theta": 500.0})
    torch.manual_seed(0)
    attn = Attention(shape)
    attn.init_weights(0.02)
    for seq_len in (16, 9, 33, 16):  # each length change must pick (or build) its own table
        x = torch.randn(3, seq_len, shape.dim, requires_grad=True)
        rope = rope_table(shape.head_dim, seq_len, shape.rope_theta, CPU)
        assert rope.shape == (seq_len, shape.head_dim // 2, 2)
        out = attn(x, rope)
        expected = reference_attention(attn, x, shape.rope_theta)
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
        grad_out = torch.randn_like(out)
        (grad,) = torch.autograd.grad(out, x, grad_out)
        (expected_grad,) = torch.autograd.grad(expected, x, grad_out)
        torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-5)


def test_rope_table_is_cached_and_serves_autograd_after_inference_mode() -> None:
    with torch.inference_mode():  # the first use of this length builds the table here
        first = rope_table(32, 77, 1234.0, CPU)
    assert not first.is_inference()
    assert rope_table(32, 77, 1234.0, CPU) is first
    assert rope_table(32, 78, 1234.0, CPU).shape == (78, 16, 2)
    assert rope_table(32, 77, 4321.0, CPU) is not first
    q = torch.randn(1, 77, 2, 32, requires_grad=True)
    apply_rope(q, first).sum().backward()  # a table saved for backward must not be an
    assert q.grad is not None              # inference tensor


def test_model_forward_after_sequence_length_change() -> None:
    model = build()
    long, short = tokens(seq_len=24), tokens(seq_len=24)[:, :10]
    torch.testing.assert_close(model(short), model(long)[:, :10], rtol=1e-5, atol=1e-5)
    assert model.state_dict().keys() == Transformer(TINY).state_dict().keys()
    assert not any(model.buffers())


def test_init_is_deterministic_and_keeps_caller_rng() -> None:
    rng_before = torch.get_rng_state()
    a, b, c = full_state(build(seed=0)), full_state(build(seed=0)), full_state(build(seed=1))
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["layers.0.attention.wq.weight"], c["layers.0.attention.wq.weight"])


def test_meta_materialise_equals_eager_construction() -> None:
    eager = Transformer(TINY)  # its constructor draws from the RNG too: seed after it
    torch.manual_seed(3)
    eager.init_weights()
    built = build(seed=3)
    assert all(p.device == CPU for p in built.parameters())
    expected = full_state(eager)
    assert all(torch.equal(expected[k], v) for k, v in full_state(built).items())


def test_init_scales_residual_projections() -> None:
    model = build(PRESETS["tiny"].model_copy(update={"dim": 512, "ffn_hidden": 1024}))
    block = model.layers["0"]
    assert block.attention.wq.weight.std().item() == pytest.approx(0.02, rel=0.05)
    residual_std = 0.02 / (2 * TINY.n_layers) ** 0.5
    assert block.attention.wo.weight.std().item() == pytest.approx(residual_std, rel=0.05)
    assert block.feed_forward.w2.weight.std().item() == pytest.approx(residual_std, rel=0.05)
    assert torch.equal(block.attention_norm.weight, torch.ones(512))


def test_tied_embeddings_survive_materialisation() -> None:
    shape = TINY.model_copy(update={"tie_embeddings": True})
    model = build(shape)
    assert model.output.weight is model.tok_embeddings.weight
    assert sum(p.numel() for p in model.parameters()) == total_params(shape)
    assert sum(p.numel() for p in build().parameters()) == total_params(TINY)


def test_grouped_query_attention_equals_mha_with_repeated_kv_heads() -> None:
    gqa_shape = TINY.model_copy(update={"n_kv_heads": 2})
    gqa = build(gqa_shape)
    assert gqa.layers["0"].attention.wk.weight.shape == (2 * TINY.head_dim, TINY.dim)
    mha = build(TINY)
    state = gqa.state_dict()
    for name, weight in state.items():
        if name.endswith(("wk.weight", "wv.weight")):  # [kv_heads * hd, dim] -> [heads * hd, dim]
            heads = weight.view(2, TINY.head_dim, TINY.dim).repeat_interleave(2, dim=0)
            state[name] = heads.reshape(TINY.n_heads * TINY.head_dim, TINY.dim)
    mha.load_state_dict(state)
    x = tokens()
    torch.testing.assert_close(gqa(x), mha(x))


@pytest.mark.parametrize(("mode", "wrapped"), [("full", [0, 1, 2, 3]), ("every_nth", [1, 3])])
def test_activation_checkpointing_gives_same_loss_and_grads(mode: str, wrapped: list[int]) -> None:
    x = tokens(seq_len=17)
    plain = build()
    checkpointed = build(activation_checkpoint=mode, activation_checkpoint_every=2)
    assert [i for i, b in enumerate(checkpointed.layers.values())
            if type(b).__name__ == "CheckpointWrapper"] == wrapped
    loss_plain, loss_ckpt = loss_of(plain, x), loss_of(checkpointed, x)
    loss_plain.backward()
    loss_ckpt.backward()
    torch.testing.assert_close(loss_ckpt, loss_plain, rtol=0, atol=0)
    for p, q in zip(plain.parameters(), checkpointed.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=0, atol=0)
    assert full_state(checkpointed).keys() == full_state(plain).keys()


def test_compiled_blocks_match_eager() -> None:
    # aot_eager traces each block in full (fullgraph: no graph break allowed) without the C++
    # code generation of inductor, which takes half a minute on a small CPU.
    shape = TINY.model_copy(update={"n_layers": 2})
    eager, compiled = build(shape), build(shape, activation_checkpoint="full")
    apply_compile(compiled, backend="aot_eager")
    x = tokens(seq_len=17)
    loss_eager, loss_compiled = loss_of(eager, x), loss_of(compiled, x)
    torch.testing.assert_close(loss_compiled, loss_eager)
    loss_compiled.backward()
    assert all(p.grad is not None for p in compiled.parameters())


def test_resolve_dtype_and_autocast() -> None:
    cuda = torch.device("cuda")
    assert resolve_dtype(ParallelConfig(), CPU) == torch.float32
    assert resolve_dtype(ParallelConfig(), cuda) == torch.bfloat16
    assert resolve_dtype(ParallelConfig(mixed_precision="bf16"), CPU) == torch.bfloat16
    assert resolve_dtype(ParallelConfig(mixed_precision="fp32"), cuda) == torch.float32
    bf16_ddp = ParallelConfig(strategy="ddp", mixed_precision="bf16")
    with autocast_context(bf16_ddp, CPU):
        assert build()(tokens()).dtype == torch.bfloat16
    with autocast_context(ParallelConfig(strategy="fsdp", mixed_precision="bf16"), CPU):
        assert build()(tokens()).dtype == torch.float32  # FSDP2's policy casts instead


def test_build_model_rejects_missing_process_group() -> None:
    with pytest.raises(ValueError, match="one rank"):
        build_model(TINY, ParallelConfig(strategy="none"), CPU, 0, world_size=2)
    with pytest.raises(RuntimeError, match="initialised"):
        build_model(TINY, ParallelConfig(strategy="fsdp"), CPU, 0, world_size=2)


# --- two gloo ranks ---------------------------------------------------------------------------

GQA_TIED = TINY.model_copy(update={"n_kv_heads": 2, "tie_embeddings": True})
STRATEGIES = {  # name -> ParallelConfig fields
    "fsdp": {"strategy": "fsdp"},
    "fsdp_no_reshard_ac": {"strategy": "fsdp", "reshard_after_forward": False,
                           "activation_checkpoint": "every_nth"},
    "ddp": {"strategy": "ddp", "activation_checkpoint": "full"},
    "fsdp_compiled": {"strategy": "fsdp", "compile": True, "activation_checkpoint": "full"},
}


def two_rank_worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    try:
        results = {}
        for name, fields in STRATEGIES.items():
            model = build_model(GQA_TIED, ParallelConfig(**fields), CPU, seed=7, world_size=2,
                                compile_backend="aot_eager")  # inductor: slow on a small CPU
            if fields["strategy"] == "fsdp":  # each rank holds half of every weight's rows
                wq = model.layers["0"].attention.wq.weight
                assert wq.to_local().shape == (TINY.dim // 2, TINY.dim)
            loss = loss_of(model, tokens(4, 17)).detach()
            results[name] = {"state": full_state(model), "loss": loss}
        bf16 = build_model(GQA_TIED, ParallelConfig(strategy="fsdp", mixed_precision="bf16"), CPU,
                           seed=7, world_size=2)
        results["bf16_logits_dtype"] = bf16(tokens()).dtype
        results["bf16_param_dtype"] = bf16.layers["0"].attention.wq.weight.dtype
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_and_fsdp_on_two_ranks_start_from_single_rank_weights(tmp_path: Path) -> None:
    mp.spawn(two_rank_worker, args=(free_port(), str(tmp_path)), nprocs=2)
    reference = build(GQA_TIED, seed=7)
    expected, expected_loss = full_state(reference), loss_of(reference, tokens(4, 17))
    for rank in range(2):
        results = torch.load(tmp_path / f"rank{rank}.pt")
        for name in STRATEGIES:
            state = results[name]["state"]
            assert state.keys() == expected.keys(), name
            for key, value in state.items():
                assert torch.equal(value, expected[key]), f"{name} rank {rank}: {key}"
            torch.testing.assert_close(results[name]["loss"], expected_loss)
        assert results["bf16_logits_dtype"] == torch.bfloat16
        assert results["bf16_param_dtype"] == torch.float32  # sharded master weights stay fp32
