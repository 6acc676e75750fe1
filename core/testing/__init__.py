"""Small fixtures for the core's tests and examples: a minimal classification task through the task contract,
so that tests of evaluators, supernets and searchers need no task package, and the onemax landscape, a cheap
synthetic objective for testing strategies."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.api import Arch, Choice, SearchSpace
from core.data.digits import digits
from core.task import Task, batches_on


def onemax_space(n: int = 20) -> SearchSpace:
    """`n` choices of 4 options; the hidden target is option i % 4 for choice i."""
    return SearchSpace([Choice(f"c{i}", (0, 1, 2, 3)) for i in range(n)])


def onemax(arch: Arch) -> dict[str, float]:
    """How many choices of `arch` hit the target (a fitness with one optimum and no plateaus)."""
    n = sum(1 for name in arch if name.startswith("c"))
    return {"accuracy": float(sum(arch[f"c{i}"] == i % 4 for i in range(n))), "macs": 0.0, "params": 0.0}


class TinyClassification(Task):
    """Cross-entropy training (an auxiliary head's logits weigh 0.4, as DARTS's) and top-1/top-5/loss scores.

    `label_smoothing` applies to the training loss. Not registered: configs name the real tasks.
    """

    name = "tiny_classification"
    primary_metric = "accuracy"
    metrics = ("accuracy", "top5", "loss")

    def __init__(self, label_smoothing: float = 0.0, cfg: dict[str, Any] | None = None):
        super().__init__(cfg)
        self.label_smoothing = label_smoothing

    def build_context(self, data) -> dict[str, Any]:
        return {"in_channels": data.input_shape[0], "num_classes": data.num_classes}

    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        x, y = batch
        out = model(x)
        if isinstance(out, tuple):
            logits, aux = out
            loss = (F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
                    + 0.4 * F.cross_entropy(aux, y, label_smoothing=self.label_smoothing))
        else:
            logits, loss = out, F.cross_entropy(out, y, label_smoothing=self.label_smoothing)
        return loss, {"correct": (logits.detach().argmax(1) == y).sum(), "n": len(y)}

    @torch.no_grad()
    def score(self, model: nn.Module, loader: Iterable) -> dict[str, float]:
        model.eval()
        n, loss, top1, top5 = 0, 0.0, 0, 0
        for x, y in batches_on(loader, model):
            out = model(x)
            logits = out[0] if isinstance(out, tuple) else out
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
            pred = logits.topk(min(5, logits.shape[1]), dim=1).indices
            hits = pred.eq(y[:, None])
            top1 += int(hits[:, :1].any(dim=1).sum())
            top5 += int(hits.any(dim=1).sum())
            n += len(y)
        return {"accuracy": top1 / max(n, 1), "top5": top5 / max(n, 1), "loss": loss / max(n, 1)}


__all__ = ["TinyClassification", "digits", "onemax", "onemax_space"]
