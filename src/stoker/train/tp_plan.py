"""Tensor + sequence parallelism for the reference transformer, applied from outside the model.

The plan (Megatron-style, as in torchtitan): in each block the q/k/v and SwiGLU w1/w3 linears
are column-wise (each tp rank holds a slice of the heads / hidden units), wo and w2 row-wise;
between blocks the residual stream is split along the sequence (sequence parallelism), so the
RMSNorms run on 1/tp of the tokens. The embedding is row-wise (vocab-sharded) and returns the
sequence shard; the output projection is column-wise and its logits stay vocab-sharded for the
loss, which then runs under ``loss_parallel`` (no rank gathers the full [B, T, vocab]).

The attention modules' head counts are set to each rank's share, so the model's own ``view``
calls see local shapes; ``model.py`` knows nothing of this.
"""

from __future__ import annotations

from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
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
    parallelize_module(model, tp_mesh, {
        "tok_embeddings": RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1)),
        "norm": SequenceParallel(),
        "output": ColwiseParallel(input_layouts=Shard(1),
                                  output_layouts=Shard(-1) if loss_parallel else Replicate(),
                                  use_local_output=not loss_parallel),
    })
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


def is_tp_module(module: nn.Module) -> bool:
    """Whether ``apply_tp`` has sharded this model (its weights are DTensors)."""
    from torch.distributed.tensor import DTensor

    return isinstance(module.tok_embeddings.weight, DTensor)  # type: ignore[union-attr]
