"""Context parallelism: the ranks of a cp group each hold a part of every sequence.

    cp = ContextParallel.apply(model, dims, seq_len, rope_theta, device)
    inputs, targets = cp.shard(inputs), cp.shard(targets)   # this rank's tokens
    logits = model(inputs, rope=cp.rope)                   # at their own positions

As in Llama 3's training, keys and values are all-gathered over the cp group and each rank
attends its own queries over the whole sequence; the all-gather's backward sums every rank's
key and value gradients back to their owner. PyTorch's ring attention
(``torch.distributed.tensor.experimental.context_parallel``) shards only the CUDA SDPA kernels;
the all-gather runs wherever functional collectives and SDPA with a mask run (gloo on CPU,
NCCL on CUDA). It holds the whole sequence's keys and values per layer on each rank (2 × kv_dim
per token, a fraction of the activations for grouped-query attention), where ring attention
holds two chunks at a time.

The sequence is cut into 2 × cp chunks and rank r holds chunks r and 2 cp - 1 - r, so that under
the causal mask every rank has the same attention work (torch's "head-tail" load balancing).
The model is unchanged but for two seams it offers: the rotary table of the tokens' positions
(``Transformer.forward(tokens, rope=...)``) and each attention's ``attend`` function.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from torch import nn

from stoker.train.model import Attention, Transformer, causal_attention, rope_table
from stoker.train.parallel_dims import ParallelDims

# The differentiable all-gather (its backward a reduce-scatter), by its newer name where it exists
_all_gather = getattr(funcol, "all_gather_single_autograd", None) \
    or funcol.all_gather_tensor_autograd


def positions_of(seq_len: int, cp: int, cp_rank: int) -> list[int]:
    """The sequence positions rank ``cp_rank`` of ``cp`` holds: chunks ``cp_rank`` and
    ``2 cp - 1 - cp_rank`` of ``2 cp`` equal chunks."""
    chunk = seq_len // (2 * cp)
    first, second = cp_rank * chunk, (2 * cp - 1 - cp_rank) * chunk
    return [*range(first, first + chunk), *range(second, second + chunk)]


class GatheredAttention:
    """``attend`` for a rank of a cp group: its queries over every rank's keys and values,
    where the causal mask of their true positions allows."""

    def __init__(self, group: dist.ProcessGroup, mask: torch.Tensor) -> None:
        self.group = group
        self.mask = mask  # [local positions, all positions in gather order]

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        keys = _all_gather(k, 2, self.group)
        values = _all_gather(v, 2, self.group)
        return causal_attention(q, keys, values, self.mask)


@dataclass(frozen=True)
class ContextParallel:
    positions: torch.Tensor  # this rank's sequence positions, on the device
    rope: torch.Tensor  # their rows of the rotary table

    @classmethod
    def apply(cls, model: nn.Module, dims: ParallelDims, seq_len: int, rope_theta: float,
              device: torch.device) -> ContextParallel:
        """Give every attention of ``model`` (wrapped or not) the gathered attention of this
        rank's cp group; what the trainer needs to cut its batches."""
        group = dims.cp_group
        assert group is not None, "context parallelism needs a cp group"
        cp = dims.layout.cp
        mine = positions_of(seq_len, cp, dims.cp_rank)
        everyone = [p for r in range(cp) for p in positions_of(seq_len, cp, r)]
        q_pos = torch.tensor(mine, device=device)
        mask = q_pos[:, None] >= torch.tensor(everyone, device=device)[None, :]
        attend = GatheredAttention(group, mask)
        for module in model.modules():
            if isinstance(module, Attention):
                module.attend = attend
        head_dim = next(m for m in model.modules() if isinstance(m, Transformer)).shape.head_dim
        table = rope_table(head_dim, seq_len, rope_theta, device)
        return cls(q_pos, table[q_pos])

    def shard(self, t: torch.Tensor) -> torch.Tensor:
        """This rank's part of ``t`` [B, seq_len, ...]: [B, seq_len / cp, ...]."""
        return t.index_select(1, self.positions)
