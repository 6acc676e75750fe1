"""MobileFaceNet, the hand-designed baseline PocketNet compares with.

Chen, Liu, Gao, Han. "MobileFaceNets: Efficient CNNs for Accurate Real-Time
Face Verification on Mobile Devices", CCBR 2018, Table 1: conv3x3/2 (64) ->
depthwise conv3x3 (64) -> bottlenecks (t, c, n, s) = (2, 64, 5, 2), (4, 128,
1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1) -> conv1x1 (512) ->
linear global depthwise conv 7x7 -> linear conv1x1 (128), PReLU activations.
0.99 M parameters at 128-d.

`width` scales every channel count (rounded to multiples of 8 above 8), so a
baseline of comparable cost to a small searched network can be built.
"""

from __future__ import annotations

import math

import torch
from torch import nn

SETTING = ((2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1))


def _ch(c: int, width: float) -> int:
    return c if width == 1.0 else max(8, int(round(c * width / 8)) * 8)


class ConvBlock(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, k: int = 1, s: int = 1, groups: int = 1, linear: bool = False):
        layers = [nn.Conv2d(c_in, c_out, k, s, (k - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(c_out)]
        super().__init__(*layers if linear else layers + [nn.PReLU(c_out)])


class Bottleneck(nn.Module):
    """Inverted residual: expand 1x1 -> depthwise 3x3 (stride) -> linear project 1x1; residual when shapes match."""

    def __init__(self, c_in: int, c_out: int, stride: int, expansion: int):
        super().__init__()
        hidden = c_in * expansion
        self.residual = stride == 1 and c_in == c_out
        self.conv = nn.Sequential(ConvBlock(c_in, hidden), ConvBlock(hidden, hidden, 3, stride, hidden),
                                  ConvBlock(hidden, c_out, linear=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileFaceNet(nn.Module):
    """image -> embedding (`embedding_size`, 128 in the paper)."""

    def __init__(self, embedding_size: int = 128, width: float = 1.0, input_size: int = 112, in_channels: int = 3):
        super().__init__()
        c0 = _ch(64, width)
        self.conv1 = ConvBlock(in_channels, c0, 3, 2)
        self.dw_conv = ConvBlock(c0, c0, 3, 1, c0)
        blocks, c_in = [], c0
        for t, c, n, s in SETTING:
            for i in range(n):
                blocks.append(Bottleneck(c_in, _ch(c, width), s if i == 0 else 1, t))
                c_in = _ch(c, width)
        self.features = nn.Sequential(*blocks)
        last = _ch(512, width)
        self.conv2 = ConvBlock(c_in, last)
        side = input_size
        for _ in range(4):
            side = math.ceil(side / 2)
        self.gdconv = ConvBlock(last, last, side, 1, last, linear=True)
        self.gdconv[0].padding = (0, 0)
        self.conv3 = ConvBlock(last, embedding_size, linear=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.dw_conv(self.conv1(x)))
        return self.conv3(self.gdconv(self.conv2(x))).flatten(1)


__all__ = ["SETTING", "MobileFaceNet"]
