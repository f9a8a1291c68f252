"""`stoker plan`'s arithmetic: memory per rank and step time of a layout, before launch.

Pure functions of the model shape, the resolved ``Layout``, ``[parallel]`` and ``[train]``;
no torch. Every figure is an *estimate*; the assumptions, in one place:

Memory (bytes per rank, the fullest rank when pipeline stages differ)
  * Parameters are fp32. FSDP2 keeps them sharded over ``dp_shard × cp`` (as torchtitan's
    ``dp_shard_cp`` mesh): those fp32 shards *are* the master weights, so bf16 mixed precision
    adds no separate master copy, only the bf16 unsharded copies gathered for compute (the FSDP
    transient). Tensor parallelism splits every matrix by ``tp`` (norms are replicated); a
    pipeline rank holds only its stages' layers (the first also the embedding, the last the
    final norm and output).
  * Gradients are fp32 and sharded like the parameters (FSDP2 reduces in fp32). DDP also keeps
    its gradient buckets, a second copy (``gradient_as_bucket_view`` is off).
  * AdamW: two fp32 states per parameter, plus one fp32 parameter-sized temporary in the
    foreach step (none with the fused kernel, the default on CUDA).
  * Activations: the tensors autograd saves, counted for this model as written (measured with
    saved-tensor hooks on CPU: per token and layer ``8·dim + 2·kv_dim + 4·ffn_hidden``
    elements, ``kv_dim`` the width of the k and v heads, and with bf16 compute fp32 rotary
    copies of q and k, ``dim + kv_dim`` more fp32), under the activation checkpointing chosen
    (a checkpointed block keeps only its input, and one block is recomputed at a time); plus
    the output side (final norm, fp32 log-softmax) and the loss's transients (``2·vocab`` fp32
    per token in the backward of the cross-entropy), plus one block's worth of working set in
    the backward pass. bf16 under autocast (DDP, or no data parallelism) is counted as bf16
    throughout: autocast's fp32 norm outputs are left out. Under tp (sequence parallel) the
    gathered norm outputs are full size, the rest is split by tp, and the logits stay
    vocab-sharded. Context parallelism splits the sequence by cp; each attention then saves
    the whole sequence's gathered keys and values (``2·kv_dim`` per token of the full
    sequence, not of the rank's share), and off CUDA each rank keeps the additive masks of
    its two query chunks over the keys before them (``(2·cp + 1)·(seq_len / 2·cp)²``
    elements; CUDA's kernels take the causal mask without materialising it).
  * Pipelines: a rank holds the activations of the microbatches in flight: all ``m`` under
    GPipe; ``p − r`` at pipeline rank ``r`` under 1F1B; under the interleaved schedules
    ``(v − 1)·p + 2·(p − 1 − r) + 1`` stage-chunks (torch's warm-up count), at most ``v·m``.
    FSDP does not reshard a stage after forward, so its blocks stay gathered all step.
  * The peak is the largest of three phases: initialisation (the whole fp32 model exists on
    each rank, seeded, before pipeline stages, tp and FSDP cut it: ``train/parallelize.py``,
    ``train/pipeline.py``), forward+backward, and the optimiser step. On CPU the process
    RSS also holds the torch runtime: a constant measured here (``CPU_RUNTIME_BYTES``); on a
    GPU the peak is what the caching allocator counts, and the fit check keeps
    ``GPU_RESERVE_BYTES`` aside for the CUDA context and fragmentation.

Time
  * Compute: the counted training FLOPs (``observe/flops.py``) of the global batch, divided
    evenly over the ranks, plus one more forward per checkpointed block, at
    ``ACHIEVABLE_FRACTION`` of the device's dense peak.
  * Pipeline bubble: ``(p − 1)/(m + p − 1)`` for GPipe and 1F1B, ``(p − 1)/(v·m + p − 1)`` for
    interleaved 1F1B. For zero-bubble we report the interleaved figure, an upper bound: the
    schedule fills the bubble with weight-gradient work only as far as the split of the backward
    balances, which depends on timings this arithmetic does not model.
  * Communication, within one node at ``LINK_EFFICIENCY`` of the device's per-direction link
    bandwidth (multi-node networks are not modelled): FSDP all-gathers the parameters (forward
    and again in backward when resharded) and reduce-scatters fp32 gradients each microbatch,
    DDP all-reduces the gradients once per step; both overlap with compute, so only what exceeds
    the compute time is exposed. Tensor parallelism's per-layer all-gathers and
    reduce-scatters of activations are on the critical path and fully exposed, and so are
    context parallelism's all-gathers of keys and values (and the reduce-scatters of their
    gradients). Pipeline point-to-point sends are assumed hidden.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, fields
from typing import Literal

from stoker.observe.flops import block_matmul_params, flops_per_token
from stoker.spec.train import Layout, ModelShape, ParallelConfig, TrainSection

GIB = 2**30
MIB = 2**20
GB = 10**9
FP32 = 4

# The RSS of one CPU rank of `stoker train` training a negligible model (dim 16, 1 layer) for a
# few steps: the Python interpreter, torch, gloo and Stoker's own runtime. Measured on this
# project's 2-core machine with torch 2.13 (docs/benchmarks.md, "`stoker plan` estimate vs
# measured"); it varies with the torch build and the C library's allocator.
CPU_RUNTIME_BYTES = 360 * 2**20
GPU_RESERVE_BYTES = 2 * GIB  # CUDA context, NCCL buffers, allocator fragmentation: not counted
ACHIEVABLE_FRACTION = 0.5  # of the dense peak, for large matmul-bound steps (40-55% MFU typical)
LINK_EFFICIENCY = 0.7  # of the per-direction link bandwidth, for ring collectives


@dataclass(frozen=True)
class DeviceSpec:
    """A device the plan knows: memory, intra-node link bandwidth, and the GPU name that
    ``observe.peak`` looks its peak FLOP/s up by (None: CPU, measured)."""

    key: str
    memory_bytes: int
    link_bytes_per_s: float  # per direction, to the other devices of one node
    gpu_name: str | None


# Memory as the driver reports it (nvidia-smi's total, close to the data sheet's "GB", which
# for HBM is GiB); link bandwidth per direction within a node (NVLink / Infinity Fabric, or
# PCIe Gen4/5 x16 for the cards without).
DEVICES: dict[str, DeviceSpec] = {d.key: d for d in (
    DeviceSpec("h100", 81559 * MIB, 450 * GB, "NVIDIA H100 SXM"),
    DeviceSpec("h100-pcie", 81559 * MIB, 64 * GB, "NVIDIA H100 PCIe"),
    DeviceSpec("h100-nvl", 95830 * MIB, 300 * GB, "NVIDIA H100 NVL"),
    DeviceSpec("h200", 143771 * MIB, 450 * GB, "NVIDIA H200 SXM"),
    DeviceSpec("gh200", 97871 * MIB, 450 * GB, "NVIDIA GH200"),
    DeviceSpec("b200", 180 * GIB, 900 * GB, "NVIDIA B200"),
    DeviceSpec("a100", 81920 * MIB, 300 * GB, "NVIDIA A100"),
    DeviceSpec("a100-40gb", 40960 * MIB, 300 * GB, "NVIDIA A100"),
    DeviceSpec("l40s", 46068 * MIB, 32 * GB, "NVIDIA L40S"),
    DeviceSpec("l4", 23034 * MIB, 32 * GB, "NVIDIA L4"),
    DeviceSpec("a10", 23028 * MIB, 32 * GB, "NVIDIA A10"),
    DeviceSpec("v100", 32768 * MIB, 150 * GB, "NVIDIA V100-SXM"),
    DeviceSpec("mi300x", 192 * GIB, 448 * GB, "AMD Instinct MI300X"),
)}


# ---------------------------------------------------------------- parameters


@dataclass(frozen=True)
class ParamCounts:
    """The model's parameters by part (a tied output shares the embedding's)."""

    embedding: int
    block: int  # one transformer block: its linears and two RMSNorm gains
    final_norm: int
    output: int  # 0 when tied

    def total(self, n_layers: int) -> int:
        return self.embedding + n_layers * self.block + self.final_norm + self.output


def param_counts(shape: ModelShape) -> ParamCounts:
    return ParamCounts(
        embedding=shape.vocab_size * shape.dim,
        block=block_matmul_params(shape) + 2 * shape.dim,
        final_norm=shape.dim,
        output=0 if shape.tie_embeddings else shape.vocab_size * shape.dim,
    )


def split_layers(n_layers: int, parallel: ParallelConfig) -> list[list[int]]:
    """The layer indices of each pipeline stage: ``pp_split`` or an even split by layers (the
    first stages take one more when it does not divide)."""
    stages = parallel.n_stages
    if parallel.pp_split is not None:
        starts = [0, *parallel.pp_split, n_layers]
        return [list(range(a, b)) for a, b in itertools.pairwise(starts)]
    base, extra = divmod(n_layers, stages)
    out, start = [], 0
    for s in range(stages):
        size = base + (s < extra)
        out.append(list(range(start, start + size)))
        start += size
    return out


def rank_stages(pp_rank: int, parallel: ParallelConfig) -> list[int]:
    """The stages a pipeline rank runs: r, r + pp, r + 2·pp, ... (looped placement)."""
    return [pp_rank + k * parallel.pp for k in range(parallel.pp_stages_per_rank)]


# ---------------------------------------------------------------- what wraps the model

Wrapper = Literal["none", "ddp", "fsdp"]


def data_parallel_wrapper(parallel: ParallelConfig, layout: Layout) -> Wrapper:
    """As ``train/parallelize.py`` decides: DDP for replication alone under strategy "ddp",
    FSDP2 whenever there is any other data-parallel (or cp) dimension, else nothing."""
    if layout.dp == 1 and layout.cp == 1:
        return "none"
    if parallel.strategy == "ddp" and layout.dp_shard == 1 and layout.tp == 1 and layout.cp == 1:
        return "ddp"
    return "fsdp"


def compute_bytes(parallel: ParallelConfig, on_gpu: bool) -> int:
    """Bytes per element of the compute dtype: "auto" is bf16 on a GPU, fp32 on CPU."""
    if parallel.mixed_precision == "auto":
        return 2 if on_gpu else FP32
    return 2 if parallel.mixed_precision == "bf16" else FP32


def resharded(parallel: ParallelConfig, layout: Layout) -> bool:
    """Whether FSDP frees the gathered blocks after forward: as configured, but never under a
    pipeline, whose stages run several microbatches a step (``train/parallelize.py``)."""
    return parallel.reshard_after_forward and layout.pp == 1


# ---------------------------------------------------------------- activations


def layer_activation_bytes(shape: ModelShape, tokens: float, tp: int, dtype_bytes: int) -> float:
    """What autograd saves for one block of ``tokens`` tokens (this rank's share of the
    sequence) with no checkpointing. Under tp the two gathered norm outputs are full size."""
    h, f, kv = shape.dim, shape.ffn_hidden, shape.n_kv_heads * shape.head_dim
    # The two norm outputs the linears take (full size, gathered, under tp), then split by tp:
    # 4·dim (the two norm inputs, q after rotary, the attention output, which wo takes as a
    # view), 2·kv (k and v heads) and the SwiGLU's four ffn_hidden-wide tensors. A fused norm
    # (CUDA's kernel, `train/norm.py` on CPU) saves its input only; under tp the norms run on
    # DTensors through the composite, which also saves the normalised input: 2·dim more.
    composite_norms = 2 * h if tp > 1 else 0
    elements = 2 * h + (4 * h + 2 * kv + 4 * f + composite_norms) / tp
    rope_fp32 = (h + kv) / tp if dtype_bytes != FP32 else 0  # q.float(), k.float()
    small = FP32 * (shape.n_heads / tp + 2)  # attention log-sum-exp, RMSNorm rstd
    return tokens * (dtype_bytes * elements + FP32 * rope_fp32 + small)


def gathered_kv_bytes(shape: ModelShape, tokens: float, layout: Layout,
                      dtype_bytes: int) -> float:
    """What each attention saves beyond its own k and v under context parallelism: the other
    cp ranks' keys and values, gathered."""
    kv = shape.n_kv_heads * shape.head_dim / layout.tp
    return (layout.cp - 1) * tokens * 2 * kv * dtype_bytes


def cp_mask_bytes(layout: Layout, train: TrainSection, dtype_bytes: int, on_gpu: bool) -> float:
    """Context parallelism's attention masks off CUDA: one additive [chunk, end] matrix for
    each of the rank's two chunks of 2·cp, made once (`train/context_parallel.py`); the
    fullest rank's (chunks 0 and 2·cp − 1) hold (2·cp + 1) chunk² elements."""
    if layout.cp == 1 or on_gpu:
        return 0.0
    chunk = train.seq_len / (2 * layout.cp)
    return (2 * layout.cp + 1) * chunk ** 2 * dtype_bytes


def checkpointed_layers(layers: list[int], parallel: ParallelConfig) -> int:
    """How many of ``layers`` are wrapped in activation checkpointing."""
    if parallel.activation_checkpoint == "none":
        return 0
    every = 1 if parallel.activation_checkpoint == "full" else parallel.activation_checkpoint_every
    return sum((i + 1) % every == 0 for i in layers)


def output_activation_bytes(shape: ModelShape, tokens: float, tp: int, dtype_bytes: int) -> float:
    """Saved by the output projection (the final norm's output) and the fp32 log-softmax; under
    tp also the composite norm's normalised input (see `layer_activation_bytes`)."""
    composite_norm = shape.dim / tp if tp > 1 else 0
    return tokens * (dtype_bytes * (shape.dim + composite_norm) + FP32 * shape.vocab_size / tp)


def loss_transient_bytes(shape: ModelShape, tokens: float, tp: int) -> float:
    """The cross-entropy's backward: two more fp32 [tokens, vocab/tp] tensors at once."""
    return tokens * 2 * FP32 * shape.vocab_size / tp


def in_flight_chunks(parallel: ParallelConfig, pp_rank: int, microbatches: int) -> int:
    """Stage-chunks whose activations a pipeline rank holds at its peak."""
    p, v = parallel.pp, parallel.pp_stages_per_rank
    if p == 1:
        return 1
    if parallel.pp_schedule == "gpipe":
        return microbatches
    if parallel.pp_schedule == "1f1b":
        return min(microbatches, p - pp_rank)
    return min(v * microbatches, (v - 1) * p + 2 * (p - 1 - pp_rank) + 1)


def pipeline_microbatches(parallel: ParallelConfig) -> int:
    """m: the microbatches each train.micro_batch_size is split into (1 without a pipeline)."""
    if parallel.pp == 1:
        return 1
    return parallel.pp_microbatches or parallel.n_stages


# ---------------------------------------------------------------- the estimate


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes on one rank (the fullest pipeline rank). ``peak`` is the largest phase."""

    pp_rank: int
    wrapper: Wrapper
    dtype_bytes: int
    params_local: int  # parameter count this rank keeps (sharded)
    params: float
    gradients: float
    optimizer_states: float
    optimizer_temporary: float
    activations: float
    loss_transient: float
    fsdp_unsharded: float  # gathered parameters and unsharded gradients in flight
    ddp_buckets: float
    init_full_model: float  # the whole fp32 model, on each rank before pp/tp/FSDP cut it
    runtime: float  # CPU: the process's torch runtime; GPU: 0 (outside the allocator)
    accumulates: bool  # gradients are live during forward+backward (accumulation, pipeline)

    @property
    def forward_backward(self) -> float:
        grads = self.gradients if self.accumulates else 0.0
        return (self.params + grads + self.optimizer_states + self.activations
                + self.loss_transient + self.fsdp_unsharded + self.ddp_buckets)

    @property
    def optimizer_step(self) -> float:
        return (self.params + self.gradients + self.optimizer_states + self.optimizer_temporary
                + self.ddp_buckets)

    @property
    def phases(self) -> dict[str, float]:
        return {"init": self.init_full_model, "forward+backward": self.forward_backward,
                "optimizer step": self.optimizer_step}

    @property
    def peak_phase(self) -> str:
        return max(self.phases.items(), key=lambda kv: kv[1])[0]

    @property
    def peak(self) -> float:
        return self.runtime + max(self.phases.values())

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {f.name: getattr(self, f.name) for f in fields(self)}
        out.update(forward_backward=self.forward_backward, optimizer_step=self.optimizer_step,
                   peak_phase=self.peak_phase, peak=self.peak)
        return out


def estimate_memory(shape: ModelShape, layout: Layout, parallel: ParallelConfig,
                    train: TrainSection, *, on_gpu: bool, grad_accum: int = 1,
                    fused_optimizer: bool | None = None,
                    runtime_bytes: float | None = None) -> MemoryEstimate:
    """The memory of the fullest rank: every pipeline rank is estimated, the largest kept."""
    ranks = [estimate_rank_memory(shape, layout, parallel, train, r, on_gpu=on_gpu,
                                  grad_accum=grad_accum, fused_optimizer=fused_optimizer,
                                  runtime_bytes=runtime_bytes)
             for r in range(layout.pp)]
    return max(ranks, key=lambda m: m.peak)


def estimate_rank_memory(shape: ModelShape, layout: Layout, parallel: ParallelConfig,
                         train: TrainSection, pp_rank: int, *, on_gpu: bool,
                         grad_accum: int = 1, fused_optimizer: bool | None = None,
                         runtime_bytes: float | None = None) -> MemoryEstimate:
    counts = param_counts(shape)
    stages = split_layers(shape.n_layers, parallel)
    mine = rank_stages(pp_rank, parallel)
    layers = [i for s in mine for i in stages[s]]
    first, last = 0 in mine, parallel.n_stages - 1 in mine
    tp, wrapper = layout.tp, data_parallel_wrapper(parallel, layout)
    dtype_bytes = compute_bytes(parallel, on_gpu)
    shard = layout.dp_shard * layout.cp if wrapper == "fsdp" else 1

    # Parameters this rank holds before FSDP: tp splits the matrices, norms are replicated.
    matrices = len(layers) * (counts.block - 2 * shape.dim)
    norms = len(layers) * 2 * shape.dim
    root = 0
    if first:
        root += counts.embedding
    if last:
        root += counts.output + counts.final_norm
        if shape.tie_embeddings and not first:
            root += counts.embedding  # the last stage keeps its own copy of the tied weight
    root_norm = counts.final_norm if last else 0
    unsplit = matrices / tp + norms + (root - root_norm) / tp + root_norm
    local = unsplit / shard

    micro = pipeline_microbatches(parallel)
    tokens = train.micro_batch_size / micro * train.seq_len / layout.cp
    per_layer = layer_activation_bytes(shape, tokens, tp, dtype_bytes)
    per_layer += gathered_kv_bytes(shape, tokens, layout, dtype_bytes)
    n_ckpt = checkpointed_layers(layers, parallel)
    kept = n_ckpt * tokens * dtype_bytes * shape.dim / tp + (len(layers) - n_ckpt) * per_layer
    if first:
        kept += tokens * dtype_bytes * shape.dim / tp  # the embedding's output
    if last:
        kept += output_activation_bytes(shape, tokens, tp, dtype_bytes)
    chunks = in_flight_chunks(parallel, pp_rank, micro)
    per_chunk = kept / len(mine)
    working = per_layer * (1 + (n_ckpt > 0))  # backward working set, one block recomputed
    activations = chunks * per_chunk + working
    activations += cp_mask_bytes(layout, train, dtype_bytes, on_gpu)

    fused = on_gpu if fused_optimizer is None else fused_optimizer
    block_unsharded = counts.block / tp
    if wrapper == "fsdp":
        gathered = (root / tp + 2 * block_unsharded if resharded(parallel, layout)
                    else unsplit)
        grad_bytes = dtype_bytes + (FP32 if dtype_bytes != FP32 else 0)
        fsdp = gathered * dtype_bytes + block_unsharded * grad_bytes
    else:
        fsdp = 0.0
    return MemoryEstimate(
        pp_rank=pp_rank, wrapper=wrapper, dtype_bytes=dtype_bytes, params_local=round(local),
        params=FP32 * local, gradients=FP32 * local, optimizer_states=2 * FP32 * local,
        optimizer_temporary=0.0 if fused else FP32 * local,
        activations=activations,
        loss_transient=loss_transient_bytes(shape, tokens, tp) if last else 0.0,
        fsdp_unsharded=fsdp,
        ddp_buckets=FP32 * local if wrapper == "ddp" else 0.0,
        init_full_model=(FP32 * counts.total(shape.n_layers)
                         if wrapper == "fsdp" or tp > 1 or layout.pp > 1 else 0.0),
        runtime=(0.0 if on_gpu else CPU_RUNTIME_BYTES) if runtime_bytes is None
        else runtime_bytes,
        accumulates=grad_accum > 1 or parallel.pp > 1,
    )


# ---------------------------------------------------------------- pipeline bubble


def bubble_fraction(schedule: str, p: int, m: int, v: int = 1) -> float:
    """The idle fraction of a pipeline of ``p`` ranks and ``m`` microbatches: (p−1)/(m+p−1)
    for GPipe and 1F1B; (p−1)/(v·m+p−1) with ``v`` stages per rank for interleaved 1F1B, and
    for zero-bubble as an upper bound (see the module docstring)."""
    if p <= 1:
        return 0.0
    if schedule in ("gpipe", "1f1b"):
        return (p - 1) / (m + p - 1)
    return (p - 1) / (v * m + p - 1)


# ---------------------------------------------------------------- step time


@dataclass(frozen=True)
class TimeEstimate:
    flops_per_step: float  # counted model FLOPs of the global batch (what MFU divides)
    compute_s: float  # this rank's share, recomputation included, at the achievable rate
    bubble: float
    exposed_comm_s: float
    step_s: float
    tokens_per_s: float
    mfu: float
    peak_flops: float
    achievable_fraction: float

    def as_dict(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def estimate_time(shape: ModelShape, layout: Layout, parallel: ParallelConfig,
                  train: TrainSection, *, peak_flops: float, dtype_bytes: int,
                  link_bytes_per_s: float | None, grad_accum: int = 1,
                  achievable_fraction: float = ACHIEVABLE_FRACTION) -> TimeEstimate:
    """One optimiser step of the global batch on ``layout.world_size`` devices."""
    tokens = train.global_batch_size * train.seq_len
    flops = flops_per_token(shape, train.seq_len) * tokens
    counts = param_counts(shape)
    ckpt = checkpointed_layers(list(range(shape.n_layers)), parallel)
    recompute = 2 * ckpt * block_matmul_params(shape) * tokens  # one more forward per block
    compute_s = (flops + recompute) / layout.world_size / (peak_flops * achievable_fraction)
    micro = pipeline_microbatches(parallel)
    bubble = bubble_fraction(parallel.pp_schedule, parallel.pp, micro, parallel.pp_stages_per_rank)
    busy_s = compute_s / (1 - bubble)
    comm_s = 0.0
    if link_bytes_per_s:
        bandwidth = link_bytes_per_s * LINK_EFFICIENCY
        rank_params = counts.total(shape.n_layers) / layout.tp / layout.pp
        dp_s = data_parallel_bytes(parallel, layout, rank_params, dtype_bytes,
                                   grad_accum) / bandwidth
        tp_s = tensor_parallel_bytes(shape, layout, train, dtype_bytes, grad_accum) / bandwidth
        cp_s = context_parallel_bytes(shape, layout, train, dtype_bytes, grad_accum) / bandwidth
        comm_s = max(0.0, dp_s - busy_s) + tp_s + cp_s
    step_s = busy_s + comm_s
    return TimeEstimate(
        flops_per_step=flops, compute_s=compute_s, bubble=bubble, exposed_comm_s=comm_s,
        step_s=step_s, tokens_per_s=tokens / step_s,
        mfu=flops / (step_s * peak_flops * layout.world_size), peak_flops=peak_flops,
        achievable_fraction=achievable_fraction)


def data_parallel_bytes(parallel: ParallelConfig, layout: Layout, rank_params: float,
                        dtype_bytes: int, grad_accum: int) -> float:
    """Bytes each rank sends per step for data parallelism (ring collectives)."""
    wrapper = data_parallel_wrapper(parallel, layout)
    if wrapper == "none":
        return 0.0
    if wrapper == "ddp":
        n = layout.dp_replicate
        return 2 * (n - 1) / n * rank_params * FP32  # one all-reduce of the gradients
    n = layout.dp_shard * layout.cp
    gathers = 2 if resharded(parallel, layout) else 1
    per_micro = (n - 1) / n * rank_params * (gathers * dtype_bytes + FP32)
    replicate = 2 * (layout.dp_replicate - 1) / layout.dp_replicate * rank_params / n * FP32
    return grad_accum * per_micro + replicate


def tensor_parallel_bytes(shape: ModelShape, layout: Layout, train: TrainSection,
                          dtype_bytes: int, grad_accum: int) -> float:
    """Bytes each rank sends per step for sequence-parallel tp: per block, forward and
    backward, two all-gathers and two reduce-scatters of the [tokens, dim] stream."""
    if layout.tp == 1:
        return 0.0
    tokens = train.micro_batch_size * train.seq_len / layout.cp * grad_accum
    per_collective = (layout.tp - 1) / layout.tp * tokens * shape.dim * dtype_bytes
    return 8 * shape.n_layers / layout.pp * per_collective


def context_parallel_bytes(shape: ModelShape, layout: Layout, train: TrainSection,
                           dtype_bytes: int, grad_accum: int) -> float:
    """Bytes each rank sends per step for context parallelism: per block, the all-gathers of
    keys and values forward and the reduce-scatters of their gradients backward."""
    if layout.cp == 1:
        return 0.0
    tokens = train.micro_batch_size * train.seq_len * grad_accum  # the whole sequences
    kv = shape.n_kv_heads * shape.head_dim / layout.tp
    per_collective = (layout.cp - 1) / layout.cp * tokens * kv * dtype_bytes
    return 4 * shape.n_layers / layout.pp * per_collective


def fits(memory: MemoryEstimate, capacity_bytes: float, on_gpu: bool) -> bool:
    reserve = GPU_RESERVE_BYTES if on_gpu else 0
    return memory.peak + reserve <= capacity_bytes
