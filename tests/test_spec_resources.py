"""Named resources in job files and cluster.toml: quantities, resource groups, the old keys,
and every rejection naming its key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from stoker.sched import UNLIMITED
from stoker.sched.config import build_nodes, build_queues, pending_job, resource_space
from stoker.spec import loading
from stoker.spec.cluster import ClusterConfig, load_cluster
from stoker.spec.errors import ConfigError
from stoker.spec.job import JobSpec, RankResources, load_job
from stoker.spec.resources import describe, parse_amount, written

NO = UNLIMITED


@pytest.mark.parametrize(("name", "value", "units"), [
    ("cpu", "500m", 500), ("cpu", "2", 2000), ("cpu", 2, 2000), ("cpu", 0.5, 500),
    ("cpu", "0.1", 100), ("cpu", "1k", 1_000_000), ("cpu", "0.0001", 1),  # rounded up
    ("cpu", "1e1", 10_000), ("gpu", 1, 1000), ("gpu", "250m", 250), ("gpu", 0.5, 500),
    ("memory", "8GiB", 8 * 2**30), ("memory", "8Gi", 8 * 2**30), ("memory", "512MB", 512 * 10**6),
    ("memory", "1.5Gi", 3 * 2**29), ("memory", 4096, 4096), ("memory", "512m", 512 * 10**6),
    ("ephemeral-storage", "10Gi", 10 * 2**30), ("example.com/gpu", 4, 4),
    ("example.com/gpu", "2", 2), ("example.com/gpu", "1k", 1000), ("example.com/gpu", 2.0, 2),
])
def test_quantities(name: str, value: Any, units: int) -> None:
    assert parse_amount(name, value) == units


@pytest.mark.parametrize(("name", "value"), [
    ("cpu", True), ("cpu", "lots"), ("cpu", -1), ("cpu", "-1"), ("cpu", float("nan")),
    ("cpu", float("inf")), ("cpu", "2 cores"), ("cpu", "1Zi"), ("memory", "8 parsecs"),
    ("example.com/gpu", "500m"), ("example.com/gpu", 0.5), ("gpu", 10**18), ("cpu", None),
])
def test_bad_quantities(name: str, value: Any) -> None:
    with pytest.raises(ValueError) as info:
        parse_amount(name, value)
    assert "\n" not in str(info.value)


def test_written_and_described() -> None:
    assert (written("cpu", 500), written("cpu", 2000), written("memory", 2**30)) == \
        (0.5, 2, 2**30)
    assert describe("gpu", 500) == "0.5 GPU" and describe("memory", 64 * 2**30) == "64 GiB"
    assert describe("example.com/gpu", 2) == "2 example.com/gpu"


# --- job files ------------------------------------------------------------------------------


def resources(**given: Any) -> dict[str, int]:
    return RankResources.model_validate(given).amounts()


def test_job_resources_old_and_new_keys() -> None:
    assert resources() == {"cpu": 1000}  # 1 CPU unless told otherwise
    assert resources(gpus=1, cpus=2, memory="8GiB") == {"gpu": 1000, "cpu": 2000,
                                                         "memory": 8 * 2**30}
    assert resources(gpu=1, cpu="500m", **{"example.com/gpu": 2, "ephemeral-storage": "1Gi"}) \
        == {"gpu": 1000, "cpu": 500, "example.com/gpu": 2, "ephemeral-storage": 2**30}
    assert resources(cpus=0, gpus=1) == {"gpu": 1000}  # no CPU at all, as before


@pytest.mark.parametrize("given", [
    {}, {"cpus": 0}, {"gpus": 0.5, "cpu": "250m", "example.com/x": 2, "memory": "1GiB"},
    {"cpu": "1500m"},
])
def test_job_resources_dump_by_canonical_name_and_round_trip(given: dict[str, Any]) -> None:
    r = RankResources.model_validate(given)
    dumped = r.model_dump(mode="json")
    assert not {"gpus", "cpus"} & set(dumped)
    again = RankResources.model_validate(dumped)
    assert again.amounts() == r.amounts() and again.model_dump(mode="json") == dumped
    # One request, however spelt, dumps one way (the API's idempotency digest).
    assert RankResources.model_validate({"cpus": 1}).model_dump() == RankResources().model_dump()


def write_job(tmp_path: Path, resources: str) -> Path:
    path = tmp_path / "job.toml"
    path.write_text(f'name = "j"\nqueue = "q"\ncommand = ["x"]\n[resources]\n{resources}')
    return path


@pytest.mark.parametrize(("body", "key"), [
    ('cpu = "lots"\n', "resources.cpu"),
    ("cpu = true\n", "resources.cpu"),
    ("cpus = 1\ncpu = 2\n", "resources.cpu"),
    ("gpus = 1\ngpu = 1\n", "resources.gpu"),
    ('"example.com/gpu" = "500m"\n', 'resources."example.com/gpu"'),
    ('"example.com/gpu" = -1\n', 'resources."example.com/gpu"'),
    ("tpu = 1\n", "resources.tpu"),  # vendors' resources are named domain/name
    ('ephemeral-storage = "big"\n', "resources.ephemeral-storage"),
    ('cpus = "2"\n', "resources.cpus"),  # the old keys stay strict numbers
])
def test_rejected_job_resources_name_the_key(tmp_path: Path, body: str, key: str) -> None:
    path = write_job(tmp_path, body)
    with pytest.raises(ConfigError) as info:
        load_job(path)
    assert info.value.key == key, info.value
    assert str(path) in str(info.value) and "\n" not in str(info.value)


# --- cluster.toml -----------------------------------------------------------------------------

GROUPS = """
[flavors.default]
[flavors.h100]
gpu_model = "H100"
[flavors.a100]
gpu_model = "A100"

[[nodes]]
name = "h"
count = 2
flavor = "h100"
gpu = 8
cpu = 64
memory = "1TiB"
"example.com/ib" = 4
ephemeral-storage = "2Ti"

[[nodes]]
name = "a"
flavor = "a100"
gpus = 4
cpus = 32

[[queues.q.resource_groups]]
resources = ["cpu", "memory"]
flavors.default = { cpu = "96500m", memory = "1Ti" }

[[queues.q.resource_groups]]
resources = ["gpu", "example.com/ib"]
flavors.h100 = { gpu = 8, "example.com/ib" = 4 }
flavors.a100 = { gpu = 4, "example.com/ib" = 0 }

[queues.flat.quotas.h100]
gpu = 4
"""


def groups_cluster(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "cluster.toml"
    path.write_text(GROUPS + extra)
    return path


def test_resource_groups_build(tmp_path: Path) -> None:
    cfg = load_cluster(groups_cluster(tmp_path))
    assert cfg.resource_names() == ("gpu", "cpu", "memory", "ephemeral-storage",
                                    "example.com/ib")
    space = resource_space(cfg)
    queues = {q.name: q for q in build_queues(cfg)}
    q = queues["q"]
    assert q.groups == (("default",), ("h100", "a100"))
    quotas = {fq.flavor: fq.nominal for fq in q.quotas}
    assert quotas == {"default": (NO, 96_500, 2**40, NO, NO), "h100": (8000, NO, NO, NO, 4),
                      "a100": (4000, NO, NO, NO, 0)}
    assert queues["flat"].groups == () and queues["flat"].quotas[0].nominal == \
        space.vector({"gpu": 4000}, missing=NO)
    h0, _, a = build_nodes(cfg)
    assert h0.capacity == (8000, 64_000, 2**40, 2 * 2**40, 4)
    # A node leaving out cpu, memory or storage does not limit them; it has no GPUs or vendor
    # resources it leaves out.
    assert a.capacity == (4000, 32_000, NO, NO, 0)


def test_flat_quotas_are_one_group_and_cohorts_take_groups(tmp_path: Path) -> None:
    cfg = load_cluster(groups_cluster(tmp_path, '''
[[cohorts.org.resource_groups]]
resources = ["gpu"]
flavors.h100 = { gpu = 16 }
'''))
    assert [c for c, _ in cfg.cohorts["org"].groups()] == [("gpu",)]
    assert cfg.queues["flat"].groups() == [(None, cfg.queues["flat"].quotas)]


def test_quota_dumps_by_canonical_name(tmp_path: Path) -> None:
    cfg = load_cluster(groups_cluster(tmp_path, '''
[queues.old]
cohort = "org"
[queues.old.quotas.h100]
gpus = 2
cpus = 1.5
borrowing_limit = { gpus = 1 }
'''))
    data = cfg.model_dump(mode="json", exclude_none=True)
    assert data["queues"]["old"]["quotas"]["h100"] == {"gpu": 2, "cpu": 1.5,
                                                       "borrowing_limit": {"gpu": 1}}
    again = loading.validate(ClusterConfig, data, "again")
    assert again.model_dump(mode="json", exclude_none=True) == data
    assert build_queues(again) == build_queues(cfg) and build_nodes(again) == build_nodes(cfg)


G = "queues.q.resource_groups"


@pytest.mark.parametrize(("override", "key"), [
    (f'{G}=[{{resources=["tpu"], flavors={{h100={{gpu=1}}}}}}]', f"{G}.0.resources.0"),
    (f'{G}=[{{resources=["gpu"], flavors={{h100={{gpu=1}}}}}}, '
     f'{{resources=["cpu", "gpus"], flavors={{a100={{cpu=1, gpu=1}}}}}}]', f"{G}.1.resources.1"),
    (f'{G}=[{{resources=["gpu"], flavors={{h100={{gpu=1}}}}}}, '
     f'{{resources=["cpu"], flavors={{h100={{cpu=1}}}}}}]', f"{G}.1.flavors.h100"),
    (f'{G}=[{{resources=["gpu", "cpu"], flavors={{h100={{gpu=1}}}}}}]', f"{G}.0.flavors.h100"),
    (f'{G}=[{{resources=["gpu"], flavors={{h100={{gpu=1, memory="1Gi"}}}}}}]',
     f"{G}.0.flavors.h100.memory"),
    (f'{G}=[{{resources=["gpu"], flavors={{h100={{gpu=1, borrowing_limit={{cpus=1}}}}}}}}]',
     f"{G}.0.flavors.h100.borrowing_limit"),  # no cohort to borrow from
    (f'{G}=[{{resources=["gpu"], flavors={{h100={{gpu=1, lending_limit={{gpu=2}}}}}}}}]',
     f"{G}.0.flavors.h100.lending_limit.gpu"),
    (f'{G}=[{{resources=["gpu"], flavors={{tpu={{gpu=1}}}}}}]', f"{G}.0.flavors.tpu"),
    (f'{G}=[{{resources=["gpu"], flavors={{h100={{gpu="lots"}}}}}}]', f"{G}.0.flavors.h100.gpu"),
    (f'{G}=[{{resources=[], flavors={{h100={{gpu=1}}}}}}]', f"{G}.0.resources"),
    ('queues.q.quotas={h100={gpu=1}}', f"{G}"),  # both forms at once
    ('queues.none={}', "queues.none"),  # neither
    ('queues.flat.quotas.h100.cpu="1 core"', "queues.flat.quotas.h100.cpu"),
    ('queues.flat.quotas.h100."example.com/ib"=0.5', 'queues.flat.quotas.h100."example.com/ib"'),
    ('queues.flat.quotas.h100.tpus=1', "queues.flat.quotas.h100.tpus"),
    ('nodes=[{name="x", flavor="h100", gpus=1, gpu=1}]', "nodes.0.gpu"),
    ('nodes=[{name="x", flavor="h100", "example.com/ib"="500m"}]', 'nodes.0."example.com/ib"'),
    ('nodes=[{name="x", flavor="h100", flavour="a100"}]', "nodes.0.flavour"),
    ('admission_fair_sharing.resource_weights={gpus=1, gpu=2}',
     "admission_fair_sharing.resource_weights.gpu"),
    ('admission_fair_sharing.resource_weights={"example.com/ib"=-1}',
     'admission_fair_sharing.resource_weights."example.com/ib"'),
])
def test_rejected_groups_name_the_key(tmp_path: Path, override: str, key: str) -> None:
    path = groups_cluster(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_cluster(path, [override])
    assert info.value.key == key, info.value
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_a_typo_in_a_node_is_named_with_a_suggestion(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="did you mean 'flavor'"):
        load_cluster(groups_cluster(tmp_path), ['nodes=[{name="x", flavor="h100", '
                                                'flavour="a100"}]'])


def job(**resources: Any) -> JobSpec:
    return JobSpec.model_validate({"name": "j", "queue": "q", "command": ["true"],
                                   "resources": resources})


def test_a_job_asking_a_resource_the_cluster_lacks_is_refused(tmp_path: Path) -> None:
    cfg = load_cluster(groups_cluster(tmp_path))
    cfg.check_job(job(gpu=1, **{"example.com/ib": 1}))
    spec = job(**{"example.com/tpu": 1})
    with pytest.raises(ConfigError) as info:
        cfg.check_job(spec, "job.toml")
    assert info.value.key == 'resources."example.com/tpu"' and "example.com/ib" in str(info.value)
    cfg.check_job(job(cpus=1, **{"ephemeral-storage": "1Gi"}))  # old keys: the same resources


def test_a_pending_job_is_a_vector_over_the_cluster_resources(tmp_path: Path) -> None:
    cfg = load_cluster(groups_cluster(tmp_path))
    p = pending_job(cfg, job(gpus=0.5, cpu="250m", **{"example.com/ib": 2}), 1, 0.0)
    assert p.per_rank == (500, 250, 0, 0, 2)


def test_old_cluster_files_still_load() -> None:
    cfg = load_cluster(Path(__file__).resolve().parents[1] / "examples" / "cluster.toml")
    assert cfg.resource_names()[:3] == ("gpu", "cpu", "memory")


RESOURCES_EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "resources"


def test_the_resources_example_places_every_job() -> None:
    """examples/resources: GPUs under resource groups, a vendor's accelerator, a CPU-only
    queue in thousandths: every example job is accepted and placed on its kind of node."""
    from stoker.sched import Snapshot, schedule
    from stoker.sched.config import build_cohorts, build_policy

    cfg = load_cluster(RESOURCES_EXAMPLE / "cluster.toml")
    jobs = [load_job(path) for path in sorted((RESOURCES_EXAMPLE / "jobs").glob("*.toml"))]
    for spec in jobs:
        cfg.check_job(spec)
    snap = Snapshot(0.0, build_queues(cfg), build_nodes(cfg), [],
                    [pending_job(cfg, spec, spec.name, 0.0) for spec in jobs],
                    build_cohorts(cfg), cfg.topology, resources=resource_space(cfg))
    d = schedule(snap, build_policy(cfg))
    assert not d.waiting
    assert {a.job: a.flavor for a in d.admit} == {"train": "h100", "serve": "neuron",
                                                  "etl": "cpu"}
