"""The pipeline runner: steps in dependency order, each task (a step, or one shard of a
fanned-out step) skipped when the store holds what the same cache key produced, else run
with its retries; a fanned-out step's shards in parallel worker processes.

A task's cache key is the sha256 of its code version (the step's declared ``version``, else
the sha256 of its module's source file; for a training step, of the config file, the task
module and Stoker's version), its params, the digests of its inputs and its shard. Changing a
param thus reruns that step and, only when its outputs' bytes change, the steps downstream.

A run's record (`Store` ``runs/<id>.json``) is written after every step, with what each
step's tasks counted (`StepContext.count`) and, over the tasks that ran, the step's count per
second of its wall time (its ``processed`` and ``per_s``). A failed run
stops at the failed step (its finished shards kept), and ``resume`` from it reuses every task
it finished, even those of ``cache = false`` steps.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import multiprocessing
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import stoker
from stoker.pipeline.steps import (
    Call,
    Inputs,
    Outcome,
    execute,
    from_code_path,
    resolve_function,
)
from stoker.pipeline.store import DEFAULT_STORE, Artifact, Store
from stoker.spec import loading
from stoker.spec.errors import ConfigError, StokerError
from stoker.spec.pipeline import PipelineSpec, Step

Report = Callable[[str, str, str], None]  # (event, step, detail)


class PipelineFailed(StokerError):
    """A step failed after all its tries: exit 1, the run resumable."""

    exit_code = 1


@dataclass(frozen=True)
class Pipeline:
    spec: PipelineSpec
    source: Path  # the pipeline file
    overrides: tuple[str, ...]
    code_path: str  # the steps' modules are imported from here
    store_url: str


def load_pipeline(path: Path, overrides: Sequence[str] = ()) -> Pipeline:
    """Read and check a pipeline file: every step's code imports and every training config
    validates, before anything runs; else one ConfigError naming the file and key."""
    spec = loading.load(PipelineSpec, path, overrides)
    base = path.resolve().parent
    code_path = str((base / spec.path).resolve()) if spec.path else str(base)
    store_url = DEFAULT_STORE if spec.store is None else (
        spec.store if "://" in spec.store else str((base / spec.store).resolve()))
    pipeline = Pipeline(spec, path.resolve(), tuple(overrides), code_path, store_url)
    for name, step in spec.steps.items():
        try:
            if step.run is not None:
                resolve_function(step.run, code_path)
            else:
                _check_training(pipeline, step)
        except ConfigError as e:
            raise ConfigError(str(path), f"steps.{name}.train", f"{e}") from None
        except Exception as e:
            raise ConfigError(str(path), f"steps.{name}.{step.kind}",
                              f"{type(e).__name__}: {e}") from None
    return pipeline


def _check_training(pipeline: Pipeline, step: Step) -> None:
    from stoker.pipeline.steps import overrides
    from stoker.spec.train import TrainConfig

    config = train_config_path(pipeline, step)
    placeholders: Inputs = {name: Path("/input") for name in step.inputs}
    cfg = loading.load(TrainConfig, config, overrides(step.params, placeholders))
    cfg.check_world_size(step.nproc, str(config))
    if pipeline.spec.control is not None:
        cfg.check_confined(str(config))


def train_config_path(pipeline: Pipeline, step: Step) -> Path:
    return (pipeline.source.parent / str(step.train)).resolve()


# ---------------------------------------------------------------- code versions and keys


def code_version(pipeline: Pipeline, step: Step) -> str:
    if step.version is not None:
        return f"declared:{step.version}"
    h = hashlib.sha256()
    if step.run is not None:
        h.update(_module_source(step.run.partition(":")[0], pipeline.code_path))
    else:
        from stoker.spec.train import TrainConfig
        from stoker.train.task import with_task_path

        config = train_config_path(pipeline, step)
        h.update(config.read_bytes())
        cfg = with_task_path(loading.load(TrainConfig, config), config)
        if cfg.task.module is not None:
            h.update(_module_source(cfg.task.module.partition(":")[0], str(cfg.task.path)))
        h.update(f"stoker {stoker.__version__}".encode())
    return h.hexdigest()


def _module_source(module: str, code_path: str) -> bytes:
    from_code_path(module, code_path)
    spec = importlib.util.find_spec(module)
    origin = spec.origin if spec is not None else None
    return Path(origin).read_bytes() if origin and Path(origin).is_file() else module.encode()


def cache_key(step: Step, code: str, inputs: dict[str, Any], shard: int) -> str:
    doc = {"kind": step.kind, "target": step.run or "train", "code": code, "nproc": step.nproc,
           "params": step.params, "inputs": inputs, "outputs": list(step.output_names),
           "shard": shard, "shards": step.shards}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------- the run


def new_run_id(name: str) -> str:
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


class Runner:
    def __init__(self, pipeline: Pipeline, *, workers: int | None = None,
                 resume: str | None = None, report: Report | None = None) -> None:
        self.pipeline = pipeline
        self.spec = pipeline.spec
        self.store = Store(pipeline.store_url)
        self.workers = workers or self.spec.workers or os.cpu_count() or 1
        self.report: Report = report or (lambda event, step, detail: None)
        self.previous = self._previous_run(resume) if resume else None
        self.run_id = new_run_id(self.spec.name)
        self.record: dict[str, Any] = {
            "id": self.run_id, "pipeline": self.spec.name, "file": str(pipeline.source),
            "store": pipeline.store_url, "overrides": list(pipeline.overrides),
            "resumed_from": self.previous["id"] if self.previous else None,
            "started": time.time(), "ended": None, "state": "running", "error": None,
            "steps": {name: {"kind": step.kind, "target": step.run or step.train,
                             "state": "pending", "shards": []}
                      for name, step in self.spec.steps.items()},
        }
        self._pool: ProcessPoolExecutor | None = None
        # Training steps' logs, kept after the run (a local store's logs/, else a temp dir).
        work = self.store.work_dir()
        self.log_dir = (work.parent if work else Path(tempfile.gettempdir()) /
                        "stoker-pipeline-logs") / "logs" / self.run_id

    def _previous_run(self, resume: str) -> dict[str, Any]:
        run = find_run(self.store, resume)
        if run["pipeline"] != self.spec.name:
            raise StokerError(f"--resume: run {run['id']} is of pipeline {run['pipeline']!r}, "
                              f"not {self.spec.name!r}")
        return run

    def run(self) -> dict[str, Any]:
        """Run every step; the run's record. Raises PipelineFailed when a step fails."""
        work_root = self.store.work_dir()
        with _work_dir(work_root, self.run_id) as work:
            try:
                for name in self.spec.order():
                    self._run_step(name, work)
                self.record["state"] = "succeeded"
            except PipelineFailed as e:
                self.record["state"] = "failed"
                self.record["error"] = str(e)
                raise
            except BaseException as e:  # Ctrl-C, or a bug here: the run can still be resumed
                self.record["state"] = "interrupted"
                self.record["error"] = f"{type(e).__name__}: {e}"
                raise
            finally:
                if self._pool is not None:
                    self._pool.shutdown(cancel_futures=True)
                self.record["ended"] = time.time()
                self._save()
        return self.record

    def _save(self) -> None:
        self.store.write_json(self.record, "runs", f"{self.run_id}.json")

    def _run_step(self, name: str, work: Path) -> None:
        step = self.spec.steps[name]
        code = code_version(self.pipeline, step)
        entry = self.record["steps"][name]
        entry.update(code=code, state="running", started=time.time())
        tasks = []
        for shard in range(step.shards):
            inputs = self._input_artifacts(step, shard)
            key = cache_key(step, code, _digests(inputs), shard)
            tasks.append({"shard": shard, "key": key, "inputs": inputs})
        done = [self._reuse(name, step, t) for t in tasks]
        todo = [t for t, hit in zip(tasks, done, strict=True) if hit is None]
        for hit in done:
            if hit is not None:
                entry["shards"].append(hit)
        if todo:
            self.report("start", name, f"{len(todo)} of {step.shards} shards"
                        if step.shards > 1 else "")
        calls = [self._call(name, step, t, work) for t in todo]
        for task, call, outcome in zip(todo, calls, self._execute(calls), strict=True):
            entry["shards"].append(self._finish(name, step, code, task, call, outcome))
        entry["shards"].sort(key=lambda s: s["shard"])
        entry["ended"] = time.time()
        entry.update(_rates(entry))
        failed = [s for s in entry["shards"] if s["state"] == "failed"]
        states = {s["state"] for s in entry["shards"]}
        entry["state"] = "failed" if failed else next(
            state for state in ("ran", "resumed", "cached") if state in states)
        self._save()
        if failed:
            error = failed[0]["errors"][-1]
            which = f" shard {failed[0]['shard']}" if step.shards > 1 else ""
            self.report("failed", name, error)
            raise PipelineFailed(f"step {name}{which} failed after {failed[0]['attempts']} "
                                 f"tr{'ies' if failed[0]['attempts'] > 1 else 'y'}: {error} "
                                 f"(resume: stoker pipeline run {self.pipeline.source} "
                                 f"--resume {self.run_id})")
        self.report(entry["state"], name, _summary(entry))

    def _input_artifacts(self, step: Step, shard: int) -> dict[str, Any]:
        """Each input's artifact (a list for all of a fanned-out step's shards), with the
        step and output it came from."""
        out: dict[str, Any] = {}
        for name, ref in step.inputs.items():
            producer, _, output = ref.partition(".")
            shards = self.record["steps"][producer]["shards"]
            arts = [dict(s["outputs"][output], ref=ref, shard=s["shard"]) for s in shards]
            fanned = self.spec.steps[producer].shards > 1
            out[name] = arts[shard] if fanned and step.shards > 1 else (arts if fanned
                                                                        else arts[0])
        return out

    def _reuse(self, name: str, step: Step, task: dict[str, Any]) -> dict[str, Any] | None:
        """The task's shard record when the store holds its outputs: from a cache entry, or
        (resuming) from the failed run's finished task with the same key."""
        state = "cached"
        found = self.store.read_json("cache", f"{task['key']}.json") if step.cache else None
        if found is None and self.previous is not None:
            prior = self.previous["steps"].get(name, {}).get("shards", [])
            if any(s["key"] == task["key"] and s["state"] != "failed" for s in prior):
                found, state = self.store.read_json("cache", f"{task['key']}.json"), "resumed"
        if found is None:
            return None
        outputs = {k: Artifact.from_json(v) for k, v in found["outputs"].items()}
        if not all(self.store.has(a) for a in outputs.values()):
            return None
        return {"shard": task["shard"], "key": task["key"], "state": state, "attempts": 0,
                "seconds": 0.0, "outputs": found["outputs"], "result": found.get("result"),
                "processed": {}, "errors": [], "from_run": found.get("run")}

    def _call(self, name: str, step: Step, task: dict[str, Any], work: Path) -> Call:
        cache = Path(tempfile.gettempdir()) / "stoker-pipeline-inputs"
        inputs: Inputs = {}
        for input_name, art in task["inputs"].items():
            arts = art if isinstance(art, list) else [art]
            paths = [self.store.local_path(Artifact.from_json(a), cache) for a in arts]
            inputs[input_name] = paths if isinstance(art, list) else paths[0]
        target = step.run or str(train_config_path(self.pipeline, step))
        out_dir = work / name / str(task["shard"])
        return Call(name, step.kind, target, self.pipeline.code_path, step.params, inputs,
                    step.output_names, out_dir, self.spec.step_retry(name), task["shard"],
                    step.shards, step.nproc, self.spec.control, self.log_dir)

    def _execute(self, calls: list[Call]) -> Iterator[Outcome]:
        """Each call's outcome, in order: one call in this process, several in the worker
        processes (a fresh interpreter each: `spawn`, whatever this process holds)."""
        if len(calls) == 1 or self.workers == 1:
            yield from map(execute, calls)
            return
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers,
                                             mp_context=multiprocessing.get_context("spawn"))
        futures: list[Future[Outcome]] = [self._pool.submit(execute, c) for c in calls]
        for future in futures:
            try:
                yield future.result()
            except BrokenProcessPool as e:
                yield Outcome(False, 1, 0.0, None, [f"a worker process died: {e}"])

    def _finish(self, name: str, step: Step, code: str, task: dict[str, Any], call: Call,
                outcome: Outcome) -> dict[str, Any]:
        record: dict[str, Any] = {
            "shard": task["shard"], "key": task["key"], "attempts": outcome.attempts,
            "seconds": round(outcome.seconds, 4), "result": outcome.result,
            "processed": outcome.processed, "errors": outcome.errors, "outputs": {},
            "state": "failed"}
        if not outcome.ok:
            return record
        outputs = {k: self.store.put(call.out_dir / k).to_json() for k in step.output_names}
        self.store.write_json({
            "key": task["key"], "step": name, "kind": step.kind,
            "target": step.run or step.train, "code": code, "params": step.params,
            "inputs": task["inputs"], "shard": task["shard"], "shards": step.shards,
            "outputs": outputs, "result": outcome.result, "run": self.run_id,
            "created": time.time(), "seconds": record["seconds"]}, "cache", f"{task['key']}.json")
        return {**record, "outputs": outputs, "state": "ran"}


@contextlib.contextmanager
def _work_dir(root: Path | None, run_id: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=f"{run_id}-", dir=root)) if root is None else \
        root / run_id
    if root is not None:
        path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _digests(inputs: dict[str, Any]) -> dict[str, Any]:
    return {k: [a["digest"] for a in v] if isinstance(v, list) else v["digest"]
            for k, v in inputs.items()}


def _rates(entry: dict[str, Any]) -> dict[str, dict[str, float]]:
    """What the step's tasks that ran counted, and per second of the step's wall time."""
    processed: dict[str, float] = {}
    for shard in entry["shards"]:
        if shard["state"] == "ran":
            for unit, n in shard.get("processed", {}).items():
                processed[unit] = processed.get(unit, 0) + n
    wall = entry["ended"] - entry["started"]
    return {"processed": processed,
            "per_s": {unit: n / wall for unit, n in processed.items()} if wall > 0 else {}}


def _summary(entry: dict[str, Any]) -> str:
    shards = entry["shards"]
    counts: dict[str, int] = {}
    for s in shards:
        counts[s["state"]] = counts.get(s["state"], 0) + 1
    seconds = sum(s["seconds"] for s in shards)
    retried = sum(max(0, s["attempts"] - 1) for s in shards)
    parts = [f"{n} {state}" for state, n in counts.items()] if len(shards) > 1 else []
    if seconds:
        parts.append(f"{seconds:.2f} s")
    parts += [f"{n:g} {unit}, {entry['per_s'][unit]:.3g} {unit}/s"
              for unit, n in entry["processed"].items() if unit in entry["per_s"]]
    if retried:
        parts.append(f"{retried} retr{'ies' if retried > 1 else 'y'}")
    return ", ".join(parts)


# ---------------------------------------------------------------- finding runs


def runs(store: Store) -> list[dict[str, Any]]:
    """Every run's record, oldest first."""
    records = [store.read_json("runs", f"{name}.json") for name in store.names("runs")]
    return sorted((r for r in records if r), key=lambda r: r["started"])


def find_run(store: Store, run_id: str) -> dict[str, Any]:
    """A run by id ("last": the newest), else one StokerError."""
    if run_id == "last":
        all_runs = runs(store)
        if not all_runs:
            raise StokerError(f"{store.url}: no pipeline runs")
        return all_runs[-1]
    record = store.read_json("runs", f"{run_id}.json")
    if record is None:
        raise StokerError(f"{store.url}: no run {run_id!r}")
    return dict(record)
