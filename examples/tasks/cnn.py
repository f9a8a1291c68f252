"""A user task for Stoker: a small CNN that classifies generated images (no downloads).

    stoker train examples/tasks/cnn.toml --nproc 2

Each class has a seeded random 16x16 pattern (the same in both splits); sample i of a split is
its class's pattern (class i % classes) plus noise seeded by (split, i) alone, so every rank and
every run sees the same data.
The protocol this module follows is in `stoker.train.task`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from stoker.spec.train import TrainConfig


class SyntheticImages:
    """``size`` (image, label) pairs: a class pattern plus noise, generated on demand."""

    def __init__(self, size: int, patterns: torch.Tensor, noise: float, seed: int) -> None:
        self.size, self.patterns, self.noise, self.seed = size, patterns, noise, seed
        self.classes = len(patterns)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        label = index % self.classes
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        image = self.patterns[label] + self.noise * torch.randn(1, 16, 16, generator=gen)
        return image, torch.tensor(label)


class SmallCNN(nn.Module):
    def __init__(self, classes: int, width: int) -> None:
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),
                                    nn.MaxPool2d(2))
        self.block2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(),
                                    nn.MaxPool2d(2), nn.Flatten())
        self.head = nn.Linear(2 * width * 4 * 4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block2(self.block1(x)))


class CNNTask:
    """model(), dataset(split) and loss(output, batch): the required part of the protocol;
    forward, collate, flops_per_sample and fsdp_units are left to their defaults."""

    def __init__(self, args: dict[str, Any]) -> None:
        self.classes = int(args.get("classes", 10))
        self.width = int(args.get("width", 16))
        self.noise = float(args.get("noise", 1.0))
        self.sizes = {"train": int(args.get("train_samples", 4096)),
                      "val": int(args.get("val_samples", 256))}
        self.data_seed = int(args.get("data_seed", 1234))

    def model(self) -> nn.Module:
        return SmallCNN(self.classes, self.width)

    def dataset(self, split: str) -> SyntheticImages:
        gen = torch.Generator().manual_seed(self.data_seed)
        patterns = torch.randn(self.classes, 1, 16, 16, generator=gen)
        noise_seed = self.data_seed + (1 if split == "train" else 2)
        return SyntheticImages(self.sizes[split], patterns, self.noise, noise_seed)

    def loss(self, output: torch.Tensor, batch: tuple[torch.Tensor, torch.Tensor]
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        labels = batch[1]
        accuracy = (output.argmax(-1) == labels).float().mean()
        return F.cross_entropy(output.float(), labels), {"accuracy": accuracy}


def build(cfg: TrainConfig) -> CNNTask:
    return CNNTask(cfg.task.args)
