"""Supernet evaluator: score an arch with weights inherited from a trained one-shot supernet.

Guo et al., "Single Path One-Shot Neural Architecture Search with Uniform
Sampling", ECCV 2020, Sec. 3.4: every candidate of the search inherits its
weights from the supernet, and "before the inference of an architecture, the
statistics of all the Batch Normalization operations are recalculated on a
random subset of training data". Here:

1. weights: `path="activate"` switches every `ChoiceModule` of the supernet
   to the arch's option (`core.api.activate`; DARTS cells through
   `space.supernet_arch`), `path="inherit"` copies the arch's path out of the
   supernet into a standalone `space.build(arch)` (`space.inherit`, the
   mobile space's, which also slices narrower widths); `auto` inherits where
   the space can, else activates;
2. BatchNorm recalibration: every BN layer's running statistics are reset and
   re-estimated as a cumulative average (`momentum=None`) over `bn_batches`
   training batches in training mode, without gradients; the same seeded
   batches for every arch, so scores are comparable and reproducible.
   `bn_batches=0` keeps the statistics the supernet training left (averaged
   over all sampled paths), which the paper's recalibration replaces;
3. the task's metrics on `data.val` (`Task.score`; a `loss` among them is
   reported as `val_loss`).

Metrics always include `params` and `macs` of the standalone network at full
size (`space.build` + `core.cost`), as every evaluator's do. The supernet is
a module, a checkpoint path written by `core.supernet.spos` (`checkpoint=`),
or, when neither is given, trained here by SPOS for `epochs` epochs (resumable
through `checkpoint`). An evaluation leaves the supernet's weights and
buffers as it found them, so results do not depend on evaluation order.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from core.engine.data import DataSplits, to_device
from core.engine.registry import EVALUATORS
from core.evaluation.base import Evaluator
from core.evaluation.costs import CostMetrics
from core.evaluation.result import Result
from core.api import Arch, SearchSpace, activate
from core.task import Task
from core.supernet.bn import recalibrate_bn, state_digest
from core.supernet.spos import SPOSTrainer, load_supernet, supernet_path

_PATH_MODES = ("auto", "activate", "inherit")


@EVALUATORS.register("supernet")
class SupernetEvaluator(Evaluator):
    """Weight inheritance from a SPOS supernet with BN recalibration (see the module docstring)."""

    metrics = ("params", "macs")
    scores_with_task = True

    @staticmethod
    def nested_kwargs(section: Mapping[str, Any]) -> dict[str, tuple[Any, tuple[str, ...], tuple[str, ...]]]:
        """`train` holds the SPOS trainer's settings (checked against `SPOSTrainer` before anything trains)."""
        return {"train": (SPOSTrainer, (), ("space", "data", "task", "epochs"))}

    def __init__(self, space: SearchSpace, data: DataSplits, task: Task, supernet: str | nn.Module | None = None,
                 epochs: int = 10, train: dict | None = None, checkpoint: str | None = None, bn_batches: int = 4,
                 bn_batch_size: int = 64, batch_size: int = 256, path: str = "auto", seed: int = 0,
                 threads: int | None = 1, device: str = "cpu", latency: str = "none",
                 latency_table: str | None = None, supernet_kwargs: dict | None = None):
        if path not in _PATH_MODES:
            raise ValueError(f"evaluator.path: expected one of {_PATH_MODES}, got {path!r}")
        if bn_batches < 0:
            raise ValueError(f"evaluator.bn_batches: expected an integer >= 0, got {bn_batches!r}")
        if path == "auto":
            path = "inherit" if callable(getattr(space, "inherit", None)) else "activate"
        if path == "inherit" and not callable(getattr(space, "inherit", None)):
            raise ValueError(f"evaluator.path: {type(space).__name__} has no inherit(); use 'activate'")
        self.space, self.data, self.task, self.path = space, data, task, path
        self.bn_batches, self.bn_batch_size, self.batch_size = bn_batches, bn_batch_size, batch_size
        self.seed, self.threads, self.device = seed, threads, torch.device(device)
        self.epochs, self.train_kwargs = epochs, dict(train or {})
        self.supernet_kwargs = dict(supernet_kwargs or {})
        self.costs = CostMetrics(space, data.input_shape, latency, latency_table)
        self.supernet = self._load(supernet, checkpoint).to(self.device).eval()
        self._snapshot = {k: v.detach().clone() for k, v in self.supernet.named_buffers()}
        self._digest = state_digest(self.supernet)
        self._bn_data = self._bn_batches()
        self._val_data = [to_device(batch, self.device) for batch in task.loader(data.val, batch_size)]

    # -- setup ------------------------------------------------------------------------------------
    def _load(self, supernet: str | nn.Module | None, checkpoint: str | None) -> nn.Module:
        if isinstance(supernet, nn.Module):
            return supernet
        if isinstance(supernet, str):
            return load_supernet(self.space, supernet, **self.supernet_kwargs)
        kwargs = {"seed": self.seed, "checkpoint": checkpoint, "device": str(self.device), **self.train_kwargs}
        if self.supernet_kwargs:
            kwargs.setdefault("supernet_kwargs", self.supernet_kwargs)
        trainer = SPOSTrainer(self.space, self.data, self.task, epochs=self.epochs, **kwargs)
        model = trainer.fit()
        self.supernet_kwargs = {**trainer.supernet_kwargs, **trainer._num_classes_kwarg()}
        return model

    def _bn_batches(self) -> list[tuple[torch.Tensor, ...]]:
        if self.bn_batches == 0:
            return []
        loader = self.task.loader(self.data.train, self.bn_batch_size, shuffle=True, seed=self.seed)
        batches = []
        for x, *_ in loader:
            batches.append((x.to(self.device),))
            if len(batches) == self.bn_batches:
                break
        return batches

    def cost_metrics(self, arch: Arch) -> dict[str, float]:
        return self.costs(arch)

    def config(self) -> dict[str, Any]:
        return {"type": "supernet", "space": type(self.space).__name__, "data": self.data.name,
                "supernet": self._digest, "path": self.path, "bn_batches": self.bn_batches,
                "bn_batch_size": self.bn_batch_size, "seed": self.seed, **self.costs.config()}

    # -- evaluation -----------------------------------------------------------------------------------
    def _network(self, arch: Arch) -> nn.Module:
        if self.path == "inherit":
            build_params = inspect.signature(self.space.build).parameters
            overrides = {k: v for k, v in self.supernet_kwargs.items() if k in build_params}
            return self.space.inherit(self.supernet, arch, **overrides).to(self.device)
        activate(self.supernet, supernet_path(self.space, arch))
        return self.supernet

    def _restore(self) -> None:
        with torch.no_grad():
            for name, value in self.supernet.named_buffers():
                value.copy_(self._snapshot[name])
        self.supernet.eval()

    @torch.no_grad()
    def score(self, arch: Arch, bn_batches: int | None = None) -> dict[str, float]:
        """The task's metrics on `data.val` of `arch` with inherited weights (no cost metrics)."""
        net = self._network(arch)
        try:
            batches = self._bn_data if bn_batches is None else self._bn_data[:bn_batches]
            if batches:
                recalibrate_bn(net, batches)
            net.eval()
            scores = self.task.score(net, self._val_data)
        finally:
            if net is self.supernet:
                self._restore()
        return {("val_loss" if k == "loss" else k): float(v) for k, v in scores.items()}

    def evaluate(self, arch: Arch) -> Result:
        start = time.perf_counter()
        arch = self.space.check(arch)
        metrics = self.costs(arch)
        previous_threads = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            metrics.update(self.score(arch))
        finally:
            torch.set_num_threads(previous_threads)
        return Result(metrics=metrics, cost=time.perf_counter() - start)


__all__ = ["SupernetEvaluator"]
