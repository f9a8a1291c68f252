"""Running one task (a step, or one shard of a fanned-out step) with its retries: in the
runner's process or in a worker process, so everything here is picklable and imports only
what the task needs.

A ``run`` step's function is called with a `StepContext` and writes each declared output at
``ctx.outputs[name]`` (a file, or a directory it makes); what it returns, if not None, must be
JSON (metrics, say) and is kept in the run record, as is what it counted with
``ctx.count(n, "frames")`` (the runner gives each step's count per second). A ``train`` step
runs `stoker train` on the config with its params as ``--set`` overrides, or submits it to the
control plane; it counts the samples (or tokens) it trained on.
"""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from stoker.spec.pipeline import INPUT_REF, Control, Retry

Inputs = dict[str, Path | list[Path]]
SUMMARY_KEYS = ("steps_completed", "loss_first", "loss_last", "eval_loss_last")


@dataclass(frozen=True)
class StepContext:
    """What a step's function is given."""

    step: str
    params: dict[str, Any]
    inputs: Inputs  # local paths to read (a list for all the shards of a fanned-out step)
    outputs: dict[str, Path]  # where to write each output: a file, or a directory
    shard: int = 0
    shards: int = 1
    attempt: int = 1
    processed: dict[str, float] = field(default_factory=dict)  # what `count` noted, by unit

    def count(self, n: float, unit: str = "items") -> None:
        """Note that this try processed ``n`` more ``unit`` (frames, say): the run record keeps
        the total and the step's rate per second of its wall time."""
        self.processed[unit] = self.processed.get(unit, 0) + n

    def paths(self, name: str) -> list[Path]:
        """Input ``name`` as a list of paths, whether it is one artifact or several shards."""
        value = self.inputs[name]
        return value if isinstance(value, list) else [value]


@dataclass(frozen=True)
class Call:
    """One task to run, as the runner hands it to a process."""

    step: str
    kind: str  # "run" or "train"
    target: str  # "module:function", or the training config's absolute path
    code_path: str  # put first on sys.path to import the step's module
    params: dict[str, Any]
    inputs: Inputs
    outputs: tuple[str, ...]
    out_dir: Path
    retry: Retry
    shard: int = 0
    shards: int = 1
    nproc: int = 1
    control: Control | None = None
    log_dir: Path | None = None  # where a training step writes its log


@dataclass
class Outcome:
    ok: bool
    attempts: int
    seconds: float
    result: Any = None
    errors: list[str] = field(default_factory=list)
    processed: dict[str, float] = field(default_factory=dict)  # the successful try's counts


def execute(call: Call) -> Outcome:
    """Run ``call``, trying again after each failure up to ``retry.attempts`` tries in all,
    waiting ``retry.delay(n)`` after the n-th. Never raises: a failure is the outcome."""
    start = time.perf_counter()
    errors: list[str] = []
    for attempt in range(1, call.retry.attempts + 1):
        shutil.rmtree(call.out_dir, ignore_errors=True)
        call.out_dir.mkdir(parents=True)
        try:
            result, processed = _attempt(call, attempt)
            return Outcome(True, attempt, time.perf_counter() - start, result, errors,
                           processed)
        except Exception as e:
            errors.append(_describe(e))
        if attempt < call.retry.attempts:
            time.sleep(call.retry.delay(attempt))
    return Outcome(False, call.retry.attempts, time.perf_counter() - start, None, errors)


def output_paths(call: Call) -> dict[str, Path]:
    return {name: call.out_dir / name for name in call.outputs}


def _attempt(call: Call, attempt: int) -> tuple[Any, dict[str, float]]:
    """The try's result and what it counted."""
    outputs = output_paths(call)
    if call.kind == "train":
        result, processed = run_training(call)
    else:
        ctx = StepContext(call.step, call.params, call.inputs, outputs, call.shard, call.shards,
                          attempt)
        result = resolve_function(call.target, call.code_path)(ctx)
        json.dumps(result)  # a result that is not JSON fails the try, naming its type
        processed = ctx.processed
    missing = [name for name, path in outputs.items() if not path.exists()]
    if missing:
        raise RuntimeError(f"the step wrote no {', '.join(missing)} (declared outputs are "
                           f"written at ctx.outputs[name])")
    return result, processed


def from_code_path(module_name: str, code_path: str) -> None:
    """Put ``code_path`` first on the path, and forget a module of the same top-level name that
    was imported from elsewhere when ``code_path`` has its own (two pipelines' ``steps`` in one
    process: the second would otherwise get the first's)."""
    top = module_name.partition(".")[0]
    here = Path(code_path)
    loaded = sys.modules.get(top)
    if loaded is not None and ((here / f"{top}.py").is_file() or (here / top).is_dir()):
        origin = getattr(loaded, "__file__", None)
        if origin is None or here.resolve() not in Path(origin).resolve().parents:
            for name in [n for n in sys.modules if n == top or n.startswith(f"{top}.")]:
                del sys.modules[name]
    if code_path in sys.path:
        sys.path.remove(code_path)
    sys.path.insert(0, code_path)
    importlib.invalidate_caches()


def resolve_function(target: str, code_path: str) -> Callable[[StepContext], Any]:
    """The function ``"module:function"`` names, imported with ``code_path`` first on the path."""
    module_name, _, attr = target.partition(":")
    from_code_path(module_name, code_path)
    fn = getattr(importlib.import_module(module_name), attr, None)
    if not callable(fn):
        raise AttributeError(f"{module_name!r} has no function {attr!r}")
    return cast(Callable[[StepContext], Any], fn)


def _describe(e: BaseException) -> str:
    """The exception's own line, and where in the step's code it was raised."""
    frames = traceback.extract_tb(e.__traceback__)
    where = f" ({Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    return f"{type(e).__name__}: {e}{where}"


# ---------------------------------------------------------------- training steps


def overrides(params: Mapping[str, Any], inputs: Inputs, prefix: str = "") -> list[str]:
    """A training step's params as ``--set section.key=value`` overrides, each ``{inputs.X}``
    in a string replaced by input X's local path."""
    from stoker.spec.loading import _toml_value

    out: list[str] = []
    for key, value in params.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.extend(overrides(value, inputs, f"{dotted}."))
        else:
            out.append(f"{dotted}={_toml_value(substitute(value, inputs))}")
    return out


def substitute(value: Any, inputs: Inputs) -> Any:
    if isinstance(value, str):
        return INPUT_REF.sub(lambda m: _path_text(inputs[m.group(1)]), value)
    if isinstance(value, list | tuple):
        return [substitute(v, inputs) for v in value]
    return value


def _path_text(path: Path | list[Path]) -> str:
    return ",".join(map(str, path)) if isinstance(path, list) else str(path)


def run_training(call: Call) -> tuple[dict[str, Any], dict[str, float]]:
    """Train locally (`stoker train`) or as a control-plane job; then export the model. The
    result, and the samples (a task's) or tokens (the language model's) trained on."""
    from stoker.train.export import export

    run_dir = call.out_dir / "run"
    sets = overrides(call.params, call.inputs)
    if call.control is None:
        log = _train_locally(call, run_dir, sets)
        where: dict[str, Any] = {"ran": "locally", "log": str(log)}
    else:
        job_id = _train_as_job(call, run_dir, sets)
        where = {"ran": "job", "job": job_id, "server": call.control.url}
    (run_dir / ".lock").unlink(missing_ok=True)
    exported = export(run_dir, call.out_dir / "model")
    summary = json.loads((run_dir / "summary.json").read_text()) \
        if (run_dir / "summary.json").is_file() else {}
    if "model" not in call.outputs:
        (call.out_dir / "model").unlink()
    if "run" not in call.outputs:
        shutil.rmtree(run_dir)
    unit = "samples" if "flops_per_sample" in summary else "tokens"
    processed = {unit: summary["tokens_trained"]} if "tokens_trained" in summary else {}
    return ({**where, "step": exported.step, "parameters": exported.parameters,
             **{k: summary[k] for k in SUMMARY_KEYS if k in summary}}, processed)


def _train_locally(call: Call, run_dir: Path, sets: list[str]) -> Path:
    cmd = [sys.executable, "-m", "stoker", "train", call.target, "--nproc", str(call.nproc),
           "--run-dir", str(run_dir), *(a for s in sets for a in ("--set", s))]
    log_dir = call.log_dir or call.out_dir.parent
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{call.step}.train.log"
    with log.open("w") as out:
        code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False).returncode
    if code != 0:
        tail = log.read_text().strip().splitlines()[-1:] or [""]
        raise RuntimeError(f"stoker train exited {code}: {tail[0]} (log: {log})")
    return log


def _train_as_job(call: Call, run_dir: Path, sets: list[str]) -> int:
    """Submit the config as a job (as `stoker submit` sends it), wait for its end, and copy
    its run directory from the server's job directories."""
    import os

    from stoker.cli.jobs_cmd import _local_paths
    from stoker.server.client import Client
    from stoker.spec.loading import apply_overrides, read_toml

    control = cast(Control, call.control)
    config = Path(call.target)
    train = _local_paths(apply_overrides(read_toml(config), sets), config)
    job = {"name": f"pipeline-{call.step}", "queue": control.queue, "ranks": call.nproc,
           "resources": {"cpus": control.cpus_per_rank}, "train_config": config.name}
    with Client(control.url, os.environ.get(control.token_env)) as client:
        job_id = int(client.submit(job, train)["id"])
        deadline = time.monotonic() + control.timeout_s
        while (view := client.job(job_id))["state"] not in ("SUCCEEDED", "FAILED", "CANCELLED"):
            if time.monotonic() > deadline:
                client.cancel(job_id)
                raise TimeoutError(f"job {job_id} did not end in {control.timeout_s:.0f} s")
            time.sleep(1.0)
    if view["state"] != "SUCCEEDED":
        raise RuntimeError(f"job {job_id} ended {view['state']}: {view.get('reason') or ''}")
    shutil.copytree(Path(control.jobs_dir) / str(job_id) / "run", run_dir)
    return job_id
