"""What a resume compares between the checkpoint and the config it resumes under.

Every checkpoint holds RUN_META (``stoker.json``, written by rank 0 and listed in the manifest):
the resolved config it was saved under and the step its LR schedule started from. A resume

- refuses a checkpoint whose model does not fit the config's (`check_fits`): one line naming
  the field, ``model.dim: checkpoint has 128, config has 256``; for a checkpoint without
  RUN_META, the first tensor whose shape differs;
- names the schedule keys that changed (`schedule_changes`): the trainer says so and keeps the
  schedule's position (the step) unless ``--restart-schedule`` starts the new schedule there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from stoker.spec.errors import ConfigError
from stoker.spec.train import ModelConfig, ModelShape, TrainConfig
from stoker.train.ckpt_layout import read_run_meta

SHAPE_FIELDS = ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "ffn_hidden",
                "tie_embeddings")
SCHEDULE_KEYS = ("train.steps", "optim.schedule", "optim.warmup_steps", "optim.decay_fraction",
                 "optim.min_lr_ratio", "optim.lr")
MODEL_PREFIX = "model."


def run_meta(cfg: TrainConfig, schedule_start: int) -> dict[str, Any]:
    return {"config": cfg.model_dump(mode="json", by_alias=True),
            "schedule_start": schedule_start}


def check_fits(ckpt: Path, cfg: TrainConfig, source: str | None = None) -> None:
    """Raise a one-line ConfigError when the checkpoint's model does not fit ``cfg``'s."""
    if cfg.task.module is not None:  # a task's model: DCP's load names a tensor that differs
        return
    shape = cfg.model.shape()
    saved = _saved_shape(read_run_meta(ckpt))
    if saved is not None:
        for name in SHAPE_FIELDS:
            old, new = getattr(saved, name), getattr(shape, name)
            if old != new:
                raise ConfigError(source, f"model.{name}",
                                  f"checkpoint has {old}, config has {new} ({ckpt})")
    _check_tensors(ckpt, shape, source)


def _saved_shape(meta: dict[str, Any]) -> ModelShape | None:
    try:
        return ModelConfig.model_validate(meta["config"]["model"]).shape()
    except (KeyError, TypeError, ValueError):
        return None


def _check_tensors(ckpt: Path, shape: ModelShape, source: str | None) -> None:
    """Every model tensor in the checkpoint with the model's shape, none missing or extra."""
    from stoker.train.model import Transformer

    with torch.device("meta"):
        want = {k: list(v.shape) for k, v in Transformer(shape).state_dict().items()}
    try:
        metadata = FileSystemReader(str(ckpt)).read_metadata().state_dict_metadata
    except Exception:  # unreadable: the load reports it
        return
    have = {k.removeprefix(MODEL_PREFIX): list(md.size) for k, md in metadata.items()
            if k.startswith(MODEL_PREFIX) and isinstance(md, TensorStorageMetadata)}
    for name in sorted(want.keys() | have.keys()):
        old, new = have.get(name), want.get(name)
        if old != new:
            raise ConfigError(source, f"model ({name})",
                              f"checkpoint has {_fmt(old)}, config has {_fmt(new)} ({ckpt})")


def _fmt(size: list[int] | None) -> str:
    return "no such tensor" if size is None else "shape [" + ", ".join(map(str, size)) + "]"


def schedule_changes(meta: dict[str, Any], cfg: TrainConfig) -> list[str]:
    """The schedule keys whose value differs from the checkpoint's config: "key: old -> new"."""
    try:
        old = meta["config"]
    except KeyError:
        return []
    new = cfg.model_dump(mode="json", by_alias=True)
    changes = []
    for key in SCHEDULE_KEYS:
        section, name = key.split(".")
        before, after = (old.get(section) or {}).get(name), new[section][name]
        if before is not None and before != after:
            changes.append(f"{key} {before} -> {after}")
    return changes
