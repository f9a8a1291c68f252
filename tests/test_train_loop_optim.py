"""LR schedules, AdamW parameter groups and gradient clipping."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from stoker.spec.train import OptimConfig
from stoker.train.optim import build_optimizer, build_scheduler, clip_grad_norm_, lr_factor

STEPS = 100


def factors(**kw: object) -> list[float]:
    cfg = OptimConfig.model_validate({"warmup_steps": 10, "min_lr_ratio": 0.1, **kw})
    return [lr_factor(s, cfg, STEPS) for s in range(STEPS)]


def test_warmup_is_linear_to_the_peak() -> None:
    f = factors(schedule="cosine")
    assert f[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert max(f) == pytest.approx(1.0)


def test_cosine_decays_monotonically_to_min_ratio() -> None:
    f = factors(schedule="cosine")[10:]
    assert f[0] == pytest.approx(1.0) and f[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in itertools.pairwise(f))
    mid = f[len(f) // 2]
    assert mid == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 45 / 89)))


def test_wsd_is_stable_then_decays_linearly() -> None:
    f = factors(schedule="wsd", decay_fraction=0.2)  # 18 decay steps of the 90 after warmup
    assert f[10:82] == pytest.approx([1.0] * 72)
    decay = f[82:]
    assert decay[-1] == pytest.approx(0.1)
    diffs = [a - b for a, b in itertools.pairwise(decay)]
    assert diffs == pytest.approx([0.9 / 18] * len(diffs))


def test_constant_after_warmup() -> None:
    assert factors(schedule="constant")[10:] == pytest.approx([1.0] * 90)


def test_scheduler_drives_the_optimizer_lr() -> None:
    cfg = OptimConfig(lr=0.5, warmup_steps=2, schedule="cosine")
    opt = build_optimizer(torch.nn.Linear(2, 2), cfg, torch.device("cpu"))
    sched = build_scheduler(opt, cfg, 10)
    seen = []
    for _ in range(10):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.5 * lr_factor(s, cfg, 10) for s in range(10)])
    restored = build_scheduler(build_optimizer(torch.nn.Linear(2, 2), cfg, torch.device("cpu")),
                               cfg, 10)
    restored.load_state_dict(sched.state_dict())
    assert restored.last_epoch == 10


def test_no_weight_decay_on_vectors() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    opt = build_optimizer(model, OptimConfig(weight_decay=0.1), torch.device("cpu"))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert [p.dim() for p in decay["params"]] == [2]
    assert sorted(p.dim() for p in no_decay["params"]) == [1, 1, 1]


def test_clip_matches_torch() -> None:
    torch.manual_seed(0)
    a, b = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)
    b.load_state_dict(a.state_dict())
    x = torch.randn(4, 8)
    for m in (a, b):
        m(x).pow(2).sum().backward()
    ours = clip_grad_norm_(a.parameters(), 0.5)
    ref = torch.nn.utils.clip_grad_norm_(b.parameters(), 0.5)
    assert ours.item() == pytest.approx(ref.item())
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad)
    measured = clip_grad_norm_(a.parameters(), 0.0)  # 0: measure, do not clip
    assert measured.item() == pytest.approx(0.5, rel=1e-5)
