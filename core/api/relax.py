"""Relaxations: turn a choice's logits into mixture weights over its options.

Registered by name in `RELAXATIONS` (`register_relaxation`); a *sparse*
relaxation gives exact zeros, and a mixture skips the options weighted zero
in its forward pass. The sparse ones of the suite (sparsestmax, sparsemax)
live in `core.api.sparsestmax`, imported on the first look-up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from core.engine.registry import Registry


def softmax_weights(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """DARTS relaxation (Liu et al., ICLR 2019, eq. 1)."""
    return F.softmax(logits / temperature, dim=-1)


def gumbel_weights(logits: torch.Tensor, temperature: float = 1.0, hard: bool = False) -> torch.Tensor:
    """Gumbel-softmax relaxation (Jang et al., ICLR 2017); `hard` gives straight-through one-hot samples."""
    return F.gumbel_softmax(logits, tau=temperature, hard=hard, dim=-1)


@dataclass(frozen=True)
class Relaxation:
    weights: Callable[..., torch.Tensor]
    #: exact zeros mean "skip this option" (the forward pass runs only the options weighted non-zero)
    sparse: bool = False


RELAXATIONS = Registry("relaxation", providers=("core.api.sparsestmax",))


def register_relaxation(name: str, weights: Callable[..., torch.Tensor], sparse: bool = False) -> None:
    RELAXATIONS.register(name, Relaxation(weights, sparse))


def is_sparse(method: str) -> bool:
    return method in RELAXATIONS and RELAXATIONS.get(method).sparse


def relax(logits: torch.Tensor, method: str = "softmax", **kwargs) -> torch.Tensor:
    return RELAXATIONS.get(method, "relaxation").weights(logits, **kwargs)


register_relaxation("softmax", softmax_weights)
register_relaxation("gumbel", gumbel_weights)
