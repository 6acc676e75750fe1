"""Classification losses and metrics: cross-entropy (with DARTS's auxiliary head), top-k accuracy."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.task import batches_on


def classification_loss(output: Any, target: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy; an auxiliary head's logits (DARTS) weigh 0.4 as in the DARTS code."""
    if isinstance(output, tuple):
        logits, aux = output
        return (F.cross_entropy(logits, target, label_smoothing=label_smoothing)
                + 0.4 * F.cross_entropy(aux, target, label_smoothing=label_smoothing))
    return F.cross_entropy(output, target, label_smoothing=label_smoothing)


def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, int]:
    maxk = min(max(ks), logits.shape[1])
    pred = logits.topk(maxk, dim=1).indices
    hits = pred.eq(target[:, None])
    return {k: int(hits[:, : min(k, maxk)].any(dim=1).sum()) for k in ks}


@torch.no_grad()
def evaluate_classifier(model: nn.Module, loader: Iterable) -> dict[str, float]:
    """Top-1, top-5 (as fractions) and mean cross-entropy of `model` over `loader` (batches moved to the model's
    device; the sums stay there until the end: one host read in all)."""
    model.eval()
    n, sums = 0, None
    for x, y in batches_on(loader, model):
        out = model(x)
        logits = out[0] if isinstance(out, tuple) else out
        hits = logits.topk(min(5, logits.shape[1]), dim=1).indices.eq(y[:, None])
        step = torch.stack([F.cross_entropy(logits, y, reduction="sum").double(),
                            hits[:, :1].any(1).sum().double(), hits.any(1).sum().double()])
        sums = step if sums is None else sums + step
        n += len(y)
    loss, top1, top5 = sums.cpu().tolist() if sums is not None else (0.0, 0.0, 0.0)
    return {"accuracy": top1 / max(n, 1), "top5": top5 / max(n, 1), "loss": loss / max(n, 1)}


__all__ = ["classification_loss", "topk_correct", "evaluate_classifier"]
