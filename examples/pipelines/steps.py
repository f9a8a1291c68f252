"""The steps of pipeline.toml. Each takes a `StepContext` and writes its declared outputs at
``ctx.outputs[name]``; what it returns is kept in the run record."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from stoker.pipeline import StepContext

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tasks"))
from cnn import CNNTask, SmallCNN


def _task(p: dict[str, Any], samples: int) -> CNNTask:
    return CNNTask({"classes": p["classes"], "noise": p["noise"], "data_seed": p["data_seed"],
                    "train_samples": samples, "val_samples": p.get("val_samples", 1)})


def generate(ctx: StepContext) -> dict[str, int]:
    """Shard i: samples [i*n, (i+1)*n) of the CNN task's generated training images."""
    n = int(ctx.params["samples_per_shard"])
    data = _task(ctx.params, n * ctx.shards).dataset("train")
    pairs = [data[i] for i in range(ctx.shard * n, (ctx.shard + 1) * n)]
    torch.save({"images": torch.stack([x for x, _ in pairs]),
                "labels": torch.stack([y for _, y in pairs])}, ctx.outputs["images"])
    return {"samples": n}


def _transform(images: torch.Tensor, clip: float) -> torch.Tensor:
    return images.clamp(-clip, clip) / clip


def transform(ctx: StepContext) -> None:
    """Clip each image's values to [-clip, clip] and scale them to [-1, 1]."""
    shard = torch.load(ctx.inputs["images"])
    shard["images"] = _transform(shard["images"], float(ctx.params["clip"]))
    torch.save(shard, ctx.outputs["data"])


def evaluate(ctx: StepContext) -> dict[str, float]:
    """Accuracy of the trained model on held-out images (the task's val split), transformed
    as the training data was, and on the training data."""
    p = ctx.params
    model = SmallCNN(int(p["classes"]), int(p["width"]))
    model.load_state_dict(load_file(ctx.inputs["model"]))
    model.eval()
    val = _task(p, 1).dataset("val")
    images = _transform(torch.stack([val[i][0] for i in range(len(val))]), float(p["clip"]))
    labels = torch.stack([val[i][1] for i in range(len(val))])
    train = [torch.load(f) for f in ctx.paths("data")]
    with torch.no_grad():
        val_acc = (model(images).argmax(-1) == labels).float().mean().item()
        train_acc = sum((model(s["images"]).argmax(-1) == s["labels"]).float().sum().item()
                        for s in train) / sum(len(s["labels"]) for s in train)
    report = {"val_accuracy": round(val_acc, 4), "train_accuracy": round(train_acc, 4),
              "val_samples": len(labels)}
    ctx.outputs["report"].write_text(json.dumps(report, indent=1) + "\n")
    return report
