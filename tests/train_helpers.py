"""Training one rank inside the test process, shared by the loop and equivalence tests."""

from __future__ import annotations

from pathlib import Path

import torch

from stoker.observe.live import NullDisplay
from stoker.spec import loading
from stoker.spec.train import TrainConfig
from stoker.train.data import ensure_dataset
from stoker.train.distributed import init_distributed
from stoker.train.trainer import Trainer

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tiny.toml"


def train_in_process(run_dir: Path, overrides: list[str]) -> Trainer:
    """Run the example config with ``overrides`` as one rank here (no torchrun env: a world of
    one) to completion; the trainer's ``stats.records`` hold every step's metrics."""
    cfg = loading.load(TrainConfig, EXAMPLE, overrides)
    info = init_distributed(cfg.parallel, cfg.train)
    # One thread, like each rank of a 2-rank run on 2 cores (and far faster on a busy machine).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    trainer = Trainer(cfg, run_dir, info, ensure_dataset(cfg.data), display=NullDisplay())
    try:
        assert trainer.run() == "completed"
    finally:
        torch.set_num_threads(threads)
    return trainer
