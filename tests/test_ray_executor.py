"""The control plane on a real Ray cluster (tests/ray_cluster.py: three nodes on 127.0.0.1).

One `stoker server` with ``executor = "ray"`` serves every test of this module, in order:
nodes read from Ray (and followed as they join and leave); a gang Ray cannot reserve whole
starts nothing and goes back to the queue, then runs each rank on its assigned node; preemption
and cancel; adoption by a restarted server and by a standby; a 4-rank training job whose losses
equal the local launcher's; and last (it removes a node) a training job preempted, then losing a
node, resuming from its checkpoint each time, with the losses of an uninterrupted run.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]
import pytest

from pg import pg_server, pg_url  # noqa: F401
from ray_cluster import NAMESPACE, RayTestCluster, ray_cluster  # noqa: F401
from stoker.control.ray_executor import _bundle
from stoker.control.ray_nodes import ray_nodes
from stoker.server.client import Client
from stoker.server.process import ServerProcess
from stoker.spec import loading
from stoker.spec.cluster import ClusterConfig
from stoker.spec.errors import ConfigError
from stoker.spec.loading import to_toml
from train_helpers import deliver_to_held, held

pytestmark = pytest.mark.slow

STEPS = 24
TRAIN: dict[str, Any] = {
    "model": {"preset": "tiny", "dim": 64, "n_layers": 2, "n_heads": 2, "n_kv_heads": 2,
              "ffn_hidden": 128},
    "data": {"dataset": "stdlib", "tokenizer": "byte"},
    "parallel": {"strategy": "fsdp"},
    "optim": {"warmup_steps": 2},
    "train": {"name": "ray", "steps": STEPS, "global_batch_size": 8, "micro_batch_size": 2,
              "seq_len": 32, "eval_interval": 0},
    "checkpoint": {"interval_steps": 8},
    "telemetry": {"live": False},
}
CLUSTER = """
topology = ["rack"]
executor = "ray"
[ray]
address = "{address}"
shared_dir = "{shared}"
reserve_timeout = "4s"
[priority_classes]
low = 0
high = 1000
[flavors.cpu]
[admin]
token_env = "STOKER_TOKEN_ADMIN"
[tenants.alice]
token_env = "STOKER_TOKEN_ALICE"
queues = ["q"]
[queues.q]
preemption = {{ within_queue = "LowerPriority" }}
[queues.q.quotas.cpu]
"""


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = 180) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return value


def losses(run_dir: Path) -> dict[int, float]:
    path = run_dir / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() \
        else []
    return {r["step"]: r["loss"] for r in records if "loss" in r and "step" in r}


def records_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def reasons(job: dict[str, Any]) -> list[str]:
    return [e["reason"] for e in job["events"]]


def ray_names(job_id: int) -> list[str]:
    """The job's live rank actors and placement groups in the servers' namespace."""
    import ray

    groups = [g["name"] for g in ray.util.placement_group_table().values()
              if g["state"] != "REMOVED"]
    return [n for n in (*ray.util.list_named_actors(), *groups) if f"-j{job_id}-" in f"{n}-"]


@pytest.fixture(scope="module")
def server(ray_cluster: RayTestCluster,  # noqa: F811
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("ray-server")
    config = root / "cluster.toml"
    config.write_text(CLUSTER.format(address=ray_cluster.address, shared=root / "shared"))
    proc = ServerProcess(root / "state", config,
                         env={"STOKER_TOKEN_ALICE": "alice", "STOKER_TOKEN_ADMIN": "admin"},
                         args=["--interval", "0.3", "--grace-period", "60", "--backoff", "0.5"])
    try:
        yield proc.start(timeout=120)
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Client:
    return server.client("alice")


@pytest.fixture(scope="module")
def admin(server: ServerProcess) -> Client:
    return server.client("admin")


@pytest.fixture(scope="module")
def shared(server: ServerProcess) -> Path:
    assert server.config is not None
    ray = loading.load(ClusterConfig, server.config).ray
    assert ray is not None
    return Path(ray.shared_dir)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[int, float]:
    """The same 4-rank job through `stoker train`, the local executor's command."""
    root = tmp_path_factory.mktemp("ray-reference")
    (root / "train.toml").write_text(to_toml(TRAIN))
    subprocess.run([sys.executable, "-m", "stoker", "train", str(root / "train.toml"),
                    "--nproc", "4", "--run-dir", str(root / "run"), "--resume", "auto"],
                   check=True, capture_output=True, cwd=root, timeout=600)
    expected = losses(root / "run")
    assert sorted(expected) == list(range(1, STEPS + 1))
    return expected


def command(script: str) -> list[str]:
    return [sys.executable, "-c", script]


# --- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize(("extra", "key"), [
    ({}, "ray"),
    ({"ray": {"shared_dir": "relative/path"}}, "ray.shared_dir"),
    ({"ray": {"shared_dir": "/s", "address": "http://head:8265"}}, "ray.address"),
    ({"ray": {"shared_dir": "/s"}, "autodetect": {}}, "autodetect"),
])
def test_bad_ray_settings_name_the_key(extra: dict[str, Any], key: str) -> None:
    data = {"executor": "ray", "flavors": {"cpu": {}}, "queues": {"q": {"quotas": {"cpu": {}}}}}
    with pytest.raises(ConfigError) as e:
        loading.validate(ClusterConfig, data | extra, "cluster.toml")
    assert str(e.value).startswith(f"cluster.toml: {key}: ")


def test_ray_address_flag_is_checked(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "stoker", "server", "--state-dir",
                           str(tmp_path), "--ray-address", "http://x"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "--ray-address: 'http://x' is not a Ray address" in done.stderr
    assert "Traceback" not in done.stderr


TWO_TENANTS = """
executor = "ray"
[ray]
shared_dir = "{shared}"
[flavors.cpu]
[tenants.a]
token_env = "A"
queues = ["q"]
[tenants.b]
token_env = "B"
queues = ["q"]
[queues.q.quotas.cpu]
"""


@pytest.mark.parametrize(("config", "args", "error"), [
    (TWO_TENANTS, [], "isolation: with executor = \"ray\" every job runs as the user of Ray's "
     "workers"),
    ("[flavors.cpu]\n[autodetect]\n[queues.q.quotas.cpu]\n", ["--ray-address", "auto"],
     'executor: --ray-address needs executor = "ray"'),
])
def test_server_refuses_what_ray_cannot_do(tmp_path: Path, config: str, args: list[str],
                                           error: str) -> None:
    (tmp_path / "cluster.toml").write_text(config.format(shared=tmp_path / "shared"))
    done = subprocess.run([sys.executable, "-m", "stoker", "server", "--state-dir",
                           str(tmp_path / "state"), "--config", str(tmp_path / "cluster.toml"),
                           *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert f"{tmp_path / 'cluster.toml'}: {error}" in done.stderr
    assert "Traceback" not in done.stderr


# --- nodes ---------------------------------------------------------------------------------------


def test_ray_nodes_become_scheduler_nodes() -> None:
    cluster = loading.validate(ClusterConfig, {
        "topology": ["zone", "rack"], "executor": "ray", "ray": {"shared_dir": "/s"},
        "flavors": {"cpu": {}, "h100": {"gpu_model": "H100"}, "big": {}},
        "queues": {"q": {"quotas": {"cpu": {}}}}}, "cluster.toml")

    def info(node_id: str, labels: dict[str, str], alive: bool = True,
             **resources: float) -> dict[str, Any]:
        return {"NodeID": node_id, "Alive": alive, "NodeManagerAddress": "10.0.0.9",
                "Labels": {"ray.io/node-id": node_id, **labels}, "Resources": resources}

    found = ray_nodes([
        info("a" * 56, {"stoker/node": "gpu-1", "stoker/zone": "z1", "stoker/rack": "r1"},
             GPU=8, CPU=96, memory=1e12, **{"accelerator_type:H100": 1}),
        info("b" * 56, {"stoker/zone": "z1"}, CPU=4, memory=1e9),
        info("c" * 56, {"stoker/flavor": "big"}, CPU=2),
        info("d" * 56, {}, memory=1e9),  # a head with no CPUs: holds no rank
        info("e" * 56, {"stoker/node": "gone"}, alive=False, CPU=4),
    ], cluster)
    by_name = {n.node.name: n for n in found}
    assert sorted(by_name) == ["bbbbbbbbbbbb", "cccccccccccc", "gpu-1"]
    gpu = by_name["gpu-1"]
    assert (gpu.node.flavor, gpu.node.capacity, gpu.node.domains) == (
        "h100", (8000, 96000, 10**12), ("z1", "r1"))  # thousandths of GPUs and CPUs
    assert (gpu.node_id, gpu.address) == ("a" * 56, "10.0.0.9")
    # A missing level is a domain of its own, never shared by accident.
    assert by_name["bbbbbbbbbbbb"].node.domains == ("z1", "?bbbbbbbbbbbb")
    assert by_name["bbbbbbbbbbbb"].node.flavor == "cpu"
    assert by_name["cccccccccccc"].node.flavor == "big"


def test_ray_custom_resources_are_named_resources() -> None:
    """A Ray custom resource named as one of the cluster's resources is node capacity, and a
    rank's named resources go into its bundle under their own names."""
    cluster = loading.validate(ClusterConfig, {
        "executor": "ray", "ray": {"shared_dir": "/s"}, "flavors": {"cpu": {}},
        "queues": {"q": {"quotas": {"cpu": {"example.com/accel": 4}}}}}, "cluster.toml")
    (node,) = ray_nodes([{"NodeID": "f" * 56, "Alive": True, "Labels": {},
                          "Resources": {"CPU": 2.5, "example.com/accel": 2, "other": 1}}],
                        cluster)
    assert node.node.capacity == (0, 2500, 0, 2)  # gpu, cpu, memory, example.com/accel
    assert _bundle({"gpu": 1.0, "cpu": 0.5, "memory": 2.0**30, "example.com/accel": 1.0}) == {
        "GPU": 1.0, "CPU": 0.5, "memory": 2.0**30, "example.com/accel": 1.0}




def test_nodes_come_from_ray_and_follow_it(admin: Client,
                                           ray_cluster: RayTestCluster) -> None:  # noqa: F811
    nodes = {n["name"]: n for n in admin.nodes()}
    assert sorted(nodes) == ["n0", "n1", "n2"]  # not the head: it offers no CPUs
    assert nodes["n0"]["labels"] == {"rack": "r0"} and nodes["n2"]["labels"] == {"rack": "r1"}
    assert nodes["n0"]["capacity"]["cpu"] == 2 and nodes["n0"]["flavor"] == "cpu"
    assert nodes["n0"]["capacity"]["memory"] > 0
    ray_cluster.add("extra", "r1")
    wait_for(lambda: "extra" in {n["name"] for n in admin.nodes()}, "the new node")
    ray_cluster.remove("extra")
    wait_for(lambda: "extra" not in {n["name"] for n in admin.nodes()}, "the node to go",
             timeout=60)


# --- gangs ---------------------------------------------------------------------------------------


def test_a_gang_ray_cannot_reserve_starts_nothing_then_runs_where_placed(
        client: Client, ray_cluster: RayTestCluster, shared: Path) -> None:  # noqa: F811
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    # Ray's view and Stoker's differ: someone else holds n2's CPUs, which Stoker counts free.
    blocker = placement_group([{"CPU": 2}], bundle_label_selector=[{"stoker/node": "n2"}])
    ray.get(blocker.ready(), timeout=60)
    script = ("import json, os, socket; e = os.environ; "
              "open(f'placed-{e[\"RANK\"]}.json', 'w').write(json.dumps({k: e.get(k) for k in "
              "('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'LOCAL_WORLD_SIZE', 'STOKER_NODE', "
              "'STOKER_RAY_NODE_ID', 'MASTER_ADDR', 'MASTER_PORT')}))")
    job = client.submit({"name": "wide", "queue": "q", "ranks": 6, "resources": {"cpus": 1},
                         "command": command(script)})["id"]
    try:
        wait_for(lambda: any("could not reserve" in r for r in reasons(client.job(job))),
                 "the reservation to fail")
        view = client.job(job)
        requeue = next(e for e in view["events"] if "could not reserve" in e["reason"])
        assert requeue["to_state"] == "QUEUED", requeue
        assert "6 x {'CPU': 1.0}" in requeue["reason"] and "n2" in requeue["reason"]
        assert not [n for n in ray_names(job) if "-r" in n]  # no rank ever had an actor
        assert not list((shared / "jobs" / str(job) / "work").glob("placed-*"))
    finally:
        remove_placement_group(blocker)
    wait_for(lambda: client.job(job)["state"] == "SUCCEEDED", "the gang to run")
    view = client.job(job)
    placement = view["placement"]["nodes"]
    by_id = ray_cluster.node_ids()
    ranks = [json.loads((shared / "jobs" / str(job) / "work" / f"placed-{i}.json").read_text())
             for i in range(6)]
    for i, rank in enumerate(ranks):
        assert rank["RANK"] == str(i) and rank["WORLD_SIZE"] == "6"
        assert by_id[rank["STOKER_RAY_NODE_ID"]] == placement[i] == rank["STOKER_NODE"]
        assert rank["LOCAL_WORLD_SIZE"] == "2"
    assert {r["MASTER_ADDR"] for r in ranks} == {"127.0.0.1"}
    assert len({r["MASTER_PORT"] for r in ranks}) == 1
    assert wait_for(lambda: not ray_names(job), "the gang's actors and group to go", 30) is True


def test_a_job_with_roles_reserves_each_rank_its_roles_request(client: Client,
                                                               shared: Path) -> None:
    """A launcher of 2 CPUs and two 1-CPU workers that must share a 2-CPU node: Ray reserves
    each rank its own role's request (the launcher's for every rank would not fit there)."""
    script = ("import json, os; e = os.environ; "
              "open(f'role-{e[\"RANK\"]}.json', 'w').write(json.dumps({k: e.get(k) for k in "
              "('RANK', 'WORLD_SIZE', 'STOKER_ROLE', 'STOKER_ROLE_RANK', 'STOKER_NODE', "
              "'STOKER_RAY_NODE_ID')}))")
    job = client.submit({"name": "roles", "queue": "q", "roles": [
        {"name": "launcher", "resources": {"cpus": 2}, "command": command(script)},
        {"name": "workers", "ranks": 2, "resources": {"cpus": 1}, "command": command(script),
         "placement": {"topology": "node", "topology_mode": "required"}}]})["id"]
    wait_for(lambda: client.job(job)["state"] in ("SUCCEEDED", "FAILED"), "the job to end")
    view = client.job(job)
    assert view["state"] == "SUCCEEDED", reasons(view)
    launcher, workers = (r["nodes"] for r in view["roles"])
    assert len(set(workers)) == 1 and launcher != workers[:1]
    work = shared / "jobs" / str(job) / "work"
    ranks = [json.loads((work / f"role-{i}.json").read_text()) for i in range(3)]
    assert [(r["RANK"], r["WORLD_SIZE"], r["STOKER_ROLE"], r["STOKER_ROLE_RANK"])
            for r in ranks] == [("0", "3", "launcher", "0"), ("1", "3", "workers", "0"),
                                ("2", "3", "workers", "1")]
    assert [r["STOKER_NODE"] for r in ranks] == [*launcher, *workers]


def test_a_grpo_job_with_three_roles_runs_on_ray(client: Client, shared: Path) -> None:
    """GRPO's trainer (2 ranks, FSDP2), rollout and reward roles placed by Ray, weights and
    rollouts through the job's run directory in the shared directory (`[roles] sync = "file"`),
    to the last step."""
    overrides = ("model.dim=32 model.n_layers=1 model.n_heads=2 model.n_kv_heads=2 "
                 "model.ffn_hidden=64 task.max_len=4 task.held_out=20 warmup.steps=10 "
                 "grpo.steps=3 grpo.prompts=4 grpo.group_size=4 grpo.eval_interval=3 "
                 "roles.sync=file run.threads=1")
    grpo = [sys.executable, "-m", "stoker.train.grpo_roles"]
    job = client.submit({"name": "grpo", "queue": "q",
                         "env": {"OMP_NUM_THREADS": "1", "STOKER_GRPO_SET": overrides},
                         "roles": [{"name": name, "ranks": n, "resources": {"cpus": 1},
                                    "command": grpo}
                                   for name, n in (("trainer", 2), ("rollout", 1),
                                                   ("reward", 1))]})["id"]
    wait_for(lambda: client.job(job)["state"] in ("SUCCEEDED", "FAILED"), "the job to end")
    view = client.job(job)
    assert view["state"] == "SUCCEEDED", reasons(view)
    assert [r["name"] for r in view["roles"]] == ["trainer", "rollout", "reward"]
    run = shared / "jobs" / str(job) / "run"
    records = [json.loads(line) for line in (run / "grpo.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(r["sync_s"] > 0 for r in records[:-1]) and "pass_at_1" in records[-1]


def test_preemption_reaches_every_rank_and_requeues(client: Client, shared: Path) -> None:
    script = ("import os, signal, sys, time\n"
              "e = os.environ\n"
              "if e['STOKER_ATTEMPT'] != '1': sys.exit(0)\n"
              "def stop(*_):\n"
              "    open(f'term-{e[\"RANK\"]}', 'w').close(); sys.exit(75)\n"
              "signal.signal(signal.SIGTERM, stop)\n"
              "open(f'up-{e[\"RANK\"]}', 'w').close()\n"
              "time.sleep(300); sys.exit(1)\n")
    victim = client.submit({"name": "victim", "queue": "q", "ranks": 3, "priority_class": "low",
                            "resources": {"cpus": 2}, "command": command(script)})["id"]
    work = shared / "jobs" / str(victim) / "work"
    wait_for(lambda: len(list(work.glob("up-*"))) == 3, "every victim rank to run")
    urgent = client.submit({"name": "urgent", "queue": "q", "ranks": 1, "priority_class": "high",
                            "resources": {"cpus": 2}, "command": command("print('done')")})["id"]
    wait_for(lambda: client.job(urgent)["state"] == "SUCCEEDED", "the urgent job")
    wait_for(lambda: client.job(victim)["state"] == "SUCCEEDED", "the victim to run again")
    assert sorted(p.name for p in work.glob("term-*")) == ["term-0", "term-1", "term-2"]
    job = client.job(victim)
    assert job["attempt"] == 2
    preempted = [e for e in job["events"] if e["to_state"] == "PREEMPTED"]
    assert len(preempted) == 1 and "exit code 75" in preempted[0]["reason"]


def test_cancel_tears_the_gang_down(client: Client, shared: Path) -> None:
    script = "import os, time; open(f'up-{os.environ[\"RANK\"]}', 'w').close(); time.sleep(300)"
    job = client.submit({"name": "doomed", "queue": "q", "ranks": 2, "resources": {"cpus": 1},
                         "command": command(script)})["id"]
    work = shared / "jobs" / str(job) / "work"
    wait_for(lambda: len(list(work.glob("up-*"))) == 2, "both ranks to run")
    assert len(ray_names(job)) == 3  # two actors and the placement group
    client.cancel(job)
    wait_for(lambda: client.job(job)["state"] == "CANCELLED", "the cancel")
    wait_for(lambda: not ray_names(job), "the gang's actors and group to go", 30)
    wait_for(lambda: not [p for p in psutil.process_iter(["cmdline"])
                          if script in (p.info["cmdline"] or [])], "the ranks to end", 30)


def test_a_restarted_server_adopts_the_running_gang_and_removes_strays(
        server: ServerProcess, client: Client, shared: Path) -> None:
    import ray
    from ray.util.placement_group import placement_group

    script = ("import os, time\n"
              "open(f'started-{os.environ[\"RANK\"]}', 'a').write('x')\n"
              "while not os.path.exists('release'): time.sleep(0.1)\n")
    job = client.submit({"name": "adopted", "queue": "q", "ranks": 2, "resources": {"cpus": 1},
                         "command": command(script)})["id"]
    work = shared / "jobs" / str(job) / "work"
    wait_for(lambda: len(list(work.glob("started-*"))) == 2, "both ranks to run")
    # Left by a control plane that died between reserving and recording: no job owns it.
    stray = placement_group([{"CPU": 0.01}], name=f"{NAMESPACE}-j9999-a1", lifetime="detached")
    ray.get(stray.ready(), timeout=60)
    server.kill()
    server.start(timeout=120)
    wait_for(lambda: any(e["kind"] == "adopt" for e in client.job(job)["events"]), "adoption")
    assert client.job(job)["state"] == "RUNNING"
    wait_for(lambda: not ray_names(9999), "the stray placement group to go", 60)
    (work / "release").touch()
    wait_for(lambda: client.job(job)["state"] == "SUCCEEDED", "the adopted job to finish")
    assert [(work / f"started-{i}").read_text() for i in range(2)] == ["x", "x"]  # once each
    wait_for(lambda: not ray_names(job), "the gang's actors and group to go", 30)


def test_a_standby_on_postgresql_takes_over_the_ray_gang(
        server: ServerProcess, shared: Path, pg_url: str,  # noqa: F811
        tmp_path: Path) -> None:
    assert server.config is not None
    # A namespace of its own: a control plane removes the actors of its namespace it does not
    # know, and the module's server runs on the same Ray cluster.
    config = tmp_path / "cluster.toml"
    config.write_text(server.config.read_text().replace("[ray]\n", '[ray]\nnamespace = "ha"\n'))
    env = {"STOKER_TOKEN_ALICE": "alice", "STOKER_TOKEN_ADMIN": "admin"}
    pair = [ServerProcess(tmp_path / "state", config, env=env, log=tmp_path / f"{n}.log",
                          args=["--db", pg_url, "--interval", "0.3"]) for n in "ab"]
    try:
        leader = pair[0].start(timeout=120)
        wait_for(lambda: leader.health()["role"] == "leader", "the first server to lead")
        standby = pair[1].start(timeout=120)
        assert standby.health()["role"] == "standby"
        # The standby reads Ray's nodes itself: its reconciler does not run.
        assert {"n0", "n1"} <= {n["name"] for n in standby.client("admin").nodes()}
        script = ("import os, time\n"
                  "open(f'started-{os.environ[\"RANK\"]}', 'a').write('x')\n"
                  "while not os.path.exists('release'): time.sleep(0.1)\n")
        client = standby.client("alice")
        job = client.submit({"name": "taken-over", "queue": "q", "ranks": 2,
                             "resources": {"cpus": 1}, "command": command(script)})["id"]
        work = shared / "jobs" / str(job) / "work"
        wait_for(lambda: len(list(work.glob("started-*"))) == 2, "both ranks to run")
        leader.kill()
        wait_for(lambda: standby.health()["role"] == "leader", "the standby to lead", 60)
        wait_for(lambda: any(e["kind"] == "adopt" for e in client.job(job)["events"]),
                 "the gang's adoption")
        (work / "release").touch()
        wait_for(lambda: client.job(job)["state"] == "SUCCEEDED", "the job to finish")
        assert [(work / f"started-{i}").read_text() for i in range(2)] == ["x", "x"]
        assert client.job(job)["attempt"] == 1
    finally:
        for proc in pair:
            proc.stop()


# --- training ------------------------------------------------------------------------------------


def test_training_job_on_ray_equals_the_local_launcher(client: Client, shared: Path,
                                                       reference: dict[int, float]) -> None:
    job = client.submit({"name": "train", "queue": "q", "ranks": 4, "resources": {"cpus": 1},
                         "placement": {"topology": "rack", "topology_mode": "required"},
                         "train_config": "train.toml"}, TRAIN)["id"]
    wait_for(lambda: client.job(job)["state"] in ("SUCCEEDED", "FAILED"), "the job", 600)
    view = client.job(job)
    assert view["state"] == "SUCCEEDED", view["reason"]
    assert sorted(view["placement"]["nodes"]) == ["n0", "n0", "n1", "n1"]  # rack r0 only
    assert losses(shared / "jobs" / str(job) / "run") == reference
    log = client.logs(job, rank=3)["text"]
    assert "attempt 1 rank 3 started" in log


def rank_pids(run_dir: Path, count: int) -> list[int]:
    """The run's rank processes (on this machine, whichever Ray node they run on)."""
    def find() -> list[int]:  # python -m stoker.train ...; not its supervisor's command line
        return [p.pid for p in psutil.process_iter(["cmdline"])
                if (argv := p.info["cmdline"] or [])[1:3] == ["-m", "stoker.train"]
                and str(run_dir) in argv]
    return wait_for(lambda: len(pids := find()) == count and pids, f"{count} ranks", 120)


def test_preempted_then_a_node_dies_and_the_job_resumes_each_time(
        client: Client, admin: Client, shared: Path, ray_cluster: RayTestCluster,  # noqa: F811
        reference: dict[int, float]) -> None:
    train = TRAIN | {"train": TRAIN["train"] | {"name": "survivor"}}
    job = client.submit({"name": "survivor", "queue": "q", "ranks": 4, "max_restarts": 2,
                         "priority_class": "low", "resources": {"cpus": 1},
                         "train_config": "train.toml"}, train)["id"]
    run_dir = shared / "jobs" / str(job) / "run"
    wait_for(lambda: len(losses(run_dir)) >= 4, "step 4", 600)
    # Preemption: every rank gets SIGTERM (held still until it has it pending, so the job
    # cannot finish first), checkpoints at the step boundary and exits 75; the job is requeued.
    urgent: list[int] = []
    deliver_to_held(rank_pids(run_dir, 4), signal.SIGTERM, lambda: urgent.append(client.submit(
        {"name": "urgent", "queue": "q", "ranks": 3, "priority_class": "high",
         "resources": {"cpus": 2}, "command": command("print('urgent')")})["id"]))
    wait_for(lambda: client.job(urgent[0])["state"] == "SUCCEEDED", "the urgent job", 300)
    wait_for(lambda: client.job(job)["attempt"] == 2 and len(losses(run_dir)) >= 14,
             "step 14 of the resumed run", 600)
    # A node dies under the second attempt.
    victim = client.job(job)["placement"]["nodes"][-1]
    with held(rank_pids(run_dir, 4)):
        ray_cluster.remove(victim)
    wait_for(lambda: client.job(job)["state"] in ("SUCCEEDED", "FAILED")
             and client.job(job)["attempt"] >= 3, "the job to end", 600)
    view = client.job(job)
    assert view["state"] == "SUCCEEDED", view["reason"]
    preempted = [e for e in view["events"] if e["to_state"] == "PREEMPTED"]
    assert len(preempted) == 1 and "exit code 75" in preempted[0]["reason"], preempted
    failed = [e for e in view["events"] if e["to_state"] == "FAILED"]
    assert len(failed) == 1 and re.match(
        rf"infra failure \(node_lost\): node {victim} was lost: process \d vanished: its node "
        rf"{victim} left the Ray cluster; restart 1/2",
        failed[0]["reason"]), "\n".join(reasons(view))
    assert view["attempt"] == 3 and victim not in view["placement"]["nodes"]
    loaded = [r for r in records_of(run_dir / "events.jsonl") if r["event"] == "checkpoint_loaded"]
    assert len(loaded) == 2  # each resumed attempt started from a committed checkpoint
    assert losses(run_dir) == reference
    assert victim not in {n["name"] for n in admin.nodes()}
    ray_cluster.add(victim + "b", "r0")  # the next test module finds three nodes again
