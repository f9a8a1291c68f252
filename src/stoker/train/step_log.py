"""Each step's numbers stay on the device until a log step; then one all_gather brings them in.

Between log steps the loop never waits for the device: a step's loss, gradient norm and skip
flag stay device tensors, its times stay CUDA events (`PendingTimes`). On a log step one
all_gather carries every pending step's numbers from every rank, together with what the ranks
must agree on: the stop asked of any rank, rank 0's time-based checkpoint clock and rank 0's
profile request (`profiling.ProfileAsk.encode`: three numbers, zeros when there is none).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from stoker.observe.metrics import PendingTimes, StepTimes
from stoker.observe.straggler import SECTIONS
from stoker.train.guards import Verdict

DEVICE_NUMBERS = 3  # per step and rank: loss, grad norm, skipped (then the step times)
HOST_NUMBERS = 1 + len(SECTIONS)  # per step and rank: the step time, then its `SECTIONS`


@dataclass
class PendingStep:
    """One step as the loop leaves it: numbers not yet read from the device."""

    step: int
    loss: torch.Tensor  # this rank's mean loss over the step (0-d, on the device)
    grad_norm: torch.Tensor  # the global gradient norm (0-d, on the device)
    skipped: torch.Tensor | None  # 1.0 when the device skipped the update (non-finite norm)
    lr: float
    times: PendingTimes
    wall_time: float
    verdict: Verdict | None = None  # when the loss guard judged the step on the host
    eval_loss: float | None = None
    metrics: dict[str, torch.Tensor] | None = None  # a user task's, averaged over micro-batches


@dataclass(frozen=True)
class LoggedStep:
    pending: PendingStep
    losses: list[float]  # every rank's
    step_times: list[float]  # every rank's
    sections: list[list[float]]  # every rank's section times, in `SECTIONS` order
    grad_norm: float
    skipped: bool
    times: StepTimes  # this rank's


@dataclass(frozen=True)
class Agreed:
    """What every rank learns at a log step."""

    stop: int  # the largest stop kind asked of any rank
    time_due: bool  # rank 0's clock: a time-based checkpoint is due
    peak_mem_bytes: int  # the largest over ranks
    profile: tuple[int, int, int] = (0, 0, 0)  # rank 0's profile request (steps first; 0: none)


def gather_steps(pending: list[PendingStep], stop: int, time_due: bool, peak_mem_bytes: int,
                 world_size: int, device: torch.device,
                 profile: tuple[int, int, int] = (0, 0, 0)) -> tuple[list[LoggedStep], Agreed]:
    """Read the pending steps from the device and from every rank, in one collective."""
    times = [p.times.resolve() for p in pending]  # on CUDA: once the last step has run
    zero = torch.zeros((), device=device)
    numbers = [torch.stack([p.loss.float(), p.grad_norm.float(),
                            (p.skipped if p.skipped is not None else zero).float()])
               for p in pending]
    host = ([x for t in times for x in step_numbers(t)]
            + [float(peak_mem_bytes), float(stop), float(time_due)] + [float(x) for x in profile])
    row = torch.cat([torch.stack(numbers).to(torch.float64).flatten(),
                     torch.tensor(host, dtype=torch.float64, device=device)])
    ranks = gather_rows(row, world_size).tolist()
    n = len(pending)
    mine = ranks[dist.get_rank() if world_size > 1 else 0]
    logged = []
    for i, (p, t) in enumerate(zip(pending, times, strict=True)):
        at, time_at = DEVICE_NUMBERS * i, DEVICE_NUMBERS * n + HOST_NUMBERS * i
        logged.append(LoggedStep(p, [r[at] for r in ranks], [r[time_at] for r in ranks],
                                 [r[time_at + 1:time_at + HOST_NUMBERS] for r in ranks],
                                 mine[at + 1], mine[at + 2] > 0, t))
    tail = [r[(DEVICE_NUMBERS + HOST_NUMBERS) * n:] for r in ranks]
    steps, flags, stamp = (int(x) for x in tail[0][3:6])
    agreed = Agreed(stop=int(max(r[1] for r in tail)), time_due=tail[0][2] > 0,
                    peak_mem_bytes=int(max(r[0] for r in tail)), profile=(steps, flags, stamp))
    return logged, agreed


def step_numbers(t: StepTimes) -> list[float]:
    """A step's time and its `SECTIONS`, as they travel in the row."""
    return [t.step_time_s, t.data_wait_s, t.fwd_bwd_s, t.optim_s, t.host_s, t.compute_s,
            t.comm_s]


def gather_rows(row: torch.Tensor, world_size: int) -> torch.Tensor:
    """[world_size, len(row)]: every rank's ``row``, on every rank."""
    if world_size == 1 or not dist.is_initialized():
        return row.unsqueeze(0).cpu()
    rows = [torch.empty_like(row) for _ in range(world_size)]
    dist.all_gather(rows, row)
    return torch.stack(rows).cpu()
