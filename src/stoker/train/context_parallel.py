"""Context parallelism: the ranks of a cp group each hold a part of every sequence.

    cp = ContextParallel.apply([model], dims, seq_len, shape, device, dtype)
    inputs, targets = cp.shard(inputs), cp.shard(targets)   # this rank's tokens
    logits = model(inputs)                                 # at their own positions

As in Llama 3's training, keys and values are all-gathered over the cp group and each rank
attends its own queries over the positions up to theirs; the all-gather's backward sums every
rank's key and value gradients back to their owner. PyTorch's ring attention
(``torch.distributed.tensor.experimental.context_parallel``) shards only the CUDA SDPA kernels;
the all-gather runs wherever functional collectives and SDPA with a mask run (gloo on CPU,
NCCL on CUDA). It holds the whole sequence's keys and values per layer on each rank (2 × kv_dim
per token, a fraction of the activations for grouped-query attention), where ring attention
holds two chunks at a time.

The sequence is cut into 2 × cp chunks and rank r holds chunks r and 2 cp - 1 - r, so that under
the causal mask every rank has the same attention work (torch's "head-tail" load balancing).
The model is unchanged but for two seams it offers: the rotary table of the tokens' positions
(``Transformer.forward(tokens, rope=...)``, which a forward pre-hook fills in, so a pipeline
stage gets it too) and each attention's ``attend`` function.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from torch import nn
from torch.nn.attention.bias import causal_lower_right

from stoker.spec.train import ModelShape
from stoker.train.model import Attention, causal_attention, rope_table
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
    """``attend`` for a rank of a cp group: each of its two query chunks over the keys and
    values of every position up to its own end, gathered from the whole group.

    A chunk's queries see all earlier chunks' keys and their own under a causal mask aligned
    to the lower right, so no query attends past its position and no chunk computes scores
    over keys wholly after it. On CUDA that mask is `causal_lower_right`, which the flash and
    memory-efficient kernels apply without materialising it. Elsewhere SDPA takes a dense
    mask, and keeps for the backward the float copy it makes of a boolean one (a
    [chunk, end] matrix per call: every layer and micro-batch); so each chunk's additive mask
    is made once, in the compute dtype, and shared by every call.
    """

    def __init__(self, group: dist.ProcessGroup, chunks: tuple[int, int], chunk_len: int,
                 order: torch.Tensor, dtype: torch.dtype) -> None:
        self.group = group
        self.chunks = chunks  # this rank's chunk indices, in the order it holds them
        self.chunk_len = chunk_len
        self.order = order  # gathered index -> position order
        self.masks: dict[tuple[int, torch.dtype, str], torch.Tensor] = {}
        # Made before any call: a compiled block may read the masks but not make them (a
        # CausalBias made while tracing breaks the graph, and a new entry recompiles it)
        for chunk in chunks:
            end = (chunk + 1) * chunk_len
            self.masks[(end, dtype, order.device.type)] = self.make_mask(end, dtype, order.device)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        keys = _all_gather(k, 2, self.group).index_select(2, self.order)
        values = _all_gather(v, 2, self.group).index_select(2, self.order)
        n = self.chunk_len
        out = []
        for i, chunk in enumerate(self.chunks):
            end = (chunk + 1) * n
            out.append(causal_attention(q[:, :, i * n:(i + 1) * n], keys[:, :, :end],
                                        values[:, :, :end], self.mask(end, q)))
        return torch.cat(out, dim=2)

    def mask(self, end: int, q: torch.Tensor) -> torch.Tensor:
        """Queries at positions [end - chunk, end) over keys [0, end), causally."""
        key = (end, q.dtype, q.device.type)
        mask = self.masks.get(key)
        if mask is None:  # eager only: a dtype other than the one the masks were made for
            mask = self.masks[key] = self.make_mask(end, q.dtype, q.device)
        return mask

    def make_mask(self, end: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        n = self.chunk_len
        if device.type == "cuda":
            return causal_lower_right(n, end)
        hidden = torch.ones(n, end, dtype=torch.bool, device=device).triu(end - n + 1)
        return torch.zeros(n, end, dtype=dtype, device=device).masked_fill_(hidden, float("-inf"))


@dataclass(frozen=True)
class ContextParallel:
    positions: torch.Tensor  # this rank's sequence positions, on the device
    rope: torch.Tensor  # their rows of the rotary table

    @classmethod
    def apply(cls, models: Sequence[nn.Module], dims: ParallelDims, seq_len: int,
              shape: ModelShape, device: torch.device,
              dtype: torch.dtype = torch.float32) -> ContextParallel:
        """Give every attention in ``models`` (the modules the trainer calls: the model, or its
        pipeline stages; wrapped or not) the gathered attention of this rank's cp group, and
        each model the rotary rows of its positions; what the trainer needs to cut its
        batches. ``dtype``: the one attention computes in."""
        group = dims.cp_group
        assert group is not None, "context parallelism needs a cp group"
        cp = dims.layout.cp
        rank = dims.cp_rank
        gathered = [p for r in range(cp) for p in positions_of(seq_len, cp, r)]
        order = torch.tensor(gathered, device=device).argsort()
        attend = GatheredAttention(group, (rank, 2 * cp - 1 - rank), seq_len // (2 * cp), order,
                                   dtype)
        q_pos = torch.tensor(positions_of(seq_len, cp, rank), device=device)
        table = rope_table(shape.head_dim, seq_len, shape.rope_theta, device)
        context = cls(q_pos, table[q_pos])
        for model in models:
            for module in model.modules():
                if isinstance(module, Attention):
                    module.attend = attend
            model.register_forward_pre_hook(context.give_rope, with_kwargs=True)
        return context

    def give_rope(self, module: nn.Module, args: tuple[object, ...],
                  kwargs: dict[str, object]) -> tuple[tuple[object, ...], dict[str, object]]:
        return args, {"rope": self.rope, **kwargs}

    def shard(self, t: torch.Tensor) -> torch.Tensor:
        """This rank's part of ``t`` [B, seq_len, ...]: [B, seq_len / cp, ...]."""
        return t.index_select(1, self.positions)
