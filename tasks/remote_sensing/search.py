"""`rs_train`: the evaluator a sample-based search of the remote-sensing task uses.

Each candidate is built from the space, trained from scratch with the task's
loss (class-weighted cross-entropy, `RemoteSensingTask.loss`) for a few
epochs with SGD (momentum, a cosine schedule over the proxy's steps), and
scored with the task's `score` (OA, AA, kappa) on the validation pixels,
which the test set never contains. As the core's `train` evaluator, a plain
loop: a Lightning Trainer per candidate costs more than training it here.

Params and MACs (before training, so the search can reject an arch over a
budget unpaid) are those of the network as trained, dense weights times masks
for DGConv/FGConv; `static_params` / `static_macs` (after training) are those
of the derived static network (`core.ops.to_static`), what the grouping
really costs.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from core.engine.registry import EVALUATORS
from core.evaluation.base import Evaluator
from core.evaluation.costs import CostMetrics
from core.evaluation.result import Result
from core.ops.dgconv import DGConv2d, FGConv2d
from core.api import Arch, SearchSpace


@EVALUATORS.register("rs_train")
class RSTrainEvaluator(Evaluator):
    def __init__(self, space: SearchSpace, data, task=None, epochs: int = 10, batch_size: int = 48,
                 lr: float = 0.02, momentum: float = 0.9, seed: int = 0, threads: int | None = 1,
                 latency: str = "none"):
        if task is None:
            raise ValueError("evaluator rs_train needs the remote_sensing task (build it through the task)")
        if epochs < 1 or batch_size < 1 or lr <= 0:
            raise ValueError(f"evaluator: epochs, batch_size and lr must be positive, got {epochs}, {batch_size}, {lr}")
        self.space, self.data, self.task = space, data, task
        self.epochs, self.batch_size, self.lr, self.momentum = epochs, batch_size, lr, momentum
        self.seed, self.threads = seed, threads
        self.costs = CostMetrics(space, data.input_shape, latency)

    def config(self) -> dict[str, Any]:
        return {"type": "rs_train", "space": type(self.space).__name__, "data": self.data.name,
                "epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr, "momentum": self.momentum,
                "seed": self.seed, "loss": {"class_weighted": self.task.options.class_weighted,
                                            "regularizer_weight": self.task.options.regularizer_weight},
                **self.costs.config()}

    def cost_metrics(self, arch: Arch) -> dict[str, float]:
        return self.costs(arch)

    def fit(self, model: nn.Module) -> None:
        g = torch.Generator().manual_seed(self.seed)
        loader = DataLoader(self.data.train, batch_size=self.batch_size, shuffle=True, generator=g)
        opt = torch.optim.SGD(model.parameters(), lr=self.lr, momentum=self.momentum)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, self.epochs * len(loader)))
        model.train()
        for epoch in range(self.epochs):
            for step, batch in enumerate(loader):
                loss, _ = self.task.loss(model, batch)
                if not math.isfinite(loss.item()):
                    raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch} step {step}")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
        model.eval()

    def evaluate(self, arch: Arch) -> Result:
        from core.cost import count_macs, count_params
        from core.ops.static_groups import to_static

        start = time.perf_counter()
        arch = self.space.check(arch)
        metrics = self.costs(arch)
        previous = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            torch.manual_seed(self.seed)
            model = self.space.build(arch, num_classes=self.data.num_classes)
            try:
                self.fit(model)
            except FloatingPointError as err:
                return Result.failed(str(err), time.perf_counter() - start, **metrics)
            scores = self.task.score(model, DataLoader(self.data.val, batch_size=256))
            static = to_static(model) if any(isinstance(m, (DGConv2d, FGConv2d)) for m in model.modules()) else model
            example = torch.zeros(1, *self.data.input_shape)
            metrics.update(scores, static_params=float(count_params(static)),
                           static_macs=float(count_macs(static, example)))
        finally:
            torch.set_num_threads(previous)
        return Result(metrics=metrics, cost=time.perf_counter() - start)


__all__ = ["RSTrainEvaluator"]
