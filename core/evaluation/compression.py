"""ESNAC's evaluator: train a compressed student by distillation and score it with the paper's reward."""

from __future__ import annotations

import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset

from core.api import Arch, SearchSpace
from core.cost import count_macs, count_params
from core.engine.data import DataSplits
from core.engine.registry import EVALUATORS, ConfigError
from core.evaluation.base import Evaluator
from core.evaluation.result import Result
from core.zoo.compression.space import CompressionSpace, compression_reward


@torch.no_grad()
def _accuracy(model: nn.Module, loader: DataLoader) -> float:
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += int((model(x).argmax(1) == y).sum())
        total += len(y)
    return correct / max(total, 1)


@EVALUATORS.register("compression")
class CompressionEvaluator(Evaluator):
    """Train a compressed student by distillation and score it with ESNAC's reward.

    The student inherits the teacher's weights and trains for `epochs` with
    Adam (lr 1e-3, weight decay 5e-4) on the MSE between its logits and the
    teacher's (the official search-time recipe: 10 epochs, `tr_se_*`). Metrics:
    `reward` = c (2 - c) acc_s / acc_t, `accuracy` (validation), `compression`
    c = 1 - params_s / params_t, `params`, `macs`, `teacher_accuracy`. A
    teacher without a checkpoint is first trained with cross-entropy for
    `teacher_epochs` (Adam, `teacher_lr`), once per evaluator, seeded.
    """

    metrics = ("reward", "accuracy", "compression", "params", "macs", "teacher_accuracy")

    def __init__(self, space: SearchSpace, data: DataSplits, epochs: int = 10, batch_size: int = 64, lr: float = 1e-3,
                 weight_decay: float = 5e-4, teacher_epochs: int = 30, teacher_lr: float = 1e-3,
                 sample_ratio: float = 1.0, seed: int = 0, threads: int | None = 1):
        if not isinstance(space, CompressionSpace):
            raise ConfigError(f"evaluator.name: 'compression' needs space.name 'compression', "
                              f"got {type(space).__name__}")
        if not 0 < sample_ratio <= 1:
            raise ConfigError(f"evaluator.sample_ratio must be in (0, 1], got {sample_ratio}")
        if epochs < 0 or teacher_epochs < 0:
            raise ConfigError("evaluator.epochs and evaluator.teacher_epochs must be >= 0")
        self.space, self.data = space, data
        self.epochs, self.batch_size, self.lr, self.weight_decay = epochs, batch_size, lr, weight_decay
        self.teacher_epochs, self.teacher_lr = teacher_epochs, teacher_lr
        self.sample_ratio, self.seed, self.threads = sample_ratio, seed, threads
        self._train = data.train
        if sample_ratio < 1:
            g = torch.Generator().manual_seed(seed)
            n = max(1, int(round(len(data.train) * sample_ratio)))
            self._train = Subset(data.train, torch.randperm(len(data.train), generator=g)[:n].tolist())
        self._teacher_acc: float | None = None

    def config(self) -> dict[str, Any]:
        return {"type": "compression", "space": self.space.config(), "data": self.data.name, "epochs": self.epochs,
                "batch_size": self.batch_size, "lr": self.lr, "weight_decay": self.weight_decay,
                "teacher_epochs": 0 if self.space.pretrained else self.teacher_epochs, "teacher_lr": self.teacher_lr,
                "sample_ratio": self.sample_ratio, "seed": self.seed}

    def _loader(self, dataset, shuffle: bool) -> DataLoader:
        g = torch.Generator().manual_seed(self.seed)
        return DataLoader(dataset, batch_size=self.batch_size if shuffle else 256, shuffle=shuffle, generator=g)

    def prepare(self) -> None:
        """Train and score the teacher once, before parallel executors copy this evaluator to their workers."""
        self.teacher_accuracy()

    def teacher_accuracy(self) -> float:
        """Validation accuracy of the teacher (trained here first when the space has no checkpoint)."""
        if self._teacher_acc is None:
            teacher = self.space.teacher
            if not self.space.pretrained and self.teacher_epochs and not getattr(self.space, "teacher_trained", False):
                torch.manual_seed(self.seed)
                opt = torch.optim.Adam(teacher.parameters(), lr=self.teacher_lr)
                teacher.train()
                for _ in range(self.teacher_epochs):
                    for x, y in self._loader(self._train, True):
                        loss = F.cross_entropy(teacher(x), y)
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()
                self.space.teacher_trained = True
            self._teacher_acc = _accuracy(teacher, self._loader(self.data.val, False))
            if self._teacher_acc <= 0:
                raise RuntimeError("the teacher's validation accuracy is 0; the reward a = acc_s / acc_t is undefined")
        return self._teacher_acc

    def evaluate(self, arch: Arch) -> Result:
        start = time.perf_counter()
        previous = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            acc_t = self.teacher_accuracy()
            teacher = self.space.teacher.eval()
            student = self.space.build(arch)
            params_s, params_t = count_params(student), count_params(teacher)
            macs = count_macs(student, torch.zeros(1, *self.space.input_shape))
            torch.manual_seed(self.seed)
            opt = torch.optim.Adam(student.parameters(), lr=self.lr, weight_decay=self.weight_decay)
            for epoch in range(self.epochs):
                student.train()
                for step, (x, _) in enumerate(self._loader(self._train, True)):
                    with torch.no_grad():
                        target = teacher(x)
                    loss = F.mse_loss(student(x), target)
                    if not math.isfinite(loss.item()):
                        return Result.failed(f"distillation loss is {loss.item()} at epoch {epoch} step {step}",
                                             time.perf_counter() - start, params=float(params_s), macs=float(macs))
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
            acc_s = _accuracy(student, self._loader(self.data.val, False))
        finally:
            torch.set_num_threads(previous)
        c = 1.0 - params_s / params_t
        metrics = {"reward": compression_reward(params_s, params_t, acc_s, acc_t), "accuracy": acc_s,
                   "compression": c, "params": float(params_s), "macs": float(macs), "teacher_accuracy": acc_t}
        return Result(metrics=metrics, cost=time.perf_counter() - start)
