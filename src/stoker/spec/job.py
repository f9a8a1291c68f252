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

``after_ok = [12, 13]`` (or ``stoker submit --after-ok 12``): the job waits, QUEUED and
unseen by the scheduler, until jobs 12 and 13 have SUCCEEDED; if one ends FAILED or
CANCELLED it is cancelled (`stoker.control.depends`).

A job may instead have several *roles* (Kueue's pod sets), each its own gang with its own
count, resources, command and placement, admitted all or nothing (e.g. a trainer gang plus
rollout workers, or a launcher on CPU). Then ``ranks``, ``resources``, ``command``,
``train_config``, ``overrides`` and ``placement`` belong to the roles, not to the job:

```toml
name = "rl"
queue = "research"
env = { LOG_LEVEL = "info" }       # every role's; a role's own env wins

[[roles]]
name = "trainer"                   # unique in the job; $STOKER_ROLE of its processes
ranks = 8
command = ["python", "train.py"]
resources = { gpu = 1, cpu = 8 }
placement = { gpu_model = "H100", topology = "rack" }

[[roles]]
name = "rollout"
ranks = 4
command = ["python", "rollout.py"]
resources = { gpu = 1 }
env = { BATCH = "64" }
```

A role runs a command: a ``train_config`` role is refused, since the training config a job
carries (and the server resolves, checks against the world size and writes for the run) is one
per job. The ranks of all roles together are numbered in role order (the trainer's 0-7, the
rollout workers' 8-11 above): ``RANK``/``WORLD_SIZE`` cover the whole job, and
``STOKER_ROLE``, ``STOKER_ROLE_RANK``, ``STOKER_ROLE_WORLD_SIZE`` and ``STOKER_ROLES``
(``trainer=0-7,rollout=8-11``) tell a process its role (`stoker.control.launch`).
`JobSpec.job_roles` gives every job's roles alike: a job without ``roles`` has one, ``main``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass
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
MAX_ROLES = 16  # roles of one job
MAX_RANKS = 100_000  # ranks of one job, all roles together
MAIN_ROLE = "main"  # the one role of a job without ``roles``
MAX_AFTER_OK = 100  # jobs one job may wait for

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


# Exactly one of train_config, command (an argument list) or roles, in the JSON schema too.
_ONE_KIND: JsonDict = {"oneOf": [
    {"required": ["train_config"], "properties": {"train_config": {"type": "string"}}},
    {"required": ["command"], "properties": {"command": {"type": "array"}}},
    {"required": ["roles"], "properties": {"roles": {"type": "array"}}},
]}
_COMMAND: JsonDict = {"prefixItems": [{"type": "string", "minLength": 1}]}
_ENV: JsonDict = {"propertyNames": {"pattern": ENV_NAME}}
# What a job with roles leaves to its roles.
ROLE_KEYS = ("ranks", "resources", "command", "train_config", "overrides", "placement")


class RoleSpec(Section):
    """One ``[[roles]]`` table: a gang of its own within the job, with its own count, per-rank
    resources, command, environment (over the job's) and placement."""

    name: str = Field(pattern=NAME_PATTERN)
    ranks: int = Field(default=1, ge=1, le=MAX_RANKS, strict=True)
    resources: RankResources = RankResources()
    command: tuple[str, ...] = Field(min_length=1, max_length=MAX_ARGS,
                                     json_schema_extra=_COMMAND)
    env: dict[str, str] = Field(default={}, max_length=MAX_ENV, json_schema_extra=_ENV)
    placement: Placement = Placement()

    @model_validator(mode="before")
    @classmethod
    def _command_only(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            for key in ("train_config", "overrides"):
                if key in data:
                    raise KeyedValueError(key, "a role runs a command: a job has one "
                                          "training config, so a train_config job has no "
                                          "roles", relative=True)
        return data


@dataclass(frozen=True)
class JobRole:
    """A role as the control plane runs it (`JobSpec.job_roles`). ``first``: the job-wide rank
    of its first rank (the roles' ranks are numbered in role order); ``command`` None: the
    job's training run; ``env``: the job's env with the role's own over it."""

    name: str
    ranks: int
    resources: RankResources
    placement: Placement
    command: tuple[str, ...] | None
    env: Mapping[str, str]
    first: int

    @property
    def rank_range(self) -> range:
        return range(self.first, self.first + self.ranks)


class JobSpec(Section):
    model_config = ConfigDict(json_schema_extra=_ONE_KIND)

    name: str = Field(pattern=NAME_PATTERN)
    queue: str = Field(min_length=1, max_length=128)
    priority_class: str | None = Field(default=None, max_length=128)
    ranks: int = Field(default=1, ge=1, le=MAX_RANKS, strict=True)
    resources: RankResources = RankResources()
    train_config: str | None = Field(default=None, max_length=4096)
    overrides: tuple[str, ...] = ()
    command: tuple[str, ...] | None = Field(
        default=None, min_length=1, max_length=MAX_ARGS, json_schema_extra=_COMMAND)
    env: dict[str, str] = Field(default={}, max_length=MAX_ENV, json_schema_extra=_ENV)
    max_restarts: int = Field(default=0, ge=0, le=10_000, strict=True)
    max_run_time: Seconds | None = None
    placement: Placement = Placement()
    # Up to MAX_ROLES: the bound is checked by `_check_roles`, with its own message.
    roles: tuple[RoleSpec, ...] | None = Field(default=None, max_length=4 * MAX_ROLES)
    # Jobs that must all have SUCCEEDED before this one is scheduled (Slurm's afterok);
    # one ending FAILED or CANCELLED cancels this one (`stoker.control.depends`).
    after_ok: tuple[Annotated[int, Field(ge=1, strict=True)], ...] = Field(
        default=(), max_length=MAX_AFTER_OK)

    @model_validator(mode="after")
    def _check(self) -> Self:
        if len(set(self.after_ok)) != len(self.after_ok):
            raise KeyedValueError("after_ok", "a job is named twice")
        if self.roles is not None:
            self._check_roles(self.roles)
        else:
            if (self.train_config is None) == (self.command is None):
                raise KeyedValueError("train_config", "give exactly one of train_config, "
                                      "command or roles")
            if self.command is not None and (not self.command or not self.command[0]):
                raise KeyedValueError("command", "must be a non-empty argument list")
            if self.overrides and self.train_config is None:
                raise KeyedValueError("overrides", "only applies to a train_config job")
        for text in self.overrides:
            if "=" not in text:
                raise KeyedValueError("overrides", f"expected section.key=value, got {text!r}")
        _check_env_names(self.env, "env")
        self._check_exec_size(self.command or (), self.env)
        return self

    def _check_roles(self, roles: tuple[RoleSpec, ...]) -> None:
        for key in ROLE_KEYS:
            if key in self.model_fields_set and getattr(self, key) is not None:
                raise KeyedValueError(key, f"not with roles: each role gives its own {key}"
                                      if key in ("ranks", "resources", "command", "placement")
                                      else "not with roles: a role runs a command")
        if not roles:
            raise KeyedValueError("roles", "give at least one role (or no roles, and the "
                                  "job's own ranks and command)")
        if len(roles) > MAX_ROLES:
            raise KeyedValueError("roles", f"at most {MAX_ROLES} roles, not {len(roles)}")
        seen: set[str] = set()
        for i, role in enumerate(roles):
            if role.name in seen:
                raise KeyedValueError(f"roles.{i}.name", f"role {role.name!r} is given twice")
            seen.add(role.name)
            if not role.command[0]:
                raise KeyedValueError(f"roles.{i}.command", "must be a non-empty argument "
                                      "list")
            _check_env_names(role.env, f"roles.{i}.env")
            if len(self.env | role.env) > MAX_ENV:
                raise KeyedValueError(f"roles.{i}.env", f"at most {MAX_ENV} environment "
                                      "entries with the job's")
            self._check_exec_size(role.command, self.env, role.env, f"roles.{i}.")
        total = sum(role.ranks for role in roles)
        if total > MAX_RANKS:
            raise KeyedValueError("roles", f"{total} ranks in all, more than {MAX_RANKS}")

    def _check_exec_size(self, command: tuple[str, ...], env: Mapping[str, str],
                         role_env: Mapping[str, str] | None = None, prefix: str = "") -> None:
        """Bound what reaches exec: each argument and value, and all of them together (a
        role's: its command and ``role_env`` over the job's ``env``; ``prefix``: its key)."""
        if len(self.overrides) > MAX_OVERRIDES:
            raise KeyedValueError("overrides", f"at most {MAX_OVERRIDES} overrides")
        own = role_env or {}
        env = {**env, **own}
        fields = [*((f"{prefix}command.{i}", arg) for i, arg in enumerate(command)),
                  *((f"{prefix if k in own else ''}env.{k}", v) for k, v in env.items()),
                  *((f"overrides.{i}", text) for i, text in enumerate(self.overrides))]
        total = sum(len(k) + 1 for k in env)  # the KEY= of each entry
        for key, value in fields:
            if "\0" in value:
                raise KeyedValueError(key, "contains a NUL character")
            size = len(value.encode("utf-8", "surrogatepass"))
            if size > MAX_VALUE_BYTES:
                raise KeyedValueError(key, f"{size} bytes, more than {MAX_VALUE_BYTES}")
            total += size
        if total > MAX_EXEC_BYTES:
            raise KeyedValueError(f"{prefix}command", f"the arguments, environment and "
                                  f"overrides take {total} bytes, more than {MAX_EXEC_BYTES}")

    @model_serializer(mode="wrap")
    def _only_given(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """A job without roles is written without ``roles`` (as before roles existed); one
        with roles without the keys its roles hold, so what is written reads back."""
        data: dict[str, Any] = handler(self)
        for key in ROLE_KEYS if self.roles is not None else ("roles",):
            data.pop(key, None)
        if not self.after_ok:
            data.pop("after_ok", None)  # stored as before dependencies existed
        return data

    @property
    def kind(self) -> Literal["train", "command"]:
        return "train" if self.train_config is not None else "command"

    def job_roles(self) -> tuple[JobRole, ...]:
        """Every role of the job, in order; a job without ``roles`` has one, `MAIN_ROLE`, of
        its own ranks, resources, placement and command (None for a training job)."""
        if self.roles is None:
            return (JobRole(MAIN_ROLE, self.ranks, self.resources, self.placement,
                            self.command, self.env, 0),)
        found, first = [], 0
        for r in self.roles:
            found.append(JobRole(r.name, r.ranks, r.resources, r.placement, r.command,
                                 self.env | r.env, first))
            first += r.ranks
        return tuple(found)

    @property
    def total_ranks(self) -> int:
        """The ranks of all roles together."""
        return self.ranks if self.roles is None else sum(r.ranks for r in self.roles)


def _check_env_names(env: Mapping[str, str], where: str) -> None:
    for key in env:
        if not re.fullmatch(ENV_NAME, key):
            raise KeyedValueError(f"{where}.{key[:64]}", "not a valid environment variable "
                                  "name (letters, digits, _; at most 256)")


def load_job(path: str | Path, overrides: tuple[str, ...] | list[str] = ()) -> JobSpec:
    """Read and validate a job file; a relative ``train_config`` is made absolute."""
    job = loading.load(JobSpec, path, overrides)
    if job.train_config is not None and not Path(job.train_config).is_absolute():
        resolved = (Path(path).resolve().parent / job.train_config).as_posix()
        job = job.model_copy(update={"train_config": resolved})
    return job
