"""Pipeline parallelism: the model cut into stages, each stage parallelised as a whole model
would be, and a schedule of ``torch.distributed.pipelining`` running them.

    pipeline = build_pipeline(shape, parallel, dims, device, seed, loss_fn)
    pipeline.model                      # this rank's parameters under their full-model names
    loss = pipeline.step(inputs, targets, loss_scale)   # forward + backward of one micro-batch
    logits = pipeline.forward(inputs)   # forward only (eval); logits on the last stage

``parallel.pp × parallel.pp_stages_per_rank`` stages share the layers evenly (the first stages
take one more when they do not divide), or as ``parallel.pp_split`` says (the first layer of
each stage after the first). Stage ``s`` runs on pipeline rank ``s % pp``, the "loop" placement
the interleaved schedules expect: with 2 ranks and 4 stages, rank 0 runs stages 0 and 2.

Every rank initialises the whole model from the seed, as without pipelining, then keeps the
modules of its own stages: the initial weights do not depend on the layout. A stage is a
`Transformer` with the other layers dropped (and no embeddings, or no norm and output), so
every parameter keeps its full-model name and checkpoints load under any split.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.pipelining import (
    PipelineStage,
    Schedule1F1B,
    ScheduleGPipe,
    ScheduleInterleaved1F1B,
    ScheduleInterleavedZeroBubble,
)

from stoker.spec.train import ModelShape, ParallelConfig
from stoker.train.model import Transformer
from stoker.train.parallel_dims import ParallelDims
from stoker.train.parallelize import init_full_model, parallelize_part

try:  # torch >= 2.6
    from torch.distributed.fsdp import FSDPModule
except ImportError:  # pragma: no cover - older torch
    from torch.distributed._composable.fsdp import FSDPModule  # type: ignore[no-redef,attr-defined]

SCHEDULES: dict[str, type] = {
    "gpipe": ScheduleGPipe,
    "1f1b": Schedule1F1B,
    "interleaved-1f1b": ScheduleInterleaved1F1B,
    "zero-bubble": ScheduleInterleavedZeroBubble,
}
SINGLE_STAGE = ("gpipe", "1f1b")
# Hidden states cross stages as [B, T, dim]; a 4-number header (dtype, shape) precedes them.
WIRE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def stage_layers(n_layers: int, n_stages: int, split: list[int] | None = None) -> list[range]:
    """The layer indices of each stage: ``split`` (the first layer of each stage after the
    first) or as even as they go, the first stages taking one more."""
    if split is None:
        per, extra = divmod(n_layers, n_stages)
        sizes = [per + (s < extra) for s in range(n_stages)]
        split = [sum(sizes[:s]) for s in range(1, n_stages)]
    bounds = [0, *split, n_layers]
    return [range(a, b) for a, b in pairwise(bounds)]


def stage_indices(pp_rank: int, pp: int, stages_per_rank: int) -> list[int]:
    """The stages pipeline rank ``pp_rank`` runs, ascending ("loop" placement)."""
    return [pp_rank + k * pp for k in range(stages_per_rank)]


def take_stage(model: Transformer, layers: range, first: bool, last: bool) -> Transformer:
    """A model of ``model``'s own modules (not copies) for one stage: the given layers, the
    embeddings on the first stage, the final norm and output on the last."""
    with torch.device("meta"):
        stage = Transformer(model.shape)  # a shell: every module is replaced or dropped below
    stage.layers = nn.ModuleDict({str(i): model.layers[str(i)] for i in layers})
    stage.tok_embeddings = model.tok_embeddings if first else None
    stage.norm = model.norm if last else None
    stage.output = model.output if last else None
    return stage


def merge_stages(parts: list[Transformer]) -> Transformer:
    """One module over several stages' modules: its ``named_parameters`` are this rank's
    parameters under their full-model names (what the optimiser and checkpoints see)."""
    with torch.device("meta"):
        merged = Transformer(parts[0].shape)
    merged.layers = nn.ModuleDict({k: m for part in parts for k, m in part.layers.items()})
    merged.tok_embeddings = next((p.tok_embeddings for p in parts
                                  if p.tok_embeddings is not None), None)
    merged.norm = next((p.norm for p in parts if p.norm is not None), None)
    merged.output = next((p.output for p in parts if p.output is not None), None)
    return merged


def _accepts(fn: Callable[..., object], name: str) -> bool:
    return name in inspect.signature(fn).parameters


@dataclass
class ScaledLoss:
    """The loss function handed to the schedule: ``loss_fn`` times ``scale``, which
    `Pipeline.step` sets for each call."""

    loss_fn: LossFn
    scale: float = 1.0

    def __call__(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(output, target) * self.scale


@dataclass
class Pipeline:
    """This rank's stages and the schedule that runs them."""

    dims: ParallelDims
    device: torch.device
    stage_ids: list[int]
    n_stages: int
    parts: list[Transformer]
    stages: list[PipelineStage]
    schedule: object
    n_microbatches: int
    loss: ScaledLoss
    model: Transformer = field(init=False)

    def __post_init__(self) -> None:
        self.model = merge_stages(self.parts)

    @property
    def has_first(self) -> bool:
        return self.stage_ids[0] == 0

    @property
    def has_last(self) -> bool:
        return self.stage_ids[-1] == self.n_stages - 1

    def step(self, inputs: torch.Tensor, targets: torch.Tensor,
             loss_scale: float) -> torch.Tensor | None:
        """Forward and backward of one micro-batch, cut into ``n_microbatches`` pipeline
        micro-batches; each one's loss is multiplied by ``loss_scale`` before its backward.
        Returns the mean unscaled loss on the rank of the last stage, None elsewhere."""
        self.loss.scale = loss_scale
        losses: list[torch.Tensor] = []
        args = (inputs,) if self.has_first else ()
        kwargs: dict[str, object] = {}
        if self.has_last:
            kwargs.update(target=targets, losses=losses)
        step = self.schedule.step  # type: ignore[attr-defined]
        if _accepts(step, "return_outputs"):
            kwargs["return_outputs"] = False
        step(*args, **kwargs)
        if not self.has_last:
            return None
        return torch.stack([loss.detach() for loss in losses]).sum() / (
            loss_scale * self.n_microbatches)

    @torch.no_grad()
    def forward(self, inputs: torch.Tensor) -> torch.Tensor | None:
        """The logits of the whole micro-batch on the last stage's rank (None elsewhere): each
        stage receives its input from the previous stage's rank and sends its output on. Not
        the schedule's ``eval``, which torch 2.6 lacks."""
        hidden = inputs
        for stage, part in zip(self.stage_ids, self.parts, strict=True):
            if stage > 0:
                hidden = self._recv(stage - 1)
            hidden = part(hidden)
            if stage < self.n_stages - 1:
                self._send(hidden, stage + 1)
        for part in self.parts:  # forward alone leaves unresharded FSDP weights gathered
            for module in part.modules():
                if isinstance(module, FSDPModule):
                    module.reshard()
        return hidden if self.has_last else None

    def _peer(self, stage: int) -> int:
        return self.dims.pp_global_rank(stage % self.dims.size("pp"))

    def _send(self, hidden: torch.Tensor, to_stage: int) -> None:
        header = torch.tensor([WIRE_DTYPES.index(hidden.dtype), *hidden.shape],
                              dtype=torch.int64, device=hidden.device)
        dist.send(header, self._peer(to_stage))
        dist.send(hidden.contiguous(), self._peer(to_stage))

    def _recv(self, from_stage: int) -> torch.Tensor:
        header = torch.empty(4, dtype=torch.int64, device=self.device)
        dist.recv(header, self._peer(from_stage))
        code, *shape = header.tolist()
        hidden = torch.empty(shape, dtype=WIRE_DTYPES[code], device=self.device)
        dist.recv(hidden, self._peer(from_stage))
        return hidden


def build_pipeline(shape: ModelShape, parallel: ParallelConfig, dims: ParallelDims,
                   device: torch.device, seed: int, loss_fn: LossFn,
                   compile_backend: str = "inductor") -> Pipeline:
    """This rank's stages of the seeded model, each parallelised by `parallelize_part`, and
    the schedule ``parallel.pp_schedule`` over ``parallel.pp_microbatches`` (default: one per
    stage) micro-batches, with ``loss_fn`` on the last stage."""
    full = init_full_model(shape, device, seed)
    n_stages = parallel.n_stages
    layers = stage_layers(shape.n_layers, n_stages, parallel.pp_split)
    ids = stage_indices(dims.local_rank("pp"), dims.size("pp"), parallel.pp_stages_per_rank)
    parts: list[Transformer] = []
    stages: list[PipelineStage] = []
    for s in ids:
        part = take_stage(full, layers[s], first=s == 0, last=s == n_stages - 1)
        wrapped = parallelize_part(part, parallel, dims, device, compile_backend, pipelined=True)
        assert isinstance(wrapped, Transformer)  # DDP is refused with pp at config time
        parts.append(wrapped)
        stages.append(PipelineStage(wrapped, s, n_stages, device, group=dims.pp_group))
    n_micro = parallel.pp_microbatches or n_stages
    loss = ScaledLoss(loss_fn)
    schedule = make_schedule(parallel.pp_schedule, stages, n_micro, loss)
    return Pipeline(dims, device, ids, n_stages, parts, stages, schedule, n_micro, loss)


def make_schedule(name: str, stages: list[PipelineStage], n_microbatches: int,
                  loss_fn: LossFn) -> object:
    """The schedule; the caller scales the loss, so the schedule must not scale gradients
    (torch >= 2.7 does by default, by ``n_microbatches``; earlier versions never do)."""
    cls = SCHEDULES[name]
    kwargs: dict[str, object] = {"n_microbatches": n_microbatches, "loss_fn": loss_fn}
    if _accepts(cls, "scale_grads"):
        kwargs["scale_grads"] = False
    return cls(stages[0] if name in SINGLE_STAGE else stages, **kwargs)
