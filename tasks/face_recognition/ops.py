"""The PocketNet face op set: DARTS cell ops with PReLU and depthwise-separable convolutions.

Boutros, Siebke, Klemt, Damer, Kirchbuchner, Kuijper. "PocketNet: Extreme
Lightweight Face Recognition Network using Neural Architecture Search and
Multi-Step Knowledge Distillation", IEEE Access 2022 (arXiv 2108.10710),
sec. III-A; official code github.com/fdbtrs/PocketNet (`backbones/ops.py`).

Differences from the DARTS CIFAR ops (`core.zoo.darts`): PReLU instead of
ReLU, one depthwise-separable conv (no stacked pair, no dilation) at kernel
1/3/5/7, pools followed by a BN in the evaluation network too, and a
factorised reduction made of depthwise-then-pointwise 1x1 convolutions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from core.zoo.darts import Zero

#: official `PRIMITIVES` order (`none` last, which the official `parse` asserts)
FACE_PRIMITIVES = ("max_pool_3x3", "avg_pool_3x3", "skip_connect", "dw_conv_3x3", "dw_conv_5x5", "dw_conv_7x7",
                   "dw_conv_1x1", "none")


class DWConv(nn.Module):
    """PReLU -> depthwise k x k (strided) -> pointwise 1x1 -> BN (official `DWConv` and `StdConv`)."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int, affine: bool = True):
        super().__init__()
        self.net = nn.Sequential(
            nn.PReLU(C_in),
            nn.Conv2d(C_in, C_in, kernel_size, stride, padding, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, 1, bias=False),
            nn.BatchNorm2d(C_out, affine=affine))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


StdConv = DWConv
"""The cells' 1x1 preprocessing: official `StdConv`, the same layers as `DWConv` with k = 1."""


class PoolBN(nn.Module):
    """3x3 max or average pool (average excludes padding) followed by BN."""

    def __init__(self, kind: str, C: int, stride: int, affine: bool = True):
        super().__init__()
        self.pool = nn.MaxPool2d(3, stride, 1) if kind == "max" else \
            nn.AvgPool2d(3, stride, 1, count_include_pad=False)
        self.bn = nn.BatchNorm2d(C, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.pool(x))


class FaceFactorizedReduce(nn.Module):
    """Halve the resolution: PReLU, then two (depthwise 1x1 stride 2 -> pointwise 1x1) paths on pixel grids
    offset by one, concatenated, BN (official `FactorizedReduce`).

    The official op crops `x[:, :, 1:, 1:]`; we pad one zero row/column first so
    odd sizes work. For even sizes the pad is never sampled (same result).
    """

    def __init__(self, C_in: int, C_out: int, affine: bool = True):
        super().__init__()
        if C_out % 2:
            raise ValueError(f"FaceFactorizedReduce needs an even number of output channels, got {C_out}")
        self.relu = nn.PReLU(C_in)
        self.conv11 = nn.Conv2d(C_in, C_in, 1, 2, 0, groups=C_in, bias=False)
        self.conv12 = nn.Conv2d(C_in, C_out // 2, 1, bias=False)
        self.conv21 = nn.Conv2d(C_in, C_in, 1, 2, 0, groups=C_in, bias=False)
        self.conv22 = nn.Conv2d(C_in, C_out // 2, 1, bias=False)
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        shifted = F.pad(x, (0, 1, 0, 1))[:, :, 1:, 1:]
        first = self.conv12(self.conv11(x))
        second = self.conv22(self.conv21(shifted))
        return self.bn(torch.cat([first, second], dim=1))


FACE_OPS = {
    "none": lambda C, stride, affine: Zero(stride),
    "avg_pool_3x3": lambda C, stride, affine: PoolBN("avg", C, stride, affine),
    "max_pool_3x3": lambda C, stride, affine: PoolBN("max", C, stride, affine),
    "skip_connect": lambda C, stride, affine: nn.Identity() if stride == 1 else FaceFactorizedReduce(C, C, affine),
    "dw_conv_3x3": lambda C, stride, affine: DWConv(C, C, 3, stride, 1, affine),
    "dw_conv_5x5": lambda C, stride, affine: DWConv(C, C, 5, stride, 2, affine),
    "dw_conv_7x7": lambda C, stride, affine: DWConv(C, C, 7, stride, 3, affine),
    "dw_conv_1x1": lambda C, stride, affine: DWConv(C, C, 1, stride, 0, affine),
}
"""name -> (C, stride, affine) -> module; affine=False in the search network (official `MixedOp`)."""


def make_face_op(name: str, C: int, stride: int, search: bool = False) -> nn.Module:
    if name not in FACE_OPS:
        raise ValueError(f"unknown face op {name!r}; known: {list(FACE_PRIMITIVES)}")
    return FACE_OPS[name](C, stride, not search)


__all__ = ["FACE_OPS", "FACE_PRIMITIVES", "DWConv", "FaceFactorizedReduce", "PoolBN", "StdConv", "make_face_op"]
