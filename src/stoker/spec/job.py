"""A job spec (``job.toml``): what to run, where it may run, and what each rank needs.

```toml
name = "tiny-ft"
queue = "research"
priority_class = "high"      # optional: the cluster's default class
ranks = 2
max_restarts = 3
max_run_time = "2h"          # seconds, or a number with s/m/h/d
train_config = "tiny.toml"   # a Stoker training config ...
overrides = ["train.steps=50"]
# command = ["python", "x.py"]   # ... or an argument list, never run through a shell

[resources]                  # per rank
gpus = 1
cpus = 2
memory = "8GiB"

[placement]
topology = "rack"            # a level of the cluster's topology
topology_mode = "required"   # or "preferred"
gpu_model = "H100"           # matched against the flavors' gpu_model (substring, any case)
```

Relative ``train_config`` paths are resolved against the job file's directory by `load_job`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from stoker.spec import loading
from stoker.spec.errors import KeyedValueError

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"

_BYTE_UNITS = {
    "": 1, "b": 1,
    "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
    "t": 10**12, "tb": 10**12,
    "ki": 2**10, "kib": 2**10, "mi": 2**20, "mib": 2**20, "gi": 2**30, "gib": 2**30,
    "ti": 2**40, "tib": 2**40,
}
_SECONDS = {"": 1, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def parse_bytes(value: Any) -> Any:
    """``"8GiB"``, ``"512M"``, ``"1.5Gi"`` or a plain number of bytes -> int bytes."""
    if not isinstance(value, str):
        return value
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", value)
    if not m or m.group(2).lower() not in _BYTE_UNITS:
        raise ValueError(f"expected a size such as '8GiB' or '512MB', got {value!r}")
    return int(float(m.group(1)) * _BYTE_UNITS[m.group(2).lower()])


def parse_seconds(value: Any) -> Any:
    """``"90m"``, ``"2h"``, ``"1d"``, ``"30s"`` or a plain number of seconds -> float seconds."""
    if not isinstance(value, str):
        return value
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", value)
    if not m or m.group(2).lower() not in _SECONDS:
        raise ValueError(f"expected a duration such as '90m' or '2h', got {value!r}")
    return float(m.group(1)) * _SECONDS[m.group(2).lower()]


Bytes = Annotated[int, BeforeValidator(parse_bytes), Field(ge=0)]
Seconds = Annotated[float, BeforeValidator(parse_seconds), Field(gt=0)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RankResources(Section):
    """What one rank needs. GPUs may be fractional (shared GPUs in traces)."""

    gpus: float = Field(default=0, ge=0)
    cpus: float = Field(default=1, ge=0)
    memory: Bytes = 0


class Placement(Section):
    """Topology and GPU-model constraints of the whole gang."""

    topology: str | None = None
    topology_mode: Literal["required", "preferred"] = "preferred"
    gpu_model: str | None = None


class JobSpec(Section):
    name: str = Field(pattern=NAME_PATTERN)
    queue: str = Field(min_length=1)
    priority_class: str | None = None
    ranks: int = Field(default=1, ge=1, le=100_000)
    resources: RankResources = RankResources()
    train_config: str | None = None
    overrides: tuple[str, ...] = ()
    command: tuple[str, ...] | None = None
    env: dict[str, str] = {}
    max_restarts: int = Field(default=0, ge=0)
    max_run_time: Seconds | None = None
    placement: Placement = Placement()

    @model_validator(mode="after")
    def _check(self) -> Self:
        if (self.train_config is None) == (self.command is None):
            raise KeyedValueError("train_config", "give exactly one of train_config or command")
        if self.command is not None and (not self.command or not self.command[0]):
            raise KeyedValueError("command", "must be a non-empty argument list")
        if self.overrides and self.train_config is None:
            raise KeyedValueError("overrides", "only applies to a train_config job")
        for text in self.overrides:
            if "=" not in text:
                raise KeyedValueError("overrides", f"expected section.key=value, got {text!r}")
        for key in self.env:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                raise KeyedValueError(f"env.{key}", "not a valid environment variable name")
        return self

    @property
    def kind(self) -> Literal["train", "command"]:
        return "train" if self.train_config is not None else "command"


def load_job(path: str | Path, overrides: tuple[str, ...] | list[str] = ()) -> JobSpec:
    """Read and validate a job file; a relative ``train_config`` is made absolute."""
    job = loading.load(JobSpec, path, overrides)
    if job.train_config is not None and not Path(job.train_config).is_absolute():
        resolved = (Path(path).resolve().parent / job.train_config).as_posix()
        job = job.model_copy(update={"train_config": resolved})
    return job
