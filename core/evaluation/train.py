"""Train-from-scratch evaluator with the proxy knobs of EcoNAS.

Zhou et al., "EcoNAS: Finding Proxies for Economical Neural Architecture
Search", CVPR 2020, Sec. 3: a proxy `cXrYsZeW` trains a network with
channels divided by X, input resolution divided by Y, a fraction Z of the
training set and W epochs. Their reliable proxy is c4r4s0e60 (CIFAR-10).
Our defaults are tiny because the embedded data is tiny; set them per config.

Any task: the candidate trains on the task's loss (`Task.loss`) and is
scored by the task's metrics on the validation split (`Task.score`; a
`loss` among them is reported as `val_loss`). The proxy loop is a plain
PyTorch loop: a Lightning Trainer per candidate costs more than training a
candidate on the embedded data. Final training of the chosen arch goes
through the task's `train` (Lightning). Params and MACs are always those of
the full-size network at the task's example input, whatever the proxy.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn
from torch.utils.data import Subset

from core.engine.data import DataSplits, to_device
from core.engine.meter import StepMeter
from core.engine.registry import EVALUATORS
from core.evaluation.base import Evaluator
from core.evaluation.costs import CostMetrics
from core.evaluation.result import Result
from core.api import Arch, SearchSpace
from core.task import Task, task_batches


class NaNLoss(RuntimeError):
    pass


@EVALUATORS.register("train")
class TrainEvaluator(Evaluator):
    metrics = ("params", "macs")
    scores_with_task = True

    def __init__(self, space: SearchSpace, data: DataSplits, task: Task, epochs: int = 3, batch_size: int = 64,
                 lr: float = 0.05, momentum: float = 0.9, weight_decay: float = 4e-5, channel_divisor: int = 1,
                 resolution_divisor: int = 1, sample_ratio: float = 1.0, seed: int = 0, threads: int | None = 1,
                 latency: str = "none", latency_table: str | None = None, val_batch_size: int = 256,
                 device: str = "cpu", optimizer: str = "sgd"):
        if not 0 < sample_ratio <= 1:
            raise ValueError(f"evaluator.sample_ratio must be in (0, 1], got {sample_ratio}")
        if optimizer not in ("sgd", "adam"):
            raise ValueError(f"evaluator.optimizer: expected sgd or adam, got {optimizer!r}")
        if channel_divisor < 1 or resolution_divisor < 1:
            raise ValueError("evaluator.channel_divisor and evaluator.resolution_divisor must be >= 1")
        self.space, self.data, self.task = space, data, task
        self.val_batch_size, self.device, self.optimizer = val_batch_size, torch.device(device), optimizer
        self.epochs, self.batch_size, self.lr = epochs, batch_size, lr
        self.momentum, self.weight_decay = momentum, weight_decay
        self.channel_divisor, self.resolution_divisor = channel_divisor, resolution_divisor
        self.sample_ratio, self.seed, self.threads = sample_ratio, seed, threads
        self.device = torch.device(device)
        self._train = self._subset(data.train)
        self._runs: dict[Arch, dict[str, Any]] = {}  # networks part-way through their schedule (evaluate_at)
        self.costs = CostMetrics(space, data.input_shape, latency, latency_table)

    def cost_metrics(self, arch: Arch) -> dict[str, float]:
        return self.costs(arch)

    def config(self) -> dict[str, Any]:
        return {"type": "train", "task": self.task.name, "space": type(self.space).__name__, "data": self.data.name,
                "epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr, "momentum": self.momentum,
                "weight_decay": self.weight_decay, "proxy": self.proxy_name,
                **({"optimizer": self.optimizer} if self.optimizer != "sgd" else {}), "seed": self.seed, **self.costs.config()}

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
            model = self.build(arch).to(self.device)
            self.fit(model, self.epochs)
            scores = self.score(model)
        except NaNLoss as err:
            return Result.failed(str(err), time.perf_counter() - start, **metrics)
        finally:
            torch.set_num_threads(previous_threads)
        metrics.update(scores)
        return Result(metrics=metrics, cost=time.perf_counter() - start)

    def build(self, arch: Arch) -> nn.Module:
        """The candidate network at the proxy's width."""
        if self.channel_divisor == 1:
            return self.space.build(arch)
        return self.space.build(arch, channel_divisor=self.channel_divisor)

    def _batches(self, loader):
        """`loader` itself, or its batches resized to the proxy's resolution."""
        size = self._resize()
        if not size:
            return loader
        return (self.task.resize(batch, size) for batch in loader)

    def score(self, model: nn.Module) -> dict[str, float]:
        """The task's metrics on the validation split (a `loss` among them is reported as `val_loss`)."""
        loader = self.task.loader(self.data.val, self.val_batch_size)
        scores = self.task.score(model, self._batches(loader))
        return {("val_loss" if k == "loss" else k): float(v) for k, v in scores.items()}

    def fit(self, model: nn.Module, epochs: int, state: dict | None = None) -> dict:
        """Train `model` (on `self.device`) up to epoch `epochs` of a cosine schedule over `self.epochs` epochs
        (SGD with Nesterov momentum, or Adam; gradient clip 5). `state` (the returned dict: the trainable module, optimiser,
        scheduler, data order and epochs done of an earlier call) continues that run, as EcoNAS's hierarchical
        proxy does."""
        if state is None:
            trainable = self.task.trainable(model, self.data)
            loader = task_batches(self.task, self._train, self.batch_size, shuffle=True, seed=self.seed,
                                  device=self.device)
            if self.optimizer == "adam":
                opt = torch.optim.Adam(trainable.parameters(), lr=self.lr, weight_decay=self.weight_decay)
            else:
                opt = torch.optim.SGD(trainable.parameters(), lr=self.lr, momentum=self.momentum,
                                      weight_decay=self.weight_decay, nesterov=self.momentum > 0)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, self.epochs * len(loader)))
            for m in trainable.modules():  # scheduled layers (Disout's linear schedule) learn the run's length
                if hasattr(m, "set_total_steps"):
                    m.set_total_steps(max(1, self.epochs * len(loader)))
            state = {"trainable": trainable, "optimizer": opt, "scheduler": sched, "loader": loader, "epochs": 0}
        trainable, opt, sched = state["trainable"], state["optimizer"], state["scheduler"]
        trainable.train()
        meter = StepMeter("loss", every=20, error=NaNLoss)  # summed on the device: a diverged run fails <= 20 steps late
        for epoch in range(state["epochs"], epochs):
            for batch in self._batches(state["loader"]):
                loss, _ = self.task.loss(trainable, to_device(batch, self.device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(trainable.parameters(), 5.0)
                opt.step()
                sched.step()
                meter.add(loss=loss)
                meter.step(f"of epoch {epoch}")
            meter.check(f"of epoch {epoch}")
            state["epochs"] = epoch + 1
        return state

    # -- a budget in epochs: EcoNAS's hierarchical proxy --------------------------------------------
    def evaluate_at(self, arch: Arch, epochs: int) -> Result:
        """The result after `epochs` epochs of this evaluator's schedule (its `epochs`). A network trained to
        fewer epochs by an earlier call continues from there (weights, optimiser, data order), so segments
        1..S reproduce one continuous run; `release(arch)` frees it."""
        start = time.perf_counter()
        arch = self.space.check(arch)
        if not 1 <= epochs <= self.epochs:
            raise ValueError(f"epochs must be in [1, {self.epochs}] (the evaluator's schedule), got {epochs}")
        runs = self._runs
        run = runs.get(arch)
        if run is None or run.get("epochs", 0) > epochs:
            torch.manual_seed(self.seed)
            model = self.build(arch).to(self.device)
            run = runs[arch] = {"model": model, "metrics": self.costs(arch), "state": None}
        previous_threads = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            run["state"] = self.fit(run["model"], epochs, run["state"])
            run["epochs"] = epochs
            scores = self.score(run["model"])
        except NaNLoss as err:
            runs.pop(arch, None)
            return Result.failed(str(err), time.perf_counter() - start, **run["metrics"])
        finally:
            torch.set_num_threads(previous_threads)
        if epochs >= self.epochs:
            self.release(arch)
        return Result(metrics={**run["metrics"], **scores, "epochs": float(epochs)}, cost=time.perf_counter() - start)

    def release(self, arch: Arch) -> None:
        self._runs.pop(arch, None)
