"""The training run's config: one TOML file with the sections below.

Every section forbids unknown keys. Cross-field checks name the key they reject.
`check_world_size` runs once the number of ranks is known, before any process starts.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from stoker.spec.errors import ConfigError, KeyedValueError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelShape(Section):
    """The shape of the reference decoder-only transformer."""

    dim: int = Field(gt=0)
    n_layers: int = Field(gt=0)
    n_heads: int = Field(gt=0)
    n_kv_heads: int = Field(gt=0)
    ffn_hidden: int = Field(gt=0)
    vocab_size: int = Field(gt=0)
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    tie_embeddings: bool = False

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


PRESETS: dict[str, ModelShape] = {
    # ffn_hidden as Llama sizes it: 2/3 of GPT-2's 4 x dim (SwiGLU has three matrices, not two),
    # rounded up to a multiple of 8, so tiny does the FLOPs of a GPT-2 of its width.
    "tiny": ModelShape(dim=128, n_layers=4, n_heads=4, n_kv_heads=4, ffn_hidden=344,
                       vocab_size=256),
    "gpt2-124m": ModelShape(dim=768, n_layers=12, n_heads=12, n_kv_heads=12, ffn_hidden=2048,
                            vocab_size=50304, tie_embeddings=True),
    "llama-1b": ModelShape(dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, ffn_hidden=8192,
                           vocab_size=128256, rope_theta=500000.0, tie_embeddings=True),
    "llama-8b": ModelShape(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, ffn_hidden=14336,
                           vocab_size=128256, rope_theta=500000.0),
}


class ModelConfig(Section):
    """A preset, with any of its shape fields overridden."""

    preset: str = "tiny"
    dim: int | None = Field(default=None, gt=0)
    n_layers: int | None = Field(default=None, gt=0)
    n_heads: int | None = Field(default=None, gt=0)
    n_kv_heads: int | None = Field(default=None, gt=0)
    ffn_hidden: int | None = Field(default=None, gt=0)
    vocab_size: int | None = Field(default=None, gt=0)
    norm_eps: float | None = Field(default=None, gt=0)
    rope_theta: float | None = Field(default=None, gt=0)
    tie_embeddings: bool | None = None

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.preset not in PRESETS:
            known = ", ".join(PRESETS)
            raise KeyedValueError("model.preset",
                                  f"unknown preset {self.preset!r} (known: {known})")
        shape = self.shape()
        if shape.dim % shape.n_heads:
            raise KeyedValueError("model.n_heads", f"dim {shape.dim} is not divisible by "
                                  f"n_heads {shape.n_heads}")
        if shape.n_heads % shape.n_kv_heads:
            raise KeyedValueError("model.n_kv_heads", f"n_heads {shape.n_heads} is not "
                                  f"divisible by n_kv_heads {shape.n_kv_heads}")
        if shape.head_dim % 2:
            raise KeyedValueError("model.dim", "head dimension must be even for rotary embeddings")
        return self

    def shape(self) -> ModelShape:
        overrides = {k: v for k, v in self.model_dump(exclude={"preset"}).items() if v is not None}
        return PRESETS[self.preset].model_copy(update=overrides)


class DataConfig(Section):
    """Where tokens come from: the built-in ``stdlib`` corpus or a directory of prepared shards."""

    dataset: str = "stdlib"
    tokenizer: Literal["byte", "bpe"] = "byte"
    bpe_vocab_size: int = Field(default=4096, ge=260, le=65535)
    cache_dir: str = ".cache/stoker/data"
    val_fraction: float = Field(default=0.01, ge=0.0, lt=0.5)
    prefetch: int = Field(default=4, ge=0)


PipelineSchedule = Literal["gpipe", "1f1b", "interleaved-1f1b", "zero-bubble"]


class Layout(BaseModel):
    """The parallel layout of one run, resolved for its world size: the size of each mesh
    dimension, outermost first (pp, dp_replicate, dp_shard, cp, tp). Their product is the world
    size."""

    model_config = ConfigDict(frozen=True)

    pp: int
    dp_replicate: int
    dp_shard: int
    cp: int
    tp: int

    @property
    def world_size(self) -> int:
        return self.pp * self.dp_replicate * self.dp_shard * self.cp * self.tp

    @property
    def dp(self) -> int:
        """Ranks that see different data: the data-parallel size."""
        return self.dp_replicate * self.dp_shard


class ParallelConfig(Section):
    """How the ranks are laid out and what is applied to the model.

    ``strategy`` is a shorthand for the data-parallel dimensions: ``ddp`` puts every rank left
    by tp/pp/cp into ``dp_replicate``, ``fsdp`` into ``dp_shard``, ``none`` into neither. Any
    dimension given explicitly wins; ``-1`` takes whatever the others leave of the world size.
    ``pp_schedule`` names the schedules of ``torch.distributed.pipelining`` (``zero-bubble`` is
    its ``ScheduleInterleavedZeroBubble``; the looped BFS and DualPipeV schedules are left out:
    BFS is a special case of interleaved with no memory advantage here, and DualPipeV needs a
    model split into V-shaped stage pairs that the reference model does not define).
    """

    strategy: Literal["none", "ddp", "fsdp"] = "fsdp"
    dp_replicate: int | None = Field(default=None, ge=-1)
    dp_shard: int | None = Field(default=None, ge=-1)
    tp: int = Field(default=1, ge=1)
    pp: int = Field(default=1, ge=1)
    cp: int = Field(default=1, ge=1)
    pp_schedule: PipelineSchedule = "1f1b"
    pp_microbatches: int | None = Field(default=None, ge=1)
    pp_stages_per_rank: int = Field(default=1, ge=1)
    pp_split: list[int] | None = None  # first layer index of each stage after the first
    reshard_after_forward: bool = True
    mixed_precision: Literal["auto", "bf16", "fp32"] = "auto"
    activation_checkpoint: Literal["none", "full", "every_nth"] = "none"
    activation_checkpoint_every: int = Field(default=2, ge=1)
    compile: bool = False
    backend: Literal["auto", "gloo", "nccl"] = "auto"

    @model_validator(mode="after")
    def _check(self) -> Self:
        for key in ("dp_replicate", "dp_shard"):
            if getattr(self, key) == 0:
                raise KeyedValueError(f"parallel.{key}", "must be a positive size or -1 "
                                      "(whatever the other dimensions leave)")
        if self.dp_replicate == -1 and self.dp_shard == -1:
            raise KeyedValueError("parallel.dp_shard", "only one of parallel.dp_replicate and "
                                  "parallel.dp_shard can be -1")
        if self.pp_split is not None:
            if any(b <= a for a, b in zip(self.pp_split, self.pp_split[1:], strict=False)):
                raise KeyedValueError("parallel.pp_split", f"{self.pp_split} must be strictly "
                                      "increasing layer indices")
            if self.pp_split and self.pp_split[0] < 1:
                raise KeyedValueError("parallel.pp_split", "the first stage needs at least one "
                                      "layer: indices start at 1")
        return self

    @property
    def n_stages(self) -> int:
        """Pipeline stages in all: pp ranks, each holding pp_stages_per_rank of them."""
        return self.pp * self.pp_stages_per_rank

    def layout(self, world_size: int, source: str | None = None) -> Layout:
        """Each mesh dimension's size for ``world_size`` ranks, or a ConfigError naming the key
        that makes the layout impossible."""
        if self.strategy == "ddp":
            replicate, shard = -1, 1
        elif self.strategy == "fsdp":
            replicate, shard = 1, -1
        else:
            replicate, shard = 1, 1
        if self.dp_replicate is not None:
            replicate = self.dp_replicate
            if self.dp_shard is None and shard == -1 == replicate:
                shard = 1
        if self.dp_shard is not None:
            shard = self.dp_shard
            if self.dp_replicate is None and replicate == -1 == shard:
                replicate = 1
        fixed = self.tp * self.pp * self.cp
        sizes = {"dp_replicate": replicate, "dp_shard": shard}
        for key, size in sizes.items():
            if size == -1:
                other = fixed * (sizes["dp_shard"] if key == "dp_replicate"
                                 else sizes["dp_replicate"])
                if world_size % other:
                    raise ConfigError(source, f"parallel.{key}",
                                      f"-1 leaves no whole size: {world_size} ranks are not "
                                      f"divisible by the other dimensions' product {other}")
                sizes[key] = world_size // other
        layout = Layout(pp=self.pp, dp_replicate=sizes["dp_replicate"],
                        dp_shard=sizes["dp_shard"], cp=self.cp, tp=self.tp)
        if layout.world_size != world_size:
            key = ("parallel.strategy" if self.strategy == "none" and fixed == 1
                   and self.dp_replicate is None and self.dp_shard is None
                   else "parallel.dp_shard")
            if key == "parallel.strategy":
                reason = f"'none' runs on one rank, but {world_size} ranks were asked for"
            else:
                reason = (f"pp × dp_replicate × dp_shard × cp × tp = {layout.pp} × "
                          f"{layout.dp_replicate} × {layout.dp_shard} × {layout.cp} × "
                          f"{layout.tp} = {layout.world_size}, but {world_size} ranks were "
                          "asked for")
            raise ConfigError(source, key, reason)
        return layout


class OptimConfig(Section):
    lr: float = Field(default=3e-4, gt=0)
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)
    weight_decay: float = Field(default=0.1, ge=0)
    beta1: float = Field(default=0.9, ge=0, lt=1)
    beta2: float = Field(default=0.95, ge=0, lt=1)
    eps: float = Field(default=1e-8, gt=0)
    grad_clip: float = Field(default=1.0, ge=0)
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    warmup_steps: int = Field(default=20, ge=0)
    decay_fraction: float = Field(default=0.2, gt=0, le=1)
    fused: Literal["auto", "on", "off"] = "auto"


class TrainSection(Section):
    name: str = "run"
    steps: int = Field(default=200, gt=0)
    global_batch_size: int = Field(default=16, gt=0)
    micro_batch_size: int = Field(default=8, gt=0)
    seq_len: int = Field(default=128, gt=1)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    eval_interval: int = Field(default=50, ge=0)
    eval_steps: int = Field(default=4, ge=1)
    log_interval: int = Field(default=1, ge=1)
    hang_timeout_s: float = Field(default=300.0, gt=0)
    # Loss guard: a non-finite loss or grad norm, or a loss above loss_spike_factor x the median
    # of the last loss_spike_window good steps (0: no spike check), skips the step's update or
    # rolls back to the last committed checkpoint.
    loss_guard: Literal["off", "skip", "rollback"] = "skip"
    loss_spike_factor: float = Field(default=0.0, ge=0)
    loss_spike_window: int = Field(default=50, ge=1)

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.loss_spike_factor and self.loss_spike_factor <= 1:
            raise KeyedValueError("train.loss_spike_factor",
                                  f"{self.loss_spike_factor} must be above 1 (or 0: off)")
        if self.global_batch_size % self.micro_batch_size:
            raise KeyedValueError(
                "train.global_batch_size",
                f"{self.global_batch_size} is not divisible by train.micro_batch_size "
                f"{self.micro_batch_size}",
            )
        return self


class CheckpointConfig(Section):
    """When to save and what to keep.

    ``interval = "fixed"`` (the default) saves every ``interval_steps`` steps and/or every
    ``interval_minutes`` minutes (0: not by that measure). ``interval = "auto"`` chooses the
    time between saves itself (`stoker.train.ckpt_interval`): Daly's optimum from the measured
    cost of a save and the gang's mean time between failures (the cluster's observed failure
    rate under the control plane, else ``mtbf_hours``), kept within ``auto_min_minutes`` and
    ``auto_max_minutes``; the ``auto_*`` and ``mtbf_hours`` keys are used by it only.
    """

    enabled: bool = True
    interval: Literal["fixed", "auto"] = "fixed"
    interval_steps: int = Field(default=0, ge=0)
    interval_minutes: float = Field(default=0.0, ge=0)
    auto_min_minutes: float = Field(default=1.0, gt=0)
    auto_max_minutes: float = Field(default=60.0, gt=0)
    mtbf_hours: float = Field(default=24.0, gt=0)
    async_save: bool = Field(default=True, alias="async")
    keep_last: int = Field(default=2, ge=1)
    keep_every: int = Field(default=0, ge=0)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.interval == "auto":
            for key in ("interval_steps", "interval_minutes"):
                if getattr(self, key):
                    raise KeyedValueError(f"checkpoint.{key}", "contradicts checkpoint.interval "
                                          "= \"auto\", which chooses the time between saves: "
                                          "set one or the other")
        if self.auto_min_minutes > self.auto_max_minutes:
            raise KeyedValueError("checkpoint.auto_min_minutes",
                                  f"{self.auto_min_minutes} is above checkpoint.auto_max_minutes "
                                  f"{self.auto_max_minutes}")
        return self


class StragglerConfig(Section):
    """Live straggler detection (`stoker.observe.straggler`): a rank is flagged when its
    relative score stays below ``threshold`` for ``patience`` consecutive log steps; each
    score is over the median of the last ``window`` steps' section times."""

    enabled: bool = True
    threshold: float = Field(default=0.7, gt=0, lt=1)
    window: int = Field(default=20, ge=1)
    patience: int = Field(default=3, ge=1)


SINKS = ("jsonl", "tensorboard", "wandb", "mlflow")


class TelemetryConfig(Section):
    """``sinks``: where rank 0 sends each step's metrics besides metrics.jsonl, which is always
    written (`stoker.observe.sinks`); each but jsonl needs the extra of its name."""

    metrics_file: str = "metrics.jsonl"
    live: bool = True
    peak_flops: float | None = Field(default=None, gt=0)
    sample_ids: bool = False  # each rank logs its global sample ids per step to RUN_DIR/samples/
    sinks: list[str] = ["jsonl"]

    @model_validator(mode="after")
    def _check(self) -> Self:
        check_sinks(self.sinks)
        return self


def check_sinks(sinks: list[str]) -> None:
    """``telemetry.sinks`` names known sinks, each once."""
    for name in sinks:
        if name not in SINKS:
            raise KeyedValueError("telemetry.sinks", f"unknown sink {name!r} (known: "
                                  f"{', '.join(SINKS)})")
    if len(set(sinks)) < len(sinks):
        raise KeyedValueError("telemetry.sinks", f"{sinks} names a sink twice")


class ProfileConfig(Section):
    """torch.profiler from the start of the run, on its schedule (``torch.profiler.schedule``):
    ``wait`` steps off, ``warmup`` steps profiled but not kept, ``active`` steps recorded, the
    cycle ``repeat`` times (0: until the run ends). Each recorded window goes to
    RUN_DIR/profiles/<stamp>-step<first>/, one trace per rank (`stoker.train.profiling`).
    ``stoker profile RUN_DIR`` captures on demand without it."""

    enabled: bool = False
    wait: int = Field(default=5, ge=0)
    warmup: int = Field(default=1, ge=0)
    active: int = Field(default=3, ge=1)
    repeat: int = Field(default=1, ge=0)
    memory: bool = False  # CUDA: the allocator's history; CPU: the profiler's memory timeline
    with_stack: bool = False
    gzip: bool = False


TASK_MODULE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class TaskConfig(Section):
    """Your own model, data and loss (`stoker.train.task`). ``module`` names the function that
    builds the task, ``"package.module:function"``, imported from the directory ``path``
    (default: the config file's) or PYTHONPATH; unset, the built-in language model is trained
    (``[model]`` and ``[data]``). ``args`` are the task's own settings, handed to it as they are."""

    module: str | None = None
    path: str | None = None
    args: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.module is not None and not TASK_MODULE.match(self.module):
            raise KeyedValueError("task.module", f"{self.module!r} is not "
                                  "\"package.module:function\"")
        return self


class TrainConfig(Section):
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    parallel: ParallelConfig = ParallelConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainSection = TrainSection()
    checkpoint: CheckpointConfig = CheckpointConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    straggler: StragglerConfig = StragglerConfig()
    profile: ProfileConfig = ProfileConfig()
    task: TaskConfig = TaskConfig()

    def check_confined(self, source: str | None = None) -> None:
        """Reject output paths that leave the run (a control-plane job writes only inside its
        own directory): they must be relative, with no ``..`` and no ``~``."""
        for key, value in (("telemetry.metrics_file", self.telemetry.metrics_file),
                           ("data.cache_dir", self.data.cache_dir)):
            path = PurePosixPath(value)
            if path.is_absolute() or ".." in path.parts or value.startswith("~"):
                raise ConfigError(source, key, f"{value!r} leaves the job's directory: give a "
                                  "path relative to it, without '..'")

    def grad_accum_steps(self, dp_size: int) -> int:
        return self.train.global_batch_size // (self.train.micro_batch_size * dp_size)

    def check_world_size(self, world_size: int, source: str | None = None) -> Layout:
        """Reject combinations that depend on the number of ranks; returns the layout."""
        if world_size < 1:
            raise ConfigError(source, "--nproc", "must be at least 1")
        p = self.parallel
        layout = p.layout(world_size, source)
        if self.task.module is not None:
            check_task_layout(p, source)
        shape = self.model.shape()
        per_step = self.train.micro_batch_size * layout.dp
        if self.train.global_batch_size % per_step:
            raise ConfigError(
                source, "train.global_batch_size",
                f"{self.train.global_batch_size} is not divisible by micro_batch_size × "
                f"data-parallel size ({self.train.micro_batch_size} × {layout.dp} = {per_step})",
            )
        if p.tp > 1:
            for key, n in (("n_heads", shape.n_heads), ("n_kv_heads", shape.n_kv_heads)):
                if n % p.tp:
                    raise ConfigError(source, "parallel.tp", f"model.{key} {n} is not "
                                      f"divisible by tp {p.tp}")
            for key, n in (("ffn_hidden", shape.ffn_hidden), ("vocab_size", shape.vocab_size),
                           ("dim", shape.dim)):
                if n % p.tp:
                    raise ConfigError(source, "parallel.tp", f"model.{key} {n} is not "
                                      f"divisible by tp {p.tp}")
            if self.train.seq_len % (p.tp * p.cp):
                split = f"tp {p.tp}" if p.cp == 1 else f"cp × tp = {p.cp * p.tp}"
                raise ConfigError(source, "parallel.tp", f"train.seq_len {self.train.seq_len} "
                                  f"is not divisible by {split} (sequence parallelism splits "
                                  "each rank's tokens)")
            if shape.tie_embeddings:
                raise ConfigError(source, "parallel.tp", "tp with model.tie_embeddings = true "
                                  "is not supported yet")
            if layout.dp_replicate > 1 and layout.dp_shard == 1 and p.strategy != "fsdp":
                raise ConfigError(source, "parallel.tp", "tp with DDP (dp_replicate without "
                                  "dp_shard) is not supported yet: use parallel.strategy = "
                                  "\"fsdp\" or set parallel.dp_shard")
        if p.cp > 1 and self.train.seq_len % (2 * p.cp):
            raise ConfigError(source, "parallel.cp", f"train.seq_len {self.train.seq_len} is "
                              f"not divisible by 2 × cp = {2 * p.cp} (load-balanced context "
                              "parallelism splits it in 2 × cp chunks)")
        if p.pp > 1 or p.pp_stages_per_rank > 1 or p.pp_split is not None:
            check_pipeline(self, layout, source)
        return layout


def check_pipeline(cfg: TrainConfig, layout: Layout, source: str | None = None) -> None:
    """Pipeline layouts that cannot run: too few layers or micro-batches for the stages, a
    split that does not fit the model, a schedule that cannot place the stages, and what
    pipelining does not combine with yet."""
    p, shape = cfg.parallel, cfg.model.shape()
    for key, given in (("pp_stages_per_rank", p.pp_stages_per_rank != 1),
                       ("pp_split", p.pp_split is not None)):
        if p.pp == 1 and given:
            raise ConfigError(source, f"parallel.{key}", "needs pipeline parallelism: set "
                              "parallel.pp > 1")
    stages = p.n_stages
    if p.pp_schedule in ("gpipe", "1f1b") and p.pp_stages_per_rank != 1:
        raise ConfigError(source, "parallel.pp_stages_per_rank", f"{p.pp_schedule!r} runs one "
                          "stage per rank; the interleaved schedules run more")
    if p.pp_schedule in ("interleaved-1f1b", "zero-bubble") and p.pp_stages_per_rank < 2:
        raise ConfigError(source, "parallel.pp_stages_per_rank", f"{p.pp_schedule!r} needs at "
                          "least 2 stages per rank")
    if shape.n_layers < stages:
        raise ConfigError(source, "parallel.pp", f"model.n_layers {shape.n_layers} is fewer "
                          f"than the {stages} pipeline stages")
    if p.pp_split is not None and (len(p.pp_split) != stages - 1
                                   or p.pp_split[-1] >= shape.n_layers):
        raise ConfigError(source, "parallel.pp_split", f"{stages} stages need {stages - 1} "
                          f"increasing layer indices below model.n_layers {shape.n_layers}, "
                          f"got {p.pp_split}")
    micro = p.pp_microbatches or stages
    if micro < stages:
        raise ConfigError(source, "parallel.pp_microbatches", f"{micro} is fewer than the "
                          f"{stages} pipeline stages")
    if cfg.train.micro_batch_size % micro:
        raise ConfigError(source, "parallel.pp_microbatches", f"train.micro_batch_size "
                          f"{cfg.train.micro_batch_size} is not divisible by {micro}")
    rounds = max(1, micro // p.pp)  # the interleaved schedules run the micro-batches in rounds
    if p.pp_stages_per_rank > 1 and micro % rounds:
        raise ConfigError(source, "parallel.pp_microbatches", f"{p.pp_schedule!r} runs {micro} "
                          f"micro-batches in rounds of pp = {p.pp}: give a multiple of pp, or "
                          "fewer than 2 × pp")
    if p.pp > 1 and shape.tie_embeddings:
        raise ConfigError(source, "parallel.pp", "pp with model.tie_embeddings = true is not "
                          "supported yet: the first and last stages would share one weight")
    if p.pp > 1 and p.strategy == "ddp" and layout.dp_shard == 1 and layout.tp == 1:
        raise ConfigError(source, "parallel.pp", "pp with DDP is not supported yet: use "
                          "parallel.strategy = \"fsdp\" or set parallel.dp_shard")


def check_task_layout(p: ParallelConfig, source: str | None = None) -> None:
    """A user task runs data parallel (DDP, FSDP2, HSDP) only: tp, pp and cp need a plan of the
    model that only the built-in one has."""
    for key, size in (("tp", p.tp), ("pp", p.pp), ("cp", p.cp)):
        if size > 1:
            raise ConfigError(source, f"parallel.{key}", f"{key} > 1 is not supported for a "
                              "[task] model yet: use parallel.strategy = \"ddp\" or \"fsdp\"")
