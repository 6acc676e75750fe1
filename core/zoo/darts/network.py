"""The DARTS evaluation network (official `cnn/model.py`: Cell, AuxiliaryHeadCIFAR, NetworkCIFAR)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from core.zoo.darts.genotypes import Genotype
from core.zoo.darts.ops import FactorizedReduce, ReLUConvBN, drop_path, make_op



class Cell(nn.Module):
    """A discrete cell: node i = op(state a) + op(state b); output = concat of the nodes."""

    def __init__(self, edges: Sequence[tuple[str, int]], concat: Sequence[int], C_prev_prev: int, C_prev: int,
                 C: int, reduction: bool, reduction_prev: bool):
        super().__init__()
        self.reduction = reduction
        self.preprocess0 = FactorizedReduce(C_prev_prev, C) if reduction_prev else ReLUConvBN(C_prev_prev, C, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0)
        self._steps = len(edges) // 2
        self._concat = list(concat)
        self.multiplier = len(self._concat)
        self._indices = [index for _, index in edges]
        self._ops = nn.ModuleList(make_op(op, C, 2 if reduction and index < 2 else 1) for op, index in edges)

    def _edge(self, k: int, states: list[torch.Tensor], drop_prob: float) -> torch.Tensor:
        op = self._ops[k]
        h = op(states[self._indices[k]])
        if self.training and drop_prob > 0.0 and not isinstance(op, nn.Identity):
            h = drop_path(h, drop_prob)
        return h

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float = 0.0) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for i in range(self._steps):
            states.append(self._edge(2 * i, states, drop_prob) + self._edge(2 * i + 1, states, drop_prob))
        return torch.cat([states[i] for i in self._concat], dim=1)


class AuxiliaryHeadCIFAR(nn.Module):
    """Auxiliary classifier on the 8x8 maps after the second reduction (official layers).

    The official head assumes 8x8 input (5x5/3 pooling -> 2x2 -> 2x2 conv -> 1x1).
    For smaller maps we skip the pooling and resize to 2x2 adaptively, so small
    images work; on 8x8 the computation is the official one.
    """

    def __init__(self, C: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.AvgPool2d(5, stride=3, padding=0, count_include_pad=False),
            nn.Conv2d(C, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
            nn.BatchNorm2d(768),
            nn.ReLU(inplace=True))
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features[0](x)
        if min(x.shape[-2:]) >= 5:
            x = self.features[1](x)
        if tuple(x.shape[-2:]) != (2, 2):
            x = F.adaptive_avg_pool2d(x, 2)
        x = self.features[2:](x)
        return self.classifier(x.flatten(1))


def cell_plan(layers: int) -> list[bool]:
    """Which cells reduce: those at layers//3 and 2*layers//3."""
    return [i in (layers // 3, 2 * layers // 3) for i in range(layers)]


class NetworkCIFAR(nn.Module):
    """The DARTS evaluation network: stem, `layers` cells, optional auxiliary head, pooling, linear.

    `forward` returns the logits, except in training mode with the auxiliary
    head, where it returns `(logits, logits_aux)` as the official code does
    (the official code returns `(logits, None)` otherwise; we return bare logits).
    Set `drop_path_prob` between epochs (the official schedule ramps it linearly).
    """

    def __init__(self, genotype: Genotype, C: int = 36, num_classes: int = 10, layers: int = 20,
                 auxiliary: bool = False, drop_path_prob: float = 0.0, in_channels: int = 3,
                 stem_multiplier: int = 3):
        super().__init__()
        self._layers = layers
        self._auxiliary = auxiliary
        self.drop_path_prob = drop_path_prob
        C_curr = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C_curr, 3, padding=1, bias=False), nn.BatchNorm2d(C_curr))
        C_prev_prev, C_prev, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        C_to_auxiliary = C_prev
        for i, reduction in enumerate(cell_plan(layers)):
            C_curr = C_curr * 2 if reduction else C_curr
            edges, concat = (genotype.reduce, genotype.reduce_concat) if reduction else \
                (genotype.normal, genotype.normal_concat)
            cell = Cell(edges, concat, C_prev_prev, C_prev, C_curr, reduction, reduction_prev)
            self.cells.append(cell)
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, cell.multiplier * C_curr
            if i == 2 * layers // 3:
                C_to_auxiliary = C_prev
        if auxiliary:
            self.auxiliary_head = AuxiliaryHeadCIFAR(C_to_auxiliary, num_classes)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

    def forward(self, x: torch.Tensor):
        logits_aux = None
        s0 = s1 = self.stem(x)
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == 2 * self._layers // 3 and self._auxiliary and self.training:
                logits_aux = self.auxiliary_head(s1)
        logits = self.classifier(self.global_pooling(s1).flatten(1))
        return (logits, logits_aux) if logits_aux is not None else logits


def count_parameters(model: nn.Module) -> int:
    """Parameters outside the auxiliary head, as the official `utils.count_parameters_in_MB` counts (x 1e6)."""
    return sum(p.numel() for name, p in model.named_parameters() if "auxiliary" not in name)
