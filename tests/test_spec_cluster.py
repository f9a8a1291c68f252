"""cluster.toml validation: the example loads and builds; every rejected case names its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from stoker.sched import UNLIMITED
from stoker.sched.config import build_cohorts, build_nodes, build_policy, build_queues
from stoker.spec import loading
from stoker.spec.cluster import ClusterConfig, load_cluster
from stoker.spec.errors import ConfigError
from stoker.spec.job import JobSpec

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "cluster.toml"

GPU_CLUSTER = """
topology = ["zone", "rack"]
default_priority_class = "normal"

[priority_classes]
low = 0
normal = 100

[flavors.h100]
gpu_model = "NVIDIA H100 80GB HBM3"

[[nodes]]
name = "gpu"
count = 3
flavor = "h100"
gpus = 8
cpus = 96
memory = "1TiB"
labels = { zone = "z1", rack = "r1" }

[cohorts.org]
[cohorts.team]
parent = "org"
quotas = { h100 = { gpus = 4, lending_limit = { gpus = 2 } } }

[queues.research]
cohort = "team"
strategy = "StrictFIFO"

[queues.research.preemption]
within_queue = "LowerPriority"
borrow_within_cohort = "LowerPriority"
borrow_max_priority = 50

[queues.research.quotas.h100]
gpus = 8
memory = "512GiB"
borrowing_limit = { gpus = 4 }
lending_limit = { gpus = 2 }
"""


def gpu_cluster(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "cluster.toml"
    path.write_text(GPU_CLUSTER + extra)
    return path


def test_example_loads_and_builds() -> None:
    cfg = load_cluster(EXAMPLE)
    assert set(cfg.tenants) == {"alice", "bob"} and cfg.autodetect is not None
    queues = {q.name: q for q in build_queues(cfg)}
    assert queues["alice"].cohort == "lab"
    assert queues["alice"].quotas[0].nominal == (UNLIMITED, 2000, UNLIMITED)  # 2 CPUs
    assert queues["alice"].quotas[0].borrowing_limit == (UNLIMITED, 2000, UNLIMITED)
    assert build_policy(cfg).starvation_age == 3600.0


def test_gpu_cluster_builds(tmp_path: Path) -> None:
    cfg = load_cluster(gpu_cluster(tmp_path))
    nodes = build_nodes(cfg)
    assert [n.name for n in nodes] == ["gpu-0", "gpu-1", "gpu-2"]
    assert nodes[0].capacity == (8000, 96000, 2**40) and nodes[0].domains == ("z1", "r1")
    (research,) = build_queues(cfg)
    assert research.quotas[0].nominal == (8000, UNLIMITED, 512 * 2**30)
    assert research.quotas[0].lending_limit == (2000, UNLIMITED, UNLIMITED)
    assert research.borrow_max_priority == 50 and research.strategy == "StrictFIFO"
    assert research.groups == ()  # the flat form: one group
    cohorts = {c.name: c for c in build_cohorts(cfg)}
    assert cohorts["team"].parent == "org" and cohorts["team"].quotas[0].nominal[0] == 4000
    assert cfg.priority(None) == 100 and cfg.priority("low") == 0
    assert cfg.flavors_for_model("h100") == ("h100",)
    assert cfg.flavors_for_model("a100") == ()


@pytest.mark.parametrize(("override", "key"), [
    ('flavorz={}', "flavorz"),
    ('queues.research.quotas.h100.gpus=-1', "queues.research.quotas.h100.gpus"),
    ('queues.research.quotas.a100={gpus=1}', "queues.research.quotas.a100"),
    ('queues.research.quotas.h100.lending_limit={gpus=9}',
     "queues.research.quotas.h100.lending_limit.gpus"),
    ('queues.research.cohort="research"', "queues.research.cohort"),
    ('queues.research.strategy="LIFO"', "queues.research.strategy"),
    ('queues.research.preemption.within_queue="Always"',
     "queues.research.preemption.within_queue"),
    ('cohorts.org.parent="team"', "cohorts.org.parent"),
    ('default_priority_class="urgent"', "default_priority_class"),
    ('nodes=[{name="x", flavor="a100"}]', "nodes.0.flavor"),
    ('nodes=[{name="x", flavor="h100", labels={zone="z"}}]', "nodes.0.labels"),
    ('nodes=[{name="x", flavor="h100", labels={zone="z", rack="r"}}, '
     '{name="x", flavor="h100", labels={zone="z", rack="r"}}]', "nodes.1.name"),
    ('tenants.bob={token_env="T", queues=["nope"]}', "tenants.bob.queues.0"),
    ('tenants.bob={queues=["research"]}', "tenants.bob"),
    ('scheduler.starvation_age="soon"', "scheduler.starvation_age"),
    ('topology=["rack", "rack"]', "topology"),
    ('admission_fair_sharing.half_life="0s"', "admission_fair_sharing.half_life"),
    ('admission_fair_sharing.sampling_interval="soon"',
     "admission_fair_sharing.sampling_interval"),
    ('admission_fair_sharing={half_life="1h", sampling_interval="2h"}',
     "admission_fair_sharing.sampling_interval"),
    ('admission_fair_sharing.resource_weights={gpus=0}',
     "admission_fair_sharing.resource_weights"),
    ('admission_fair_sharing.resource_weights={gpus=-1}',
     "admission_fair_sharing.resource_weights.gpus"),
    ('admission_fair_sharing.resource_weights={tpus=1}',
     "admission_fair_sharing.resource_weights.tpus"),
    ('admission_fair_sharing.enable=true', "admission_fair_sharing.enable"),
    ('queues.research.when_can_borrow="Borrow"', "queues.research.when_can_borrow"),
    ('queues.research.when_can_preempt="Preempt"', "queues.research.when_can_preempt"),
    ('queues.research.flavor_preference="Borrowing"', "queues.research.flavor_preference"),
    ('scheduler.victim_order="least_work"', "scheduler.victim_order"),
    ('scheduler.hold_quota_without_victims="maybe"', "scheduler.hold_quota_without_victims"),
    ('scheduler.las_thresholds=["10h", "1h"]', "scheduler.las_thresholds"),
    ('scheduler.las_thresholds=[0]', "scheduler.las_thresholds.0"),
])
def test_rejected_configs_name_the_key(tmp_path: Path, override: str, key: str) -> None:
    path = gpu_cluster(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_cluster(path, [override])
    assert info.value.key == key, info.value
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_kueue_rule_keys_build(tmp_path: Path) -> None:
    """Flavor fungibility per queue defaults to Kueue's, the victim order and the hold of a job
    without victims to Stoker's; all are passed on to the scheduler."""
    path = gpu_cluster(tmp_path)
    (research,) = build_queues(load_cluster(path))
    assert (research.when_can_borrow, research.when_can_preempt, research.flavor_preference) \
        == ("MayStopSearch", "TryNextFlavor", "BorrowingOverPreemption")
    policy = build_policy(load_cluster(path))
    assert policy.victim_order == "stoker" and not policy.hold_quota_without_victims
    assert policy.order == "las"  # Stoker's default; Kueue's order is "fifo"
    assert policy.las_thresholds == (3600.0, 36000.0)
    assert build_policy(load_cluster(path, ['scheduler.las_thresholds=["10m", "1h"]'])
                        ).las_thresholds == (600.0, 3600.0)
    cfg = load_cluster(path, ['queues.research.when_can_borrow="TryNextFlavor"',
                              'queues.research.when_can_preempt="MayStopSearch"',
                              'queues.research.flavor_preference="PreemptionOverBorrowing"',
                              'scheduler.victim_order="kueue"',
                              'scheduler.hold_quota_without_victims=true',
                              'scheduler.order="fifo"'])
    (research,) = build_queues(cfg)
    assert (research.when_can_borrow, research.when_can_preempt, research.flavor_preference) \
        == ("TryNextFlavor", "MayStopSearch", "PreemptionOverBorrowing")
    policy = build_policy(cfg)
    assert policy.victim_order == "kueue" and policy.hold_quota_without_victims
    assert policy.order == "fifo"


def test_admission_fair_sharing_builds(tmp_path: Path) -> None:
    path = gpu_cluster(tmp_path)
    assert build_policy(load_cluster(path)).admission_fair_sharing is None  # off by default
    cfg = load_cluster(path, ['admission_fair_sharing={enabled=true, half_life="2h", '
                              'sampling_interval="1m", resource_weights={cpus=0.5, memory=2}}'])
    afs = build_policy(cfg).admission_fair_sharing
    assert afs is not None and afs.half_life == 7200 and afs.sampling_interval == 60
    assert afs.weights == (1.0, 0.5, 2.0) and afs.units == (1000, 1000, 2**30)  # per GiB
    assert afs.score((8000, 10_000, 2**30)) == 8 + 5 + 2  # 8 GPUs, 10 CPUs, 1 GiB


def test_borrowing_limit_needs_a_cohort(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs a cohort") as info:
        load_cluster(gpu_cluster(tmp_path), ["queues.solo={quotas={h100={gpus=1, "
                                             "borrowing_limit={gpus=1}}}}"])
    assert info.value.key == "queues.solo.quotas.h100.borrowing_limit"


def test_needs_nodes_or_autodetect() -> None:
    with pytest.raises(ConfigError) as info:
        loading.validate(ClusterConfig, {"flavors": {"cpu": {}},
                                         "queues": {"q": {"quotas": {"cpu": {"cpus": 1}}}}}, "c")
    assert info.value.key == "nodes"


def job(**fields: object) -> JobSpec:
    return JobSpec.model_validate({"name": "j", "queue": "research", "command": ["true"],
                                   **fields})


@pytest.mark.parametrize(("fields", "key"), [
    ({"queue": "nope"}, "queue"),
    ({"priority_class": "urgent"}, "priority_class"),
    ({"placement": {"topology": "pod"}}, "placement.topology"),
    ({"placement": {"gpu_model": "A100"}}, "placement.gpu_model"),
])
def test_check_job_names_the_key(tmp_path: Path, fields: dict[str, object], key: str) -> None:
    cfg = load_cluster(gpu_cluster(tmp_path))
    with pytest.raises(ConfigError) as info:
        cfg.check_job(job(**fields), "job.toml")
    assert info.value.key == key


def test_check_job_accepts_known_names(tmp_path: Path) -> None:
    cfg = load_cluster(gpu_cluster(tmp_path))
    cfg.check_job(job(priority_class="low", placement={"topology": "rack", "gpu_model": "H100"}))
    cfg.check_job(job(placement={"topology": "node"}))
