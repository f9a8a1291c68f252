"""Run benchmark scripts as `stoker bench` does: each in its own process, figures through a file.

A suite is one script, ``benchmarks/NAME.py``. Its optional module-level ``BENCH_QUICK`` (the
arguments of a quick run) and ``BENCH_NEEDS`` (``"cuda"``: skipped without a GPU) are read from
its source with `ast`, so listing suites imports nothing.
"""

from __future__ import annotations

import ast
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from stoker.bench.figures import ENV
from stoker.bench.records import Record, read_figures
from stoker.spec.errors import StokerError

VERSIONS = ("torch", "stoker", "numpy", "sqlalchemy", "fastapi", "pydantic", "ray", "psycopg")


@dataclass(frozen=True)
class Suite:
    name: str
    script: Path
    quick: list[str] = field(default_factory=list)
    needs: str | None = None


def discover(bench_dir: Path) -> dict[str, Suite]:
    if not bench_dir.is_dir():
        raise StokerError(f"{bench_dir}: no benchmarks directory (run from a Stoker checkout, "
                          f"or give --dir)")
    suites = {}
    for script in sorted(bench_dir.glob("*.py")):
        if script.name.startswith("_"):
            continue
        consts = _module_constants(script)
        quick = consts.get("BENCH_QUICK", [])
        needs = consts.get("BENCH_NEEDS")
        if not (isinstance(quick, list) and all(isinstance(a, str) for a in quick)):
            raise StokerError(f"{script}: BENCH_QUICK must be a list of strings")
        suites[script.stem] = Suite(script.stem, script, quick,
                                    needs if isinstance(needs, str) else None)
    return suites


def _module_constants(script: Path) -> dict[str, Any]:
    try:
        tree = ast.parse(script.read_text(), str(script))
    except SyntaxError as e:
        raise StokerError(f"{script}:{e.lineno}: {e.msg}") from None
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 \
                and isinstance(node.targets[0], ast.Name) \
                and node.targets[0].id in ("BENCH_QUICK", "BENCH_NEEDS"):
            try:
                found[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                raise StokerError(f"{script}:{node.lineno}: {node.targets[0].id} must be a "
                                  f"literal") from None
    return found


def pick(suites: dict[str, Suite], names: list[str]) -> list[Suite]:
    unknown = [n for n in names if n.removesuffix(".py") not in suites]
    if unknown:
        raise StokerError(f"no benchmark {unknown[0]!r} (have: {', '.join(suites)})")
    return [suites[n.removesuffix(".py")] for n in names] if names else list(suites.values())


def missing_need(suite: Suite) -> str | None:
    """Why this machine cannot run the suite, or None."""
    if suite.needs == "cuda" and not _has_gpu():
        return "needs a CUDA GPU"
    return None


def _has_gpu() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    done = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False)
    return done.returncode == 0 and "GPU" in done.stdout


@dataclass(frozen=True)
class Outcome:
    suite: str
    args: list[str]
    rc: int | None  # None: skipped
    seconds: float
    figures: dict[str, dict[str, Any]]
    note: str = ""  # why it was skipped, or the tail of a failed run's output

    def as_record(self) -> dict[str, Any]:
        return {"args": self.args, "rc": self.rc, "seconds": round(self.seconds, 3),
                "figures": self.figures, "note": self.note}


def run_suite(suite: Suite, args: list[str], repeats: int, timeout_s: float, log_dir: Path,
              on_repeat: Callable[[], None] = lambda: None) -> Outcome:
    """Run the script ``repeats`` times (figures' samples pooled); stop at the first failure."""
    if (why := missing_need(suite)) is not None:
        return Outcome(suite.name, args, None, 0.0, {}, why)
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{suite.name}.log"
    with tempfile.TemporaryDirectory() as tmp:
        figures_file = Path(tmp) / "figures.jsonl"
        env = {**os.environ, ENV: str(figures_file)}
        start = time.monotonic()
        rc = 0
        for _ in range(repeats):
            rc = _run_once(suite, args, env, timeout_s, log)
            on_repeat()
            if rc != 0:
                break
        seconds = time.monotonic() - start
        figures = read_figures(figures_file, str(suite.script))
    note = "" if rc == 0 else _tail(log)
    return Outcome(suite.name, args, rc, seconds, figures, note)


def _run_once(suite: Suite, args: list[str], env: dict[str, str], timeout_s: float,
              log: Path) -> int:
    with log.open("a") as out:
        out.write(f"$ {sys.executable} {suite.script} {' '.join(args)}\n")
        out.flush()
        try:
            return subprocess.run([sys.executable, str(suite.script), *args],
                                  cwd=suite.script.parent.parent, env=env, stdout=out,
                                  stderr=subprocess.STDOUT, timeout=timeout_s,
                                  check=False).returncode
        except subprocess.TimeoutExpired:
            out.write(f"\n[stoker bench: killed after {timeout_s:.0f} s]\n")
            return 124


def _tail(log: Path, lines: int = 15) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def record_id(started: datetime, commit: str) -> str:
    return f"{started:%Y%m%dT%H%M%SZ}-{commit[:7]}"


def new_record(started: datetime, state: tuple[str, bool], outcomes: list[Outcome],
               quick: bool, repeats: int) -> Record:
    """The run's record; ``state``: the commit and dirtiness when the run started."""
    commit, dirty = state
    return {"id": record_id(started, commit), "time": started.isoformat(timespec="seconds"),
            "commit": commit, "dirty": dirty, "quick": quick, "repeats": repeats,
            "machine": machine(), "versions": versions(),
            "suites": {o.suite: o.as_record() for o in outcomes}}


def git_state(repo: Path) -> tuple[str, bool]:
    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                              check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "HEAD") or "unknown"
    return commit, bool(git("status", "--porcelain", "--untracked-files=no"))


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"host": socket.gethostname(), "platform": platform.platform(),
                            "cpus": os.cpu_count(), "cpu": _proc_field("/proc/cpuinfo",
                                                                       "model name"),
                            "load_1m": round(os.getloadavg()[0], 2)}
    mem_kb = _proc_field("/proc/meminfo", "MemTotal")
    if mem_kb:
        info["memory_gib"] = round(int(mem_kb.split()[0]) / 2**20, 1)
    if shutil.which("nvidia-smi"):
        done = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                              capture_output=True, text=True, check=False)
        if done.returncode == 0:
            info["gpus"] = done.stdout.split("\n")[:-1] or []
    return info


def _proc_field(path: str, key: str) -> str | None:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in VERSIONS:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found
