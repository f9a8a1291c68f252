"""The training run's config: one TOML file with the sections below.

Every section forbids unknown keys. Cross-field checks name the key they reject.
`check_world_size` runs once the number of ranks is known, before any process starts.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Literal, Self

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
    "tiny": ModelShape(dim=128, n_layers=4, n_heads=4, n_kv_heads=4, ffn_hidden=384,
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


class ParallelConfig(Section):
    strategy: Literal["none", "ddp", "fsdp"] = "fsdp"
    reshard_after_forward: bool = True
    mixed_precision: Literal["auto", "bf16", "fp32"] = "auto"
    activation_checkpoint: Literal["none", "full", "every_nth"] = "none"
    activation_checkpoint_every: int = Field(default=2, ge=1)
    compile: bool = False
    backend: Literal["auto", "gloo", "nccl"] = "auto"


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
    enabled: bool = True
    interval_steps: int = Field(default=0, ge=0)
    interval_minutes: float = Field(default=0.0, ge=0)
    async_save: bool = Field(default=True, alias="async")
    keep_last: int = Field(default=2, ge=1)
    keep_every: int = Field(default=0, ge=0)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class TelemetryConfig(Section):
    metrics_file: str = "metrics.jsonl"
    live: bool = True
    peak_flops: float | None = Field(default=None, gt=0)
    sample_ids: bool = False  # each rank logs its global sample ids per step to RUN_DIR/samples/


class TrainConfig(Section):
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    parallel: ParallelConfig = ParallelConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainSection = TrainSection()
    checkpoint: CheckpointConfig = CheckpointConfig()
    telemetry: TelemetryConfig = TelemetryConfig()

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

    def check_world_size(self, world_size: int, source: str | None = None) -> None:
        """Reject combinations that depend on the number of ranks."""
        if world_size < 1:
            raise ConfigError(source, "--nproc", "must be at least 1")
        if world_size > 1 and self.parallel.strategy == "none":
            raise ConfigError(source, "parallel.strategy",
                              f"'none' runs on one rank, but {world_size} ranks were asked for")
        per_step = self.train.micro_batch_size * world_size
        if self.train.global_batch_size % per_step:
            raise ConfigError(
                source, "train.global_batch_size",
                f"{self.train.global_batch_size} is not divisible by micro_batch_size × "
                f"data-parallel size ({self.train.micro_batch_size} × {world_size} = {per_step})",
            )
