"""Relaxations: turn a choice's logits into mixture weights over its options."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def softmax_weights(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """DARTS relaxation (Liu et al., ICLR 2019, eq. 1)."""
    return F.softmax(logits / temperature, dim=-1)


def gumbel_weights(logits: torch.Tensor, temperature: float = 1.0, hard: bool = False) -> torch.Tensor:
    """Gumbel-softmax relaxation (Jang et al., ICLR 2017); `hard` gives straight-through one-hot samples."""
    return F.gumbel_softmax(logits, tau=temperature, hard=hard, dim=-1)


RELAXATIONS = {"softmax": softmax_weights, "gumbel": gumbel_weights}


def relax(logits: torch.Tensor, method: str = "softmax", **kwargs) -> torch.Tensor:
    try:
        fn = RELAXATIONS[method]
    except KeyError:
        raise ValueError(f"unknown relaxation {method!r}; known: {sorted(RELAXATIONS)}") from None
    return fn(logits, **kwargs)
