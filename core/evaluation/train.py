"""Train-from-scratch evaluator with the proxy knobs of EcoNAS.

Zhou et al., "EcoNAS: Finding Proxies for Economical Neural Architecture
Search", CVPR 2020, Sec. 3: a proxy `cXrYsZeW` trains a network with
channels divided by X, input resolution divided by Y, a fraction Z of the
training set and W epochs. Their reliable proxy is c4r4s0e60 (CIFAR-10).
Our defaults are tiny because the embedded data is tiny; set them per config.

The proxy loop is a plain PyTorch loop: a Lightning Trainer per candidate
costs more than training a candidate on the embedded data. Final training of
the chosen arch goes through Lightning (`core.engine.lightning`).
Params and MACs are always those of the full-size network at the data's
input shape, whatever the proxy.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset

from core.engine.data import DataSplits
from core.engine.registry import EVALUATORS
from core.evaluation.base import Evaluator
from core.evaluation.costs import CostMetrics
from core.evaluation.result import Result
from core.space import Arch, SearchSpace


class NaNLoss(RuntimeError):
    pass


def classification_loss(output: Any, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy; an auxiliary head's logits (DARTS) weigh 0.4 as in the DARTS code."""
    if isinstance(output, tuple):
        logits, aux = output
        return F.cross_entropy(logits, target) + 0.4 * F.cross_entropy(aux, target)
    return F.cross_entropy(output, target)


def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, int]:
    maxk = min(max(ks), logits.shape[1])
    pred = logits.topk(maxk, dim=1).indices
    hits = pred.eq(target[:, None])
    return {k: int(hits[:, : min(k, maxk)].any(dim=1).sum()) for k in ks}


@torch.no_grad()
def evaluate_classifier(model: nn.Module, loader: DataLoader, resize: int | None = None) -> dict[str, float]:
    """Top-1, top-5 (as fractions) and mean cross-entropy of `model` over `loader`."""
    model.eval()
    n, loss, correct = 0, 0.0, {1: 0, 5: 0}
    for x, y in loader:
        if resize:
            x = F.interpolate(x, size=resize, mode="bilinear", align_corners=False)
        logits = model(x)
        loss += float(F.cross_entropy(logits, y, reduction="sum"))
        for k, v in topk_correct(logits, y).items():
            correct[k] += v
        n += len(y)
    return {"accuracy": correct[1] / max(n, 1), "top5": correct[5] / max(n, 1), "loss": loss / max(n, 1)}


@EVALUATORS.register("train")
class TrainEvaluator(Evaluator):
    def __init__(self, space: SearchSpace, data: DataSplits, epochs: int = 3, batch_size: int = 64, lr: float = 0.05,
                 momentum: float = 0.9, weight_decay: float = 4e-5, channel_divisor: int = 1,
                 resolution_divisor: int = 1, sample_ratio: float = 1.0, seed: int = 0, threads: int | None = 1,
                 latency: str = "none", latency_table: str | None = None):
        if not 0 < sample_ratio <= 1:
            raise ValueError(f"evaluator.sample_ratio must be in (0, 1], got {sample_ratio}")
        if channel_divisor < 1 or resolution_divisor < 1:
            raise ValueError("evaluator.channel_divisor and evaluator.resolution_divisor must be >= 1")
        self.space, self.data = space, data
        self.epochs, self.batch_size, self.lr = epochs, batch_size, lr
        self.momentum, self.weight_decay = momentum, weight_decay
        self.channel_divisor, self.resolution_divisor = channel_divisor, resolution_divisor
        self.sample_ratio, self.seed, self.threads = sample_ratio, seed, threads
        self._train = self._subset(data.train)
        self.costs = CostMetrics(space, data.input_shape, data.num_classes, latency, latency_table)

    def cost_metrics(self, arch: Arch) -> dict[str, float]:
        return self.costs(arch)

    def config(self) -> dict[str, Any]:
        return {"type": "train", "space": type(self.space).__name__, "data": self.data.name,
                "epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr, "momentum": self.momentum,
                "weight_decay": self.weight_decay, "proxy": self.proxy_name, "seed": self.seed, **self.costs.config()}

    @property
    def proxy_name(self) -> str:
        """EcoNAS notation cXrYsZeW (X, Y divisors; Z sample ratio; W epochs)."""
        return f"c{self.channel_divisor}r{self.resolution_divisor}s{self.sample_ratio:g}e{self.epochs}"

    def _subset(self, dataset):
        if self.sample_ratio >= 1:
            return dataset
        g = torch.Generator().manual_seed(self.seed)
        n = max(1, int(round(len(dataset) * self.sample_ratio)))
        return Subset(dataset, torch.randperm(len(dataset), generator=g)[:n].tolist())

    def _resize(self) -> int | None:
        if self.resolution_divisor == 1:
            return None
        return max(1, self.data.input_shape[-1] // self.resolution_divisor)

    def evaluate(self, arch: Arch) -> Result:
        start = time.perf_counter()
        arch = self.space.check(arch)
        metrics = self.costs(arch)
        previous_threads = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            torch.manual_seed(self.seed)
            model = self.space.build(arch, num_classes=self.data.num_classes, channel_divisor=self.channel_divisor)
            self._fit(model)
            val = DataLoader(self.data.val, batch_size=256)
            scores = evaluate_classifier(model, val, self._resize())
        except NaNLoss as err:
            return Result.failed(str(err), time.perf_counter() - start, **metrics)
        finally:
            torch.set_num_threads(previous_threads)
        metrics.update(accuracy=scores["accuracy"], top5=scores["top5"], val_loss=scores["loss"])
        return Result(metrics=metrics, cost=time.perf_counter() - start)

    def _fit(self, model: nn.Module) -> None:
        g = torch.Generator().manual_seed(self.seed)
        loader = DataLoader(self._train, batch_size=self.batch_size, shuffle=True, generator=g, drop_last=False)
        opt = torch.optim.SGD(model.parameters(), lr=self.lr, momentum=self.momentum,
                              weight_decay=self.weight_decay, nesterov=self.momentum > 0)
        steps = max(1, self.epochs * len(loader))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        for m in model.modules():  # scheduled layers (Disout's linear schedule) learn the run's length
            if hasattr(m, "set_total_steps"):
                m.set_total_steps(steps)
        resize = self._resize()
        model.train()
        for epoch in range(self.epochs):
            for step, (x, y) in enumerate(loader):
                if resize:
                    x = F.interpolate(x, size=resize, mode="bilinear", align_corners=False)
                loss = classification_loss(model(x), y)
                if not math.isfinite(loss.item()):
                    raise NaNLoss(f"loss is {loss.item()} at epoch {epoch} step {step}")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), 5.0)
                opt.step()
                sched.step()
