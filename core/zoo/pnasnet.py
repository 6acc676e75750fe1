"""The PNAS cell space and PNASNet-5, built as TF-slim builds it.

Liu et al., "Progressive Neural Architecture Search", ECCV 2018 (arXiv
1712.00559), Sec. 3.1: a cell has B = 5 blocks; block b adds the outputs
of two ops, each applied to an input chosen from the cell's two inputs and
the blocks before b. The network is built as in the official release,
`tensorflow/models` `research/slim/nets/nasnet/pnasnet.py` and
`nasnet_utils.py` (`NasNetABaseCell`):

- the cell's states: 0 is H_{c-1} after ReLU, 1x1 conv and BN to the cell's
  F filters; 1 is H_{c-2}, brought to the current size by ReLU and a
  factorized reduction when its resolution differs (two stride-2 1x1 convs
  of int(F/2) filters each, the second on the input shifted by one pixel),
  by ReLU, 1x1 conv and BN when only its width differs, else unchanged;
  2 + i is block i's output;
- in a reduction cell (stride 2) only ops on states 0 and 1 stride;
- ops: `sep_conv_kxk` is ReLU, separable kxk conv (depthwise, then pointwise
  to F), BN, twice (`separable_kxk_2`); `max_pool_3x3`/`avg_pool_3x3`
  pool with SAME padding and add a 1x1 conv and BN when the input width is
  not F; `skip_connect` is the identity (`none` in TF-slim), or ReLU, 1x1 conv
  (with the stride) and BN when it must stride or change width. Not used by
  PNASNet-5, so not checked against the code: `conv_7x1_1x7` (ReLU, 1x7 conv,
  BN, ReLU, 7x1 conv, BN) and `dil_conv_3x3` (ReLU, dilated separable 3x3
  conv, BN), our reading of the paper's "1x7 followed by 7x1 convolution"
  and "3x3 dilated convolution";
- the cell's output is the concatenation of its five blocks (PNASNet-5's
  `used_hiddenstates = [1, 1, 0, 0, 0, 0, 0]`), 5F channels;
- the ImageNet stem: a 3x3 stride-2 VALID conv of 32 * stem_multiplier
  filters and BN, then two stem cells (the same cell, stride 2, F/4 and F/2
  filters); then `num_cells` cells with reductions at int(k/3 * num_cells),
  k = 1, 2, where F doubles; ReLU, global pooling, dropout (keep 0.5) and
  a linear classifier. The auxiliary head is training-only and left out.
- the CIFAR stem (for 32x32 data, `stem: cifar`): a 3x3 conv of
  F * stem_multiplier filters and BN, no stem cells.

Configs: `mobile` (num_cells 9, F 54, stem_multiplier 1, 224x224) and
`large` (12, 216, 3, 331x331), the official ones; `small` is ours, a
CIFAR-stem net for the embedded 32x32 data (6 cells, F 16).

PNASNet-5 (`PNASNET5`, `space.named_archs["pnasnet5"]`): the official
`operations` and `hiddenstate_indices`. Its ImageNet networks have
5,065,121 parameters and 587,674,224 multiply-adds (mobile, 224x224, 1000
classes; the paper: 5.1M and 588M) and 86,057,668 parameters and
24,937,395,792 multiply-adds (large, 331x331, 1000 classes; the paper:
86.1M and 25.0B; timm's PyTorch port of the released large checkpoint,
`pnasnet5large`, gives the same two numbers).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.engine.registry import SPACES, ConfigError
from core.api import Arch, Choice, SearchSpace

OPS = ("sep_conv_3x3", "sep_conv_5x5", "sep_conv_7x7", "conv_7x1_1x7", "skip_connect", "avg_pool_3x3",
       "max_pool_3x3", "dil_conv_3x3")
BLOCKS = 5
CONFIGS = {
    "mobile": dict(num_cells=9, filters=54, stem_multiplier=1.0, stem="imagenet"),
    "large": dict(num_cells=12, filters=216, stem_multiplier=3.0, stem="imagenet"),
    "small": dict(num_cells=6, filters=16, stem_multiplier=2.0, stem="cifar"),
}
#: PNASNet-5 as (left input, left op, right input, right op) per block, from the official `PNasNetNormalCell`
PNASNET5 = (
    (1, "sep_conv_5x5", 1, "max_pool_3x3"),
    (0, "sep_conv_7x7", 0, "max_pool_3x3"),
    (0, "sep_conv_5x5", 0, "sep_conv_3x3"),
    (4, "sep_conv_3x3", 0, "max_pool_3x3"),
    (1, "sep_conv_3x3", 0, "skip_connect"),
)
_BN_EPS = 1e-3  # TF-slim's batch_norm_epsilon for NASNet/PNASNet


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=_BN_EPS)


class _SepConv(nn.Sequential):
    """ReLU, depthwise kxk (stride, dilation), pointwise to `cout` (no biases), BN."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, dilation: int = 1):
        pad = dilation * (k // 2)
        super().__init__(nn.ReLU(), nn.Conv2d(cin, cin, k, stride, pad, dilation=dilation, groups=cin, bias=False),
                         nn.Conv2d(cin, cout, 1, bias=False), _bn(cout))


class _ReluConvBN(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int | tuple = 1, stride: int = 1, relu: bool = True):
        k = (kernel, kernel) if isinstance(kernel, int) else kernel
        layers = [nn.ReLU()] if relu else []
        layers += [nn.Conv2d(cin, cout, k, stride, (k[0] // 2, k[1] // 2), bias=False), _bn(cout)]
        super().__init__(*layers)


class _Pool(nn.Module):
    def __init__(self, kind: str, cin: int, cout: int, stride: int):
        super().__init__()
        self.pool = (nn.MaxPool2d(3, stride, 1) if kind == "max"
                     else nn.AvgPool2d(3, stride, 1, count_include_pad=False))
        self.project = _ReluConvBN(cin, cout, relu=False) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.pool(x))


def make_op(name: str, cin: int, cout: int, stride: int) -> nn.Module:
    """One PNAS op from `cin` channels to the cell's `cout` filters (see the module docstring)."""
    if name.startswith("sep_conv_"):
        k = int(name[-1])
        return nn.Sequential(_SepConv(cin, cout, k, stride), _SepConv(cout, cout, k, 1))
    if name == "dil_conv_3x3":
        return _SepConv(cin, cout, 3, stride, dilation=2)
    if name == "conv_7x1_1x7":
        return nn.Sequential(_ReluConvBN(cin, cout, (1, 7), (1, stride)), _ReluConvBN(cout, cout, (7, 1), (stride, 1)))
    if name == "skip_connect":
        return _ReluConvBN(cin, cout, 1, stride) if stride > 1 or cin != cout else nn.Identity()
    if name in ("max_pool_3x3", "avg_pool_3x3"):
        return _Pool(name[:3], cin, cout, stride)
    raise ValueError(f"unknown PNAS op {name!r}; known: {', '.join(OPS)}")


class FactorizedReduction(nn.Module):
    """TF-slim's `factorized_reduction` at stride 2: two shifted stride-2 1x1 paths of int(F/2) filters, BN."""

    def __init__(self, cin: int, filters: int):
        super().__init__()
        half = int(filters / 2)
        self.path1 = nn.Conv2d(cin, half, 1, bias=False)
        self.path2 = nn.Conv2d(cin, half, 1, bias=False)
        self.bn = _bn(2 * half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.path1(x[:, :, ::2, ::2])
        shifted = F.pad(x, (0, 1, 0, 1))[:, :, 1:, 1:]
        b = self.path2(shifted[:, :, ::2, ::2])
        return self.bn(torch.cat([a, b], 1))

    @property
    def out_channels(self) -> int:
        return self.bn.num_features


class PNASCell(nn.Module):
    """One cell: prepare H_{c-1} and H_{c-2}, run the five blocks, concatenate them."""

    def __init__(self, blocks: Sequence[tuple], filters: int, stride: int, cin: int, cin_prev: int | None,
                 prev_spatial_ratio: int):
        super().__init__()
        self.base = _ReluConvBN(cin, filters, 1)
        if cin_prev is None:  # the first stem cell: H_{c-2} is H_{c-1} as it comes in
            self.prev, prev_channels = nn.Identity(), cin
        elif prev_spatial_ratio != 1:
            self.prev = nn.Sequential(nn.ReLU(), FactorizedReduction(cin_prev, filters))
            prev_channels = self.prev[1].out_channels
        elif cin_prev != filters:
            self.prev, prev_channels = _ReluConvBN(cin_prev, filters, 1), filters
        else:
            self.prev, prev_channels = nn.Identity(), cin_prev
        widths = [filters, prev_channels] + [filters] * len(blocks)
        self.inputs = [(b[0], b[2]) for b in blocks]
        self.left = nn.ModuleList(make_op(b[1], widths[b[0]], filters, stride if b[0] < 2 else 1) for b in blocks)
        self.right = nn.ModuleList(make_op(b[3], widths[b[2]], filters, stride if b[2] < 2 else 1) for b in blocks)
        self.out_channels = filters * len(blocks)

    def forward(self, x: torch.Tensor, prev: torch.Tensor | None) -> torch.Tensor:
        states = [self.base(x), self.prev(x if prev is None else prev)]
        for (i, j), left, right in zip(self.inputs, self.left, self.right):
            states.append(left(states[i]) + right(states[j]))
        return torch.cat(states[2:], 1)


def reduction_cells(num_cells: int, num_reductions: int = 2) -> list[int]:
    """TF-slim's `calc_reduction_layers`."""
    return [int(k / (num_reductions + 1) * num_cells) for k in range(1, num_reductions + 1)]


class PNASNet(nn.Module):
    def __init__(self, blocks: Sequence[tuple], num_cells: int, filters: int, stem_multiplier: float, stem: str,
                 num_classes: int, in_channels: int = 3, dropout: float = 0.5):
        super().__init__()
        cells = nn.ModuleList()
        if stem == "imagenet":
            c0 = int(32 * stem_multiplier)
            self.stem = nn.Sequential(nn.Conv2d(in_channels, c0, 3, 2, 0, bias=False), _bn(c0))
            shapes = [(None, None), (c0, 1)]  # (channels, resolution divisor) of the last two outputs
            scaling = 0.25
            for _ in range(2):
                cells.append(self._cell(blocks, int(filters * scaling), 2, shapes))
                shapes.append((cells[-1].out_channels, shapes[-1][1] * 2))
                scaling *= 2
        else:
            c0 = int(filters * stem_multiplier)
            self.stem = nn.Sequential(nn.Conv2d(in_channels, c0, 3, 1, 1, bias=False), _bn(c0))
            shapes = [(None, None), (c0, 1)]
        self.num_stem_cells = len(cells)
        reductions = reduction_cells(num_cells)
        scaling = 1.0
        for i in range(num_cells):
            stride = 2 if i in reductions else 1
            scaling *= 2 if stride == 2 else 1
            cells.append(self._cell(blocks, int(filters * scaling), stride, shapes))
            shapes.append((cells[-1].out_channels, shapes[-1][1] * stride))
        self.cells = cells
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(shapes[-1][0], num_classes)

    @staticmethod
    def _cell(blocks, filters: int, stride: int, shapes: list) -> PNASCell:
        (c_prev, d_prev), (c, d) = shapes[-2], shapes[-1]
        return PNASCell(blocks, filters, stride, c, c_prev, 1 if d_prev is None else d // d_prev)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        outputs = [None, x]
        for cell in self.cells:
            outputs.append(cell(outputs[-1], outputs[-2]))
        x = F.relu(outputs[-1]).mean((2, 3))
        return self.fc(self.dropout(x))


def _name(b: int, side: str, what: str) -> str:
    return f"block{b}.{side}.{what}"


class PNASSpace(SearchSpace):
    """PNAS cells: per block, two (input, op) pairs; `build` is the TF-slim PNASNet (see the module docstring)."""

    def __init__(self, config: str = "small", num_classes: int = 10, in_channels: int = 3,
                 num_cells: int | None = None, filters: int | None = None, stem_multiplier: float | None = None,
                 stem: str | None = None, ops: list[str] | None = None, dropout: float = 0.5):
        if config not in CONFIGS:
            raise ConfigError(f"config: expected one of {', '.join(CONFIGS)}, got {config!r}")
        settings = dict(CONFIGS[config])
        for key, value in (("num_cells", num_cells), ("filters", filters), ("stem_multiplier", stem_multiplier),
                           ("stem", stem)):
            if value is not None:
                settings[key] = value
        if settings["stem"] not in ("imagenet", "cifar"):
            raise ConfigError(f"stem: expected imagenet or cifar, got {settings['stem']!r}")
        if not isinstance(settings["num_cells"], int) or settings["num_cells"] < 1:
            raise ConfigError(f"num_cells: expected a positive int, got {settings['num_cells']!r}")
        self.settings, self.num_classes, self.in_channels, self.dropout = settings, num_classes, in_channels, dropout
        self.ops = tuple(ops or OPS)
        unknown = [o for o in self.ops if o not in OPS]
        if unknown:
            raise ConfigError(f"ops: unknown PNAS ops {unknown}; known: {', '.join(OPS)}")
        choices = []
        for b in range(BLOCKS):
            for side, default_input in (("left", 0), ("right", 1)):
                choices.append(Choice(_name(b, side, "input"), tuple(range(b + 2)), default=default_input))
                choices.append(Choice(_name(b, side, "op"), self.ops))
        super().__init__(choices)
        self.pnas_blocks = [[_name(b, s, w) for s in ("left", "right") for w in ("input", "op")] for b in range(BLOCKS)]
        if all(op in self.ops for _, op, _, op2 in PNASNET5 for op in (op, op2)):
            self.named_archs = {"pnasnet5": self.from_blocks(PNASNET5)}

    def from_blocks(self, blocks: Sequence[tuple]) -> Arch:
        """An arch from (left input, left op, right input, right op) per block."""
        values = {}
        for b, (i, op_l, j, op_r) in enumerate(blocks):
            values.update({_name(b, "left", "input"): i, _name(b, "left", "op"): op_l,
                           _name(b, "right", "input"): j, _name(b, "right", "op"): op_r})
        return self.check(values)

    def blocks(self, arch: Mapping[str, Any]) -> list[tuple]:
        arch = self.check(arch)
        return [(arch[_name(b, "left", "input")], arch[_name(b, "left", "op")],
                 arch[_name(b, "right", "input")], arch[_name(b, "right", "op")]) for b in range(BLOCKS)]

    def build(self, arch: Mapping[str, Any], num_classes: int | None = None, channel_divisor: float = 1,
              **_: Any) -> PNASNet:
        s = self.settings
        filters = max(2, int(s["filters"] / channel_divisor))
        return PNASNet(self.blocks(arch), s["num_cells"], filters, s["stem_multiplier"], s["stem"],
                       num_classes or self.num_classes, self.in_channels, self.dropout)


SPACES.register("pnas_cell", PNASSpace)

__all__ = ["OPS", "PNASNET5", "CONFIGS", "PNASSpace", "PNASNet", "PNASCell", "FactorizedReduction", "make_op",
           "reduction_cells"]
