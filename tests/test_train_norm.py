"""The model's RMSNorm computes what ``nn.RMSNorm`` computes, gradients included, on the fused
CPU path and on the paths that fall back to ``nn.RMSNorm``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from stoker.train.norm import RMSNorm, _fused_applies


def pair(dim: int, dtype: torch.dtype) -> tuple[RMSNorm, nn.RMSNorm]:
    ours, reference = RMSNorm(dim, eps=1e-5, dtype=dtype), nn.RMSNorm(dim, eps=1e-5, dtype=dtype)
    with torch.no_grad():
        ours.weight.copy_(torch.randn(dim, dtype=dtype))
        reference.weight.copy_(ours.weight)
    return ours, reference


def forward_backward(norm: nn.Module, x: torch.Tensor, dy: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = x.clone().requires_grad_()
    y = norm(x)
    y.backward(dy)
    return y.detach(), x.grad, norm.weight.grad


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 2e-5), (torch.float64, 1e-12)])
def test_the_fused_path_equals_nn_rmsnorm(dtype: torch.dtype, tol: float) -> None:
    torch.manual_seed(0)
    ours, reference = pair(64, dtype)
    x = torch.randn(3, 7, 64, dtype=dtype) * 3 + 1
    dy = torch.randn_like(x)
    assert _fused_applies(x, ours.weight)
    for got, want in zip(forward_backward(ours, x, dy), forward_backward(reference, x, dy),
                         strict=True):
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)


def test_the_fused_gradients_pass_gradcheck() -> None:
    torch.manual_seed(0)
    norm = RMSNorm(8, eps=1e-3, dtype=torch.float64)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(8, dtype=torch.float64))
    x = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(norm, (x,))


def test_a_frozen_weight_or_an_input_without_grad() -> None:
    ours, reference = pair(16, torch.float32)
    ours.weight.requires_grad_(False)
    x = torch.randn(4, 16, requires_grad=True)
    ours(x).sum().backward()
    x_ref = x.detach().clone().requires_grad_()
    reference(x_ref).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    assert ours.weight.grad is None

    ours.weight.requires_grad_(True)
    ours(torch.randn(4, 16)).sum().backward()  # only the weight needs a gradient
    assert ours.weight.grad is not None and ours.weight.grad.shape == (16,)


def test_other_inputs_take_nn_rmsnorms_path() -> None:
    ours, _ = pair(16, torch.float32)
    assert not _fused_applies(torch.randn(2, 16, dtype=torch.bfloat16), ours.weight)
    assert not _fused_applies(torch.randn(2, 16, device="meta"), ours.weight)
    half, reference = pair(16, torch.bfloat16)
    x = torch.randn(2, 16, dtype=torch.bfloat16)
    torch.testing.assert_close(half(x), reference(x))
