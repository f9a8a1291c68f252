"""ParallelDims on 4 gloo ranks (real processes): the mesh it builds, the data-parallel rank and
group it gives each rank, and where build_model puts each weight under HSDP and FSDP + TP."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.tensor import DTensor, Replicate, Shard

from stoker.ports import free_port
from stoker.spec.train import PRESETS, Layout, ParallelConfig
from stoker.train.parallel_dims import ParallelDims
from stoker.train.parallelize import build_model

CPU = torch.device("cpu")
SHAPE = PRESETS["tiny"].model_copy(update={"dim": 64, "n_layers": 2, "n_heads": 2,
                                           "n_kv_heads": 2, "ffn_hidden": 128})
LAYOUTS = {  # name -> ParallelConfig fields, for 4 ranks
    "hsdp": {"dp_replicate": 2, "dp_shard": 2},
    "tp_fsdp": {"tp": 2, "dp_shard": 2},
    "tp_replicate": {"tp": 2, "dp_replicate": 2},
}


def describe(p: torch.Tensor) -> dict[str, object]:
    if not isinstance(p, DTensor):
        return {"mesh": None, "local": list(p.shape)}
    return {"mesh": list(p.device_mesh.mesh_dim_names or ()), "local": list(p.to_local().shape),
            "placements": [str(pl) for pl in p.placements]}


def worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=4)
    torch.set_num_threads(1)
    try:
        results: dict[str, object] = {}
        for name, fields in LAYOUTS.items():
            parallel = ParallelConfig(**fields)  # type: ignore[arg-type]
            dims = ParallelDims.build(parallel.layout(4), CPU)
            dp_sum = dims.dp_mean(torch.tensor([float(dims.dp_rank)]))
            entry: dict[str, object] = {
                "mesh": list(dims.mesh.mesh_dim_names or ()) if dims.mesh else None,
                "dp_rank": dims.dp_rank, "dp_size": dims.dp_size,
                "dp_mean_of_dp_rank": float(dp_sum),
            }
            if name != "tp_replicate":
                model = build_model(SHAPE, parallel, CPU, seed=3, world_size=4, dims=dims)
                entry["wq"] = describe(model.layers["0"].attention.wq.weight)
                entry["wo"] = describe(model.layers["0"].attention.wo.weight)
                entry["norm"] = describe(model.norm.weight)
            results[name] = entry
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_four_ranks(tmp_path: Path) -> None:
    mp.spawn(worker, args=(free_port(), str(tmp_path)), nprocs=4)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(4)]

    # HSDP: a 2-D (dp_replicate, dp_shard) mesh; every rank its own data; weights sharded in
    # dp_shard and replicated in dp_replicate.
    hsdp = [r["hsdp"] for r in ranks]
    assert [h["mesh"] for h in hsdp] == [["dp_replicate", "dp_shard"]] * 4
    assert [h["dp_rank"] for h in hsdp] == [0, 1, 2, 3]
    assert all(h["dp_size"] == 4 and h["dp_mean_of_dp_rank"] == 1.5 for h in hsdp)
    assert hsdp[0]["wq"] == {"mesh": ["dp_replicate", "dp_shard"], "local": [32, 64],
                             "placements": [str(Replicate()), str(Shard(0))]}

    # FSDP + TP: mesh (dp_shard, tp); the two ranks of a tp group read the same data and
    # average their loss only with the other tp group's rank of the same tp coordinate.
    both = [r["tp_fsdp"] for r in ranks]
    assert [b["mesh"] for b in both] == [["dp_shard", "tp"]] * 4
    assert [b["dp_rank"] for b in both] == [0, 0, 1, 1]
    assert all(b["dp_size"] == 2 and b["dp_mean_of_dp_rank"] == 0.5 for b in both)
    wq, wo, norm = both[0]["wq"], both[0]["wo"], both[0]["norm"]
    assert wq["mesh"] == ["dp_shard", "tp"] and wq["local"] == [16, 64]  # column-wise, sharded
    # FSDP shards dim 0 along dp_shard: a strided shard where tp already split that dim.
    assert [pl[1] for pl in (wq["placements"], wo["placements"], norm["placements"])] == [
        str(Shard(0)), str(Shard(1)), str(Replicate())]  # column-, row-wise, replicated
    assert wq["placements"][0] in (str(Shard(0)), "_S(0, 2)")
    assert wo["placements"][0] == norm["placements"][0] == str(Shard(0))
    assert wo["local"] == [32, 32] and norm["local"] == [32]

    # tp with dp_replicate: data parallel rank from the outer dimension.
    rep = [r["tp_replicate"] for r in ranks]
    assert [x["mesh"] for x in rep] == [["dp_replicate", "tp"]] * 4
    assert [x["dp_rank"] for x in rep] == [0, 0, 1, 1]


def test_one_rank_without_process_group() -> None:
    dims = ParallelDims.build(Layout(pp=1, dp_replicate=1, dp_shard=1, cp=1, tp=1), CPU)
    assert (dims.mesh, dims.dp_rank, dims.dp_size, dims.dp_group) == (None, 0, 1, None)
    t = torch.tensor([2.0])
    assert dims.dp_mean(t).item() == 2.0
    assert dims.flops_per_rank(6.0, 10) == 60.0
    with pytest.raises(RuntimeError, match="initialised"):
        ParallelDims.build(Layout(pp=1, dp_replicate=1, dp_shard=1, cp=1, tp=2), CPU)
