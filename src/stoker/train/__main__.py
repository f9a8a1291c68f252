"""One rank: ``python -m stoker.train CFG [--run-dir DIR] [--set k=v ...]``.

Started by ``stoker train`` (elastic) or directly by
``torchrun --nproc-per-node N -m stoker.train CFG``; without torchrun's env it is a world of one.
Each rank parses the config itself. Exit codes: 0 done, 2 bad input, 75 preempted (resumable),
86 hang detected, 130 interrupted (see ``stoker.train.exitcodes``).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record

from stoker.observe.sinks import check_installed
from stoker.spec import loading
from stoker.spec.errors import StokerError
from stoker.spec.train import DataConfig, TrainConfig
from stoker.train.distributed import DistInfo, barrier, destroy_distributed, init_distributed
from stoker.train.heartbeat import enable_flight_recorder
from stoker.train.launch import make_run_dir, write_config
from stoker.train.quick_exit import quick_exit
from stoker.train.restarts import attempt
from stoker.train.run_dir import check_reuse, lock_run_dir, record_holder
from stoker.train.task import with_task_path
from stoker.train.trainer import EXIT_INTERRUPTED, Trainer, exit_code


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m stoker.train", description=__doc__)
    p.add_argument("config", type=Path, help="training config (TOML)")
    p.add_argument("--run-dir", type=Path, default=None,
                   help="where metrics, config and logs go (default runs/<name>-<timestamp>)")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KEY=VALUE", help="override a config key: section.key=value")
    p.add_argument("--resume", default=None, metavar="auto|PATH",
                   help="start from the run's newest committed checkpoint (auto) or from PATH")
    p.add_argument("--restart-schedule", action="store_true",
                   help="on a resume whose config changes the LR schedule, start the new "
                        "schedule (warmup included) at the resumed step")
    return p.parse_args(argv)


@record
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = with_task_path(loading.load(TrainConfig, args.config, args.overrides), args.config)
        cfg.check_world_size(int(os.environ.get("WORLD_SIZE", 1)), str(args.config))
        check_installed(cfg.telemetry.sinks, str(args.config))
        return run_rank(cfg, args.run_dir, args.resume, args.restart_schedule)
    except StokerError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:  # before the step loop took over the signal
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def run_rank(cfg: TrainConfig, run_dir: Path | None, resume: str | None = None,
             restart_schedule: bool = False) -> int:
    if run_dir is not None:
        enable_flight_recorder(run_dir)  # before NCCL starts; `stoker train` sets it already
    info = init_distributed(cfg.parallel, cfg.train)
    try:
        run_dir = agree_run_dir(cfg, run_dir, info, resume)
        if info.is_main:
            write_config(run_dir, cfg)
        shard_dir = prepare_data(cfg.data, info) if cfg.task.module is None else None
        status = Trainer(cfg, run_dir, info, shard_dir, resume=resume,
                         restart_schedule=restart_schedule).run()
    finally:
        destroy_distributed()
    return exit_code(status)


def agree_run_dir(cfg: TrainConfig, run_dir: Path | None, info: DistInfo,
                  resume: str | None = None) -> Path:
    """Rank 0 makes the run dir (a new timestamped one if none was given) and, unless the
    launcher that started it holds it, locks it and checks that a first attempt does not start
    over a run it holds; then tells the rest (or every rank raises rank 0's error)."""
    chosen: list[str] = [""]
    if info.is_main:
        try:
            path = make_run_dir(cfg.train.name, run_dir)
            if lock_run_dir(path, record=False):
                if attempt() == 0:
                    check_reuse(path, cfg.telemetry.metrics_file, resume)
                record_holder(path)
            chosen = [str(path)]
        except StokerError as e:
            chosen = ["error: " + str(e)]
    if dist.is_initialized() and info.world_size > 1:
        dist.broadcast_object_list(chosen, src=0)
    if chosen[0].startswith("error: "):
        if info.is_main:
            raise StokerError(chosen[0].removeprefix("error: "))
        raise SystemExit(2)  # rank 0 says why, once
    return Path(chosen[0])


def prepare_data(data: DataConfig, info: DistInfo) -> Path:
    """The shard dir; local rank 0 prepares a missing ``stdlib`` while the others wait."""
    from stoker.train.data import ensure_dataset

    if info.is_local_main:
        path = ensure_dataset(data)
    barrier()
    if not info.is_local_main:
        path = ensure_dataset(data, progress=False)
    return path


def end_rank(code: int) -> NoReturn:
    """End a rank that returned without the interpreter freeing torch (4-5 s a rank at load
    10, with the gang's devices held). What the interpreter's exit waits for still runs first:
    threading's shutdown (pending executor work, every non-daemon thread joined), then the
    atexit handlers and the flush of stdout and stderr (`quick_exit`)."""
    threading._shutdown()  # type: ignore[attr-defined]  # what Py_FinalizeEx calls first
    quick_exit(code)


def run_process(argv: Sequence[str] | None = None) -> NoReturn:
    """The whole life of a rank process (``python -m stoker.train``, or a warm rank forked by
    `stoker.train.warm`): `main`, then `end_rank`."""
    try:
        code = main(argv)
    except SystemExit as e:  # raised to end the rank (rank 0 has said why)
        code = 0 if e.code is None else e.code if isinstance(e.code, int) else 1
    except Exception:
        # Reported already (`record`'s error file, the run's "error" event); the traceback
        # goes to stderr as usual, then the rank ends at once (`quick_exit`).
        traceback.print_exc()
        quick_exit(1)
    end_rank(code)


if __name__ == "__main__":
    run_process()
