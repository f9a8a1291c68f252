"""The BEV map-segmentation model as a Stoker task (`[task] module = "task:build"`).

HDMapNet's shape at a CPU size: the bird's-eye-view inputs (height, intensity, camera) go
through a small encoder-decoder (two poolings, skip connections, GroupNorm), and two heads give
per-pixel logits for the three map classes (divider, crossing, boundary; several may hold at
one pixel, so each is its own sigmoid) and for the line's orientation bin (HDMapNet's
direction head, here without the sign). Loss: per-class binary cross-entropy weighted towards
the few line pixels (``pos_weight``), plus ``direction_weight`` x the cross-entropy of the
orientation on the pixels a line passes through. Logged: each class's IoU on the batch.

``task.args``: ``data`` (training shard files, comma-separated), ``val`` (the same, for eval;
empty: no eval), ``width`` (channels of the first stage), ``pos_weight``, ``direction_weight``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from data import load
from sensors import DIRECTIONS
from torch import nn
from world import CLASSES

from stoker.spec.train import TrainConfig

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(4, cout), nn.ReLU(),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(4, cout), nn.ReLU())


class BevNet(nn.Module):
    """[B, 3, H, W] -> [B, classes + DIRECTIONS, H, W] logits (H and W divisible by 4)."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        w = width
        self.enc1, self.enc2, self.enc3 = block(3, w), block(w, 2 * w), block(2 * w, 4 * w)
        self.dec2, self.dec1 = block(6 * w, 2 * w), block(3 * w, w)
        self.head = nn.Conv2d(w, len(CLASSES) + DIRECTIONS, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s1 = self.enc1(x)
        s2 = self.enc2(F.max_pool2d(s1, 2))
        bottom = self.enc3(F.max_pool2d(s2, 2))
        up2 = self.dec2(torch.cat([F.interpolate(bottom, scale_factor=2.0), s2], dim=1))
        up1 = self.dec1(torch.cat([F.interpolate(up2, scale_factor=2.0), s1], dim=1))
        return self.head(up1)


class Frames:
    """Every frame of the shard files: (inputs float32, masks float32, directions int64)."""

    def __init__(self, files: list[str]) -> None:
        shards = [load(f) for f in files]  # type: ignore[arg-type]
        self.inputs = torch.from_numpy(np.concatenate([s["inputs"] for s in shards]))
        self.masks = torch.from_numpy(np.concatenate([s["masks"] for s in shards]))
        self.directions = torch.from_numpy(np.concatenate([s["directions"] for s in shards]))

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, i: int) -> Batch:
        return (self.inputs[i].float(), self.masks[i].float(), self.directions[i].long())


def losses(output: torch.Tensor, masks: torch.Tensor, directions: torch.Tensor,
           pos_weight: float, direction_weight: float) -> tuple[torch.Tensor, dict[str, Any]]:
    seg, direction = output[:, :len(CLASSES)].float(), output[:, len(CLASSES):].float()
    weight = torch.full((len(CLASSES), 1, 1), pos_weight, device=seg.device)
    loss = F.binary_cross_entropy_with_logits(seg, masks, pos_weight=weight)
    # a mean over the labelled pixels, 0 when there are none (no data-dependent branch: the
    # runtime counts FLOPs on the meta device)
    labelled = (directions >= 0).sum().clamp(min=1)
    loss = loss + direction_weight * F.cross_entropy(
        direction, directions, ignore_index=-1, reduction="sum") / labelled
    pred = seg > 0
    truth = masks > 0.5
    metrics = {f"iou_{c}": (pred[:, k] & truth[:, k]).sum() / (pred[:, k] | truth[:, k]).sum()
               .clamp(min=1) for k, c in enumerate(CLASSES)}
    return loss, metrics


class MappingTask:
    def __init__(self, args: dict[str, Any]) -> None:
        self.files = {"train": [f for f in str(args.get("data", "")).split(",") if f],
                      "val": [f for f in str(args.get("val", "")).split(",") if f]}
        self.width = int(args.get("width", 16))
        self.pos_weight = float(args.get("pos_weight", 8.0))
        self.direction_weight = float(args.get("direction_weight", 0.2))

    def model(self) -> nn.Module:
        return BevNet(self.width)

    def dataset(self, split: str) -> Frames | None:
        return Frames(self.files[split]) if self.files[split] else None

    def forward(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        out: torch.Tensor = model(batch[0])
        return out

    def loss(self, output: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, dict[str, Any]]:
        return losses(output, batch[1], batch[2], self.pos_weight, self.direction_weight)

    def fsdp_units(self, model: nn.Module) -> list[nn.Module]:
        return [model.enc1, model.enc2, model.enc3, model.dec2, model.dec1]  # type: ignore[list-item]


def build(cfg: TrainConfig) -> MappingTask:
    return MappingTask(cfg.task.args)
