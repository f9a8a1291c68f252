"""The map-reconstruction workload's BEV model as a Stoker task (examples/mapping/task.py): the
frames it trains on, its outputs, a loss that falls, and FLOPs counted on the meta device."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "examples" / "mapping"))

from data import make_frames, save
from sensors import DIRECTIONS, H, W
from task import MappingTask

from stoker.train.task import flops_per_sample


def test_the_bev_model_learns_the_frames_and_its_flops_are_counted(tmp_path: Path) -> None:
    shard = make_frames(town_seed=5, drives=1, frames=16)
    assert shard["inputs"].shape == (8, 3, H, W) and set(shard["condition"]) == {"clear"}
    save(shard, tmp_path / "s.npz")
    task = MappingTask({"data": str(tmp_path / "s.npz"), "width": 8})
    data = task.dataset("train")
    assert data is not None and len(data) == 8 and task.dataset("val") is None
    batch = tuple(torch.stack(x) for x in zip(*(data[i] for i in range(8)), strict=True))
    torch.manual_seed(0)
    model = task.model()
    assert task.forward(model, batch).shape == (8, 3 + DIRECTIONS, H, W)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = last = 0.0
    for step in range(12):
        loss, metrics = task.loss(task.forward(model, batch), batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first, last = (loss.item(), last) if step == 0 else (first, loss.item())
    assert last < 0.8 * first and set(metrics) == {"iou_divider", "iou_crossing", "iou_boundary"}
    flops = flops_per_sample(task, batch, 8)
    assert flops is not None and flops > 1e7  # counted, not given up on
