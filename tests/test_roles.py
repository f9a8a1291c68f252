"""Jobs with several roles (Kueue's pod sets) on the control plane's side: the job file, the
scheduler's view, the stored placement, the snapshot (one running entry per role) and the
launch plan (one gang, every role's ranks). The server end to end: test_e2e_roles.py."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sched_helpers import res
from stoker.control.launch import assign_role_devices, plan_launch, process_count, set_aside_run
from stoker.control.local_executor import LocalExecutor
from stoker.control.reconciler import ControlSettings, Reconciler
from stoker.control.snapshot import build_snapshot, job_spec, per_rank
from stoker.control.sql_store import SqlStore
from stoker.control.store import JobRecord, NewJob
from stoker.sched import Admit, Decisions, Node, RoleAdmit
from stoker.sched.config import pending_job
from stoker.spec import loading
from stoker.spec.api import JobState
from stoker.spec.cluster import ClusterConfig
from stoker.spec.errors import ConfigError
from stoker.spec.job import JobSpec, load_job

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

CLUSTER = {
    "flavors": {"cpu": {}, "h100": {"gpu_model": "NVIDIA H100"}},
    "nodes": [{"name": "c0", "flavor": "cpu", "cpus": 4},
              {"name": "g0", "flavor": "h100", "gpus": 4, "cpus": 8}],
    "queues": {"a": {"quotas": {"cpu": {"cpus": 4}, "h100": {"gpus": 4, "cpus": 8}}}},
}

ROLES = """
name = "rl"
queue = "a"
env = { SHARED = "job", OVER = "job" }

[[roles]]
name = "trainer"
ranks = 2
command = ["python", "train.py"]
resources = { gpu = 1, cpu = 2 }
placement = { gpu_model = "H100", topology = "node", topology_mode = "required" }

[[roles]]
name = "rollout"
ranks = 1
command = ["python", "rollout.py"]
resources = { gpu = 2 }
env = { OVER = "role" }

[[roles]]
name = "launcher"
command = ["python", "launch.py"]
"""


@pytest.fixture
def cluster() -> ClusterConfig:
    return loading.validate(ClusterConfig, CLUSTER, "test")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlStore]:
    s = SqlStore.open(f"sqlite:///{tmp_path}/stoker.db")
    yield s
    s.close()


def roles_file(tmp_path: Path, text: str = ROLES) -> Path:
    path = tmp_path / "rl.toml"
    path.write_text(text)
    return path


def submit(store: SqlStore, spec: JobSpec) -> JobRecord:
    body = {"job": spec.model_dump(mode="json"), "train": None}
    return store.submit(NewJob("alice", spec.name, spec.queue, "", 0, body), "alice")


# --- the job file ------------------------------------------------------------------------------


def test_a_job_with_roles_loads_and_reads_back(tmp_path: Path, cluster: ClusterConfig) -> None:
    spec = load_job(roles_file(tmp_path))
    cluster.check_job(spec)
    roles = spec.job_roles()
    assert [(r.name, r.ranks, r.first) for r in roles] == [
        ("trainer", 2, 0), ("rollout", 1, 2), ("launcher", 1, 3)]
    assert spec.total_ranks == 4 and spec.kind == "command"
    assert roles[1].env == {"SHARED": "job", "OVER": "role"}
    assert roles[0].env == {"SHARED": "job", "OVER": "job"}
    assert roles[2].resources.cpu_count == 1  # the default request
    stored = spec.model_dump(mode="json")  # what the CLI sends and the server stores
    assert "ranks" not in stored and "command" not in stored and len(stored["roles"]) == 3
    again = JobSpec.model_validate(stored).job_roles()
    assert [(r.name, r.ranks, r.resources.amounts(), r.placement, r.command, r.env, r.first)
            for r in again] == [(r.name, r.ranks, r.resources.amounts(), r.placement,
                                 r.command, r.env, r.first) for r in roles]

    job = pending_job(cluster, spec, 7, 0.0)
    assert (job.ranks, job.per_rank, job.flavors, job.topology, job.topology_required) == (
        2, res(1, 2, 0), ("h100",), "node", True)
    assert [(r.ranks, r.per_rank, r.flavors) for r in job.roles] == [
        (1, res(2, 1, 0), None), (1, res(0, 1, 0), None)]


def test_a_job_without_roles_has_one_and_writes_as_before(tmp_path: Path) -> None:
    spec = load_job(EXAMPLES / "jobs" / "sleep.toml")
    (main,) = spec.job_roles()
    assert (main.name, main.ranks, main.command, main.first) == ("main", 1, spec.command, 0)
    assert "roles" not in spec.model_dump(mode="json")
    assert pending_job(loading.validate(ClusterConfig, CLUSTER, "t"),
                       spec.model_copy(update={"queue": "a", "priority_class": None}), 1,
                       0.0).roles == ()


ROLE = '[[roles]]\nname = "a"\ncommand = ["x"]\n'


@pytest.mark.parametrize(("body", "key", "words"), [
    (ROLE + ROLE, "roles.1.name", "given twice"),
    ("ranks = 2\n" + ROLE, "ranks", "not with roles"),
    ('command = ["x"]\n' + ROLE, "command", "not with roles"),
    ("[resources]\ncpu = 1\n" + ROLE, "resources", "not with roles"),
    ("roles = []\n", "roles", "at least one role"),
    (ROLE + "[roles.resources]\naccel = 1\n", "roles.0.resources.accel", "unknown key"),
    (ROLE + 'train_config = "t.toml"\n', "roles.0.train_config", "a role runs a command"),
    ('[[roles]]\nname = "a"\n', "roles.0.command", "missing"),
    (ROLE + "[roles.env]\n1X = \"v\"\n", "roles.0.env.1X", "environment variable"),
    ("".join(f'[[roles]]\nname = "r{i}"\ncommand = ["x"]\n' for i in range(17)), "roles",
     "at most 16 roles"),
    (ROLE + "ranks = 60000\n" + ROLE.replace('"a"', '"b"') + "ranks = 60000\n", "roles",
     "120000 ranks in all"),
])
def test_bad_roles_name_their_key(tmp_path: Path, body: str, key: str, words: str) -> None:
    path = tmp_path / "job.toml"
    path.write_text('name = "j"\nqueue = "q"\n' + body)
    with pytest.raises(ConfigError) as info:
        load_job(path)
    assert info.value.key == key and words in info.value.reason, info.value
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_a_role_the_cluster_cannot_serve_names_its_key(tmp_path: Path,
                                                       cluster: ClusterConfig) -> None:
    bad = ROLES.replace('resources = { gpu = 2 }', 'resources = { "example.com/fpga" = 1 }')
    with pytest.raises(ConfigError) as info:
        cluster.check_job(load_job(roles_file(tmp_path, bad)))
    assert info.value.key == 'roles.1.resources."example.com/fpga"'
    model = ROLES.replace('gpu_model = "H100"', 'gpu_model = "B200"')
    with pytest.raises(ConfigError) as info:
        cluster.check_job(load_job(roles_file(tmp_path, model)))
    assert info.value.key == "roles.0.placement.gpu_model"


def test_the_cli_refuses_a_bad_role_in_one_line(tmp_path: Path) -> None:
    """As every refusal above: one line naming the key, exit 2 (one run: each costs seconds)."""
    path = tmp_path / "job.toml"
    key = "roles.0.train_config"
    path.write_text('name = "j"\nqueue = "q"\n' + ROLE + 'train_config = "t.toml"\n')
    out = subprocess.run([sys.executable, "-m", "stoker", "submit", str(path)],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "STOKER_SERVER": "http://127.0.0.1:9"})
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and f"{key}:" in out.stderr


# --- placement, snapshot, launch -----------------------------------------------------------------


def admit_roles(store: SqlStore, cluster: ClusterConfig, tmp_path: Path,
                job: JobRecord, admit: Admit) -> JobRecord:
    """Apply one admission as the scheduler would decide it (the reconciler's own code)."""
    executor = LocalExecutor(tmp_path / "jobs")
    nodes = [Node("c0", "cpu", res(0, 4, 1e9)), Node("g0", "h100", res(4, 8, 1e9))]
    reconciler = Reconciler(store, executor, cluster, nodes, executor.jobs_dir,
                            ControlSettings())
    snap = build_snapshot(0.0, cluster, nodes, [job])
    reconciler._apply(Decisions(admit=[admit]), 1.0, {j.id: j for j in snap.pending})
    record = store.get_job(job.id)
    assert record is not None
    return record


def test_an_admission_of_every_role_is_stored_and_seen_per_role(
        store: SqlStore, cluster: ClusterConfig, tmp_path: Path) -> None:
    job = submit(store, load_job(roles_file(tmp_path)))
    admit = Admit(job.id, "a", "h100", ("g0", "g0"),
                  roles=(RoleAdmit("h100", ("g0",)), RoleAdmit("cpu", ("c0",))))
    record = admit_roles(store, cluster, tmp_path, job, admit)
    assert record.state == JobState.ADMITTED
    assert record.placement == {
        "flavor": "h100", "nodes": ["g0", "g0", "g0", "c0"], "borrowing": False,
        "roles": [{"name": "trainer", "flavor": "h100", "ranks": 2},
                  {"name": "rollout", "flavor": "h100", "ranks": 1},
                  {"name": "launcher", "flavor": "cpu", "ranks": 1}]}
    assert record.reason == ("admitted to queue a: trainer on h100 (g0, g0); rollout on h100 "
                             "(g0); launcher on cpu (c0)")

    nodes = [Node("c0", "cpu", res(0, 4, 1e9)), Node("g0", "h100", res(4, 8, 1e9))]
    snap = build_snapshot(5.0, cluster, nodes, [record])
    assert not snap.pending
    assert [(r.id, r.flavor, r.nodes, r.per_rank) for r in snap.running] == [
        (job.id, "h100", ("g0", "g0"), res(1, 2, 0)),
        (job.id, "h100", ("g0",), res(2, 1, 0)),
        (job.id, "cpu", ("c0",), res(0, 1, 0))]
    assert len({(r.queue, r.priority, r.started_at, r.progress) for r in snap.running}) == 1


def test_an_admission_without_every_role_leaves_the_job_queued(
        store: SqlStore, cluster: ClusterConfig, tmp_path: Path) -> None:
    job = submit(store, load_job(roles_file(tmp_path)))
    record = admit_roles(store, cluster, tmp_path, job, Admit(job.id, "a", "h100", ("g0", "g0")))
    assert record.state == JobState.QUEUED and record.placement is None


def test_the_launch_plan_is_one_gang_of_every_role(store: SqlStore, tmp_path: Path,
                                                   cluster: ClusterConfig) -> None:
    spec = load_job(roles_file(tmp_path))
    job = submit(store, spec)
    nodes = {"c0": Node("c0", "cpu", res(0, 4, 1e9)), "g0": Node("g0", "h100", res(4, 8, 1e9))}
    placement = ["g0", "g0", "g0", "c0"]
    in_use = {"g0": {"gpus": [0], "cpus": [0]}}  # another job's
    ranks = assign_role_devices(nodes, placement, [(r.ranks, per_rank(cluster, r))
                                                   for r in spec.job_roles()], in_use)
    # The roles on g0 share no device with each other, nor with the other job.
    assert [(r.node, r.gpus, r.cpu_slots) for r in ranks] == [
        ("g0", (1,), (1, 2)), ("g0", (2,), (3, 4)), ("g0", (3, 0), (5,)), ("c0", (), (0,))]
    assert in_use == {"g0": {"gpus": [0], "cpus": [0]}}  # not changed

    plan = plan_launch(job, spec, 1, tmp_path, ranks)
    assert process_count(spec) == len(plan.processes) == 4
    env: list[dict[str, Any]] = [p.env for p in plan.processes]
    assert [p.index for p in plan.processes] == [0, 1, 2, 3]
    assert [p.argv[-1] for p in plan.processes] == ["train.py", "train.py", "rollout.py",
                                                     "launch.py"]
    assert [(e["RANK"], e["STOKER_ROLE"], e["STOKER_ROLE_RANK"], e["STOKER_ROLE_WORLD_SIZE"])
            for e in env] == [("0", "trainer", "0", "2"), ("1", "trainer", "1", "2"),
                              ("2", "rollout", "0", "1"), ("3", "launcher", "0", "1")]
    assert [(e["LOCAL_RANK"], e["LOCAL_WORLD_SIZE"]) for e in env] == [
        ("0", "3"), ("1", "3"), ("2", "3"), ("0", "1")]
    assert {e["WORLD_SIZE"] for e in env} == {"4"}
    assert len({(e["MASTER_ADDR"], e["MASTER_PORT"]) for e in env}) == 1
    assert {e["STOKER_ROLES"] for e in env} == {"trainer=0-1,rollout=2-2,launcher=3-3"}
    assert [e["OVER"] for e in env] == ["job", "job", "role", "job"]
    assert [p.resources for p in plan.processes] == [
        {"gpu": 1.0, "cpu": 2.0}, {"gpu": 1.0, "cpu": 2.0}, {"gpu": 2.0, "cpu": 1.0},
        {"cpu": 1.0}]  # what Ray reserves for each
    assert [p.log_path.name for p in plan.processes] == [f"rank-{i}.log" for i in range(4)]


def test_a_job_without_roles_is_planned_as_before(store: SqlStore, tmp_path: Path) -> None:
    spec = JobSpec.model_validate({"name": "t", "queue": "a", "ranks": 2, "env": {"RANK": "x"},
                                   "command": ["x"]})
    job = submit(store, spec)
    nodes = {"n": Node("n", "cpu", res(0, 4, 1e9))}
    ranks = assign_role_devices(nodes, ["n", "n"], [(2, res(0, 1, 0))], {})
    plan = plan_launch(job, spec, 1, tmp_path, ranks)
    assert [p.env["RANK"] for p in plan.processes] == ["x", "x"]  # the spec's env still wins
    assert [p.env["STOKER_ROLE_RANK"] for p in plan.processes] == ["0", "1"]
    assert {p.env["STOKER_ROLES"] for p in plan.processes} == {"main=0-1"}
    assert job_spec(job).total_ranks == 2


def test_without_resume_a_retry_keeps_the_earlier_run_aside(tmp_path: Path) -> None:
    """`stoker server --no-resume`: attempt N starts afresh; what ran before is kept, not
    reused (`stoker train` refuses a run dir that holds a run)."""
    run = tmp_path / "7" / "run"
    assert set_aside_run(tmp_path, 7, 2) is None  # nothing there yet
    run.mkdir(parents=True)
    assert set_aside_run(tmp_path, 7, 2) is None  # empty: nothing to keep
    (run / "metrics.jsonl").write_text("{}\n")
    kept = set_aside_run(tmp_path, 7, 2)
    assert kept == tmp_path / "7" / "run.before-2" and (kept / "metrics.jsonl").exists()
    assert not run.exists()
