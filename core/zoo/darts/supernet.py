"""The DARTS search network (official `cnn/model_search.py`: MixedOp, Cell, Network) and genotype derivation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from core.api import Choice, ChoiceModule, set_mixture
from core.api.modules import choice_modules
from core.api.relax import is_sparse
from core.zoo.darts.genotypes import Genotype
from core.zoo.darts.network import cell_plan
from core.zoo.darts.ops import CELL_TYPES, FactorizedReduce, ReLUConvBN, make_op



def edge_list(steps: int) -> list[tuple[int, int]]:
    """(node, input state) of every edge, in the official order: node 0's two, node 1's three, ..."""
    return [(i, j) for i in range(steps) for j in range(i + 2)]


class SearchCell(nn.Module):
    """A cell holding every op on every edge; each edge is a `ChoiceModule` named `{cell}.edge{k}`.

    Spaces with another op set (PocketNet's face ops) subclass it and set `op_factory`
    (`(op, C, stride, search=True) -> nn.Module`) and the two input preprocessors.
    """

    op_factory = staticmethod(make_op)
    reduce_preprocess = FactorizedReduce   # (C_in, C_out, affine=False), for a stride-2 previous cell
    conv_preprocess = ReLUConvBN           # (C_in, C_out, kernel, stride, padding, affine=False)

    def __init__(self, cell_type: str, ops: Sequence[str], steps: int, C_prev_prev: int, C_prev: int, C: int,
                 reduction: bool, reduction_prev: bool):
        super().__init__()
        self.reduction = reduction
        self.preprocess0 = self.reduce_preprocess(C_prev_prev, C, affine=False) if reduction_prev else \
            self.conv_preprocess(C_prev_prev, C, 1, 1, 0, affine=False)
        self.preprocess1 = self.conv_preprocess(C_prev, C, 1, 1, 0, affine=False)
        self._steps = steps
        self._ops = nn.ModuleList()
        for k, (_, j) in enumerate(edge_list(steps)):
            stride = 2 if reduction and j < 2 else 1
            choice = Choice(f"{cell_type}.edge{k}", tuple(ops))
            self._ops.append(ChoiceModule(choice, [self.op_factory(op, C, stride, search=True) for op in ops]))

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        offset = 0
        for _ in range(self._steps):
            states.append(sum(self._edge(offset + j, h) for j, h in enumerate(states)))
            offset += len(states) - 1
        return torch.cat(states[2:], dim=1)

    def _edge(self, k: int, h: torch.Tensor) -> torch.Tensor:
        """Edge k on state h: its fused mixture when `core.zoo.darts.fused.fuse_edges` set one and it applies."""
        fused = self.__dict__.get("fused")
        edge = self._ops[k]
        if fused is not None and edge.mode == "mixture" and not is_sparse(edge.relaxation):
            return fused[k](h)
        return edge(h)


class SearchNetwork(nn.Module):
    """The DARTS supernet. All normal cells share one logits vector per edge (the official
    `alphas_normal` row), and so do all reduction cells; logits start at 1e-3 * N(0, 1)
    as in `_initialize_alphas`. Mixture (softmax) mode on creation; `activate` for single paths."""

    def __init__(self, ops: Sequence[str], C: int = 16, num_classes: int = 10, layers: int = 8, steps: int = 4,
                 in_channels: int = 3, stem_multiplier: int = 3):
        super().__init__()
        self.steps = steps
        C_curr = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C_curr, 3, padding=1, bias=False), nn.BatchNorm2d(C_curr))
        C_prev_prev, C_prev, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        for reduction in cell_plan(layers):
            C_curr = C_curr * 2 if reduction else C_curr
            self.cells.append(SearchCell("reduce" if reduction else "normal", ops, steps, C_prev_prev, C_prev,
                                         C_curr, reduction, reduction_prev))
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, steps * C_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)
        self._share_logits()
        set_mixture(self)

    def _share_logits(self) -> None:
        shared: dict[str, nn.Parameter] = {}
        for m in choice_modules(self):
            if m.name not in shared:
                shared[m.name] = nn.Parameter(1e-3 * torch.randn(len(m.choice)))
            m.logits = shared[m.name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return self.classifier(self.global_pooling(s1).flatten(1))


def _edge_weights(supernet: nn.Module, cell: str) -> list[torch.Tensor]:
    """Softmax weights of each `{cell}.edge{k}`, in edge order (one module per name: the logits are shared)."""
    by_name = {m.name: m for m in choice_modules(supernet)}
    weights = []
    while f"{cell}.edge{len(weights)}" in by_name:
        m = by_name[f"{cell}.edge{len(weights)}"]
        weights.append(F.softmax(m.logits.detach().float().cpu(), dim=-1))
    if not weights:
        raise ValueError(f"supernet has no ChoiceModule named {cell}.edge0")
    return weights


def steps_for_edges(n_edges: int) -> int:
    steps = 0
    while len(edge_list(steps)) < n_edges:
        steps += 1
    if len(edge_list(steps)) != n_edges:
        raise ValueError(f"{n_edges} edges do not form a DARTS cell (2 + 3 + ... edges per node)")
    return steps


def parse_cell(weights: list[torch.Tensor], ops: Sequence[str]) -> list[tuple[str, int]]:
    """The DARTS rule: per node keep the 2 inputs whose strongest non-`none` op weighs most,
    each with that op (ties go to the lower index, as in the official `genotype()`)."""
    keep = [k for k, op in enumerate(ops) if op != "none"]
    gene, offset = [], 0
    for i in range(steps_for_edges(len(weights))):
        W = weights[offset:offset + i + 2]
        strength = [max(float(w[k]) for k in keep) for w in W]
        for j in sorted(range(i + 2), key=lambda j: -strength[j])[:2]:
            best = max(keep, key=lambda k: (float(W[j][k]), -k))
            gene.append((ops[best], j))
        offset += i + 2
    return gene


def derive_genotype(supernet: nn.Module) -> Genotype:
    """The discrete cell DARTS derives from a supernet's edge logits (Liu et al. 2019, sec. 2.4)."""
    fields = {}
    for cell in CELL_TYPES:
        weights = _edge_weights(supernet, cell)
        ops = next(m.choice.options for m in choice_modules(supernet) if m.name == f"{cell}.edge0")
        fields[cell] = parse_cell(weights, ops)
        fields[f"{cell}_concat"] = list(range(2, steps_for_edges(len(weights)) + 2))
    return Genotype(**fields)
