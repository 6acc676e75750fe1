"""GDN / IGDN and the bound with a pass-through gradient that keeps their parameters positive.

Generalized divisive normalization (Ballé, Laparra, Simoncelli, "Density Modeling of Images using a
Generalized Normalization Transformation", ICLR 2016, eq. 3; used as the nonlinearity of "End-to-end
Optimized Image Compression", ICLR 2017, Sec. 2):

    y_i = x_i / sqrt(beta_i + sum_j gamma_ij x_j^2)          (GDN, in the analysis transform)
    x_i = y_i * sqrt(beta_i + sum_j gamma_ij y_j^2)          (IGDN, its approximate inverse, in the synthesis)

Parametrisation as in the authors' tensorflow_compression (`GDNParameter`): beta and gamma are stored
as `sqrt(value + pedestal)` and bounded below, `pedestal = 2**-36`, `beta_min = 1e-6`, gamma
initialised to `0.1 * I`, beta to 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _LowerBound(torch.autograd.Function):
    """max(x, bound) whose gradient still flows where x < bound if it pushes x upwards
    (tensorflow_compression's `lower_bound` with `gradient="identity_if_towards"`)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, bound: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, bound)
        return torch.max(x, bound)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, bound = ctx.saved_tensors
        pass_through = (x >= bound) | (grad < 0)
        return grad * pass_through.to(grad.dtype), None


def lower_bound(x: torch.Tensor, bound: float) -> torch.Tensor:
    """max(x, bound); its special gradient only where one is taken (plain clamp otherwise: traceable, exportable)."""
    if not (torch.is_grad_enabled() and x.requires_grad):
        return torch.clamp(x, min=bound)
    return _LowerBound.apply(x, torch.tensor(bound, dtype=x.dtype, device=x.device))


class GDN(nn.Module):
    """GDN over the channels of a (B, C, H, W) tensor; `inverse=True` is IGDN."""

    def __init__(self, channels: int, inverse: bool = False, beta_min: float = 1e-6, gamma_init: float = 0.1,
                 reparam_offset: float = 2.0 ** -18):
        super().__init__()
        self.inverse = inverse
        self.pedestal = reparam_offset ** 2
        self.beta_bound = (beta_min + self.pedestal) ** 0.5
        self.gamma_bound = reparam_offset
        self.beta = nn.Parameter(torch.sqrt(torch.ones(channels) + self.pedestal))
        self.gamma = nn.Parameter(torch.sqrt(gamma_init * torch.eye(channels) + self.pedestal))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        beta = lower_bound(self.beta, self.beta_bound) ** 2 - self.pedestal
        gamma = lower_bound(self.gamma, self.gamma_bound) ** 2 - self.pedestal
        norm = F.conv2d(x * x, gamma[:, :, None, None], beta)
        return x * torch.sqrt(norm) if self.inverse else x * torch.rsqrt(norm)

    def extra_repr(self) -> str:
        return f"{self.beta.numel()}, inverse={self.inverse}"


def conv(cin: int, cout: int, kernel: int = 5, stride: int = 2) -> nn.Conv2d:
    """A 'same'-padded convolution that downsamples by `stride`."""
    return nn.Conv2d(cin, cout, kernel, stride, kernel // 2)


def deconv(cin: int, cout: int, kernel: int = 5, stride: int = 2) -> nn.ConvTranspose2d:
    """A transposed convolution that upsamples by exactly `stride` (output = input * stride)."""
    return nn.ConvTranspose2d(cin, cout, kernel, stride, kernel // 2, output_padding=stride - 1)


__all__ = ["GDN", "lower_bound", "conv", "deconv"]
