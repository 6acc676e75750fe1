"""Single-path one-shot (SPOS) supernet training with uniform path sampling.

Guo, Zhang, Mu, Heng, Liu, Wei, Sun. "Single Path One-Shot Neural Architecture
Search with Uniform Sampling", ECCV 2020 (arXiv 1904.00420), Sec. 3: the
supernet is trained once, and at every step a single path (one candidate per
choice) is drawn uniformly and only that path runs forward and backward
(eq. 4-5, Gamma(A) uniform). The architecture search then runs a sample-based
strategy (evolution in the paper, Sec. 3.4) whose candidates inherit their
weights from the supernet, after recomputing the BatchNorm statistics on a
few training batches (Sec. 3.4: "Before the inference of an architecture, the
statistics of all the Batch Normalization operations are recalculated on a
random subset of training data"): `core.evaluation.supernet.SupernetEvaluator`.

Works for any space with `supernet()` built of `ChoiceModule`s
(`core.api.activate`). A path is `space.sample(rng)`: uniform over each
choice's options, rejection-sampled to valid archs and reset to the defaults
on inactive choices; spaces whose supernet names its choices differently
(the DARTS cell: one ChoiceModule per edge) map an arch to its supernet path
with `space.supernet_arch(arch)`.

Official recipe (ImageNet, `Supernet/train.py` of megvii-model/SinglePathOneShot):
SGD momentum 0.9, lr 0.5 at batch 1024 with linear decay to 0, weight decay
4e-5, label smoothing 0.1, 120 epochs. Our defaults keep the optimiser,
schedule and smoothing, with lr 0.05 for batch 64 and few epochs, which suits
the embedded datasets; set `lr`, `batch_size` and `epochs` per config.
Training checkpoints atomically after every epoch and resumes from the last
completed one (`checkpoint=` path): paths, shuffling and dropout are seeded
per epoch, so a resumed run gives the same supernet as an uninterrupted one.

On a GPU the loop does not wait for the host every step: batches of an
in-memory tensor dataset are gathered on the device
(`core.task.task_batches`), and the loss and what the task's loss
logs are summed on the device and read once per `log_every` steps
(`core.engine.meter.StepMeter`; a NaN loss stops training at that read).
"""

from __future__ import annotations

import inspect
import math
import random
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from core.engine.progress import progress_enabled
from core.engine.data import DataSplits, to_device
from core.engine.meter import StepMeter
from core.task import Task, task_batches
from core.engine.runs import load_checkpoint, save_checkpoint
from core.api import Arch, SearchSpace, activate

CHECKPOINT_FORMAT = "archforge-supernet-1"


def build_supernet(space: SearchSpace, num_classes: int | None = None, **kwargs: Any) -> nn.Module:
    """`space.supernet(**kwargs)`, passing `num_classes` when the space's supernet takes it and kwargs do not."""
    params = inspect.signature(space.supernet).parameters
    if num_classes is not None and "num_classes" in params and "num_classes" not in kwargs:
        kwargs["num_classes"] = num_classes
    return space.supernet(**kwargs)


def supernet_path(space: SearchSpace, arch: Mapping[str, Any]) -> Mapping[str, Any]:
    """The supernet's choice values for `arch` (`space.supernet_arch` where the space has one)."""
    mapper = getattr(space, "supernet_arch", None)
    return mapper(arch) if callable(mapper) else arch


class SPOSTrainer:
    """Train a supernet with one uniformly sampled path per step; `fit()` returns the supernet.

    The loss is the task's (`Task.loss`; the classification task's label
    smoothing, 0.1 in SPOS, is its `label_smoothing` option). `history` holds
    one row per epoch: the mean training loss of the sampled paths, the mean
    of each numeric value the task's loss logs (classification: `accuracy`
    from `correct` and `n`), the learning rate at the epoch's end and seconds.
    """

    def __init__(self, space: SearchSpace, data: DataSplits, task: Task, epochs: int = 10, batch_size: int = 64,
                 lr: float = 0.05, momentum: float = 0.9, weight_decay: float = 4e-5, nesterov: bool = False,
                 schedule: str = "linear", grad_clip: float | None = 5.0,
                 steps_per_epoch: int | None = None, supernet_kwargs: dict | None = None, seed: int = 0,
                 checkpoint: str | None = None, resume: bool = True, progress: bool = False, device: str = "cpu",
                 log_every: int = 50):
        if epochs < 0:
            raise ValueError(f"spos.epochs: expected an integer >= 0, got {epochs!r}")
        if schedule not in ("linear", "cosine", "constant"):
            raise ValueError(f"spos.schedule: expected 'linear', 'cosine' or 'constant', got {schedule!r}")
        if steps_per_epoch is not None and steps_per_epoch < 1:
            raise ValueError(f"spos.steps_per_epoch: expected an integer >= 1 or null, got {steps_per_epoch!r}")
        self.space, self.data, self.task = space, data, task
        self.epochs, self.batch_size, self.lr = epochs, batch_size, lr
        self.momentum, self.weight_decay, self.nesterov = momentum, weight_decay, nesterov
        self.schedule, self.grad_clip = schedule, grad_clip
        self.steps_per_epoch, self.seed = steps_per_epoch, seed
        self.supernet_kwargs = dict(supernet_kwargs or {})
        self.checkpoint = Path(checkpoint) if checkpoint else None
        self.resume, self.progress, self.device = resume, progress, torch.device(device)
        self.log_every = log_every
        self.history: list[dict[str, float]] = []

    # -- pieces ---------------------------------------------------------------------------------
    def make_supernet(self) -> nn.Module:
        return build_supernet(self.space, self.data.num_classes, **self.supernet_kwargs)

    def _lr_factor(self, step: int, total: int) -> float:
        t = min(step / max(total, 1), 1.0)
        if self.schedule == "linear":
            return 1.0 - t
        if self.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * t))
        return 1.0

    def _steps(self) -> int:
        n = math.ceil(len(self.data.train) / self.batch_size)
        return min(n, self.steps_per_epoch) if self.steps_per_epoch else n

    def _payload(self, supernet: nn.Module, optimizer: torch.optim.Optimizer, epoch: int) -> dict[str, Any]:
        return {"format": CHECKPOINT_FORMAT, "space": type(self.space).__name__,
                "supernet_kwargs": {**self.supernet_kwargs, **self._num_classes_kwarg()},
                "state_dict": supernet.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                "epochs": self.epochs, "seed": self.seed, "history": self.history}

    def _num_classes_kwarg(self) -> dict[str, int]:
        params = inspect.signature(self.space.supernet).parameters
        if "num_classes" in params and "num_classes" not in self.supernet_kwargs:
            return {"num_classes": self.data.num_classes}
        return {}

    def _resume(self, supernet: nn.Module, optimizer: torch.optim.Optimizer) -> int:
        if not (self.resume and self.checkpoint and self.checkpoint.is_file()):
            return 0
        payload = load_checkpoint(self.checkpoint)
        if payload.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"spos.checkpoint: {self.checkpoint} is not an archforge supernet checkpoint")
        if payload.get("space") != type(self.space).__name__:
            raise ValueError(f"spos.checkpoint: {self.checkpoint} holds a supernet of {payload.get('space')}, "
                             f"not {type(self.space).__name__}; use another checkpoint path")
        supernet.load_state_dict(payload["state_dict"])
        optimizer.load_state_dict(payload["optimizer"])
        self.history = [dict(row) for row in payload.get("history", [])]
        return min(int(payload["epoch"]), self.epochs)

    # -- training ---------------------------------------------------------------------------------
    def fit(self, supernet: nn.Module | None = None) -> nn.Module:
        if supernet is None:
            torch.manual_seed(self.seed)  # the same initial weights for the same seed
            supernet = self.make_supernet()
        supernet = supernet.to(self.device)
        self._trainable = self.task.trainable(supernet, self.data)
        optimizer = torch.optim.SGD(self._trainable.parameters(), lr=self.lr, momentum=self.momentum,
                                    weight_decay=self.weight_decay, nesterov=self.nesterov and self.momentum > 0)
        start_epoch = self._resume(supernet, optimizer)
        steps = self._steps()
        total = steps * self.epochs
        bar = tqdm(total=total, initial=start_epoch * steps, desc="supernet (SPOS)", unit="step",
                   disable=not progress_enabled(self.progress), dynamic_ncols=True)
        for epoch in range(start_epoch, self.epochs):
            self.history.append(self._epoch(supernet, optimizer, epoch, steps, total, bar))
            if self.checkpoint:
                save_checkpoint(self.checkpoint, self._payload(supernet, optimizer, epoch + 1))
        bar.close()
        supernet.eval()
        return supernet

    def _epoch(self, supernet: nn.Module, optimizer: torch.optim.Optimizer, epoch: int, steps: int, total: int,
               bar) -> dict[str, float]:
        epoch_seed = self.seed * 1_000_003 + epoch
        rng = random.Random(epoch_seed)
        torch.manual_seed(epoch_seed)
        loader = task_batches(self.task, self.data.train, self.batch_size, shuffle=True, seed=epoch_seed,
                              device=self.device)
        trainable = self._trainable
        trainable.train()
        started = time.perf_counter()
        meter = StepMeter("SPOS supernet loss", self.log_every)
        for step, batch in enumerate(loader):
            if step >= steps:
                break
            for group in optimizer.param_groups:
                group["lr"] = self.lr * self._lr_factor(epoch * steps + step, total)
            activate(supernet, supernet_path(self.space, self.space.sample(rng)))
            batch = to_device(batch, self.device)
            loss, logs = self.task.loss(trainable, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.grad_clip:
                nn.utils.clip_grad_norm_(trainable.parameters(), self.grad_clip)
            optimizer.step()
            n = int(logs.get("n", 1))
            meter.add(loss=loss.detach().double() * n, seen=n,
                      **{k: v for k, v in logs.items() if k != "n"})
            meter.step(f"of epoch {epoch}")
            bar.update(1)
        sums = meter.totals(f"of epoch {epoch}")
        seen = max(sums.pop("seen", 0), 1)
        row = {"epoch": float(epoch), "loss": sums.pop("loss", 0.0) / seen}
        if "correct" in sums:
            row["accuracy"] = sums.pop("correct") / seen
        row.update({k: v / max(meter.steps, 1) for k, v in sums.items()})
        return {**row, "lr": float(optimizer.param_groups[0]["lr"]), "seconds": time.perf_counter() - started}


def train_supernet(space: SearchSpace, data: DataSplits, task: Task, epochs: int = 10, **kwargs: Any) -> nn.Module:
    """Train `space.supernet()` on `data.train` by SPOS (see `SPOSTrainer` for the keyword arguments).

    The returned supernet carries the per-epoch log as `supernet.spos_history`.
    """
    supernet_module = kwargs.pop("supernet", None)
    trainer = SPOSTrainer(space, data, task, epochs=epochs, **kwargs)
    supernet = trainer.fit(supernet_module)
    supernet.spos_history = trainer.history
    return supernet


def load_supernet(space: SearchSpace, path: str | Path, **supernet_kwargs: Any) -> nn.Module:
    """Rebuild a supernet saved by `SPOSTrainer` (`checkpoint=`) and load its weights."""
    payload = load_checkpoint(path)
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not an archforge supernet checkpoint (format {payload.get('format')!r})")
    if payload.get("space") != type(space).__name__:
        raise ValueError(f"{path} holds a supernet of {payload.get('space')}, not {type(space).__name__}")
    supernet = space.supernet(**{**payload.get("supernet_kwargs", {}), **supernet_kwargs})
    supernet.load_state_dict(payload["state_dict"])
    supernet.eval()
    return supernet


def sample_path(space: SearchSpace, rng: random.Random) -> tuple[Arch, Mapping[str, Any]]:
    """A uniformly sampled arch and its supernet path."""
    arch = space.sample(rng)
    return arch, supernet_path(space, arch)


__all__ = ["SPOSTrainer", "train_supernet", "load_supernet", "build_supernet", "supernet_path", "sample_path",
           "CHECKPOINT_FORMAT"]
