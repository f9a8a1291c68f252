"""RMSNorm: ``nn.RMSNorm``, with one fused forward and backward for float CPU tensors in eager mode.

On CUDA ``nn.RMSNorm`` runs a fused kernel and ``torch.compile`` fuses it anywhere, but eagerly
on CPU it is composite (pow, mean, add, rsqrt, two multiplies, and autograd's backward of each):
about 4x a LayerNorm's time for the same tensor, and its extra full-size temporaries cost page
faults on every step. `_RMSNormFunction` computes the same function and its gradients in three
passes over the input each way and saves only the input and its inverse root mean square.

Anything else (other devices, reduced precision, DTensors under tensor parallelism, fake or meta
tensors, compilation) takes ``nn.RMSNorm``'s own path unchanged. Same parameter, same state dict.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

_FUSED_DTYPES = (torch.float32, torch.float64)


class RMSNorm(nn.RMSNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _fused_applies(x, self.weight):
            eps = self.eps if self.eps is not None else torch.finfo(x.dtype).eps
            return _RMSNormFunction.apply(x, self.weight, eps)
        return super().forward(x)


def _fused_applies(x: torch.Tensor, weight: torch.Tensor | None) -> bool:
    return (type(x) is torch.Tensor and x.device.type == "cpu" and x.dtype in _FUSED_DTYPES
            and weight is not None and type(weight) in (torch.Tensor, nn.Parameter)
            and weight.dtype == x.dtype and weight.dim() == 1
            and not torch.compiler.is_compiling())


class _RMSNormFunction(torch.autograd.Function):
    """y = x * rstd * w with rstd = 1 / sqrt(mean(x^2) + eps) over the last dimension."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
        rstd = norm.square_().div_(x.shape[-1]).add_(eps).rsqrt_()
        ctx.save_for_backward(x, rstd, weight)
        return (x * rstd).mul_(weight)

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, rstd, weight = ctx.saved_tensors
        xhat = x * rstd
        scratch = dy * xhat
        dweight = scratch.flatten(0, -2).sum(0) if ctx.needs_input_grad[1] else None
        if not ctx.needs_input_grad[0]:
            return None, dweight, None
        # dx = rstd * (g - xhat * mean(g * xhat)) with g = dy * w
        g = dy * weight
        mean_gx = torch.mul(g, xhat, out=scratch).mean(-1, keepdim=True)
        return g.addcmul_(xhat, mean_gx, value=-1).mul_(rstd), dweight, None
