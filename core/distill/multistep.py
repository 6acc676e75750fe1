"""Multi-step distillation through teacher assistants, and the plain loop that trains one distiller.

Mirzadeh et al., "Improved Knowledge Distillation via Teacher Assistant",
AAAI 2020 (TAKD), sec. 3-4: when the gap between teacher and student is large,
distil the teacher into an intermediate-size assistant first, then the
assistant into the student (a chain of any length). PocketNet (Boutros et
al., 2022) trains its face-recognition students this way ("multi-step KD").
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from core.distill.distiller import Distiller
from core.engine.registry import ConfigError

OPTIMIZERS = ("sgd", "adam", "adamw")


def make_optimizer(params: Iterable[nn.Parameter], name: str = "sgd", lr: float = 0.05, momentum: float = 0.9,
                   weight_decay: float = 5e-4) -> torch.optim.Optimizer:
    params = list(params)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=momentum > 0)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ConfigError(f"optimizer: unknown {name!r}; known: {', '.join(OPTIMIZERS)}")


def _to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to(b, device) for b in batch)
    return batch


def train_distiller(distiller: Distiller, loader: DataLoader, epochs: int = 1, optimizer: str = "sgd",
                    lr: float = 0.05, momentum: float = 0.9, weight_decay: float = 5e-4,
                    scheduler: str = "cosine", grad_clip: float | None = 5.0,
                    device: str | torch.device = "cpu") -> list[float]:
    """Train the distiller's student (and adapters) on `loader` of (inputs, targets); mean loss per epoch.

    A plain loop for tests, benchmarks and chains; full training runs go
    through Lightning with the same `Distiller` (its `loss` is the step loss).
    """
    if epochs < 1:
        raise ConfigError(f"epochs: expected an int >= 1, got {epochs!r}")
    device = torch.device(device)
    distiller.to(device).train()
    opt = make_optimizer(distiller.trainable_parameters(), optimizer, lr, momentum, weight_decay)
    steps = epochs * len(loader)
    if scheduler == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    elif scheduler in ("none", None):
        sched = None
    else:
        raise ConfigError(f"scheduler: expected 'cosine' or 'none', got {scheduler!r}")
    history = []
    for _ in range(epochs):
        total, count = 0.0, 0
        for inputs, targets in loader:
            inputs, targets = _to(inputs, device), _to(targets, device)
            out = distiller(inputs)
            loss = distiller.loss(out, targets)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"distillation loss is {float(loss)}; lower the lr or the term weights")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip:
                nn.utils.clip_grad_norm_(list(distiller.trainable_parameters()), grad_clip)
            opt.step()
            if sched is not None:
                sched.step()
            total += float(loss.detach()) * len(targets)
            count += len(targets)
        history.append(total / max(1, count))
    return history


@dataclass
class StageRecord:
    """One link of the chain: who taught whom and the mean loss per epoch."""

    teacher: str
    student: str
    losses: list[float] = field(default_factory=list)


class MultiStepDistillation:
    """Teacher -> assistant(s) -> student (TAKD, Mirzadeh et al., AAAI 2020).

    `chain = [assistant_1, ..., student]`. Link k distils `chain[k-1]` (the
    teacher for k = 0), frozen in eval mode once trained, into `chain[k]` with
    the same `terms` (any Distiller terms: KD on logits, hints, ...). `epochs`
    and `lr` are one value for every link or one per link. `run(loader)`
    trains the links in order and returns their `StageRecord`s; trained
    models stay in `chain` (an assistant is frozen once it has taught).
    `copy_teachers=True` distils from a frozen copy and leaves each trained
    model's `requires_grad` untouched.
    """

    def __init__(self, teacher: nn.Module, chain: Sequence[nn.Module], terms: Sequence[Mapping[str, Any]],
                 epochs: int | Sequence[int] = 1, lr: float | Sequence[float] = 0.05, optimizer: str = "sgd",
                 momentum: float = 0.9, weight_decay: float = 5e-4, scheduler: str = "cosine",
                 example_input: torch.Tensor | None = None, device: str = "cpu", copy_teachers: bool = False,
                 names: Sequence[str] | None = None):
        if not chain:
            raise ConfigError("multistep.chain: empty; give at least the student")
        self.teacher, self.chain, self.terms = teacher, list(chain), list(terms)
        self.epochs = self._per_link("epochs", epochs)
        self.lr = self._per_link("lr", lr)
        self.optimizer, self.momentum, self.weight_decay = optimizer, momentum, weight_decay
        self.scheduler, self.example_input, self.device = scheduler, example_input, device
        self.copy_teachers = copy_teachers
        default_names = [f"assistant{i + 1}" for i in range(len(chain) - 1)] + ["student"]
        self.names = ["teacher", *(names or default_names)]
        if len(self.names) != len(chain) + 1:
            raise ConfigError(f"multistep.names: expected {len(chain)} names, got {len(self.names) - 1}")
        self.records: list[StageRecord] = []

    def _per_link(self, key: str, value: Any) -> list:
        many = isinstance(value, Sequence) and not isinstance(value, str)
        values = list(value) if many else [value] * len(self.chain)
        if len(values) != len(self.chain):
            raise ConfigError(f"multistep.{key}: expected one value or {len(self.chain)} (one per link), got {value!r}")
        return values

    def run(self, loader: DataLoader) -> list[StageRecord]:
        self.records = []
        teacher = self.teacher
        for k, student in enumerate(self.chain):
            source = copy.deepcopy(teacher) if self.copy_teachers else teacher
            distiller = Distiller(source, student, self.terms,
                                  example_input=None if self.example_input is None else self.example_input.to(
                                      next(iter(student.parameters())).device))
            try:
                losses = train_distiller(distiller, loader, self.epochs[k], self.optimizer, self.lr[k], self.momentum,
                                         self.weight_decay, self.scheduler, device=self.device)
            finally:
                distiller.close()
            if not all(math.isfinite(v) for v in losses):
                raise FloatingPointError(f"multistep link {k}: non-finite loss {losses}")
            self.records.append(StageRecord(self.names[k], self.names[k + 1], losses))
            teacher = student
        return self.records
