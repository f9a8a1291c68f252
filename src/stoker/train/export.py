"""The model of a run's sharded DCP checkpoint, consolidated for inference.

Only the model's tensors are read (not the optimizer's), straight from the DCP shards with no
process group: their shapes and dtypes come from the checkpoint's own metadata. Two formats:

- ``safetensors``: one file under the plain model's parameter names (``get_state_dict``
  stripped every DDP/FSDP/compile wrapper at save time), so
  ``Transformer.load_state_dict(safetensors.torch.load_file(path))`` works;
- ``hf``: a directory in Hugging Face's Llama layout (`stoker.train.hf_llama`), ``config.json``
  from the config the checkpoint was saved under and ``model.safetensors``, for
  ``transformers.LlamaForCausalLM.from_pretrained(dir)``.
"""

from __future__ import annotations

import json
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
from stoker.spec.train import TrainConfig
from stoker.train import hf_llama
from stoker.train.ckpt_find import find_latest
from stoker.train.ckpt_layout import CHECKPOINTS, RUN_META, read_run_meta, step_dir
from stoker.train.ckpt_manifest import Manifest, TornCheckpoint, verify
from stoker.train.data import dataset_dir
from stoker.train.shards import InvalidShardDir, read_meta

MODEL_KEY = "model."
DTYPES = {"keep": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
FORMATS = ("safetensors", "hf")


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


def export(source: Path, out: Path, step: int | None = None, dtype: str = "keep",
           fmt: str = "safetensors") -> Exported:
    """Write the model of a checkpoint as one safetensors file, or (``fmt="hf"``) as the
    directory ``out`` in Hugging Face's Llama layout; each file atomically."""
    if dtype not in DTYPES:
        raise StokerError(f"--dtype: {dtype!r} is not one of {', '.join(DTYPES)}")
    if fmt not in FORMATS:
        raise StokerError(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")
    ckpt, manifest = pick_checkpoint(Path(source), step)
    state = load_model_state(ckpt)
    cast_to = DTYPES[dtype]
    if cast_to is not None:
        state = {k: v.to(cast_to) if v.is_floating_point() else v for k, v in state.items()}
    out = Path(out)
    metadata = {"format": "pt", "stoker_step": str(manifest.step), "stoker_checkpoint": str(ckpt)}
    if fmt == "hf":
        weights = write_hf(out, ckpt, state, metadata)
    else:
        weights = out
        out.parent.mkdir(parents=True, exist_ok=True)
        write_safetensors(state, out, metadata)
    return Exported(out, ckpt, manifest.step, len(state),
                    sum(t.numel() for t in state.values()), weights.stat().st_size)


def write_safetensors(state: dict[str, torch.Tensor], path: Path,
                      metadata: dict[str, str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def write_hf(out: Path, ckpt: Path, state: dict[str, torch.Tensor],
             metadata: dict[str, str]) -> Path:
    """``out``/model.safetensors and then ``out``/config.json, from the config in the
    checkpoint's RUN_META; the eos id is the dataset's, where its directory is still there."""
    try:
        cfg = TrainConfig.model_validate(read_run_meta(ckpt)["config"])
    except (KeyError, TypeError, ValueError):
        raise StokerError(f"{ckpt}: no model config ({RUN_META}) to write config.json "
                          "from") from None
    if cfg.task.module is not None:
        raise StokerError(f"{ckpt}: a [task] model ({cfg.task.module}) has no Hugging Face "
                          "layout: export it with --format safetensors")
    shape = cfg.model.shape()
    tensors = hf_llama.hf_state_dict(shape, state)
    dtype = next(t.dtype for t in tensors.values() if t.is_floating_point())
    try:
        eos_id: int | None = read_meta(dataset_dir(cfg.data)).eos_id
    except InvalidShardDir:
        eos_id = None
    config = hf_llama.hf_config(shape, max_positions=cfg.train.seq_len, dtype=dtype,
                                eos_id=eos_id)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / hf_llama.WEIGHTS_FILE
    write_safetensors(tensors, weights, metadata)
    tmp = out / (hf_llama.CONFIG_FILE + ".tmp")
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    os.replace(tmp, out / hf_llama.CONFIG_FILE)
    return weights
