"""The pipeline runner (`stoker.pipeline`): caching, retries with back-off, resume after a
failure, lineage, fan-out in parallel processes, and bad pipeline files. The steps are
tests/pipeline_steps.py; each notes in a log file when it runs."""

from __future__ import annotations

import itertools
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from stoker.pipeline.lineage import lineage, resolve
from stoker.pipeline.runner import PipelineFailed, Runner, find_run, load_pipeline
from stoker.pipeline.steps import resolve_function
from stoker.pipeline.store import Store, digest_of
from stoker.spec.errors import ConfigError

TESTS = Path(__file__).resolve().parent


def write(tmp: Path, steps: str, head: str = "", name: str = "pipeline.toml") -> Path:
    path = tmp / name
    path.write_text(f'name = "t"\nstore = "store"\npath = "{TESTS}"\n{head}\n'
                    + steps.replace("LOG", str(tmp / "log")))
    return path


def run(path: Path, overrides: Sequence[str] = (), **kw: Any) -> dict[str, Any]:
    return Runner(load_pipeline(path, overrides), **kw).run()


def ran(tmp: Path) -> list[str]:
    """The steps (and shards) that ran since the last call."""
    log = tmp / "log"
    lines = log.read_text().split("\n")[:-1] if log.exists() else []
    log.unlink(missing_ok=True)
    return sorted(lines)


def stoker(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The CLI's `main` in this process: its exit code, stdout and stderr."""
    from stoker.cli.main import main

    capsys.readouterr()
    with pytest.MonkeyPatch.context() as mp, pytest.raises(SystemExit) as exit_:
        mp.setattr(sys, "argv", ["stoker", *args])
        main()
    out, err = capsys.readouterr()
    return int(exit_.value.code or 0), out, err


def states(record: dict[str, Any]) -> dict[str, str]:
    return {name: step["state"] for name, step in record["steps"].items()}


CHAIN = """
[steps.a]
run = "pipeline_steps:value"
params = { log = "LOG", x = 1 }
outputs = ["out"]
[steps.b]
run = "pipeline_steps:value"
inputs = { a = "a.out" }
params = { log = "LOG", x = 2, note = "" }
outputs = ["out"]
[steps.c]
run = "pipeline_steps:value"
inputs = { b = "b.out" }
params = { log = "LOG" }
outputs = ["out"]
[steps.d]
run = "pipeline_steps:value"
inputs = { a = "a.out" }
params = { log = "LOG" }
outputs = ["out"]
"""


def test_changed_param_reruns_only_the_steps_that_depend_on_it(tmp_path: Path) -> None:
    path = write(tmp_path, CHAIN)
    assert states(run(path)) == dict.fromkeys("abcd", "ran")
    assert ran(tmp_path) == ["a 0", "b 0", "c 0", "d 0"]

    assert states(run(path)) == dict.fromkeys("abcd", "cached")
    assert ran(tmp_path) == []

    # b's output changes: b and c (downstream) run again; a and d do not.
    record = run(path, ["steps.b.params.x=3"])
    assert states(record) == {"a": "cached", "b": "ran", "c": "ran", "d": "cached"}
    assert ran(tmp_path) == ["b 0", "c 0"]
    out = Path(Store(str(tmp_path / "store")).object_path(
        record["steps"]["c"]["shards"][0]["outputs"]["out"]["digest"]))
    assert json.loads(out.read_text())["inputs"]["b"]["x"] == 3

    # A param that does not change b's output's bytes reruns b, and c is served from the cache.
    record = run(path, ["steps.b.params.x=3", "steps.b.params.note='again'"])
    assert states(record) == {"a": "cached", "b": "ran", "c": "cached", "d": "cached"}
    assert ran(tmp_path) == ["b 0"]


def test_a_failing_step_is_retried_with_back_off(tmp_path: Path) -> None:
    tries = tmp_path / "tries"
    path = write(tmp_path, f"""
[steps.flaky]
run = "pipeline_steps:flaky"
params = {{ log = "LOG", tries = "{tries}", failures = 2 }}
outputs = ["out"]
retry = {{ attempts = 3, backoff_s = 0.2 }}
""")
    shard = run(path)["steps"]["flaky"]["shards"][0]
    assert shard["state"] == "ran" and shard["attempts"] == 3
    assert shard["result"] == {"attempt": 3}
    assert [re.sub(r":\d+\)$", ")", e) for e in shard["errors"]] == [
        "RuntimeError: try 1 fails (pipeline_steps.py)",
        "RuntimeError: try 2 fails (pipeline_steps.py)"]  # where in the step's code it failed
    times = [float(t) for t in tries.read_text().split()]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[0] >= 0.2 and gaps[1] >= 0.4  # backoff_s * 2**(n-1)

    # Out of tries: the run fails, naming the step and its last error.
    tries.unlink()
    with pytest.raises(PipelineFailed, match=r"step flaky failed after 2 tries: RuntimeError: "
                                             r"try 2 fails"):
        run(path, ["steps.flaky.params.failures=5", "steps.flaky.retry.attempts=2",
                   "steps.flaky.retry.backoff_s=0"])


def test_a_failed_run_resumes_from_the_failed_step(tmp_path: Path) -> None:
    flag = tmp_path / "flag"
    flag.touch()
    path = write(tmp_path, f"""
[retry]
attempts = 1
[steps.a]
run = "pipeline_steps:value"
params = {{ log = "LOG" }}
outputs = ["out"]
cache = false
[steps.b]
run = "pipeline_steps:fails_while"
inputs = {{ a = "a.out" }}
params = {{ log = "LOG", flag = "{flag}" }}
outputs = ["out"]
[steps.c]
run = "pipeline_steps:value"
inputs = {{ b = "b.out" }}
params = {{ log = "LOG" }}
outputs = ["out"]
""")
    with pytest.raises(PipelineFailed, match=r"resume: stoker pipeline run .* --resume t-"):
        run(path)
    store = Store(str(tmp_path / "store"))
    failed = find_run(store, "last")
    assert failed["state"] == "failed"
    assert states(failed) == {"a": "ran", "b": "failed", "c": "pending"}
    assert ran(tmp_path) == ["a 0", "b 0"]

    flag.unlink()  # the cause is fixed: resume
    record = run(path, resume=failed["id"])
    assert record["resumed_from"] == failed["id"]
    assert states(record) == {"a": "resumed", "b": "ran", "c": "ran"}
    assert ran(tmp_path) == ["b 0", "c 0"]  # a (cache = false) is not run again

    assert states(run(path)) == {"a": "ran", "b": "cached", "c": "cached"}  # not resuming
    assert ran(tmp_path) == ["a 0"]


FAN_OUT = """
[steps.gen]
run = "pipeline_steps:rendezvous"
params = { log = "LOG", meet = "MEET" }
outputs = ["out"]
shards = 3
[steps.each]
run = "pipeline_steps:value"
inputs = { gen = "gen.out" }
params = { log = "LOG", x = 7 }
outputs = ["out"]
shards = 3
[steps.all]
run = "pipeline_steps:value"
inputs = { each = "each.out" }
params = { log = "LOG" }
outputs = ["out"]
"""


def fan_out(tmp: Path) -> Path:
    (tmp / "meet").mkdir()
    return write(tmp, FAN_OUT.replace("MEET", str(tmp / "meet")))


def test_fan_out_runs_the_shards_in_parallel_processes(tmp_path: Path) -> None:
    record = run(fan_out(tmp_path), workers=3)
    assert ran(tmp_path) == ["all 0", *(f"each {i}" for i in range(3)),
                             *(f"gen {i}" for i in range(3))]
    gen = record["steps"]["gen"]["shards"]
    pids = {s["result"]["pid"] for s in gen}
    assert len(pids) == 3  # three processes, all running at once (the rendezvous)
    # What the shards counted, per shard and in all, and per second of the step's wall time.
    assert [s["processed"] for s in gen] == [{"items": 1}, {"items": 2}, {"items": 3}]
    step = record["steps"]["gen"]
    assert step["processed"] == {"items": 6}
    assert step["per_s"]["items"] == pytest.approx(6 / (step["ended"] - step["started"]))
    store = Store(str(tmp_path / "store"))
    out = json.loads(Path(store.object_path(
        record["steps"]["all"]["shards"][0]["outputs"]["out"]["digest"])).read_text())
    # Shard i of `each` got shard i of `gen`; `all` got every shard of `each`, in order.
    assert [e["inputs"]["gen"]["shard"] for e in out["inputs"]["each"]] == [0, 1, 2]
    assert [e["shard"] for e in out["inputs"]["each"]] == [0, 1, 2]
    assert len({s["outputs"]["out"]["digest"] for s in gen}) == 3  # an artifact per shard


def test_lineage_traces_an_output_to_its_sources(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    path = fan_out(tmp_path)
    record = run(path, workers=3)
    store = Store(str(tmp_path / "store"))
    digest = record["steps"]["all"]["shards"][0]["outputs"]["out"]["digest"]
    # The same artifact by step output, by a copy of its file, and by a digest prefix.
    copy = tmp_path / "copy.json"
    copy.write_bytes(Path(store.object_path(digest)).read_bytes())
    assert resolve(store, "all.out") == resolve(store, str(copy)) == digest
    assert resolve(store, digest[:10]) == digest
    assert resolve(store, "each.out[2]") == record["steps"]["each"]["shards"][2]["outputs"][
        "out"]["digest"]

    tree = lineage(store, digest)
    assert tree["output"] == "all.out" and tree["step"]["run"] == record["id"]
    each = tree["step"]["inputs"]["each"]
    assert [e["step"]["shard"] for e in each] == [0, 1, 2]
    assert each[1]["step"]["params"]["x"] == 7
    gen = each[1]["step"]["inputs"]["gen"]
    assert gen["output"] == "gen.out" and gen["step"]["shard"] == 1
    assert gen["step"]["target"] == "pipeline_steps:rendezvous"
    assert gen["step"]["code"] == digest_of(TESTS / "pipeline_steps.py").digest
    assert gen["step"]["inputs"] == {}  # a source

    code, out, err = stoker(capsys, "pipeline", "lineage", "all.out", "--store",
                            str(tmp_path / "store"), "--json")
    assert code == 0, err
    assert json.loads(out) == tree


def test_a_remote_fsspec_store_caches_too(tmp_path: Path) -> None:
    path = write(tmp_path, CHAIN, name="remote.toml").read_text()
    path_remote = tmp_path / "remote.toml"
    path_remote.write_text(path.replace('store = "store"', f'store = "memory://{tmp_path}"'))
    assert states(run(path_remote)) == dict.fromkeys("abcd", "ran")
    assert states(run(path_remote, ["steps.c.params.x=1"])) == \
        {"a": "cached", "b": "cached", "c": "ran", "d": "cached"}
    assert ran(tmp_path) == ["a 0", "b 0", "c 0", "c 0", "d 0"]
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize(("steps", "key", "reason"), [
    ('[steps.a]\nrun = "pipeline_steps:value"\ninputs = { x = "b.out" }\noutputs = ["out"]\n'
     '[steps.b]\nrun = "pipeline_steps:value"\ninputs = { x = "a.out" }\noutputs = ["out"]',
     "steps", "the inputs form a cycle"),
    ('[steps.a]\nrun = "pipeline_steps:value"\ninputs = { x = "nope.out" }\noutputs = ["out"]',
     "steps.a.inputs.x", "no step 'nope'"),
    ('[steps.a]\nrun = "pipeline_steps:value"\noutputs = ["out"]\n'
     '[steps.b]\nrun = "pipeline_steps:value"\ninputs = { x = "a.res" }\noutputs = ["out"]',
     "steps.b.inputs.x", "step 'a' has no output 'res'"),
    ('[steps.a]\nrun = "pipeline_steps:value"', "steps.a.outputs", "at least one output"),
    ('[steps.a]\nrun = "pipeline_steps:nope"\noutputs = ["out"]', "steps.a.run",
     "has no function 'nope'"),
    ('[steps.a]\nrun = "pipeline_steps:value"\noutputs = ["out"]\nretries = 2', "steps.a.retries",
     "unknown key"),
    ('[steps.a]\noutputs = ["out"]', "steps.a.run", "either run"),
])
def test_a_bad_pipeline_file_names_file_and_key(tmp_path: Path, steps: str, key: str,
                                                reason: str) -> None:
    path = write(tmp_path, steps)
    with pytest.raises(ConfigError) as e:
        load_pipeline(path)
    assert e.value.source == str(path) and e.value.key == key and reason in e.value.reason


def test_the_cli_refuses_a_bad_file_in_one_line_and_runs_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, CHAIN.replace('"a.out" }\nparams = { log = "LOG" }',
                                         '"a.nope" }\nparams = { log = "LOG" }'))
    code, _, err = stoker(capsys, "pipeline", "run", str(path))
    assert code == 2
    assert err.strip().splitlines() == [
        f"error: {path}: steps.d.inputs.a: 'a.nope': step 'a' has no output 'nope' (it has out)"]
    assert not (tmp_path / "store").exists() and not (tmp_path / "log").exists()


EXAMPLE = TESTS.parent / "examples" / "pipelines" / "pipeline.toml"


def small_example(store: Path) -> list[str]:
    return [f"store='{store}'", "steps.generate.shards=1", "steps.transform.shards=1",
            "steps.generate.params.samples_per_shard=64", "steps.train.params.train.steps=2",
            "steps.evaluate.params.val_samples=32"]


@pytest.mark.slow
def test_the_example_trains_as_a_stoker_run_and_is_cached(tmp_path: Path) -> None:
    """examples/pipelines at a small size: the training step is a `stoker train` run on the
    generated data, its model an artifact the evaluation loads; a second run is all cache."""
    example, small = EXAMPLE, small_example(tmp_path / "store")
    record = run(example, small)
    assert states(record) == dict.fromkeys(("generate", "transform", "train", "evaluate"), "ran")
    train = record["steps"]["train"]["shards"][0]
    assert train["result"]["ran"] == "locally" and train["result"]["step"] == 2
    assert 0 <= record["steps"]["evaluate"]["shards"][0]["result"]["val_accuracy"] <= 1
    store = Store(str(tmp_path / "store"))
    run_dir = Path(store.object_path(train["outputs"]["run"]["digest"]))
    assert json.loads((run_dir / "summary.json").read_text())["steps_completed"] == 2

    model = lineage(store, resolve(store, "evaluate.report"))["step"]["inputs"]["model"]
    assert model["output"] == "train.model" and model["step"]["target"] == "train.toml"
    assert model["step"]["inputs"]["data"]["step"]["inputs"]["images"]["output"] == \
        "generate.images"
    assert record["steps"]["train"]["processed"] == {"samples": 2 * 32}  # 2 steps of 32
    again = run(example, small)
    assert set(states(again).values()) == {"cached"}
    assert all(step["processed"] == {} for step in again["steps"].values())  # nothing ran


CLUSTER = """
[flavors.cpu]
[autodetect]
cpu_slots = 2
cpu_flavor = "cpu"
[tenants.alice]
token_env = "STOKER_TOKEN_ALICE"
queues = ["q"]
[queues.q.quotas.cpu]
cpus = 2
[isolation]
pass_env = ["PYTHONPATH"]  # the job runs this checkout's stoker, as the test does
# The example's code is in this checkout, which may lie under /tmp, hidden by a sandbox: this
# test is about the pipeline's job, not isolation (as in test_train_task).
identity = "server"
sandbox = "none"
single_trust = true
"""


@pytest.mark.slow
def test_with_a_control_plane_the_training_step_is_a_job(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """With [control], the training step is submitted to a real `stoker server`, waited for,
    and its run directory and model come back into the store as artifacts."""
    from stoker.server.process import ServerProcess, kill_jobs

    (tmp_path / "cluster.toml").write_text(CLUSTER)
    state = tmp_path / "state"
    server = ServerProcess(state, tmp_path / "cluster.toml",
                           env={"STOKER_TOKEN_ALICE": "alice"}, args=["--interval", "0.2"])
    monkeypatch.setenv("STOKER_TOKEN", "alice")
    try:
        server.start()
        record = run(EXAMPLE, [*small_example(tmp_path / "store"), f"control.url='{server.url}'",
                               "control.queue='q'", f"control.jobs_dir='{state / 'jobs'}'"])
        train = record["steps"]["train"]["shards"][0]["result"]
        assert train["ran"] == "job" and train["step"] == 2
        assert server.client("alice").job(train["job"])["state"] == "SUCCEEDED"
        assert 0 <= record["steps"]["evaluate"]["shards"][0]["result"]["val_accuracy"] <= 1
    finally:
        server.stop()
        kill_jobs(state)


def test_two_pipelines_modules_of_one_name_each_resolve_to_their_own(tmp_path: Path) -> None:
    """Two pipelines run in one process, each with a ``steps`` module of its own (as the
    mapping example and the pipelines example are): each gets its own, and a module its
    directory does not have (the standard library's) is not imported again."""
    for name, fn in (("a", "one"), ("b", "two")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "steps.py").write_text(f"def {fn}(ctx):\n    return '{fn}'\n")
    assert resolve_function("steps:one", str(tmp_path / "a"))(None) == "one"  # type: ignore[arg-type]
    assert resolve_function("steps:two", str(tmp_path / "b"))(None) == "two"  # type: ignore[arg-type]
    assert resolve_function("steps:one", str(tmp_path / "a"))(None) == "one"  # type: ignore[arg-type]
    json_module = sys.modules["json"]
    assert resolve_function("json:dumps", str(tmp_path / "a")) is json_module.dumps
    sys.modules.pop("steps", None)
