"""The trilevel supernet: network, cell and kernel levels relaxed together.

Wu, Huang, Kumar, Sukthanker, Timofte, Van Gool. "Trilevel Neural
Architecture Search for Efficient Single Image Super-Resolution", arXiv
2101.06658. The paper's method text was not available to us; the structure
below follows its abstract and the derivative code `hanyao8/DA-NAS-SISR`
(`model_search_flexible.py`, built on the first author's AutoSR code), see
METHODS.md section 3.2.

- Network level (gamma). After a head conv and `stem_cells` fixed cells, a
  tree enumerates every order of `path_cells` cells and the upsamplers
  (DFS tree of the derivative code's `dfs`): each node is the feature map after
  a string of moves, `C` a cell, `U` an upsampler. Each node at the output
  resolution (all upsamplers applied) is one candidate network path; the
  supernet output is sum_i gamma_i h_i through a shared tail conv, and the
  derived path is argmax gamma. Paths differ in where the upsamplers sit and
  in depth (a short path compresses the network). Deviation: the derivative
  code weighs every node, with "upsamplers" that do not change resolution (one
  final PixelShuffle(4)); ours change resolution, so only output-resolution
  nodes can be summed.
- Cell level (alpha). A cell is `ops_per_cell` mixed ops in sequence (5 in the
  derivative code), each a weighted sum over skip / conv3x3 / residual block /
  depthwise-separable block; output `x + res_scale * ops(x)`.
- Kernel level (beta). The `ops_per_cell - 1` tensors inside a cell each
  choose a width from {4, 6, 8, 10, 12}/12 of the base width, by channel
  masks on slimmable convolutions (`tasks.super_resolution.ops`).

Each tree edge has its own cell or upsampler weights, as in the derivative
code. `width_mode` picks the widths of a forward: `relaxed` (the masks of the
beta weights), or the sandwich rule's `max`, `min` and `random` (Yu & Huang,
"Universally Slimmable Networks", ICCV 2019).

Relaxations: `sparsestmax` (default; `core.api.sparsestmax`, radius from the
schedule's progress, one-hot at the end), `sparsemax` and `softmax`.
`expected_macs` is the MACs of the relaxed supernet at a given output size,
differentiable in gamma, alpha and beta (exact at one-hot weights: it equals
the derived network's `arch_macs`).
"""

from __future__ import annotations

import random
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.api.relax import relax
from tasks.super_resolution.models import TrilevelSRNet
from tasks.super_resolution.ops import OP_CLASSES, OPS, WIDTHS, Upsampler, head_tail_macs, inherit, op_macs, \
    upsample_factors, upsampler_macs, width_channels

RELAXATIONS = ("sparsestmax", "sparsemax", "softmax")
WIDTH_MODES = ("relaxed", "max", "min", "random")


def tree_nodes(path_cells: int, num_up: int) -> list[str]:
    """Every prefix of every order of `path_cells` C's and `num_up` U's, shallow first (BFS), root ''."""
    nodes, frontier = [""], [""]
    while frontier:
        nxt = []
        for node in frontier:
            if node.count("C") < path_cells:
                nxt.append(node + "C")
            if node.count("U") < num_up:
                nxt.append(node + "U")
        nodes += nxt
        frontier = nxt
    return nodes


class MixedOp(nn.Module):
    def __init__(self, num_feat: int, ops: tuple[str, ...]):
        super().__init__()
        self.candidates = nn.ModuleList(OP_CLASSES[op](num_feat, num_feat) for op in ops)

    def forward(self, x: torch.Tensor, weights: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        keep = (weights.detach() != 0).tolist()  # sparse relaxations: zero-weight ops are not run
        out = 0
        for w, op, used in zip(weights, self.candidates, keep):
            if used:
                out = out + w * op(x, mask)
        return out


class SearchCell(nn.Module):
    """`ops_per_cell` mixed ops; arch parameters alpha [ops, candidates] and beta [ops - 1, widths]."""

    def __init__(self, num_feat: int, ops_per_cell: int, ops: tuple[str, ...], widths: tuple[int, ...],
                 res_scale: float):
        super().__init__()
        self.mixed = nn.ModuleList(MixedOp(num_feat, ops) for _ in range(ops_per_cell))
        self.arch_alpha = nn.Parameter(torch.zeros(ops_per_cell, len(ops)))
        self.arch_beta = nn.Parameter(torch.zeros(max(ops_per_cell - 1, 0), len(widths)))
        channels = torch.tensor([width_channels(num_feat, w) for w in widths])
        self.register_buffer("width_masks", (torch.arange(num_feat)[None, :] < channels[:, None]).float(),
                             persistent=False)
        self.register_buffer("width_channels", channels.float(), persistent=False)
        self.res_scale = res_scale

    def masks(self, beta_w: torch.Tensor, mode: str) -> list[torch.Tensor | None]:
        n = self.arch_beta.shape[0]
        if mode == "max":
            return [None] * n
        if mode == "min":
            return [self.width_masks[0]] * n
        if mode == "random":
            return [self.width_masks[random.randrange(len(self.width_masks))] for _ in range(n)]
        return [beta_w[j] @ self.width_masks for j in range(n)]

    def forward(self, x: torch.Tensor, alpha_w: torch.Tensor, beta_w: torch.Tensor, mode: str) -> torch.Tensor:
        masks = self.masks(beta_w, mode) + [None]  # the cell output has the full base width
        out = x
        for j, op in enumerate(self.mixed):
            out = op(out, alpha_w[j], masks[j])
        return x + self.res_scale * out

    def expected_macs(self, num_feat: int, ops: tuple[str, ...], alpha_w: torch.Tensor,
                      beta_w: torch.Tensor) -> torch.Tensor:
        """E[MACs per pixel] under the relaxed weights (widths independent: E[cin cout] = E[cin] E[cout])."""
        mean = [self.width_channels.new_tensor(float(num_feat))] + [beta_w[j] @ self.width_channels for j in range(beta_w.shape[0])]
        mean_sq = [mean[0] ** 2] + [beta_w[j] @ self.width_channels ** 2 for j in range(beta_w.shape[0])]
        mean, mean_sq = mean + [mean[0]], mean_sq + [mean_sq[0]]
        total = 0.0
        for j in range(alpha_w.shape[0]):
            costs = torch.stack([torch.as_tensor(op_macs(op, mean[j], mean[j + 1], mean_sq[j + 1]),
                                                 device=mean[0].device).float() for op in ops])
            total = total + alpha_w[j] @ costs
        return total

    def derive(self, ops: tuple[str, ...], widths: tuple[int, ...]) -> tuple[list[str], list[int]]:
        return ([ops[int(i)] for i in self.arch_alpha.detach().argmax(-1)],
                [widths[int(i)] for i in self.arch_beta.detach().argmax(-1)])


class TrilevelSupernet(nn.Module):
    """Every candidate of the `trilevel_sr` space with shared, slimmable weights (see the module docstring)."""

    def __init__(self, scale: int = 2, num_feat: int = 24, stem_cells: int = 1, path_cells: int = 3,
                 ops_per_cell: int = 3, ops: tuple[str, ...] = OPS, widths: tuple[int, ...] = WIDTHS,
                 res_scale: float = 0.2):
        super().__init__()
        self.scale, self.num_feat, self.res_scale = scale, num_feat, res_scale
        self.ops, self.widths, self.ops_per_cell = tuple(ops), tuple(widths), ops_per_cell
        self.factors = upsample_factors(scale)
        self.nodes = tree_nodes(path_cells, len(self.factors))
        self.paths = [n for n in self.nodes if n.count("U") == len(self.factors)]  # output-resolution nodes
        self.head = nn.Conv2d(3, num_feat, 3, padding=1)
        self.stem = nn.ModuleList(SearchCell(num_feat, ops_per_cell, self.ops, self.widths, res_scale)
                                  for _ in range(stem_cells))
        edges = {}
        for node in self.nodes[1:]:
            edges[node] = (SearchCell(num_feat, ops_per_cell, self.ops, self.widths, res_scale) if node[-1] == "C"
                           else Upsampler(num_feat, self.factors[node[:-1].count("U")]))
        self.edges = nn.ModuleDict(edges)
        self.tail = nn.Conv2d(num_feat, 3, 3, padding=1)
        self.arch_gamma = nn.Parameter(torch.zeros(len(self.paths)))
        self.relaxation, self.relax_kwargs, self.width_mode = "sparsestmax", {}, "relaxed"

    # -- architecture parameters and their relaxation ---------------------------------------------
    def arch_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if n.rsplit(".", 1)[-1].startswith("arch_")]

    def weight_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if not n.rsplit(".", 1)[-1].startswith("arch_")]

    def set_relaxation(self, relaxation: str, **kwargs: Any) -> None:
        if relaxation not in RELAXATIONS:
            raise ValueError(f"relaxation: expected one of {RELAXATIONS}, got {relaxation!r}")
        self.relaxation, self.relax_kwargs = relaxation, kwargs

    def relaxed(self, logits: torch.Tensor) -> torch.Tensor:
        if logits.numel() == 0:
            return logits
        kwargs = self.relax_kwargs if self.relaxation == "sparsestmax" else {}
        return relax(logits, self.relaxation, **kwargs)

    def search_cells(self) -> list[tuple[str, SearchCell]]:
        cells = [(f"stem{i}", c) for i, c in enumerate(self.stem)]
        return cells + [(k, m) for k, m in self.edges.items() if isinstance(m, SearchCell)]

    def order_paths(self) -> list[list[int]]:
        """Per leaf of the tree, the indices in gamma of its output-resolution nodes, shallow to deep."""
        index = {p: i for i, p in enumerate(self.paths)}
        leaves = [n for n in self.paths if not any(m != n and m.startswith(n) for m in self.paths)]
        return [[index[leaf[:k]] for k in range(1, len(leaf) + 1) if leaf[:k] in index] for leaf in leaves]

    # -- forward -------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mode = self.width_mode
        if mode not in WIDTH_MODES:
            raise ValueError(f"width_mode: expected one of {WIDTH_MODES}, got {mode!r}")
        gamma = self.relaxed(self.arch_gamma)
        h = F.leaky_relu(self.head(x), 0.1)
        for cell in self.stem:
            h = cell(h, self.relaxed(cell.arch_alpha), self.relaxed(cell.arch_beta), mode)
        used = [p for p, g in zip(self.paths, gamma.detach().tolist()) if g != 0]
        needed = {p[:k] for p in used for k in range(len(p) + 1)}
        feats = {"": h}
        for node in self.nodes[1:]:
            if node not in needed:
                continue
            module, parent = self.edges[node], feats[node[:-1]]
            if isinstance(module, SearchCell):
                feats[node] = module(parent, self.relaxed(module.arch_alpha), self.relaxed(module.arch_beta), mode)
            else:
                feats[node] = module(parent)
        out = sum(gamma[i] * feats[p] for i, p in enumerate(self.paths) if p in used)
        base = F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False)
        return self.tail(out) + base

    def expected_macs(self, out_hw: tuple[int, int] = (720, 1280), detach_gamma: bool = False) -> torch.Tensor:
        """E[MACs] at an output of `out_hw` under the relaxed gamma, alpha, beta (see the module docstring).

        `detach_gamma`: the same value with no gradient to the network level (the path weights)."""
        lr_pixels = (out_hw[0] / self.scale) * (out_hw[1] / self.scale)
        head, tail = head_tail_macs(self.num_feat, self.scale)
        device = self.arch_gamma.device  # the MACs term must live where the arch parameters do (CUDA too)
        total = torch.tensor(float(head + tail), device=device)
        for cell in self.stem:
            total = total + cell.expected_macs(self.num_feat, self.ops, self.relaxed(cell.arch_alpha),
                                               self.relaxed(cell.arch_beta))
        node_cost: dict[str, torch.Tensor] = {"": torch.tensor(0.0, device=device)}
        for node in self.nodes[1:]:
            module, pixels = self.edges[node], 1.0
            for f in self.factors[:node[:-1].count("U")]:
                pixels *= f * f
            if isinstance(module, SearchCell):
                cost = module.expected_macs(self.num_feat, self.ops, self.relaxed(module.arch_alpha),
                                            self.relaxed(module.arch_beta))
            else:
                cost = torch.tensor(float(upsampler_macs(self.num_feat, self.factors[node[:-1].count("U")])),
                                    device=device)
            node_cost[node] = node_cost[node[:-1]] + pixels * cost
        gamma = self.relaxed(self.arch_gamma)
        gamma = gamma.detach() if detach_gamma else gamma
        total = total + sum(gamma[i] * node_cost[p] for i, p in enumerate(self.paths))
        return total * lr_pixels

    # -- derivation and export --------------------------------------------------------------------------
    def derive(self) -> dict[str, Any]:
        """Argmax at every level: the path of the largest gamma, then each cell's ops and widths on it."""
        path = self.paths[int(self.arch_gamma.detach().argmax())]
        arch: dict[str, Any] = {"network.path": path}
        for i, cell in enumerate(self.stem):
            self._put(arch, f"stem{i}", cell)
        cells = [path[:k] for k in range(1, len(path) + 1) if path[k - 1] == "C"]
        for i, node in enumerate(cells):
            self._put(arch, f"cell{i}", self.edges[node])
        return arch

    def _put(self, arch: dict, prefix: str, cell: SearchCell) -> None:
        ops, widths = cell.derive(self.ops, self.widths)
        for j, op in enumerate(ops):
            arch[f"{prefix}.op{j}"] = op
        for j, w in enumerate(widths):
            arch[f"{prefix}.width{j}"] = w

    def export(self, arch: dict[str, Any]) -> TrilevelSRNet:
        """The derived network for `arch` with the supernet's weights (sliced): search and training in one phase."""
        net = TrilevelSRNet(self.scale, self.num_feat, arch, res_scale=self.res_scale)
        inherit(net.head, self.head)
        inherit(net.tail, self.tail)
        path = arch["network.path"]
        pairs = [(net.stem[i], f"stem{i}", cell) for i, cell in enumerate(self.stem)]
        for k, module in enumerate(net.body):
            pairs.append((module, path[:k + 1], self.edges[path[:k + 1]]))
        cell_index = 0
        for plain, prefix, source in pairs:
            if isinstance(source, Upsampler):
                inherit(plain, source)
                continue
            name = prefix if prefix.startswith("stem") else f"cell{cell_index}"
            cell_index += not prefix.startswith("stem")
            for j, op in enumerate(plain.ops):
                inherit(op, source.mixed[j].candidates[self.ops.index(arch[f"{name}.op{j}"])])
        return net


__all__ = ["TrilevelSupernet", "SearchCell", "MixedOp", "tree_nodes", "RELAXATIONS", "WIDTH_MODES"]
