"""``python -m stoker.control.prepare_train CONFIG --nproc R --run-dir RUN``

A training job's one-time preparation when the control plane starts its ranks itself (on Ray)
rather than through ``stoker train``: what `stoker.train.launch.prepare_run` does before any rank
starts (validate the config for R ranks, prepare the dataset, write RUN/config.toml). Exit code
0, or the error's (2 for bad input) with a one-line message.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from stoker.spec.errors import StokerError


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m stoker.control.prepare_train")
    p.add_argument("config", type=Path)
    p.add_argument("--nproc", type=int, required=True)
    p.add_argument("--run-dir", type=Path, required=True)
    args = p.parse_args(argv)
    from stoker.train.launch import prepare_run

    try:
        _, run_dir = prepare_run(args.config, (), args.nproc, args.run_dir)
    except StokerError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    print(f"stoker: prepared {run_dir} for {args.nproc} ranks", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
