"""The 32 candidate operators of Hit-Detector.

Guo et al., "Hit-Detector: Hierarchical Trinity Architecture Search for Object
Detection", CVPR 2020, appendix (full search space, N = 32):

- `ir_k{3,5}_d{1,2,3}_e{1,3,6}` and `ir_k7_d1_e{1,6}`: inverted residual,
  1x1 expand -> kxk depthwise (dilation d) -> 1x1 linear projection (20 ops);
- `sep_k{3,5}_d{1,2,3}`: kxk depthwise (dilation d) -> 1x1 (6 ops);
- `conv_k{3,5}_d{1,2,3}`: one dense kxk convolution (dilation d) (6 ops).

Every conv is followed by BatchNorm; ReLU follows every conv except the last
1x1 of `ir`/`sep` (a linear bottleneck). A residual is added when the input and
output shapes agree (in = out channels and stride 1).

The block layouts follow the official code (ggjy/HitDet.pytorch,
`mmdet/models/backbones/fbnet_blocks.py` `MBBlock`, `necks/auto_neck/hit_ops.py`
`SepBlock`): the `ir` block keeps its 1x1 expansion even at e = 1, so the
parameter count of the released architecture comes out exactly. `conv` ops are
not in the released code (its neck and head lists hold no kxk dense conv); we
give them conv + BN + ReLU, the activation keeping a stack of residual convs
non-linear.
"""

from __future__ import annotations

import itertools
import re

import torch
from torch import nn

IR_OPS = [f"ir_k{k}_d{d}_e{e}" for k, d, e in itertools.product((3, 5), (1, 2, 3), (1, 3, 6))] + \
         ["ir_k7_d1_e1", "ir_k7_d1_e6"]
SEP_OPS = [f"sep_k{k}_d{d}" for k, d in itertools.product((3, 5), (1, 2, 3))]
CONV_OPS = [f"conv_k{k}_d{d}" for k, d in itertools.product((3, 5), (1, 2, 3))]
#: the paper's full candidate list (N = 32), in a fixed order
ALL_OPS: tuple[str, ...] = tuple(IR_OPS + SEP_OPS + CONV_OPS)

_PATTERN = re.compile(r"^(ir|sep|conv)_k(\d)_d(\d)(?:_e(\d))?$")


def parse_op(name: str) -> tuple[str, int, int, int]:
    """`ir_k5_d2_e6` -> ("ir", kernel 5, dilation 2, expansion 6); e is 1 for sep and conv."""
    match = _PATTERN.match(name)
    if not match or name not in ALL_OPS:
        raise ValueError(f"unknown Hit-Detector op {name!r}; known: {', '.join(ALL_OPS)}")
    kind, k, d, e = match.groups()
    return kind, int(k), int(d), int(e or 1)


def conv_bn(in_ch: int, out_ch: int, kernel: int = 1, stride: int = 1, dilation: int = 1, groups: int = 1,
            relu: bool = True, bias: bool = False) -> nn.Sequential:
    """Conv ('same' padding for odd kernels at any dilation) + BatchNorm (+ ReLU)."""
    pad = (kernel - 1) * dilation // 2
    layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, kernel, stride, pad, dilation=dilation, groups=groups,
                                         bias=bias), nn.BatchNorm2d(out_ch)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class _Residual(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.use_residual = in_ch == out_ch and stride == 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return out + x if self.use_residual else out


class InvertedResidualOp(_Residual):
    """1x1 expand (kept at e = 1, as the official `MBBlock`) -> kxk depthwise -> 1x1 linear projection."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, kernel: int, dilation: int, expansion: int):
        super().__init__(in_ch, out_ch, stride)
        mid = in_ch * expansion
        self.body = nn.Sequential(conv_bn(in_ch, mid, 1),
                                  conv_bn(mid, mid, kernel, stride, dilation, groups=mid),
                                  conv_bn(mid, out_ch, 1, relu=False))


class SeparableOp(_Residual):
    """kxk depthwise + BN + ReLU -> 1x1 + BN (the official `SepBlock`)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, kernel: int, dilation: int):
        super().__init__(in_ch, out_ch, stride)
        self.body = nn.Sequential(conv_bn(in_ch, in_ch, kernel, stride, dilation, groups=in_ch),
                                  conv_bn(in_ch, out_ch, 1, relu=False))


class ConvOp(_Residual):
    """One dense kxk convolution + BN + ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, kernel: int, dilation: int):
        super().__init__(in_ch, out_ch, stride)
        self.body = conv_bn(in_ch, out_ch, kernel, stride, dilation)


def zero_init_residuals(module: nn.Module) -> int:
    """Zero the weight of the last BatchNorm of every residual op in `module`; returns how many.

    Each such block then starts as the identity (its branch outputs 0), the
    `zero_init_residual` of mmdetection's and torchvision's ResNets (Goyal et
    al., 2017). The released Hit-Detector initialises every norm to weight 1
    and starts from an ImageNet-pretrained backbone; trained from scratch, its
    15 residual backbone blocks at weight 1 give a gradient norm of 50-200 at
    the first steps (MobileNetV2-FPN: 10-15), which the clip at 35 then cuts
    (docs/benchmarks.md, detection diagnostics).
    """
    count = 0
    for m in module.modules():
        if isinstance(m, _Residual) and m.use_residual:
            norms = [b for b in m.body.modules() if isinstance(b, nn.BatchNorm2d)]
            nn.init.zeros_(norms[-1].weight)
            count += 1
    return count


def make_op(name: str, in_ch: int, out_ch: int, stride: int = 1) -> nn.Module:
    """Build candidate `name` mapping `in_ch` to `out_ch` channels at `stride`."""
    kind, k, d, e = parse_op(name)
    if kind == "ir":
        return InvertedResidualOp(in_ch, out_ch, stride, k, d, e)
    if kind == "sep":
        return SeparableOp(in_ch, out_ch, stride, k, d)
    return ConvOp(in_ch, out_ch, stride, k, d)


#: released-code op names (fbnet_blocks / hit_ops / mbblock_ops) -> ours
OFFICIAL_NAMES = {
    "ir_k3_e3": "ir_k3_d1_e3", "ir_k3_e3_r2": "ir_k3_d2_e3", "ir_k3_e6": "ir_k3_d1_e6",
    "ir_k3_e6_r2": "ir_k3_d2_e6", "ir_k5_e3": "ir_k5_d1_e3", "ir_k5_e6": "ir_k5_d1_e6",
    "ir_k5_e6_r2": "ir_k5_d2_e6", "ir_k7_e6": "ir_k7_d1_e6", "ir_k3_e6_d3": "ir_k3_d3_e6",
    "ir_k5_e6_d3": "ir_k5_d3_e6", "sd_k3_d1": "sep_k3_d1", "sd_k3_d3": "sep_k3_d3", "sd_k5_d2": "sep_k5_d2",
    "sd_k5_d3": "sep_k5_d3",
}

#: the sub-search spaces the paper's screening kept (Sec. 4.3 / appendix), 8 per component.
#: The backbone list prints "ir k5 d1 e3" twice; the second is taken as k5 d1 e6 (the released
#: backbone uses ir_k5_e6 ten times, so it must be in the sub-space).
PAPER_SUBSPACES: dict[str, tuple[str, ...]] = {
    "backbone": ("ir_k3_d1_e3", "ir_k3_d1_e6", "ir_k3_d2_e3", "ir_k5_d1_e3", "ir_k5_d1_e6", "ir_k5_d2_e6",
                 "ir_k5_d3_e6", "ir_k7_d1_e6"),
    "neck": ("conv_k3_d3", "conv_k5_d1", "ir_k3_d2_e1", "ir_k5_d1_e3", "sep_k3_d1", "sep_k3_d3", "sep_k5_d2",
             "sep_k5_d3"),
    "head": ("ir_k3_d1_e3", "ir_k3_d1_e6", "ir_k3_d2_e6", "ir_k5_d1_e3", "ir_k5_d1_e6", "ir_k7_d1_e6",
             "conv_k3_d1", "conv_k5_d1"),
}

__all__ = ["ALL_OPS", "OFFICIAL_NAMES", "PAPER_SUBSPACES", "conv_bn", "make_op", "parse_op", "zero_init_residuals"]
