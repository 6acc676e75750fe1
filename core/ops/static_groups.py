"""Derive a static grouped network from a trained DGConv/FGConv network.

The paper's network keeps dense weights times a 0/1 mask, so a learned
grouping saves nothing at inference. A Kronecker mask (and a fixed block
mask) is, up to a permutation of channels, block-diagonal with complete
blocks: every output channel of a block sees every input channel of that
block and nothing else. `GroupedConv2d` computes exactly that:

- equal blocks (the sorted square case, group-up/down): one
  `nn.Conv2d(groups=G)`, after a gather of the used input channels when they
  are not already in order (unsorted gates, crops that leave inputs unused);
- unequal blocks (crops such as 58 -> 64, FGConv's [64, 2] -> [32, 32]): one
  dense convolution per block, concatenated.

Output channels no block reaches (a crop can leave some) are constant: their
bias, or zero. Outputs are reordered to the original channel order, so the
rest of the network is unchanged. This derivation is ours (the paper does
not derive a static network).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from core.ops.dgconv import DGConv2d, FGConv2d


def mask_blocks(mask: torch.Tensor) -> tuple[list[tuple[list[int], list[int]]], list[int]]:
    """The complete blocks of a 0/1 matrix (out x in) as (rows, cols) lists, ordered by first row, and the rows
    no block reaches. Raises ValueError when the matrix is not a permuted block-diagonal of all-ones blocks."""
    m = mask.detach().cpu()
    if not torch.all((m == 0) | (m == 1)):
        raise ValueError("mask has entries other than 0 and 1")
    m = m.bool()
    n_out, n_in = m.shape
    row_seen = [False] * n_out
    blocks, dead = [], []
    for r in range(n_out):
        if row_seen[r]:
            continue
        cols = torch.nonzero(m[r]).flatten()
        if cols.numel() == 0:
            row_seen[r] = True
            dead.append(r)
            continue
        rows = torch.nonzero(m[:, cols].any(dim=1)).flatten()
        block = m[rows][:, cols]
        # complete: every row of the block sees exactly these columns
        if not bool(block.all()) or int(m[rows].sum()) != rows.numel() * cols.numel():
            raise ValueError("mask is not block-diagonal with complete blocks")
        for i in rows.tolist():
            row_seen[i] = True
        blocks.append((rows.tolist(), cols.tolist()))
    return blocks, dead


class GroupedConv2d(nn.Module):
    """Exactly `conv2d(x, weight * mask)` for a block mask, computed with only the blocks' weights."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, mask: torch.Tensor, stride, padding,
                 dilation):
        super().__init__()
        n_out, n_in = mask.shape
        blocks, dead = mask_blocks(mask)
        if not blocks:
            raise ValueError("mask joins no input to any output")
        self.in_channels, self.out_channels = n_in, n_out
        k = tuple(weight.shape[2:])
        sizes = {(len(r), len(c)) for r, c in blocks}
        self.uniform = len(sizes) == 1
        self.num_blocks = len(blocks)
        kwargs = dict(kernel_size=k, stride=stride, padding=padding, dilation=dilation)
        order_in = [c for _, cols in blocks for c in cols]
        order_out = [r for rows, _ in blocks for r in rows]
        self.convs = nn.ModuleList()
        if self.uniform:
            rb, cb = sizes.pop()
            conv = nn.Conv2d(cb * len(blocks), rb * len(blocks), groups=len(blocks), bias=False, **kwargs)
            conv.weight.data.copy_(torch.cat([weight[rows][:, cols] for rows, cols in blocks]))
            self.convs.append(conv)
            self.in_slices = [(0, len(order_in))]
        else:
            self.in_slices = []
            start = 0
            for rows, cols in blocks:
                conv = nn.Conv2d(len(cols), len(rows), bias=False, **kwargs)
                conv.weight.data.copy_(weight[rows][:, cols])
                self.convs.append(conv)
                self.in_slices.append((start, start + len(cols)))
                start += len(cols)
        # input gather: none, a leading slice (inputs a crop left unused), or an index
        in_order = order_in == list(range(len(order_in)))
        self.in_take = len(order_in) if in_order and len(order_in) < n_in else None
        self.register_buffer("in_index", None if in_order else torch.tensor(order_in, dtype=torch.long))
        # output scatter back to the original order; dead rows read a zero channel
        position = {r: i for i, r in enumerate(order_out)}
        zero = len(order_out)
        out_index = [position.get(r, zero) for r in range(n_out)]
        self.register_buffer("out_index", None if out_index == list(range(n_out)) and not dead
                             else torch.tensor(out_index, dtype=torch.long))
        self.bias = None
        if bias is not None and self.out_index is None:  # outputs already in order: the convs carry the bias
            parts = [bias.detach()[rows] for rows, _ in blocks]
            for conv, part in zip(self.convs, [torch.cat(parts)] if self.uniform else parts):
                conv.bias = nn.Parameter(part.clone())
        elif bias is not None:
            self.bias = nn.Parameter(bias.detach().clone())

    def extra_repr(self) -> str:
        kind = f"groups={self.num_blocks}" if self.uniform else f"{self.num_blocks} unequal blocks"
        return f"{self.in_channels}, {self.out_channels}, {kind}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_index is not None:
            x = x.index_select(1, self.in_index)
        elif self.in_take is not None:
            x = x[:, : self.in_take]
        if self.uniform:
            y = self.convs[0](x)
        else:
            y = torch.cat([conv(x[:, a:b]) for conv, (a, b) in zip(self.convs, self.in_slices)], dim=1)
        if self.out_index is not None:
            y = torch.cat([y, torch.zeros_like(y[:, :1])], dim=1).index_select(1, self.out_index)
        if self.bias is not None:
            y = y + self.bias[None, :, None, None]
        return y


def static_conv(layer: DGConv2d | FGConv2d) -> GroupedConv2d:
    """The static equivalent of one masked convolution (its current hard gates or fixed mask)."""
    conv = layer.conv
    with torch.no_grad():
        mask = layer.mask().detach()
    return GroupedConv2d(conv.weight.detach(), conv.bias, mask, conv.stride, conv.padding, conv.dilation)


def to_static(model: nn.Module) -> nn.Module:
    """A copy of `model` with every DGConv2d/FGConv2d replaced by its `GroupedConv2d` (outputs unchanged)."""
    out = copy.deepcopy(model)
    targets = [name for name, m in out.named_modules() if isinstance(m, (DGConv2d, FGConv2d))]
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = out.get_submodule(parent_name) if parent_name else out
        if not parent_name and not child:
            return static_conv(out)
        setattr(parent, child, static_conv(getattr(parent, child)))
    return out


def group_report(model: nn.Module) -> list[dict]:
    """Per DGConv/FGConv layer: channels, gates on (DGConv), nominal groups 2^(K-Σg) and the blocks of the
    effective mask (what the static network computes), and the kept fraction of the dense weights."""
    rows = []
    for name, m in model.named_modules():
        if not isinstance(m, (DGConv2d, FGConv2d)):
            continue
        with torch.no_grad():
            mask = m.mask().detach()
        blocks, dead = mask_blocks(mask)
        row = {"layer": name, "kind": type(m).__name__, "in": m.in_channels, "out": m.out_channels,
               "blocks": len(blocks), "unreached_outputs": len(dead),
               "unused_inputs": m.in_channels - sum(len(c) for _, c in blocks),
               "density": float(mask.mean())}
        if isinstance(m, DGConv2d):
            row.update(K=m.K, gates_on=float(m.hard_gates().detach().sum()), groups=m.nominal_groups())
        rows.append(row)
    return rows


__all__ = ["GroupedConv2d", "group_report", "mask_blocks", "static_conv", "to_static"]
