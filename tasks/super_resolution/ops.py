"""The trilevel space's building blocks, shared by the supernet and the derived network.

Cell-level candidates (Wu et al., arXiv 2101.06658; the op set of the
derivative code `hanyao8/DA-NAS-SISR`, `PRIMITIVES`): skip, conv 3x3,
residual block (conv-ReLU-conv plus identity) and depthwise-separable block
(depthwise 3x3, pointwise 1x1, ReLU). Every op maps `cin` to `cout` channels;
a skip between different widths keeps the first channels or zero-pads them.

Kernel level (slimmable convolutions, Yu et al., "Slimmable Neural
Networks", ICLR 2019): in the supernet each op is built at the full base width
and a *channel mask* selects a width: channels past the width are zero, which
gives exactly the output of the op built at that width from the first slice
of the full weights (the derived network's layers, see `inherit`). With
relaxed width weights beta the mask is sum_k beta_k 1[c < w_k] (a mixture of
widths, FBNetV2's channel masking), one convolution however many widths.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

OPS = ("skip", "conv3x3", "resblock", "dwsblock")
#: width options as twelfths of the base width (the paper's {4, 6, 8, 10, 12}/12)
WIDTHS = (4, 6, 8, 10, 12)


def width_channels(num_feat: int, twelfths: int) -> int:
    """Channels of a tensor at `twelfths`/12 of the base width (at least 1)."""
    return max(1, int(round(num_feat * twelfths / 12)))


def _masked(y: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return y if mask is None else y * mask.view(1, -1, 1, 1)


def _adapt(x: torch.Tensor, cout: int) -> torch.Tensor:
    """Identity between widths: keep the first `cout` channels or zero-pad up to them."""
    c = x.shape[1]
    if c == cout:
        return x
    return x[:, :cout] if cout < c else F.pad(x, (0, 0, 0, 0, 0, cout - c))


class Skip(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.cout = cout

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return _masked(x, mask) if mask is not None else _adapt(x, self.cout)


class Conv3x3(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return _masked(F.relu(self.conv(x)), mask)


class ResBlock(nn.Module):
    """conv-ReLU-conv plus the identity (EDSR's block without scaling); the middle tensor has cout channels."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.cout = cout

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        mid = _masked(F.relu(self.conv1(x)), mask)
        skip = x if mask is not None else _adapt(x, self.cout)
        return _masked(self.conv2(mid) + skip, mask)


class DWSBlock(nn.Module):
    """Depthwise 3x3 (no bias, so masked-out channels stay zero), pointwise 1x1, ReLU."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.dw = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
        self.pw = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return _masked(F.relu(self.pw(self.dw(x))), mask)


OP_CLASSES = {"skip": Skip, "conv3x3": Conv3x3, "resblock": ResBlock, "dwsblock": DWSBlock}


def op_macs(name: str, cin, cout, cout_sq=None):
    """Multiply-accumulates per pixel of one op (numbers, or expected widths as tensors).

    `cout_sq` is E[cout^2] for the residual block's cout x cout conv (cout^2 when widths are fixed).
    """
    cout_sq = cout * cout if cout_sq is None else cout_sq
    if name == "skip":
        return 0.0 * cin
    if name == "conv3x3":
        return 9 * cin * cout
    if name == "resblock":
        return 9 * cin * cout + 9 * cout_sq
    if name == "dwsblock":
        return 9 * cin + cin * cout
    raise ValueError(f"unknown op {name!r}; known: {', '.join(OPS)}")


class Upsampler(nn.Module):
    """Sub-pixel upsampling (ESPCN; MSRResNet's): conv to C*s^2 channels, PixelShuffle(s), LeakyReLU(0.1)."""

    def __init__(self, num_feat: int, factor: int):
        super().__init__()
        self.conv = nn.Conv2d(num_feat, num_feat * factor * factor, 3, padding=1)
        self.shuffle = nn.PixelShuffle(factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.shuffle(self.conv(x)), 0.1)


def upsample_factors(scale: int) -> tuple[int, ...]:
    """x2 and x3: one upsampler; x4: two x2 upsamplers (as EDSR/MSRResNet)."""
    if scale in (2, 3):
        return (scale,)
    if scale == 4:
        return (2, 2)
    raise ValueError(f"scale: expected 2, 3 or 4, got {scale!r}")


def upsampler_macs(num_feat: int, factor: int) -> int:
    return 9 * num_feat * num_feat * factor * factor


def head_tail_macs(num_feat: int, scale: int, in_ch: int = 3, out_ch: int = 3) -> tuple[int, int]:
    """Per LR pixel: the head conv (LR) and the tail conv (all scale^2 HR pixels)."""
    return 9 * in_ch * num_feat, 9 * num_feat * out_ch * scale * scale


def inherit(dst: nn.Module, src: nn.Module) -> None:
    """Copy `src`'s parameters into `dst`'s, each sliced to dst's shape (the first channels): slimmable weights."""
    src_state = src.state_dict()
    with torch.no_grad():
        for name, tensor in dst.state_dict().items():
            if name not in src_state:
                raise KeyError(f"inherit: {type(src).__name__} has no parameter {name!r}")
            full = src_state[name]
            if full.dim() != tensor.dim() or any(d > f for d, f in zip(tensor.shape, full.shape)):
                raise ValueError(f"inherit: {name} {tuple(tensor.shape)} does not fit in {tuple(full.shape)}")
            tensor.copy_(full[tuple(slice(0, d) for d in tensor.shape)])


def plain_cell_ops(num_feat: int, ops: Sequence[str], widths: Sequence[int]) -> nn.ModuleList:
    """The ops of a derived cell: op j maps c_j to c_{j+1}, c_0 = c_n = num_feat, c_j = widths[j-1]/12."""
    chans = [num_feat, *(width_channels(num_feat, w) for w in widths), num_feat]
    return nn.ModuleList(OP_CLASSES[op](chans[j], chans[j + 1]) for j, op in enumerate(ops))


def cell_macs(num_feat: int, ops: Sequence[str], widths: Sequence[int]) -> int:
    chans = [num_feat, *(width_channels(num_feat, w) for w in widths), num_feat]
    return int(sum(op_macs(op, chans[j], chans[j + 1]) for j, op in enumerate(ops)))


__all__ = ["OPS", "WIDTHS", "OP_CLASSES", "width_channels", "op_macs", "Upsampler", "upsample_factors",
           "upsampler_macs", "head_tail_macs", "inherit", "plain_cell_ops", "cell_macs", "Skip", "Conv3x3",
           "ResBlock", "DWSBlock"]
