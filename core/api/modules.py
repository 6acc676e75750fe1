"""Supernet choice modules: hold the candidates of one Choice with shared weights.

A `ChoiceModule` runs in one of two modes:
- `single`: only the active candidate runs (SPOS, DNA, weight inheritance);
  `activate(module, arch)` sets every ChoiceModule of a supernet at once.
- `mixture`: the weighted sum of all candidates, weights from learnable logits
  through a relaxation (softmax, Gumbel, and sparsestmax once registered).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from core.api.choice import Choice
from core.api.relax import is_sparse, relax

#: relaxations whose weights can be exactly zero (registered by the modules that add them)


class ChoiceModule(nn.Module):
    """Candidates of one choice; `candidates[i]` implements `choice.options[i]`."""

    def __init__(self, choice: Choice, candidates: Sequence[nn.Module]):
        super().__init__()
        if len(candidates) != len(choice):
            raise ValueError(f"choice {choice.name!r}: {len(candidates)} candidates for {len(choice)} options")
        self.choice = choice
        self.candidates = nn.ModuleList(candidates)
        self.logits = nn.Parameter(torch.zeros(len(choice)))
        self.mode = "single"
        self.active_index = 0
        self.relaxation = "softmax"
        self.relax_kwargs: dict[str, Any] = {}

    @property
    def name(self) -> str:
        return self.choice.name

    def activate(self, value: Any) -> None:
        self.mode = "single"
        self.active_index = self.choice.index(value)

    def set_mixture(self, relaxation: str = "softmax", **kwargs: Any) -> None:
        self.mode = "mixture"
        self.relaxation = relaxation
        self.relax_kwargs = kwargs

    def weights(self) -> torch.Tensor:
        return relax(self.logits, self.relaxation, **self.relax_kwargs)

    def derive(self) -> Any:
        """The option with the largest logit."""
        return self.choice.options[int(self.logits.argmax())]

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        if self.mode == "single":
            return self.candidates[self.active_index](*inputs)
        weights = self.weights()
        # sparse relaxations (sparsestmax) skip zero-weight paths; one host sync per forward, not per candidate
        keep = (weights.detach() != 0).tolist() if is_sparse(self.relaxation) else [True] * len(weights)
        out = 0
        for w, candidate, used in zip(weights, self.candidates, keep):
            if used:
                out = out + w * candidate(*inputs)
        return out


def choice_modules(module: nn.Module) -> list[ChoiceModule]:
    return [m for m in module.modules() if isinstance(m, ChoiceModule)]


def activate(module: nn.Module, arch: Mapping[str, Any]) -> None:
    """Put every ChoiceModule of `module` in single-path mode on `arch`'s option."""
    for m in choice_modules(module):
        if m.name not in arch:
            raise KeyError(f"arch has no value for supernet choice {m.name!r}")
        m.activate(arch[m.name])


def set_mixture(module: nn.Module, relaxation: str = "softmax", **kwargs: Any) -> None:
    for m in choice_modules(module):
        m.set_mixture(relaxation, **kwargs)


def derive(module: nn.Module) -> dict[str, Any]:
    """Argmax of every ChoiceModule's logits, as {choice name: option}."""
    return {m.name: m.derive() for m in choice_modules(module)}


def architecture_parameters(module: nn.Module) -> list[nn.Parameter]:
    """Each choice's logits once, even when several modules share one logits tensor (DARTS cells)."""
    unique: dict[int, nn.Parameter] = {}
    for m in choice_modules(module):
        unique.setdefault(id(m.logits), m.logits)
    return list(unique.values())


def weight_parameters(module: nn.Module) -> list[nn.Parameter]:
    arch_ids = {id(p) for p in architecture_parameters(module)}
    return [p for p in module.parameters() if id(p) not in arch_ids]
