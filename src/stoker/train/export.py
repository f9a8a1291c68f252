"""One consolidated model file for inference, from a run's sharded DCP checkpoint.

Only the model's tensors are read (not the optimizer's), straight from the DCP shards with no
process group: their shapes and dtypes come from the checkpoint's own metadata. The names are
the plain model's parameter names (``get_state_dict`` stripped every DDP/FSDP/compile wrapper
at save time), so ``Transformer.load_state_dict(safetensors.torch.load_file(path))`` works.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import save_file
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from stoker.spec.errors import StokerError
from stoker.train.checkpoint import CHECKPOINTS, find_latest, step_dir
from stoker.train.ckpt_manifest import Manifest, TornCheckpoint, verify

MODEL_KEY = "model."
DTYPES = {"keep": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Exported:
    path: Path
    checkpoint: Path
    step: int
    tensors: int
    parameters: int
    bytes: int


def pick_checkpoint(source: Path, step: int | None = None) -> tuple[Path, Manifest]:
    """``source`` is a run directory (newest good checkpoint, or ``step``) or a checkpoint."""
    if (source / CHECKPOINTS).is_dir():
        path = step_dir(source, step) if step is not None else find_latest(source)
        if path is None:
            raise StokerError(f"{source}: no committed checkpoint")
    elif source.is_dir():
        path = source
    else:
        raise StokerError(f"{source}: no such run directory or checkpoint")
    if not path.is_dir():
        raise StokerError(f"{source}: no checkpoint for step {step}")
    try:
        manifest = verify(path)
    except TornCheckpoint as e:
        raise StokerError(f"{path}: cannot export: {e.reason}") from None
    if step is not None and manifest.step != step:
        raise StokerError(f"{path} holds step {manifest.step}, not {step}")
    return path, manifest


def load_model_state(ckpt: Path) -> dict[str, torch.Tensor]:
    """The full (unsharded) model state dict of a checkpoint, on CPU, in one process."""
    reader = FileSystemReader(ckpt)
    metadata = reader.read_metadata()
    state = {fqn: torch.empty(md.size, dtype=md.properties.dtype)
             for fqn, md in metadata.state_dict_metadata.items()
             if fqn.startswith(MODEL_KEY) and isinstance(md, TensorStorageMetadata)}
    if not state:
        raise StokerError(f"{ckpt}: the checkpoint holds no model tensors")
    with warnings.catch_warnings():  # "no process group: loading in one process" is the point
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(state, storage_reader=reader)
    return {fqn.removeprefix(MODEL_KEY): t for fqn, t in state.items()}


def export(source: Path, out: Path, step: int | None = None, dtype: str = "keep") -> Exported:
    """Write the model of a checkpoint as one safetensors file (atomically)."""
    if dtype not in DTYPES:
        raise StokerError(f"--dtype: {dtype!r} is not one of {', '.join(DTYPES)}")
    ckpt, manifest = pick_checkpoint(Path(source), step)
    state = load_model_state(ckpt)
    cast_to = DTYPES[dtype]
    if cast_to is not None:
        state = {k: v.to(cast_to) if v.is_floating_point() else v for k, v in state.items()}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp),
              metadata={"format": "pt", "stoker_step": str(manifest.step),
                        "stoker_checkpoint": str(ckpt)})
    os.replace(tmp, out)
    return Exported(out, ckpt, manifest.step, len(state),
                    sum(t.numel() for t in state.values()), out.stat().st_size)
