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

[resources]                  # per rank: any named resource (see stoker.spec.resources)
gpu = 1                      # or the old keys gpus = 1, cpus = 2
cpu = "500m"                 # default: 1 CPU
memory = "8GiB"
"example.com/gpu" = 1        # a vendor's resource, whole units

[placement]
topology = "rack"            # a level of the cluster's topology
topology_mode = "required"   # or "preferred"
gpu_model = "H100"           # matched against the flavors' gpu_model (substring, any case)
```

Relative ``train_config`` paths are resolved against the job file's directory by `load_job`.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)
from pydantic.config import JsonDict

from stoker.spec import loading
from stoker.spec.errors import KeyedValueError
from stoker.spec.resources import ALIASES, CPU, GPU, MEMORY, canonical, parse_amount, written

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"

# What a job may ask to run: far below the kernel's own limits (ARG_MAX, MAX_ARG_STRLEN).
MAX_ARGS = 1024  # command arguments
MAX_ENV = 256  # environment entries
MAX_VALUE_BYTES = 32 << 10  # one argument, one environment value (UTF-8)
MAX_EXEC_BYTES = 256 << 10  # all arguments and KEY=VALUE entries together
MAX_OVERRIDES = 256  # train config overrides, each at most MAX_VALUE_BYTES
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,255}$"

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
    if isinstance(value, bool):
        raise ValueError("expected a size such as '8GiB' or a number of bytes, got a boolean")
    if not isinstance(value, str):
        return value
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", value)
    if not m or m.group(2).lower() not in _BYTE_UNITS:
        raise ValueError(f"expected a size such as '8GiB' or '512MB', got {value!r}")
    return int(float(m.group(1)) * _BYTE_UNITS[m.group(2).lower()])


def parse_seconds(value: Any) -> Any:
    """``"90m"``, ``"2h"``, ``"1d"``, ``"30s"`` or a plain number of seconds -> float seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as '90m' or a number of seconds, "
                         "got a boolean")
    if not isinstance(value, str):
        return value
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", value)
    if not m or m.group(2).lower() not in _SECONDS:
        raise ValueError(f"expected a duration such as '90m' or '2h', got {value!r}")
    return float(m.group(1)) * _SECONDS[m.group(2).lower()]


Bytes = Annotated[int, BeforeValidator(parse_bytes), Field(ge=0)]
Seconds = Annotated[float, BeforeValidator(parse_seconds), Field(gt=0, allow_inf_nan=False)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# Any named resource beside the declared keys: a number or a quantity string.
_NAMED: JsonDict = {
    "additionalProperties": {"anyOf": [{"type": "number", "minimum": 0}, {"type": "string"}]},
    "propertyNames": {"anyOf": [{"enum": ["gpu", "cpu", "memory", "ephemeral-storage", "gpus",
                                          "cpus"]},
                                {"pattern": "^[a-z0-9][-a-z0-9.]*/[A-Za-z0-9][-A-Za-z0-9_.]*$"}]},
}


class ResourceAmounts(Section):
    """An amount of each of some named resources (`stoker.spec.resources`). The old keys
    ``gpus``, ``cpus`` (numbers) and ``memory`` (bytes or a size) keep their meaning; any
    other resource is a key of its own: ``gpu``, ``cpu``, ``ephemeral-storage`` or a vendor's
    ``domain/name``, with a number or a quantity string (``cpu = "500m"``). A key given twice
    (``gpus`` and ``gpu``) is refused. `amounts` has them by canonical name, in their units."""

    model_config = ConfigDict(extra="allow", json_schema_extra=_NAMED)

    gpus: float | None = Field(default=None, ge=0)
    cpus: float | None = Field(default=None, ge=0)
    memory: Bytes | None = None
    _amounts: dict[str, int] = PrivateAttr(default_factory=dict)
    _keys: dict[str, str] = PrivateAttr(default_factory=dict)  # resource -> its key as written

    @model_validator(mode="after")
    def _named(self) -> Self:
        amounts: dict[str, int] = {}
        for old in ("gpus", "cpus", "memory"):
            value = getattr(self, old)
            if value is not None:
                amounts[ALIASES.get(old, old)] = parse_amount(ALIASES.get(old, old), value)
                self._keys[ALIASES.get(old, old)] = old
        for key, value in (self.__pydantic_extra__ or {}).items():
            name = canonical(key)
            if name is None or key in ALIASES:
                raise KeyedValueError(key, "unknown key" + self._suggestion(key), relative=True)
            if name in amounts:
                raise KeyedValueError(key, f"{name} is given twice (here and as "
                                      f"{_old_key(name)})", relative=True)
            try:
                amounts[name] = parse_amount(name, value)
            except ValueError as e:
                raise KeyedValueError(key, str(e), relative=True) from None
            self._keys[name] = key
        self._amounts = amounts
        return self

    def key_of(self, name: str) -> str:
        """The key resource ``name`` was given under (``gpus`` or ``gpu``)."""
        return self._keys.get(name, name)

    @model_serializer(mode="wrap")
    def _canonical(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Written back by canonical name (``gpu``, not ``gpus``), as amounts of the resource
        (2 GPUs, 0.5 CPU, bytes): however it was spelt, one request dumps one way."""
        data: dict[str, Any] = handler(self)
        for key in ("gpus", "cpus", "memory", *(self.__pydantic_extra__ or {})):
            data.pop(key, None)
        data.update({name: written(name, v) for name, v in self.written_amounts().items()})
        return data

    def written_amounts(self) -> dict[str, int]:
        """What is written back: every amount given, zeros included."""
        return self._amounts

    def _suggestion(self, key: str) -> str:
        close = difflib.get_close_matches(key, [*type(self).model_fields, GPU, CPU], n=1)
        hint = "; resources other than gpu, cpu, memory and ephemeral-storage are named " \
            "domain/name, such as example.com/gpu"
        return f"; did you mean '{close[0]}'?" if close else hint

    def amounts(self) -> dict[str, int]:
        """The amounts given, by canonical resource name, each in its unit (thousandths of a
        GPU or CPU, bytes, whole units)."""
        return self._amounts


def _old_key(name: str) -> str:
    return next((old for old, new in ALIASES.items() if new == name), name)


class RankResources(ResourceAmounts):
    """What one rank needs: 1 CPU unless told otherwise. GPUs may be fractional (shared GPUs
    in traces). Strict: ``true`` is not 1, ``gpus = "2"`` is not 2, and NaN or infinity is no
    amount (the named keys take quantity strings: ``cpu = "2"``)."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False)

    def amounts(self) -> dict[str, int]:
        """The request by canonical resource name, in each resource's unit, zeros left out."""
        return {name: v for name, v in self.written_amounts().items() if v}

    def written_amounts(self) -> dict[str, int]:
        """Every amount given, zeros included, and the default of 1 CPU."""
        given = self._amounts
        return given if CPU in given else {**given, CPU: 1000}

    @property
    def gpu_count(self) -> float:
        """GPUs per rank (fractional when shared)."""
        return self.amounts().get(GPU, 0) / 1000

    @property
    def cpu_count(self) -> float:
        return self.amounts().get(CPU, 0) / 1000

    @property
    def memory_bytes(self) -> int:
        return self.amounts().get(MEMORY, 0)


class Placement(Section):
    """Topology and GPU-model constraints of the whole gang."""

    topology: str | None = Field(default=None, max_length=128)
    topology_mode: Literal["required", "preferred"] = "preferred"
    gpu_model: str | None = Field(default=None, max_length=128)


# Exactly one of train_config or command (a string, an argument list), in the JSON schema too.
_ONE_KIND: JsonDict = {"oneOf": [
    {"required": ["train_config"], "properties": {"train_config": {"type": "string"}}},
    {"required": ["command"], "properties": {"command": {"type": "array"}}},
]}


class JobSpec(Section):
    model_config = ConfigDict(json_schema_extra=_ONE_KIND)

    name: str = Field(pattern=NAME_PATTERN)
    queue: str = Field(min_length=1, max_length=128)
    priority_class: str | None = Field(default=None, max_length=128)
    ranks: int = Field(default=1, ge=1, le=100_000, strict=True)
    resources: RankResources = RankResources()
    train_config: str | None = Field(default=None, max_length=4096)
    overrides: tuple[str, ...] = ()
    command: tuple[str, ...] | None = Field(
        default=None, min_length=1, max_length=MAX_ARGS,
        json_schema_extra={"prefixItems": [{"type": "string", "minLength": 1}]})
    env: dict[str, str] = Field(default={}, max_length=MAX_ENV,
                                json_schema_extra={"propertyNames": {"pattern": ENV_NAME}})
    max_restarts: int = Field(default=0, ge=0, le=10_000, strict=True)
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
            if not re.fullmatch(ENV_NAME, key):
                raise KeyedValueError(f"env.{key[:64]}", "not a valid environment variable "
                                      "name (letters, digits, _; at most 256)")
        self._check_exec_size()
        return self

    def _check_exec_size(self) -> None:
        """Bound what reaches exec: each argument and value, and all of them together."""
        if len(self.overrides) > MAX_OVERRIDES:
            raise KeyedValueError("overrides", f"at most {MAX_OVERRIDES} overrides")
        fields = [*((f"command.{i}", arg) for i, arg in enumerate(self.command or ())),
                  *((f"env.{k}", v) for k, v in self.env.items()),
                  *((f"overrides.{i}", text) for i, text in enumerate(self.overrides))]
        total = sum(len(k) + 1 for k in self.env)  # the KEY= of each entry
        for key, value in fields:
            if "\0" in value:
                raise KeyedValueError(key, "contains a NUL character")
            size = len(value.encode("utf-8", "surrogatepass"))
            if size > MAX_VALUE_BYTES:
                raise KeyedValueError(key, f"{size} bytes, more than {MAX_VALUE_BYTES}")
            total += size
        if total > MAX_EXEC_BYTES:
            raise KeyedValueError("command", f"the arguments, environment and overrides take "
                                  f"{total} bytes, more than {MAX_EXEC_BYTES}")

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
