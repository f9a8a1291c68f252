"""The training step's task: examples/tasks/cnn.py's CNN and loss, on the images the
pipeline made (``task.args.data``: the transform step's shard files, comma-separated)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tasks"))
from cnn import CNNTask

from stoker.spec.train import TrainConfig


class ShardImages:
    """The (image, label) pairs of every shard file, in shard order."""

    def __init__(self, files: list[str]) -> None:
        parts = [torch.load(f) for f in files]
        self.images = torch.cat([p["images"] for p in parts])
        self.labels = torch.cat([p["labels"] for p in parts])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]


class PipelineTask(CNNTask):
    def __init__(self, args: dict[str, Any]) -> None:
        super().__init__(args)
        self.files = [f for f in str(args["data"]).split(",") if f]

    def dataset(self, split: str) -> ShardImages | None:  # type: ignore[override]
        return ShardImages(self.files) if split == "train" else None


def build(cfg: TrainConfig) -> PipelineTask:
    return PipelineTask(cfg.task.args)
