"""The one owner of the parallel layout: which rank holds what, on one DeviceMesh.

    dims = ParallelDims.build(layout, device)   # after init_process_group
    dims.dp_rank, dims.dp_size                  # the loader's part of the global batch
    dims.dp_group                               # loss reduction over data-parallel ranks
    dims.tp_mesh, dims.fsdp_mesh, dims.pp_group # what the parallelisms are applied on
    dims.cp_group, dims.cp_rank                 # who holds which part of each sequence
    dims.share_loss(t)                          # under pp only the last stage has the loss

The mesh's dimensions, outermost first, are ``pp, dp_replicate, dp_shard, cp, tp``; only those
of size > 1 are in it, as in torchtitan (a world of one has no mesh at all). Ranks that differ
only in their tp (or cp, pp) coordinate see the same data; the data-parallel rank is the
position in ``dp_replicate × dp_shard``. Nothing outside this module decides data placement
from RANK or WORLD_SIZE.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from stoker.spec.train import Layout

DIM_NAMES = ("pp", "dp_replicate", "dp_shard", "cp", "tp")
DP_DIMS = ("dp_replicate", "dp_shard")
SHARD_CP = "dp_shard_cp"  # dp_shard and cp flattened: the dimension FSDP shards along with cp


@dataclass(frozen=True)
class ParallelDims:
    layout: Layout
    rank: int
    mesh: DeviceMesh | None  # None: one rank, or no process group
    dp_group: dist.ProcessGroup | None = field(default=None, compare=False)
    """One process group over the ranks of this rank's (tp, pp) coordinate that train on
    different tokens (``dp_replicate × dp_shard × cp``); None when there are none. Made once,
    by every rank, in `build`."""

    @classmethod
    def build(cls, layout: Layout, device: torch.device) -> ParallelDims:
        """The mesh of ``layout`` over the initialised process group (its size must match)."""
        if not dist.is_initialized():
            if layout.world_size != 1:
                raise RuntimeError(f"a layout of {layout.world_size} ranks needs "
                                   "torch.distributed initialised")
            return cls(layout, 0, None)
        if dist.get_world_size() != layout.world_size:
            raise RuntimeError(f"the layout has {layout.world_size} ranks but the process group "
                               f"has {dist.get_world_size()}")
        names = tuple(n for n in DIM_NAMES if getattr(layout, n) > 1)
        if not names:  # a one-rank process group: FSDP still gets a (1-D) mesh
            names = ("dp_shard",)
        sizes = tuple(getattr(layout, n) for n in names)
        mesh = init_device_mesh(device.type, sizes, mesh_dim_names=names)
        if layout.dp_shard > 1 and layout.cp > 1:  # FSDP's shard dimension (as torchtitan)
            mesh["dp_shard", "cp"]._flatten(SHARD_CP)
        dims = cls(layout, dist.get_rank(), mesh)
        names = dims.token_dim_names()
        if layout.dp * layout.cp == 1:
            return dims
        group = (mesh[names].get_group() if len(names) == 1
                 else mesh[names]._flatten("dp_cp").get_group())
        return cls(layout, dims.rank, mesh, group)

    # ------------------------------------------------------------------ coordinates

    def size(self, name: str) -> int:
        return int(getattr(self.layout, name))

    def local_rank(self, name: str) -> int:
        """This rank's coordinate along mesh dimension ``name`` (0 when that dimension is 1)."""
        if self.mesh is None or self.mesh.mesh_dim_names is None \
                or name not in self.mesh.mesh_dim_names:
            return 0
        return self.mesh.get_local_rank(name)

    @property
    def world_size(self) -> int:
        return self.layout.world_size

    @property
    def dp_size(self) -> int:
        """Ranks that take different samples: dp_replicate × dp_shard."""
        return self.layout.dp

    @property
    def dp_rank(self) -> int:
        """This rank's part of each global batch, in [0, dp_size)."""
        return self.local_rank("dp_replicate") * self.layout.dp_shard + self.local_rank("dp_shard")

    @property
    def tp_enabled(self) -> bool:
        return self.layout.tp > 1

    def dp_dim_names(self) -> tuple[str, ...]:
        return self._present(DP_DIMS)

    def token_dim_names(self) -> tuple[str, ...]:
        """The mesh dimensions along which ranks train on different tokens."""
        return self._present((*DP_DIMS, "cp"))

    def _present(self, names: tuple[str, ...]) -> tuple[str, ...]:
        if self.mesh is None or self.mesh.mesh_dim_names is None:
            return ()
        return tuple(n for n in names if n in self.mesh.mesh_dim_names)

    @property
    def dp_mesh(self) -> DeviceMesh | None:
        """The data-parallel sub-mesh: 1-D, or 2-D ``(dp_replicate, dp_shard)`` (HSDP)."""
        names = self.dp_dim_names()
        if self.mesh is None or not names:
            return None
        return self.mesh[names]

    @property
    def fsdp_mesh(self) -> DeviceMesh | None:
        """What FSDP2 is applied on: the data-parallel mesh, with cp joined to its shard
        dimension (the ranks of a cp group train one set of weights on different tokens)."""
        if self.mesh is None or self.layout.cp == 1:
            return self.dp_mesh
        shard = SHARD_CP if self.layout.dp_shard > 1 else "cp"
        names = ("dp_replicate", shard) if self.layout.dp_replicate > 1 else (shard,)
        return self.mesh[names]

    @property
    def cp_enabled(self) -> bool:
        return self.layout.cp > 1

    @property
    def cp_rank(self) -> int:
        return self.local_rank("cp")

    @property
    def cp_group(self) -> dist.ProcessGroup | None:
        """The ranks that hold the other parts of this rank's sequences."""
        if self.mesh is None or not self.cp_enabled:
            return None
        return self.mesh["cp"].get_group()

    @property
    def pp_enabled(self) -> bool:
        return self.layout.pp > 1

    @property
    def pp_group(self) -> dist.ProcessGroup | None:
        """The ranks of this rank's pipeline: same coordinates but along pp."""
        if self.mesh is None or not self.pp_enabled:
            return None
        return self.mesh["pp"].get_group()

    def pp_global_rank(self, pp_rank: int) -> int:
        """The global rank at pipeline coordinate ``pp_rank`` in this rank's pipeline."""
        group = self.pp_group
        assert group is not None
        return dist.get_global_rank(group, pp_rank)

    @property
    def tp_mesh(self) -> DeviceMesh | None:
        if self.mesh is None or not self.tp_enabled:
            return None
        return self.mesh["tp"]

    # ------------------------------------------------------------------ reductions

    def dp_mean(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` averaged over the ranks that train on different tokens (data-parallel and
        cp), in place; every rank of a tp group holds the same value already."""
        group = self.dp_group
        if group is not None:
            dist.all_reduce(t, group=group)
            t /= self.layout.dp * self.layout.cp
        return t

    def share_loss(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` as the last pipeline stage holds it, on every stage of the pipeline (in place;
        without pp it is every rank's own)."""
        if self.pp_enabled:
            dist.broadcast(t, self.pp_global_rank(self.layout.pp - 1), group=self.pp_group)
        return t

    # ------------------------------------------------------------------ accounting

    def flops_per_rank(self, flops_per_token: float, tokens: float) -> float:
        """Model FLOPs each rank does for ``tokens`` trained tokens: data parallelism gives each
        rank its own tokens, tp (and pp, cp) split each token's work between their ranks, so
        either way every rank does 1/world_size of the total."""
        return flops_per_token * tokens / self.world_size
