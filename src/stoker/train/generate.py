"""Sampling from the reference model with a KV cache, outside the training forward.

`generate` takes a batch of prompts of any lengths, left-pads them, runs the prompt through
the model once (the prefill) and then one token per step, each step attending to the keys and
values cached so far instead of recomputing them. The model's own modules and weights are used
(its norms, projections, feed-forwards and output); only the attention is spelled out again
here, with the cache, positions per sequence (a padded sequence's first real token is its
position 0, as it would be alone) and a mask that hides the padding. `Transformer.forward`
stays the training path, untouched.

Sampling per step: temperature 0 is greedy (argmax); otherwise the logits are divided by the
temperature and, with ``top_p < 1``, cut to the smallest set of most likely tokens whose
probability reaches ``top_p`` (nucleus sampling) before drawing. A sequence ends at its first
stop token (kept in its completion) or after ``max_new_tokens``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from stoker.train.model import Attention, Transformer, rope_table


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    stop_tokens: tuple[int, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, not {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, not {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], not {self.top_p}")


class KVCache:
    """Every layer's keys and values so far: [batch, kv_heads, max_len, head_dim] each."""

    def __init__(self, model: Transformer, batch: int, max_len: int) -> None:
        shape, p = model.shape, next(model.parameters())
        size = (batch, shape.n_kv_heads, max_len, shape.head_dim)
        self.keys = [torch.zeros(size, dtype=p.dtype, device=p.device) for _ in model.layers]
        self.values = [torch.zeros(size, dtype=p.dtype, device=p.device) for _ in model.layers]
        self.length = 0


def rotate(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """x [B, T, heads, hd] rotated by rope [B, T, hd/2, 2]: each sequence its own positions."""
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    turned = pairs * torch.view_as_complex(rope.contiguous())[:, :, None, :]
    return torch.view_as_real(turned).flatten(-2).type_as(x)


def attend(attn: Attention, x: torch.Tensor, rope: torch.Tensor, cache: KVCache, layer: int,
           mask: torch.Tensor) -> torch.Tensor:
    """The layer's attention for the new positions x [B, T, dim], adding their keys and values
    to the cache; ``mask`` [B, 1, T, length]: which cached positions each new one may see."""
    B, T, _ = x.shape
    q = rotate(attn.wq(x).view(B, T, attn.n_heads, attn.head_dim), rope)
    k = rotate(attn.wk(x).view(B, T, attn.n_kv_heads, attn.head_dim), rope)
    v = attn.wv(x).view(B, T, attn.n_kv_heads, attn.head_dim)
    at, end = cache.length, cache.length + T
    cache.keys[layer][:, :, at:end] = k.transpose(1, 2)
    cache.values[layer][:, :, at:end] = v.transpose(1, 2)
    keys, values = cache.keys[layer][:, :, :end], cache.values[layer][:, :, :end]
    group = attn.n_heads // attn.n_kv_heads
    if group > 1:
        keys = keys.repeat_interleave(group, dim=1)
        values = values.repeat_interleave(group, dim=1)
    y = F.scaled_dot_product_attention(q.transpose(1, 2), keys, values, attn_mask=mask)
    return attn.wo(y.transpose(1, 2).reshape(B, T, -1))


def forward_cached(model: Transformer, tokens: torch.Tensor, positions: torch.Tensor,
                   cache: KVCache, mask: torch.Tensor) -> torch.Tensor:
    """Logits [B, T, vocab] of the new tokens [B, T] at ``positions`` [B, T], attending to the
    cache and themselves."""
    shape = model.shape
    table = rope_table(shape.head_dim, int(positions.max()) + 1, shape.rope_theta,
                       tokens.device)
    rope = table[positions]
    assert model.tok_embeddings is not None and model.norm is not None \
        and model.output is not None, "a whole model, not a pipeline stage"
    h = model.tok_embeddings(tokens)
    for i, block in enumerate(model.layers.values()):
        h = h + attend(block.attention, block.attention_norm(h), rope, cache, i, mask)
        h = h + block.feed_forward(block.ffn_norm(h))
    cache.length += tokens.shape[1]
    return model.output(model.norm(h))


def pick(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator) -> torch.Tensor:
    """One token per row of logits [B, vocab]."""
    if sampling.temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / sampling.temperature, dim=-1)
    if sampling.top_p < 1:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of the likelier tokens
        sorted_probs[before >= sampling.top_p] = 0.0  # the nucleus keeps at least one
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.inference_mode()
def generate(model: Transformer, prompts: list[list[int]], sampling: Sampling) -> list[list[int]]:
    """Each prompt's completion (its new tokens, up to and including a stop token)."""
    if not prompts or any(not p for p in prompts):
        raise ValueError("every prompt needs at least one token")
    device = next(model.parameters()).device
    B, longest = len(prompts), max(map(len, prompts))
    pad = torch.tensor([longest - len(p) for p in prompts], device=device)
    tokens = torch.tensor([[0] * (longest - len(p)) + p for p in prompts], device=device)
    columns = torch.arange(longest, device=device)
    positions = (columns[None, :] - pad[:, None]).clamp(min=0)
    real = columns[None, :] >= pad[:, None]  # [B, longest]: not padding
    total = longest + sampling.max_new_tokens
    cache = KVCache(model, B, total)
    causal = torch.ones(longest, longest, dtype=torch.bool, device=device).tril()
    mask = causal[None, None] & real[:, None, None, :]
    mask |= torch.eye(longest, dtype=torch.bool, device=device)  # a pad row sees itself
    logits = forward_cached(model, tokens, positions, cache, mask)[:, -1]
    generator = torch.Generator(device=device).manual_seed(sampling.seed)
    stops = torch.tensor(sampling.stop_tokens, device=device, dtype=torch.long)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    out: list[torch.Tensor] = []
    seen = torch.cat([real, torch.ones(B, sampling.max_new_tokens, dtype=torch.bool,
                                       device=device)], dim=1)
    position = positions[:, -1]
    for _ in range(sampling.max_new_tokens):
        token = pick(logits, sampling, generator)
        out.append(token)
        done |= torch.isin(token, stops)
        if bool(done.all()) or len(out) == sampling.max_new_tokens:
            break
        position = position + 1
        step_mask = seen[:, None, None, :cache.length + 1]
        logits = forward_cached(model, token[:, None], position[:, None], cache, step_mask)[:, 0]
    return [_until_stop(row, sampling.stop_tokens) for row in torch.stack(out, 1).tolist()]


def _until_stop(tokens: list[int], stops: tuple[int, ...]) -> list[int]:
    for i, t in enumerate(tokens):
        if t in stops:
            return tokens[:i + 1]
    return tokens
