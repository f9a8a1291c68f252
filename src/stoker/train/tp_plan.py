"""Tensor + sequence parallelism for the reference transformer, applied from outside the model.

The plan (Megatron-style, as in torchtitan): in each block the q/k/v and SwiGLU w1/w3 linears
are column-wise (each tp rank holds a slice of the heads / hidden units), wo and w2 row-wise;
between blocks the residual stream is split along the sequence (sequence parallelism), so the
RMSNorms run on 1/tp of the tokens. The embedding is row-wise (vocab-sharded) and returns the
sequence shard; the output projection is column-wise and its logits stay vocab-sharded for the
loss, which then runs under ``loss_parallel`` (no rank gathers the full [B, T, vocab]).

The attention modules' head counts are set to each rank's share, so the model's own ``view``
calls see local shapes; ``model.py`` knows nothing of this.

A pipeline stage (a model without embeddings, or without norm and output) passes the whole
sequence to the next: the model builds its rotary table from its input's length, so a stage
must see every position. Its first block takes the full hidden states and keeps its sequence
shard, and the last block of a stage before the last gathers the sequence again.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed._functional_collectives import AsyncCollectiveTensor
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    PrepareModuleOutput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)

from stoker.train.model import Transformer, TransformerBlock


def apply_tp(model: Transformer, tp_mesh: DeviceMesh, loss_parallel: bool = True) -> None:
    """Shard ``model``'s weights over ``tp_mesh`` in place (call before FSDP)."""
    if model.shape.tie_embeddings:
        raise ValueError("tensor parallelism with tied embeddings is not supported yet")
    tp = tp_mesh.size()
    edges = {
        "tok_embeddings": RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1)),
        "norm": SequenceParallel(),
        "output": ColwiseParallel(input_layouts=Shard(1),
                                  output_layouts=Shard(-1) if loss_parallel else Replicate(),
                                  use_local_output=not loss_parallel),
    }
    parallelize_module(model, tp_mesh, {name: style for name, style in edges.items()
                                        if getattr(model, name) is not None})
    if model.tok_embeddings is not None:
        model.tok_embeddings.register_forward_hook(wait_for_collective)
    blocks = list(model.layers.values())
    if model.tok_embeddings is None:  # a later pipeline stage: the full sequence comes in
        parallelize_module(blocks[0], tp_mesh, PrepareModuleInput(
            input_layouts=(Replicate(), None), desired_input_layouts=(Shard(1), None),
            use_local_output=True))
    if model.output is None:  # an earlier pipeline stage: the full sequence goes out
        parallelize_module(blocks[-1], tp_mesh, PrepareModuleOutput(
            output_layouts=Shard(1), desired_output_layouts=Replicate()))
    for block in model.layers.values():
        assert isinstance(block, TransformerBlock)
        attention = block.attention
        attention.n_heads //= tp
        attention.n_kv_heads //= tp
        parallelize_module(block, tp_mesh, {
            "attention_norm": SequenceParallel(),
            "attention": PrepareModuleInput(input_layouts=(Shard(1), None),
                                            desired_input_layouts=(Replicate(), None)),
            "attention.wq": ColwiseParallel(),
            "attention.wk": ColwiseParallel(),
            "attention.wv": ColwiseParallel(),
            "attention.wo": RowwiseParallel(output_layouts=Shard(1)),
            "ffn_norm": SequenceParallel(),
            "feed_forward": PrepareModuleInput(input_layouts=(Shard(1),),
                                               desired_input_layouts=(Replicate(),)),
            "feed_forward.w1": ColwiseParallel(),
            "feed_forward.w2": RowwiseParallel(output_layouts=Shard(1)),
            "feed_forward.w3": ColwiseParallel(),
        })


def wait_for_collective(module: nn.Module, args: object, output: torch.Tensor) -> torch.Tensor:
    """The embedding's sequence shard as a plain tensor: its reduce-scatter returns a tensor
    that waits lazily, and a compiled block given one as input hands DTensor's backward a
    plain gradient where it expects a DTensor (torch 2.13). The first block needs it at once,
    so waiting here costs only a copy of 1/tp of the hidden states; ``clone`` is the op that
    waits and stays on the autograd graph (``wait()`` leaves it)."""
    return output.clone() if isinstance(output, AsyncCollectiveTensor) else output
