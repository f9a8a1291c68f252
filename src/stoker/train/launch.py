"""`stoker train`: check everything that can be checked once, then start N local ranks through
torch.distributed.elastic (the machinery behind torchrun).

    prepare_run(): validate config + world size, prepare the dataset, create RUN_DIR and write
                   the resolved RUN_DIR/config.toml (before any rank starts)
    launch():      elastic_launch `python -m stoker.train RUN_DIR/config.toml --run-dir RUN_DIR`
                   on a c10d rendezvous at 127.0.0.1; each rank's output prefixed by its rank,
                   rank 0 keeping the terminal for the live display

Ranks read the resolved config file, so they train exactly what was validated here. A world of
one goes through the same path (one elastic worker), so there is a single way a rank starts.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from stoker.spec import loading
from stoker.spec.errors import ConfigError
from stoker.spec.train import TrainConfig

CONFIG_NAME = "config.toml"
RUNS_ROOT = Path("runs")


def prepare_run(config_path: Path, overrides: Sequence[str], nproc: int,
                run_dir: Path | None) -> tuple[TrainConfig, Path]:
    """Everything a launch needs, checked and made before any process starts."""
    cfg = loading.load(TrainConfig, config_path, overrides)
    cfg.check_world_size(nproc, str(config_path))
    from stoker.train.data import ensure_dataset  # imports torch: only once the config is good
    from stoker.train.shards import read_meta
    from stoker.train.trainer import check_vocab

    try:
        shard_dir = ensure_dataset(cfg.data)
        check_vocab(cfg.model.shape().vocab_size, read_meta(shard_dir).vocab_size, shard_dir)
    except ConfigError as e:
        raise ConfigError(e.source or str(config_path), e.key, e.reason) from None
    run_dir = make_run_dir(cfg.train.name, run_dir)
    write_config(run_dir, cfg)
    return cfg, run_dir


def make_run_dir(name: str, run_dir: Path | None = None) -> Path:
    """``run_dir`` itself, or a new ``runs/<name>-<YYYYmmdd-HHMMSS>[-k]/``."""
    if run_dir is not None:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError("--run-dir", None, f"cannot create {run_dir}: {e.strerror}") from None
        return run_dir
    stamp = time.strftime("%Y%m%d-%H%M%S")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    for k in range(1000):
        path = RUNS_ROOT / (f"{safe}-{stamp}" + (f"-{k}" if k else ""))
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
    raise ConfigError("--run-dir", None, f"could not create a new run dir under {RUNS_ROOT}")


def write_config(run_dir: Path, cfg: TrainConfig) -> Path:
    """RUN_DIR/config.toml, the resolved config; write-then-rename, so a reader never sees half
    of it (ranks may read it while rank 0 writes it again)."""
    path = run_dir / CONFIG_NAME
    text = "# resolved by stoker: every default filled in, every override applied\n"
    text += loading.to_toml(cfg.model_dump(by_alias=True))
    if path.is_file() and path.read_text() == text:
        return path
    tmp = path.with_name(f".{CONFIG_NAME}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(cfg: TrainConfig, run_dir: Path, nproc: int, *, max_restarts: int = 0,
           rank_args: Sequence[str] = ()) -> int:
    """Run ``nproc`` local ranks; returns the exit code for the CLI (0, 130 if interrupted, or
    the first failed rank's code). ``rank_args`` are passed on to every rank's command line."""
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, SignalException, Std
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    logging.getLogger("torch.distributed.elastic").setLevel(logging.ERROR)  # we report failures
    # As torchrun does: ranks share the cores instead of each taking all of them.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    live = cfg.telemetry.live and sys.stdout.isatty()
    # Rank 0 keeps the terminal when it draws the live display; everything else goes to
    # RUN_DIR/logs and to the console with a "[rankN]:" prefix.
    tee = {r: Std.ALL for r in range(nproc) if r > 0 or not live}
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=run_dir.name,
        rdzv_backend="c10d",
        rdzv_endpoint=f"127.0.0.1:{free_port()}",
        local_addr="127.0.0.1",
        max_restarts=max_restarts,
        monitor_interval=0.1,
        logs_specs=DefaultLogsSpecs(log_dir=str(run_dir / "logs"), tee=tee),
        log_line_prefix_template="[rank${rank}]:",
    )
    args = ["-u", "-m", "stoker.train", str(run_dir / CONFIG_NAME), "--run-dir", str(run_dir),
            *rank_args]
    try:
        elastic_launch(config, sys.executable)(*args)
    except SignalException as e:
        print(f"stoker train: stopped by {e.sigval.name}", file=sys.stderr)
        return 130
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        code = failure.exitcode if failure.exitcode > 0 else 128 - failure.exitcode
        if code not in (2, 130):  # those ranks already said why, in one line
            print(f"stoker train: rank {rank} failed (exit {failure.exitcode}"
                  f"{', ' + failure.signal_name() if failure.exitcode < 0 else ''}); "
                  f"logs in {run_dir / 'logs'}", file=sys.stderr)
        return code
    return 0
