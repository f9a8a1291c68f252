"""Build the reference model and apply parallelism to it from outside, in small separate steps.

    meta construct -> materialise on the device -> seeded init (full weights, every rank alike)
    [-> pipeline stages (pipeline.py): each step below then runs on each stage of this rank]
    -> tensor + sequence parallelism (tp_plan) -> activation checkpointing
    -> torch.compile per block -> DDP | FSDP2 (HSDP on a 2-D mesh) | nothing

Which of these run, and on which mesh, is `ParallelDims`'s to say.

Weights are initialised in full on every rank before sharding, so the initial model is the same
for any world size given the seed. The price is that the full fp32 model exists once on each
device before ``fully_shard`` keeps only its shard (32 GB for llama-8b). The code is the same for
CPU/gloo and CUDA/NCCL.
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
    CheckpointWrapper,
    checkpoint_wrapper,
)
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
    apply_activation_checkpointing as apply_activation_checkpointing_fn,
)
from torch.distributed.device_mesh import DeviceMesh
from torch.nn.parallel import DistributedDataParallel

from stoker.spec.train import ModelShape, ParallelConfig
from stoker.train.model import Transformer
from stoker.train.parallel_dims import ParallelDims
from stoker.train.tp_plan import apply_tp

try:  # torch >= 2.6
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
except ImportError:  # pragma: no cover - older torch
    from torch.distributed._composable.fsdp import (  # type: ignore[no-redef]
        MixedPrecisionPolicy,
        fully_shard,
    )


def resolve_dtype(parallel: ParallelConfig, device: torch.device) -> torch.dtype:
    """The compute dtype: "auto" is bf16 on CUDA and fp32 elsewhere."""
    if parallel.mixed_precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return torch.bfloat16 if parallel.mixed_precision == "bf16" else torch.float32


def autocast_context(parallel: ParallelConfig, device: torch.device, fsdp: bool | None = None,
                     ) -> contextlib.AbstractContextManager[object]:
    """What the forward pass runs under.

    FSDP2 casts parameters itself (MixedPrecisionPolicy); without it ("none", "ddp", tp alone)
    the parameters stay fp32 and bf16 compute comes from autocast. ``fsdp`` says whether FSDP2
    was applied (`uses_fsdp`); None: whenever the strategy is "fsdp".
    """
    dtype = resolve_dtype(parallel, device)
    if fsdp is None:
        fsdp = parallel.strategy == "fsdp"
    if dtype == torch.float32 or fsdp:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def uses_ddp(parallel: ParallelConfig, dims: ParallelDims) -> bool:
    """DDP: replication alone (strategy "ddp", no dp_shard, tp or cp) on a process group."""
    layout = dims.layout
    return (dims.mesh is not None and parallel.strategy == "ddp" and layout.dp_shard == 1
            and layout.tp == 1 and layout.cp == 1)


def uses_fsdp(parallel: ParallelConfig, dims: ParallelDims) -> bool:
    """FSDP2 on the data-parallel (and cp) mesh: whenever there is one and DDP is not used."""
    return dims.fsdp_mesh is not None and not uses_ddp(parallel, dims)


def build_model(shape: ModelShape, parallel: ParallelConfig, device: torch.device, seed: int,
                world_size: int, compile_backend: str = "inductor",
                dims: ParallelDims | None = None) -> nn.Module:
    """The initialised, wrapped model, ready for the optimiser (without pipeline parallelism:
    `stoker.train.pipeline` splits the model first, then applies `parallelize_part` to each
    stage).

    With more than one rank or a strategy other than "none", torch.distributed must already be
    initialised with ``world_size`` ranks. ``dims`` is the run's layout (built here from
    ``parallel`` when not given). ``compile_backend`` lets tests trace with "aot_eager" instead
    of waiting for inductor's code generation.
    """
    check_world(parallel, world_size)
    if dims is None:
        dims = ParallelDims.build(parallel.layout(world_size), device)
    model = init_full_model(shape, device, seed)
    return parallelize_part(model, parallel, dims, device, compile_backend)


def init_full_model(shape: ModelShape, device: torch.device, seed: int) -> Transformer:
    """The whole model with its seeded initial weights, the same on every rank and layout."""
    with torch.device("meta"):
        model = Transformer(shape)
    model.to_empty(device=device)
    model.tie_weights()
    init_seeded(model, seed, device)
    return model


def parallelize_part(model: Transformer, parallel: ParallelConfig, dims: ParallelDims,
                     device: torch.device, compile_backend: str = "inductor",
                     pipelined: bool = False) -> nn.Module:
    """TP, activation checkpointing, compile, then DDP or FSDP2, applied to ``model``: the whole
    model, or one pipeline stage of it (``pipelined``)."""
    if dims.tp_mesh is not None:
        apply_tp(model, dims.tp_mesh)
    if parallel.activation_checkpoint != "none":
        apply_activation_checkpointing(model, parallel)
    if parallel.compile:
        apply_compile(model, compile_backend)
    if uses_ddp(parallel, dims):
        return apply_ddp(model, device)
    if uses_fsdp(parallel, dims):
        mesh = dims.fsdp_mesh
        assert mesh is not None
        # A stage runs several pipeline micro-batches per step: resharding after each forward
        # would gather its weights again for every one of them.
        reshard = parallel.reshard_after_forward and not pipelined
        apply_fsdp(model, mesh, resolve_dtype(parallel, device), reshard)
    return model


def check_world(parallel: ParallelConfig, world_size: int) -> None:
    if parallel.strategy == "none" and parallel.tp * parallel.pp * parallel.cp == 1:
        if world_size != 1:
            raise ValueError(f"strategy 'none' runs on one rank, not {world_size}")
        return
    if not dist.is_initialized():
        raise RuntimeError(f"strategy {parallel.strategy!r} needs torch.distributed initialised")
    if dist.get_world_size() != world_size:
        raise RuntimeError(f"world_size {world_size} but the process group has "
                           f"{dist.get_world_size()} ranks")


def init_seeded(model: Transformer, seed: int, device: torch.device) -> None:
    """init_weights() from a generator seeded with ``seed``; the caller's RNG state is kept."""
    if device.type == "cuda":
        rng = torch.random.fork_rng(devices=[cuda_index(device)], device_type="cuda")
    else:
        rng = torch.random.fork_rng(devices=[])
    with rng:
        torch.manual_seed(seed)
        model.init_weights()


def cuda_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def apply_activation_checkpointing(model: Transformer, parallel: ParallelConfig) -> None:
    """Recompute block activations in the backward pass: every block, or every Nth one."""
    every = 1 if parallel.activation_checkpoint == "full" else parallel.activation_checkpoint_every
    for name, block in model.layers.items():
        if (int(name) + 1) % every == 0:
            model.layers[name] = checkpoint_wrapper(block, preserve_rng_state=False)


def apply_compile(model: Transformer, backend: str = "inductor") -> None:
    """Compile each block on its own: repeated blocks reuse one compiled graph."""
    for block in model.layers.values():
        block.compile(backend=backend, fullgraph=True)


def apply_ddp(model: nn.Module, device: torch.device) -> DistributedDataParallel:
    device_ids = [cuda_index(device)] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def apply_fsdp(model: Transformer, mesh: DeviceMesh, dtype: torch.dtype,
               reshard_after_forward: bool) -> None:
    """FSDP2: one parameter group per block, then the root (embeddings, final norm, output).

    A 2-D ``mesh`` (dp_replicate, dp_shard) is HSDP: parameters sharded along dp_shard and
    replicated along dp_replicate, gradients reduce-scattered then all-reduced.

    The last block is not resharded after forward: backward would gather it again at once.
    Forward inputs are not cast: the activations are already in the parameters' dtype, and the
    RoPE table handed to each block must stay fp32.
    """
    if dtype == torch.bfloat16:
        mp_policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32,
                                         cast_forward_inputs=False)
    else:
        mp_policy = MixedPrecisionPolicy()
    blocks = list(model.layers.values())
    for i, block in enumerate(blocks):
        fully_shard(block, mesh=mesh, mp_policy=mp_policy,
                    reshard_after_forward=reshard_after_forward and i < len(blocks) - 1)
    fully_shard(model, mesh=mesh, mp_policy=mp_policy, reshard_after_forward=reshard_after_forward)


def parallelize_units(model: nn.Module, units: list[nn.Module], parallel: ParallelConfig,
                      dims: ParallelDims, device: torch.device) -> nn.Module:
    """A user task's model (`stoker.train.task`), on ``device``: activation checkpointing,
    compile and FSDP2 per unit (``units``: the submodules the task names), then DDP or FSDP2
    on the root, as the reference model gets them per block."""
    model.to(device)
    if parallel.activation_checkpoint != "none":
        every = (1 if parallel.activation_checkpoint == "full"
                 else parallel.activation_checkpoint_every)
        chosen = {id(u) for i, u in enumerate(units) if (i + 1) % every == 0}
        apply_activation_checkpointing_fn(model, checkpoint_wrapper_fn=checkpoint_wrapper,
                                          check_fn=lambda m: id(m) in chosen)
        wrapped = {id(m._checkpoint_wrapped_module): m for m in model.modules()
                   if isinstance(m, CheckpointWrapper)}
        units = [wrapped.get(id(u), u) for u in units]  # the wrapper takes the unit's place
    if parallel.compile:
        for unit in units:
            unit.compile()
    if uses_ddp(parallel, dims):
        return apply_ddp(model, device)
    if uses_fsdp(parallel, dims):
        mesh = dims.fsdp_mesh
        assert mesh is not None
        dtype = resolve_dtype(parallel, device)
        mp_policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
                     if dtype == torch.bfloat16 else MixedPrecisionPolicy())
        reshard = parallel.reshard_after_forward
        for i, unit in enumerate(units):
            fully_shard(unit, mesh=mesh, mp_policy=mp_policy,
                        reshard_after_forward=reshard and i < len(units) - 1)
        fully_shard(model, mesh=mesh, mp_policy=mp_policy, reshard_after_forward=reshard)
    return model
