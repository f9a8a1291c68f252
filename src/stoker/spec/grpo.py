"""The GRPO recipe's config (`stoker grpo CONFIG.toml`): model, task, warm-up, GRPO, run."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, model_validator

from stoker.spec.errors import KeyedValueError
from stoker.spec.train import ModelConfig, Section, check_sinks


class TaskConfig(Section):
    """The synthetic task (`stoker.train.grpo_tasks`)."""

    name: Literal["reverse", "addition"] = "reverse"
    min_len: int = Field(default=3, gt=0)
    max_len: int = Field(default=6, gt=0)
    partial: float = Field(default=0.5, ge=0, le=1)  # the most a wrong answer can score
    held_out: int = Field(default=200, gt=0)  # prompts never trained on, for pass@1

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.max_len < self.min_len:
            raise KeyedValueError("task.max_len", f"{self.max_len} is below min_len "
                                  f"{self.min_len}")
        return self


class WarmupConfig(Section):
    """Supervised steps on prompt + answer (loss on the answer only) before GRPO."""

    steps: int = Field(default=200, ge=0)
    batch_size: int = Field(default=32, gt=0)
    lr: float = Field(default=3e-3, gt=0)


class GrpoConfig(Section):
    """One step: ``prompts`` prompts, ``group_size`` sampled completions each, then
    ``iterations`` optimiser steps on that batch (the paper's μ)."""

    steps: int = Field(default=100, ge=0)
    prompts: int = Field(default=16, gt=0)
    group_size: int = Field(default=8, gt=0)
    iterations: int = Field(default=2, gt=0)
    clip_eps: float = Field(default=0.2, gt=0, lt=1)
    beta: float = Field(default=0.0, ge=0)  # KL weight; 0: no reference model is kept
    lr: float = Field(default=1e-3, gt=0)
    grad_clip: float = Field(default=1.0, gt=0)
    temperature: float = Field(default=1.0, gt=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    max_new_tokens: int = Field(default=12, gt=0)
    eval_interval: int = Field(default=10, gt=0)
    checkpoint_interval: int = Field(default=50, ge=0)  # 0: only after the warm-up


class RunConfig(Section):
    name: str = "grpo"
    seed: int = 0
    threads: int = Field(default=0, ge=0)  # torch intra-op threads; 0: torch's default


class RolesConfig(Section):
    """GRPO as a job with roles (`stoker.train.grpo_roles`): how weights reach the rollout
    workers, and how many versions old a rollout's weights may be (0: synchronous)."""

    sync: Literal["file", "broadcast"] = "file"
    max_staleness: int = Field(default=0, ge=0)


class GrpoTelemetry(Section):
    """``sinks``: where each step's record goes besides RUN_DIR/grpo.jsonl (always written), as
    training's ``[telemetry] sinks``; each but jsonl needs the extra of its name."""

    sinks: list[str] = Field(default_factory=lambda: ["jsonl"])

    @model_validator(mode="after")
    def _check(self) -> Self:
        check_sinks(self.sinks)
        return self


class GrpoRecipe(Section):
    model: ModelConfig = ModelConfig(preset="tiny")
    task: TaskConfig = TaskConfig()
    warmup: WarmupConfig = WarmupConfig()
    grpo: GrpoConfig = GrpoConfig()
    run: RunConfig = RunConfig()
    telemetry: GrpoTelemetry = GrpoTelemetry()
    roles: RolesConfig = RolesConfig()
