"""Checkpoints across real gloo processes with FSDP2: async sharded saves, exact resume on the
same world size, resharding to other world sizes, and a whole gang killed mid-save."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.fsdp import fully_shard

from stoker.observe.events import read_events
from stoker.spec.train import CheckpointConfig
from stoker.train.checkpoint import Checkpointer, find_latest, list_steps, step_dir
from stoker.train.ckpt_manifest import MANIFEST
from stoker.train.export import export

pytestmark = pytest.mark.slow

GLOBAL_BATCH = 12  # divisible by 1, 2, 3 and 4 ranks
DIM = 48


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(DIM, 96), nn.Tanh(), nn.Linear(96, 96), nn.Tanh(),
                         nn.Linear(96, 1))


def batch(step: int, rank: int, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's slice of global batch ``step`` (the same samples whatever the world size)."""
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(GLOBAL_BATCH, DIM, generator=g)
    y = torch.randn(GLOBAL_BATCH, 1, generator=g)
    per = GLOBAL_BATCH // world
    return x[rank * per:(rank + 1) * per], y[rank * per:(rank + 1) * per]


def worker(rank: int, world: int, port: int, run: str, job: dict[str, Any]) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    model = build()
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ck = Checkpointer(Path(run), CheckpointConfig(interval_steps=2, keep_last=10),
                      rank=rank, world_size=world)
    step, samples = 0, 0

    def state() -> dict[str, Any]:
        msd, osd = get_state_dict(model, opt)
        return {"model": msd, "optimizer": osd, "step": step,
                "loader": {"samples_consumed": samples}}

    if job.get("resume"):
        s = state()
        ck.load(s, job["resume"])
        set_state_dict(model, opt, model_state_dict=s["model"], optim_state_dict=s["optimizer"])
        step, samples = s["step"], s["loader"]["samples_consumed"]
    losses = {}
    while step < job["steps"]:
        x, y = batch(step, rank, world)
        loss = (model(x) - y).pow(2).mean()
        loss.backward()
        ck.staged()
        opt.step()
        opt.zero_grad()
        step += 1
        samples += GLOBAL_BATCH
        total = loss.detach().clone()
        dist.all_reduce(total)
        losses[step] = (total / world).item()
        if ck.decide(step).save:
            ck.save(step, state())
    ck.close()
    if rank == 0:
        Path(run, "losses.json").write_text(json.dumps(losses))
    dist.destroy_process_group()


def launch(world: int, run: Path, **job: Any) -> dict[int, float]:
    mp.spawn(worker, args=(world, free_port(), str(run), job), nprocs=world, join=True)
    return {int(k): v for k, v in json.loads((run / "losses.json").read_text()).items()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, float]]:
    """6 steps on 2 ranks, an async checkpoint every 2 steps."""
    run = tmp_path_factory.mktemp("ref")
    losses = launch(2, run, steps=6)
    assert list_steps(run) == [2, 4, 6]
    return run, losses


def test_two_rank_resume_is_exact(reference: tuple[Path, dict[int, float]],
                                  tmp_path: Path) -> None:
    ref_run, ref = reference
    losses = launch(2, tmp_path, steps=6, resume=str(step_dir(ref_run, 4)))
    assert losses == {5: ref[5], 6: ref[6]}  # bit for bit
    (loaded,) = read_events(tmp_path, "checkpoint_loaded")
    assert loaded["step"] == 4 and loaded["saved_world_size"] == 2


@pytest.mark.parametrize("world", [1, 3])
def test_resharded_resume(reference: tuple[Path, dict[int, float]], tmp_path: Path,
                          world: int) -> None:
    ref_run, ref = reference
    losses = launch(world, tmp_path, steps=6, resume=str(step_dir(ref_run, 4)))
    assert losses.keys() == {5, 6}
    for s in (5, 6):  # the same samples and weights; only the reduction order differs
        assert losses[s] == pytest.approx(ref[s], rel=1e-5)
    assert list_steps(tmp_path) == [6]


@pytest.mark.parametrize("point", ["ckpt_shards", "ckpt_manifest"])
def test_gang_killed_mid_save_leaves_previous_checkpoint(tmp_path: Path, point: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOKER_FAULT", f"kill@{point},step=4,rank=0")
    with pytest.raises(mp.ProcessExitedException):
        launch(2, tmp_path, steps=6)
    torn = step_dir(tmp_path, 4)
    assert torn.is_dir() and not (torn / MANIFEST).exists()
    if point == "ckpt_manifest":  # every shard and DCP's own metadata made it to disk
        assert (torn / ".metadata").is_file()
        assert {p.name[:3] for p in torn.glob("*.distcp")} == {"__0", "__1"}
    assert find_latest(tmp_path) == step_dir(tmp_path, 2)


def test_export_consolidates_fsdp_shards(reference: tuple[Path, dict[int, float]],
                                         tmp_path: Path) -> None:
    from safetensors.torch import load_file

    ref_run, _ = reference
    done = export(ref_run, tmp_path / "model.safetensors", step=4)
    plain = build()
    plain.load_state_dict(load_file(done.path))  # strict: every name and shape matches
    assert done.step == 4 and done.parameters == sum(p.numel() for p in plain.parameters())
    assert not any(torch.equal(p, q) for p, q in zip(plain.parameters(), build().parameters(),
                                                      strict=True))  # trained, not initial
    half = export(ref_run, tmp_path / "half.safetensors", dtype="bf16")
    assert half.step == 6 and all(t.dtype == torch.bfloat16
                                  for t in load_file(half.path).values())
    os.remove(done.path)
