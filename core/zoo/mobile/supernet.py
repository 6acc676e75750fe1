"""Supernet pieces of the mobile space: a stage whose depth is a choice, and assembly into a MobileNet."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from core.api import Choice, ChoiceModule
from core.zoo.mobile.blocks import MobileNet
from core.zoo.mobile.plan import NetPlan


class SupernetStage(nn.Module):
    """A stage of the supernet: layer ChoiceModules and a depth ChoiceModule (placeholders as candidates)."""

    def __init__(self, depth: Choice, layers: Sequence[ChoiceModule]):
        super().__init__()
        self.depth = ChoiceModule(depth, [nn.Identity() for _ in depth.options])
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        options = self.depth.choice.options
        if self.depth.mode == "single":
            for layer in self.layers[:options[self.depth.active_index]]:
                x = layer(x)
            return x
        weights, out = self.depth.weights(), 0
        for j, layer in enumerate(self.layers):
            x = layer(x)
            if j + 1 in options:
                out = out + weights[options.index(j + 1)] * x
        return out


def assemble(plan: NetPlan, stages: nn.ModuleList) -> MobileNet:
    return MobileNet(plan.stem.make(), plan.first_block.make() if plan.first_block else nn.Identity(), stages,
                     plan.head.make() if plan.head else nn.Identity(), plan.classifier.make())


# ---------------------------------------------------------------------------------------------
