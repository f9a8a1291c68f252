"""Counted model FLOPs of the reference transformer (PaLM, appendix B).

Training FLOPs per token = 6 * N + 12 * L * H * Q * T, where N counts the weights that take part
in matmuls, L the layers, H the query heads, Q the head dimension and T the sequence length.
6N is forward (2N) plus backward (4N); the second term is the attention score and value matmuls,
counted over the full T x T square as PaLM does (a causal kernel skips about half of it).
"""

from __future__ import annotations

from stoker.spec.train import ModelShape


def block_matmul_params(shape: ModelShape) -> int:
    """Weights of one block's linear layers: q, k, v, o projections and the SwiGLU w1, w2, w3."""
    q_and_o = 2 * shape.dim * shape.n_heads * shape.head_dim
    k_and_v = 2 * shape.dim * shape.n_kv_heads * shape.head_dim
    return q_and_o + k_and_v + 3 * shape.dim * shape.ffn_hidden


def matmul_params(shape: ModelShape) -> int:
    """N: every linear layer's weights, the output projection included even when tied.

    Not counted: the embedding lookup (no matmul) and RMSNorm weights (elementwise).
    """
    return shape.n_layers * block_matmul_params(shape) + shape.dim * shape.vocab_size


def total_params(shape: ModelShape) -> int:
    """Every trainable parameter, a tied output projection counted once."""
    norms = (2 * shape.n_layers + 1) * shape.dim
    embedding = shape.vocab_size * shape.dim
    output = 0 if shape.tie_embeddings else shape.vocab_size * shape.dim
    return shape.n_layers * block_matmul_params(shape) + norms + embedding + output


def attention_flops_per_token(shape: ModelShape, seq_len: int) -> int:
    """Training FLOPs of the attention matmuls (QK^T and AV, forward + backward) per token."""
    return 12 * shape.n_layers * shape.n_heads * shape.head_dim * seq_len


def flops_per_token(shape: ModelShape, seq_len: int) -> float:
    """Training (forward + backward) FLOPs per token: 6N + 12 * L * H * Q * T."""
    return float(6 * matmul_params(shape) + attention_flops_per_token(shape, seq_len))
