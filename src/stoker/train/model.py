"""A Llama-style decoder-only transformer that reads in one sitting.

RMSNorm, rotary position embeddings (RoPE), a SwiGLU MLP and grouped-query attention through
``F.scaled_dot_product_attention``. Sizes come from ``stoker.spec.train.PRESETS``.

The model knows nothing of parallelism: activation checkpointing, ``torch.compile``, DDP and
FSDP2 are applied from outside by ``stoker.train.parallelize``. It can be built on the meta
device; ``init_weights()`` then fills every parameter after ``to_empty``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from stoker.spec.train import ModelShape
from stoker.train.norm import RMSNorm

INIT_STD = 0.02


ROPE_CACHE_SIZE = 16
_rope_cache: dict[tuple[int, int, float, torch.device], torch.Tensor] = {}

# Grouped-query attention inside SDPA (no repeated KV heads in memory) arrived in torch 2.5.
SDPA_GQA = torch.torch_version.TorchVersion(torch.__version__) >= "2.5"


def rope_table(head_dim: int, seq_len: int, theta: float, device: torch.device) -> torch.Tensor:
    """cos and sin of every (position, frequency) pair: [seq_len, head_dim // 2, 2], fp32.

    Memoised per (head_dim, seq_len, theta, device) in a small module-level cache rather than a
    buffer: nothing to materialise after ``to_empty``, nothing in the state dict, and one table
    serves every model (or pipeline stage) in the process.
    """
    key = (head_dim, seq_len, theta, device)
    table = _rope_cache.get(key)
    if table is not None:
        return table
    # A constant: built outside autograd and inference mode, so it serves any later forward.
    with torch.inference_mode(False), torch.no_grad():
        inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim)
        angles = torch.outer(torch.arange(seq_len, device=device).float(), inv_freq)
        table = torch.stack((angles.cos(), angles.sin()), dim=-1)
    # Keep only real tensors built eagerly (not the fake ones of a trace or compilation).
    if type(table) is torch.Tensor and not torch.compiler.is_compiling():
        if len(_rope_cache) >= ROPE_CACHE_SIZE:
            del _rope_cache[next(iter(_rope_cache))]
        _rope_cache[key] = table
    return table


def apply_rope(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive pairs of x [B, T, heads, head_dim] by the angles of rope [T, hd/2, 2].

    In fp32. Eagerly, each pair (x0, x1) is the complex number x0 + i x1 and the rotation one
    complex multiply (one kernel). Inductor generates no code for complex numbers, so a compiled
    block spells the rotation out in real arithmetic, which it fuses into one kernel instead.
    """
    pairs = x.float().unflatten(-1, (-1, 2))
    if torch.compiler.is_compiling():
        x0, x1 = pairs.unbind(-1)
        cos, sin = rope[:, None, :, 0], rope[:, None, :, 1]
        rotated = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
    else:
        rotated = torch.view_as_real(torch.view_as_complex(pairs)
                                     * torch.view_as_complex(rope)[:, None, :])
    return rotated.flatten(-2).type_as(x)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     mask: torch.Tensor | None = None) -> torch.Tensor:
    """Attention of q [B, heads, T, hd] over k, v [B, kv_heads, S, hd]: causal (S = T), or
    under ``mask`` [T, S] (boolean, additive, or a ``torch.nn.attention.bias``). Each kv head
    serves n_heads // n_kv_heads query heads (grouped-query attention)."""
    causal = mask is None
    if k.shape[1] == q.shape[1]:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
    if SDPA_GQA:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                              enable_gqa=True)
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)


class Attention(nn.Module):
    def __init__(self, shape: ModelShape) -> None:
        super().__init__()
        self.n_heads = shape.n_heads
        self.n_kv_heads = shape.n_kv_heads
        self.head_dim = shape.head_dim
        self.wq = nn.Linear(shape.dim, shape.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(shape.dim, shape.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(shape.dim, shape.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(shape.n_heads * self.head_dim, shape.dim, bias=False)
        # (q, k, v) [B, heads, T, hd] -> [B, heads, T, hd]; context parallelism swaps it
        self.attend: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] = \
            causal_attention

    def forward(self, x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim)
        q, k = apply_rope(q, rope), apply_rope(k, rope)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, heads, T, hd]
        y = self.attend(q, k, v)
        return self.wo(y.transpose(1, 2).reshape(B, T, -1))

    def init_weights(self, out_std: float) -> None:
        for linear in (self.wq, self.wk, self.wv):
            nn.init.normal_(linear.weight, std=INIT_STD)
        nn.init.normal_(self.wo.weight, std=out_std)


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))

    def init_weights(self, out_std: float) -> None:
        nn.init.normal_(self.w1.weight, std=INIT_STD)
        nn.init.normal_(self.w3.weight, std=INIT_STD)
        nn.init.normal_(self.w2.weight, std=out_std)


class TransformerBlock(nn.Module):
    def __init__(self, shape: ModelShape) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(shape.dim, eps=shape.norm_eps)
        self.attention = Attention(shape)
        self.ffn_norm = RMSNorm(shape.dim, eps=shape.norm_eps)
        self.feed_forward = FeedForward(shape.dim, shape.ffn_hidden)

    def forward(self, x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), rope)
        return x + self.feed_forward(self.ffn_norm(x))

    def init_weights(self, out_std: float) -> None:
        self.attention_norm.reset_parameters()
        self.attention.init_weights(out_std)
        self.ffn_norm.reset_parameters()
        self.feed_forward.init_weights(out_std)


class Transformer(nn.Module):
    """tokens [B, T] -> logits [B, T, vocab_size] (in the compute dtype; upcast for the loss).

    ``layers`` is keyed by layer index, so a pipeline stage can drop the layers it does not run
    (and set ``tok_embeddings`` or ``norm`` and ``output`` to None) while every parameter keeps
    its name: checkpoints do not depend on the split. A stage without embeddings takes the
    previous stage's hidden states [B, T, dim]; one without an output returns its own.
    """

    def __init__(self, shape: ModelShape) -> None:
        super().__init__()
        self.shape = shape
        self.tok_embeddings: nn.Embedding | None = nn.Embedding(shape.vocab_size, shape.dim)
        self.layers = nn.ModuleDict({str(i): TransformerBlock(shape)
                                     for i in range(shape.n_layers)})
        self.norm: RMSNorm | None = RMSNorm(shape.dim, eps=shape.norm_eps)
        self.output: nn.Linear | None = nn.Linear(shape.dim, shape.vocab_size, bias=False)
        self.tie_weights()

    def tie_weights(self) -> None:
        """Share the embedding with the output projection when the shape says so.

        ``to_empty`` gives every module its own new tensor, so call this again after it.
        """
        if self.shape.tie_embeddings and self.output is not None \
                and self.tok_embeddings is not None:
            self.output.weight = self.tok_embeddings.weight

    @torch.no_grad()
    def init_weights(self) -> None:
        """Fill every parameter, drawing from the current torch RNG.

        Residual output projections (wo, w2) get a std scaled down by sqrt(2 * n_layers), as in
        GPT-2, so the residual stream does not grow with depth.
        """
        if self.tok_embeddings is not None:
            nn.init.normal_(self.tok_embeddings.weight, std=INIT_STD)
        out_std = INIT_STD / math.sqrt(2 * self.shape.n_layers)
        for layer in self.layers.values():
            layer.init_weights(out_std)
        if self.norm is not None:
            self.norm.reset_parameters()
        if self.output is not None and not self.shape.tie_embeddings:
            nn.init.normal_(self.output.weight, std=INIT_STD)

    def forward(self, tokens: torch.Tensor, rope: torch.Tensor | None = None) -> torch.Tensor:
        """``rope``: the rotary table rows of the tokens' positions [T, hd/2, 2] (default:
        positions 0 to T-1; a rank holding part of each sequence passes its own)."""
        if rope is None:
            rope = rope_table(self.shape.head_dim, tokens.shape[1], self.shape.rope_theta,
                              tokens.device)
        h = self.tok_embeddings(tokens) if self.tok_embeddings is not None else tokens
        for layer in self.layers.values():
            h = layer(h, rope)
        if self.norm is not None:
            h = self.norm(h)
        return self.output(h) if self.output is not None else h
