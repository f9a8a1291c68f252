"""Node health checks' settings (``[health]`` in cluster.toml): what each check must reach.

```toml
[health]
prestart = false                # check an admitted gang's nodes before it starts (3-5 s on CPU)
periodic = false                # run the checks below on a schedule (off: as Slurm's
                                # HealthCheckInterval = 0); needs floors set for the cluster
periodic_interval = "10m"       # the full set (no all-reduce) on idle nodes, by the leader
light_interval = "1m"           # device state only, on busy nodes
passes_to_return = 3            # passes of the full set in a row that return a node the
                                # checks cordoned (an admin's cordon needs an admin)
failures_to_flag = 3            # failed checks in a row that flag a node for repair
min_matmul_tflops = 0.01        # default: 35% of the GPU's dense peak; on CPU 10 GFLOP/s a core
min_allreduce_gbps = 0.05       # bus bandwidth of the gang's all-reduce
min_free = "1GiB"               # on the checkpoint path
min_write_mbps = 20             # fsync'd write speed on the checkpoint path
max_gpu_temperature_c = 87
```
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from stoker.spec.job import Bytes, Seconds

# Of the GPU's dense tensor-core peak: a healthy H100 reaches about 70% on a large bf16 matmul.
GPU_MATMUL_FRACTION = 0.35
# A floor for one CPU core's fp32 matmul (timed in the thread's CPU time, so load from other
# processes does not count), far under what a healthy core does (70-80 GFLOP/s here).
CPU_MATMUL_TFLOPS = 0.01


class HealthConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    prestart: bool = False
    periodic: bool = False
    periodic_interval: Seconds = 600.0
    light_interval: Seconds = 60.0
    passes_to_return: int = Field(default=3, ge=1)
    failures_to_flag: int = Field(default=3, ge=1)
    min_matmul_tflops: float | None = Field(default=None, gt=0)
    min_allreduce_gbps: float = Field(default=0.05, gt=0)
    min_free: Bytes = 1 << 30
    min_write_mbps: float = Field(default=20.0, gt=0)
    max_gpu_temperature_c: float = Field(default=87.0, gt=0)
