"""Classification metrics of remote sensing: OA, AA, Cohen's kappa, per-class accuracy, confusion matrix.

Computed on labelled test pixels only (targets < 0 are ignored) with
torchmetrics: the confusion matrix (`MulticlassConfusionMatrix`) gives overall
accuracy (trace / total), per-class accuracy (recall: diagonal / row sum) and
average accuracy (their mean over the classes present in the targets, the
official code's AA = mean per-class recall); kappa is `MulticlassCohenKappa`.
`summarize` gives mean and standard deviation over replicates (sample
standard deviation, ddof = 1, as papers' "mean ± std" over runs usually are).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch


class Accumulator:
    """Collects predictions and targets batch by batch; `compute()` returns the metrics."""

    def __init__(self, num_classes: int):
        from torchmetrics.classification import MulticlassCohenKappa, MulticlassConfusionMatrix

        self.num_classes = num_classes
        self.confusion = MulticlassConfusionMatrix(num_classes, ignore_index=-1)
        self.kappa = MulticlassCohenKappa(num_classes, ignore_index=-1)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """`pred` class indices (or logits with the class dimension at 1) and `target` of the same shape."""
        if pred.dim() == target.dim() + 1:
            pred = pred.argmax(dim=1)
        pred, target = pred.detach().cpu().reshape(-1), target.detach().cpu().reshape(-1).long()
        keep = target >= 0
        if keep.any():
            self.confusion.update(pred[keep], target[keep])
            self.kappa.update(pred[keep], target[keep])

    def compute(self) -> dict:
        cm = self.confusion.compute().double()
        return metrics_from_confusion(cm, float(self.kappa.compute()) if cm.sum() > 0 else math.nan)


def metrics_from_confusion(cm: torch.Tensor, kappa: float) -> dict:
    """OA, AA, kappa, per-class accuracy (NaN for classes without test pixels) and the confusion matrix."""
    cm = cm.double()
    support = cm.sum(dim=1)
    per_class = torch.where(support > 0, cm.diag() / support.clamp(min=1), torch.full_like(support, math.nan))
    present = support > 0
    return {"oa": float(cm.diag().sum() / cm.sum().clamp(min=1)),
            "aa": float(per_class[present].mean()) if present.any() else math.nan,
            "kappa": kappa, "per_class": per_class.tolist(), "confusion": cm.long().tolist()}


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: Iterable, num_classes: int) -> dict:
    """Metrics of `model` over a loader of (input, target) batches (targets < 0 ignored)."""
    model.eval()
    acc = Accumulator(num_classes)
    for x, y in loader:
        acc.update(model(x), y)
    return acc.compute()


def summarize(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    values = [float(v) for v in values]
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def mean_std(values: Sequence[float], scale: float = 100.0, digits: int = 2) -> str:
    """'mean ± std' of `values` times `scale` (percent by default)."""
    mean, std = summarize(values)
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


__all__ = ["Accumulator", "evaluate", "mean_std", "metrics_from_confusion", "summarize"]
