"""Bring your own model: user code for the model, the data and the loss, trained by the same
runtime as the built-in language model (DDP/FSDP2, activation checkpointing, compile,
checkpoints and exact resume, telemetry, the control plane).

A config names the code: ``[task] module = "mypkg.task:build"``; ``build(cfg: TrainConfig)``
returns an object with

    model() -> nn.Module              the model with its initial weights, on the CPU (or meta);
                                      torch's RNG is seeded with train.seed first, so every rank
                                      builds the same one
    dataset(split) -> Dataset | None  "train" or "val": a map-style dataset (``__len__``,
                                      ``__getitem__``); None: no such split (no eval)
    loss(output, batch) -> Tensor | (Tensor, dict[str, Tensor])
                                      the mean loss of a micro-batch, and metrics to log

and, optionally,

    forward(model, batch) -> output   default: ``model(batch[0])`` for a tuple or list batch,
                                      else ``model(batch)``
    collate(samples) -> batch         default: ``torch.utils.data.default_collate``
    flops_per_sample() -> float       training FLOPs (forward + backward) of one sample, for
                                      MFU; default: counted once by ``FlopCounterMode``
    fsdp_units(model) -> [nn.Module]  the submodules that are each one FSDP2 unit, one
                                      activation-checkpointing unit and one compiled graph;
                                      default: the model's top-level children

The runtime owns the sample order (`TaskLoader`): one seeded permutation of the dataset per
epoch, optimizer step s takes global samples [s*G, (s+1)*G), data-parallel rank r its
contiguous G/dp of them, so 1 rank and N ranks train on the same samples in each step and a
resume continues at the exact sample.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.utils._pytree import tree_map
from torch.utils.data import default_collate
from torch.utils.flop_counter import FlopCounterMode

from stoker.spec.errors import ConfigError, StokerError
from stoker.spec.train import TrainConfig
from stoker.train.data import _check_layout, _RankLayout

REQUIRED = ("model", "dataset", "loss")


class MapDataset(Protocol):
    def __len__(self) -> int: ...
    def __getitem__(self, index: int) -> Any: ...


class Task(Protocol):
    """What ``build(cfg)`` returns (the optional methods are listed in the module doc)."""

    def model(self) -> nn.Module: ...
    def dataset(self, split: str) -> MapDataset | None: ...
    def loss(self, output: Any, batch: Any) -> Any: ...


# ---------------------------------------------------------------- finding the user's code


def with_task_path(cfg: TrainConfig, config_path: Path) -> TrainConfig:
    """``cfg`` with ``task.path`` made absolute: the config file's directory when unset, so
    ranks reading the resolved RUN_DIR/config.toml import the same code."""
    task = cfg.task
    if task.module is None:
        return cfg
    base = config_path.resolve().parent
    path = (base / task.path).resolve() if task.path else base
    return cfg.model_copy(update={"task": task.model_copy(update={"path": str(path)})})


def resolve_build(cfg: TrainConfig, source: str | None = None) -> Callable[[TrainConfig], Any]:
    """The ``build`` function ``task.module`` names, imported; else one ConfigError naming
    ``task.module``."""
    spec = cfg.task.module
    if spec is None:
        raise ConfigError(source, "task.module", "not set")
    module_name, _, attr = spec.partition(":")
    if cfg.task.path and cfg.task.path not in sys.path:
        sys.path.insert(0, cfg.task.path)
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        where = f" (looked in {cfg.task.path} and PYTHONPATH)" if cfg.task.path else ""
        raise ConfigError(source, "task.module", f"cannot import {module_name!r}: "
                          f"{e}{where}") from None
    except Exception as e:  # the user's module failed while importing
        raise ConfigError(source, "task.module", f"importing {module_name!r} failed: "
                          f"{type(e).__name__}: {e}") from None
    build = getattr(module, attr, None)
    if not callable(build):
        raise ConfigError(source, "task.module", f"{module_name!r} has no function {attr!r}")
    return cast(Callable[[TrainConfig], Any], build)


def build_task(cfg: TrainConfig, source: str | None = None) -> Task:
    """Import ``task.module`` and build the task, checking it has what the runtime calls."""
    task = resolve_build(cfg, source)(cfg)
    missing = [name for name in REQUIRED if not callable(getattr(task, name, None))]
    if missing:
        raise ConfigError(source, "task.module", f"{cfg.task.module} returned a "
                          f"{type(task).__name__} without {', '.join(missing)}()")
    return cast(Task, task)


# ---------------------------------------------------------------- calling it


def forward(task: Task, model: nn.Module, batch: Any) -> Any:
    custom = getattr(task, "forward", None)
    if custom is not None:
        return custom(model, batch)
    return model(batch[0]) if isinstance(batch, tuple | list) else model(batch)


def loss_and_metrics(task: Task, output: Any, batch: Any
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    out = task.loss(output, batch)
    if isinstance(out, tuple):
        loss, metrics = out
        return loss, {k: torch.as_tensor(v).detach().float() for k, v in metrics.items()}
    return out, {}


def collate_fn(task: Task) -> Callable[[Sequence[Any]], Any]:
    return cast(Callable[[Sequence[Any]], Any], getattr(task, "collate", None) or default_collate)


def fsdp_units(task: Task, model: nn.Module) -> list[nn.Module]:
    custom = getattr(task, "fsdp_units", None)
    return list(custom(model)) if custom is not None else list(model.children())


def build_model(task: Task, seed: int) -> nn.Module:
    """The task's model, built under torch's RNG seeded with ``seed`` (the caller's RNG state
    is kept), so that every rank and every layout starts from the same weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = task.model()
    if not isinstance(model, nn.Module):
        raise StokerError(f"task.module: model() returned a {type(model).__name__}, not an "
                          "nn.Module")
    return model


def flops_per_sample(task: Task, batch: Any, samples: int) -> float | None:
    """The task's own figure, else forward + backward counted by FlopCounterMode once, on a
    meta-device copy of the model (no compute, no change to the real one). None when the
    model does not run on the meta device."""
    custom = getattr(task, "flops_per_sample", None)
    if custom is not None:
        return float(custom())
    try:
        with torch.device("meta"):
            model = task.model()
        meta_batch = tree_map(lambda t: t.to("meta") if isinstance(t, torch.Tensor) else t,
                              batch)
        with FlopCounterMode(display=False) as counter:
            loss, _ = loss_and_metrics(task, forward(task, model, meta_batch), meta_batch)
            loss.backward()
        return float(counter.get_total_flops()) / samples
    except Exception:
        return None


# ---------------------------------------------------------------- the sample order


@dataclass(frozen=True)
class TaskBatch:
    """One micro-batch: the task's collated batch and the global sample ids it holds."""

    data: Any
    sample_ids: torch.Tensor  # int64 [micro_batch]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> TaskBatch:
        moved = tree_map(lambda t: t.to(device, non_blocking=non_blocking)
                         if isinstance(t, torch.Tensor) else t, self.data)
        return TaskBatch(moved, self.sample_ids)


class TaskLoader:
    """This data-parallel rank's endless iterator of micro-batches of a map-style dataset.

    Global sample g is item ``perm_k[g % E]`` of epoch ``k = g // E`` (E: the dataset's size
    rounded down to whole global batches, so a step never spans two epochs; ``perm_k`` seeded
    by (seed, k)). The rank split and ``state_dict`` are the token loader's (`data.TokenLoader`):
    the position in the global stream, rank independent."""

    def __init__(self, dataset: MapDataset, collate: Callable[[Sequence[Any]], Any], split: str,
                 global_batch_size: int, micro_batch_size: int, dp_rank: int = 0,
                 dp_size: int = 1, seed: int = 0) -> None:
        _check_layout(1, global_batch_size, micro_batch_size, dp_rank, dp_size, 0)
        self.dataset = dataset
        self.collate = collate
        self.split = split
        self.size = len(dataset)
        if self.size < 1 or (split == "train" and self.size < global_batch_size):
            raise StokerError(f"task dataset {split!r} has {self.size} samples, fewer than one "
                              f"global batch ({global_batch_size})")
        self.global_batch_size = global_batch_size
        self.micro_batch_size = micro_batch_size
        self.dp_rank = dp_rank
        self.dp_size = dp_size
        self.seed = seed
        self.epoch_samples = (self.size - self.size % global_batch_size
                              if self.size >= global_batch_size else self.size)
        self._epoch: tuple[int, npt.NDArray[np.int64]] | None = None
        self._seek(0, 0)

    @property
    def accum_steps(self) -> int:
        return self._layout.accum_steps

    @property
    def samples_consumed(self) -> int:
        return self._layout.consumed(self._consumed)

    def __iter__(self) -> TaskLoader:
        return self

    def __next__(self) -> TaskBatch:
        ids = self._layout.samples(self._consumed)
        self._consumed += 1
        data = self.collate([self.dataset[self.index(int(g))] for g in ids])
        return TaskBatch(data, torch.from_numpy(ids))

    def index(self, sample: int) -> int:
        """The dataset index of global sample ``sample``."""
        epoch, j = divmod(sample, self.epoch_samples)
        if self._epoch is None or self._epoch[0] != epoch:
            rng = np.random.default_rng([self.seed % (1 << 64), epoch])
            self._epoch = (epoch, rng.permutation(self.size))
        return int(self._epoch[1][j])

    def first_batch(self) -> Any:
        """A collated micro-batch of the first samples, without moving the position."""
        n = min(self.micro_batch_size, self.size)
        return self.collate([self.dataset[i] for i in range(n)])

    def state_dict(self) -> dict[str, Any]:
        return {
            "samples_consumed": self.samples_consumed,
            "micro_batches_in_step": self._consumed % self.accum_steps,
            "seed": self.seed,
            "split": self.split,
            "global_batch_size": self.global_batch_size,
            "micro_batch_size": self.micro_batch_size,
            "dp_size": self.dp_size,
            "samples": self.size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("global_batch_size", "samples"):
            if key in state and state[key] != self.state_dict()[key]:
                raise StokerError(f"data loader state has {key}={state[key]}, but this loader "
                                  f"has {self.state_dict()[key]}: the sample stream would differ")
        micro = int(state.get("micro_batches_in_step", 0))
        if micro and (state.get("dp_size") != self.dp_size
                      or state.get("micro_batch_size") != self.micro_batch_size):
            raise StokerError("data loader state was saved mid-step; it resumes only with the "
                              "same dp_size and micro_batch_size")
        self.seed = int(state["seed"])
        self._epoch = None
        self._seek(int(state["samples_consumed"]), micro)

    def reset(self) -> None:
        self._seek(0, 0)

    def close(self) -> None:
        """Nothing runs in the background (the batches are made on the step's thread)."""

    def _seek(self, base: int, micro: int) -> None:
        self._layout = _RankLayout(base, self.global_batch_size, self.micro_batch_size,
                                   self.dp_rank, self.dp_size)
        self._consumed = micro
