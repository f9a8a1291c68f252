"""A pipeline file (``pipeline.toml``): a DAG of steps with declared inputs, outputs and
parameters, run by `stoker.pipeline` (``stoker pipeline run FILE``).

```toml
name = "cnn-demo"
store = "store"              # the artifact store: a directory (relative to this file) or
                             # any fsspec URL; default .stoker/pipelines in the current directory
path = "."                   # where step modules are imported from (default: this file's dir)
workers = 2                  # processes for a fanned-out step's shards (default: CPU count)

[retry]                      # every step's, unless it sets its own
attempts = 3                 # tries in all
backoff_s = 1.0              # wait before try n+1: backoff_s * 2**(n-1), at most max_backoff_s
max_backoff_s = 60.0

[control]                    # optional: training steps become jobs on a Stoker server
url = "http://127.0.0.1:8470"
token_env = "STOKER_TOKEN"   # the environment variable holding the API token
queue = "default"
jobs_dir = "/var/lib/stoker/jobs"  # the server's job directories, as seen from here

[steps.generate]
run = "steps:generate"       # a Python function "module:function", called with a StepContext
params = { samples = 512 }
outputs = ["images"]
shards = 4                   # fan out: one call per shard, in parallel processes

[steps.train]
train = "cnn.toml"           # or a Stoker training config, run as a Stoker job
nproc = 1
inputs = { images = "generate.images" }
params = { train = { steps = 20 }, task = { args = { data = "{inputs.images}" } } }
```

A step is either ``run`` (a function) or ``train`` (a training config; ``params`` are
overrides of that config, a string value may name an input's local path ``{inputs.NAME}``,
and its outputs are ``run``, the run directory, and ``model``, the model as safetensors).
An input ``"step.output"`` of a fanned-out step is, in a step with as many shards, the matching
shard's artifact, and in any other step the list of all its shards' artifacts.
"""

from __future__ import annotations

import graphlib
import re
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from stoker.spec.errors import KeyedValueError
from stoker.spec.train import TASK_MODULE

NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,62}$")
TRAIN_OUTPUTS = ("run", "model")
INPUT_REF = re.compile(r"\{inputs\.([A-Za-z_][A-Za-z0-9_-]*)\}")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Retry(Section):
    attempts: int = Field(default=3, ge=1, le=100)
    backoff_s: float = Field(default=1.0, ge=0)
    max_backoff_s: float = Field(default=60.0, ge=0)

    def delay(self, failed_tries: int) -> float:
        """Seconds to wait after the ``failed_tries``-th failed try."""
        return float(min(self.max_backoff_s, self.backoff_s * 2 ** (failed_tries - 1)))


class Control(Section):
    url: str
    token_env: str = "STOKER_TOKEN"
    queue: str = "default"
    jobs_dir: str
    cpus_per_rank: float = Field(default=1.0, gt=0)
    timeout_s: float = Field(default=24 * 3600.0, gt=0)


class Step(Section):
    run: str | None = None
    train: str | None = None
    nproc: int = Field(default=1, ge=1)
    inputs: dict[str, str] = Field(default_factory=dict)
    outputs: tuple[str, ...] = ()
    params: dict[str, Any] = Field(default_factory=dict)
    shards: int = Field(default=1, ge=1, le=10_000)
    version: str | None = None
    cache: bool = True
    retry: Retry | None = None

    @property
    def kind(self) -> Literal["run", "train"]:
        return "train" if self.train is not None else "run"

    @model_validator(mode="after")
    def _check(self) -> Self:
        if (self.run is None) == (self.train is None):
            raise KeyedValueError("run", "a step has either run = \"module:function\" or "
                                  "train = \"CONFIG.toml\"", relative=True)
        if self.run is not None and not TASK_MODULE.match(self.run):
            raise KeyedValueError("run", f"{self.run!r} is not \"package.module:function\"",
                                  relative=True)
        for key, names in (("inputs", self.inputs), ("outputs", self.outputs)):
            for name in names:
                if not NAME.match(name):
                    raise KeyedValueError(key, f"{name!r} is not a name (letters, digits, _ "
                                          "and -)", relative=True)
        if len(set(self.outputs)) != len(self.outputs):
            raise KeyedValueError("outputs", "an output is named twice", relative=True)
        if self.kind == "train":
            if self.shards != 1:
                raise KeyedValueError("shards", "a training step does not fan out",
                                      relative=True)
            unknown = set(self.outputs) - set(TRAIN_OUTPUTS)
            if unknown:
                raise KeyedValueError("outputs", f"a training step's outputs are "
                                      f"{' and '.join(TRAIN_OUTPUTS)}, not "
                                      f"{', '.join(sorted(unknown))}", relative=True)
            for name in _input_refs(self.params):
                if name not in self.inputs:
                    raise KeyedValueError("params", f"{{inputs.{name}}} names no input of "
                                          "this step", relative=True)
        elif not self.outputs:
            raise KeyedValueError("outputs", "a step declares at least one output",
                                  relative=True)
        return self

    @property
    def output_names(self) -> tuple[str, ...]:
        return self.outputs or (TRAIN_OUTPUTS if self.kind == "train" else ())


class PipelineSpec(Section):
    name: str = Field(pattern=NAME.pattern)
    store: str | None = None
    path: str | None = None
    workers: int | None = Field(default=None, ge=1, le=1024)
    retry: Retry = Retry()
    control: Control | None = None
    steps: dict[str, Step]

    @model_validator(mode="after")
    def _check(self) -> Self:
        if not self.steps:
            raise KeyedValueError("steps", "a pipeline has at least one step")
        for name, step in self.steps.items():
            if not NAME.match(name):
                raise KeyedValueError(f"steps.{name}", "not a name (letters, digits, _ and -)")
            for key, ref in step.inputs.items():
                where = f"steps.{name}.inputs.{key}"
                producer, _, output = ref.partition(".")
                if producer not in self.steps:
                    raise KeyedValueError(where, f"{ref!r}: no step {producer!r}")
                if output not in self.steps[producer].output_names:
                    raise KeyedValueError(where, f"{ref!r}: step {producer!r} has no output "
                                          f"{output!r} (it has "
                                          f"{', '.join(self.steps[producer].output_names)})")
                shards = self.steps[producer].shards
                if 1 < step.shards != shards > 1:
                    raise KeyedValueError(where, f"{ref!r} has {shards} shards and this step "
                                          f"{step.shards}: a fanned-out step takes the shards "
                                          "of a step with as many, or all of them with shards = 1")
        try:
            self.order()
        except graphlib.CycleError as e:
            raise KeyedValueError("steps", "the inputs form a cycle: "
                                  + " -> ".join(e.args[1])) from None
        return self

    def upstream(self, step: str) -> list[str]:
        return sorted({ref.partition(".")[0] for ref in self.steps[step].inputs.values()})

    def order(self) -> list[str]:
        """The steps, each after every step it takes an input from."""
        graph = {name: self.upstream(name) for name in self.steps}
        return list(graphlib.TopologicalSorter(graph).static_order())

    def step_retry(self, step: str) -> Retry:
        return self.steps[step].retry or self.retry


def _input_refs(value: Any) -> set[str]:
    if isinstance(value, str):
        return set(INPUT_REF.findall(value))
    if isinstance(value, dict):
        return set().union(*map(_input_refs, value.values())) if value else set()
    if isinstance(value, list | tuple):
        return set().union(*map(_input_refs, value)) if value else set()
    return set()
