"""Fused DARTS edges: the mixture of one edge's candidates with fewer, larger kernels (same function, same weights).

A DARTS search step (Liu et al., ICLR 2019) runs every candidate of every
edge: on a GPU it is bound by kernel launches, not arithmetic. `fuse_edges`
makes each edge of the search cells run its two separable convs as one
grouped conv chain and its two dilated convs as another (the 3x3 depthwise
kernels zero-padded to 5x5), skip `none` (it adds zero) and sum the weighted
candidates in one op. The edges' modules keep their parameters and buffers,
so the state_dict is unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from core.api import ChoiceModule
from core.zoo.darts.ops import PRIMITIVES, SepConv
from core.zoo.darts.supernet import SearchCell

#: the (3x3, 5x5) op pairs that run as one grouped conv chain
PAIRS = (("sep_conv_3x3", "sep_conv_5x5"), ("dil_conv_3x3", "dil_conv_5x5"))


class JointBatchNorm:
    """Two identical non-affine BatchNorms run as one over their concatenated channels.

    Their running statistics become views of one joint buffer, so one
    `F.batch_norm` updates both modules' buffers (state_dict keys and values
    unchanged). When a module's buffers were replaced (the network moved to
    another device or dtype), the joint buffer is rebuilt from their values.
    """

    def __init__(self, bns: Sequence[nn.BatchNorm2d]):
        if len({(b.num_features, b.eps, b.momentum, b.affine) for b in bns}) != 1 or bns[0].affine:
            raise ValueError("only identical non-affine BatchNorms can be fused")
        self.bns = list(bns)
        self._build()

    def _build(self) -> None:
        self.mean = torch.cat([b.running_mean for b in self.bns])
        self.var = torch.cat([b.running_var for b in self.bns])
        self.count = torch.stack([b.num_batches_tracked for b in self.bns])
        n = self.bns[0].num_features
        for i, b in enumerate(self.bns):
            b._buffers["running_mean"] = self.mean[i * n:(i + 1) * n]
            b._buffers["running_var"] = self.var[i * n:(i + 1) * n]
            b._buffers["num_batches_tracked"] = self.count[i]
        self._views = [(b.running_mean, b.running_var, b.num_batches_tracked) for b in self.bns]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if any(b.running_mean is not v[0] or b.running_var is not v[1] or b.num_batches_tracked is not v[2]
               for b, v in zip(self.bns, self._views)):
            self._build()
        bn = self.bns[0]
        factor = 0.0
        if bn.training:
            self.count.add_(1)
            factor = bn.momentum if bn.momentum is not None else 1.0 / float(self.count[0])
        return F.batch_norm(x, self.mean, self.var, None, None, bn.training, factor, bn.eps)


class FusedPair:
    """Two ReLU -> depthwise -> pointwise -> BN chains (SepConv has two such blocks, DilConv one) whose kernel
    sizes differ (3 and 5): the 3x3 depthwise kernels are zero-padded to 5x5, so both ops run as one depthwise
    conv over the input seen twice and one pointwise conv in two groups."""

    def __init__(self, small: nn.Module, large: nn.Module):
        self.small, self.large = small.op, large.op
        blocks = 2 if isinstance(small, SepConv) else 1  # (depthwise, pointwise, BN) positions in `.op`
        self.blocks = [(4 * b + 1, 4 * b + 2, 4 * b + 3) for b in range(blocks)]
        self.bns = [JointBatchNorm([self.small[bn], self.large[bn]]) for _, _, bn in self.blocks]

    def __call__(self, doubled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`doubled`: ReLU(x) concatenated with itself along channels."""
        h = doubled
        for i, ((dw, pw, _), bn) in enumerate(zip(self.blocks, self.bns)):
            if i:
                h = F.relu(h)
            a, b = self.small[dw], self.large[dw]
            grow = (b.kernel_size[0] - a.kernel_size[0]) // 2
            kernel = torch.cat([F.pad(a.weight, (grow,) * 4), b.weight])
            h = F.conv2d(h, kernel, None, b.stride, b.padding, b.dilation, groups=kernel.shape[0])
            h = F.conv2d(h, torch.cat([self.small[pw].weight, self.large[pw].weight]), groups=2)
            h = bn(h)
        return h.chunk(2, dim=1)


class FusedMixture:
    """The mixture output of one DARTS edge: one ReLU for every conv op, the separable and the dilated pairs
    as grouped convs (`FusedPair`), `none` skipped, and the weighted sum of the candidates as one op."""

    def __init__(self, edge: ChoiceModule):
        self.edge = edge
        names = list(edge.choice.options)
        modules = dict(zip(names, edge.candidates))
        self.pairs = [(names.index(a), names.index(b), FusedPair(modules[a], modules[b]))
                      for a, b in PAIRS if a in modules and b in modules]
        paired = {i for i, _, _ in self.pairs} | {j for _, j, _ in self.pairs}
        self.single = [i for i, n in enumerate(names) if i not in paired and n != "none"]
        self.order = sorted(paired | set(self.single))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.edge.weights()
        outs: dict[int, torch.Tensor] = {i: self.edge.candidates[i](x) for i in self.single}
        if self.pairs:
            doubled = F.relu(x).repeat(1, 2, 1, 1)
            for i, j, pair in self.pairs:
                outs[i], outs[j] = pair(doubled)
        stacked = torch.stack([outs[i] for i in self.order])
        w = weights[self.order].to(stacked.dtype)
        return (stacked * w.view(-1, *([1] * (stacked.dim() - 1)))).sum(0)


def fuse_edges(supernet: nn.Module) -> int:
    """Run the mixture of every edge of the DARTS search cells in `supernet` as a `FusedMixture`; returns the
    number of edges fused. Cells with another op set (PocketNet's) are left as they are; single-path mode and
    sparse relaxations keep the plain `ChoiceModule` forward (`SearchCell._edge`)."""
    count = 0
    for cell in supernet.modules():
        if isinstance(cell, SearchCell) and type(cell).op_factory is SearchCell.op_factory and \
                all(set(e.choice.options) <= set(PRIMITIVES) for e in cell._ops):
            cell.fused = [FusedMixture(edge) for edge in cell._ops]
            count += len(cell.fused)
    return count


__all__ = ["PAIRS", "JointBatchNorm", "FusedPair", "FusedMixture", "fuse_edges"]
