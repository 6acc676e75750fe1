"""Supernet evaluator: score an arch with weights inherited from a trained one-shot supernet.

Guo et al., "Single Path One-Shot Neural Architecture Search with Uniform
Sampling", ECCV 2020, Sec. 3.4: every candidate of the search inherits its
weights from the supernet, and "before the inference of an architecture, the
statistics of all the Batch Normalization operations are recalculated on a
random subset of training data". Here:

1. weights: `path="activate"` switches every `ChoiceModule` of the supernet
   to the arch's option (`core.space.activate`; DARTS cells through
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
3. top-1/top-5 accuracy and loss on `data.val`.

Metrics always include `params` and `macs` of the standalone network at full
size (`space.build` + `core.cost`), as every evaluator's do. The supernet is
a module, a checkpoint path written by `core.strategies.spos` (`checkpoint=`),
or, when neither is given, trained here by SPOS for `epochs` epochs (resumable
through `checkpoint`). An evaluation leaves the supernet's weights and
buffers as it found them, so results do not depend on evaluation order.
"""

from __future__ import annotations

import hashlib
import inspect
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from core.engine.data import DataSplits
from core.engine.registry import EVALUATORS
from core.evaluation.base import Evaluator
from core.evaluation.costs import CostMetrics
from core.evaluation.result import Result
from core.evaluation.train import topk_correct
from core.space import Arch, SearchSpace, activate

_PATH_MODES = ("auto", "activate", "inherit")


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches, device: torch.device | str | None = None) -> int:
    """Reset every BN layer's running statistics and re-estimate them as the plain average over `batches`.

    Runs the model in training mode without gradients, BN momentum set to
    None (cumulative average) and restored afterwards; leaves the model in
    eval mode. Returns the number of BN layers reset.
    """
    layers = batchnorm_layers(model)
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    try:
        for x, *_ in batches:
            model(x.to(device) if device is not None else x)
    finally:
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
        model.eval()
    return len(layers)


def state_digest(module: nn.Module) -> str:
    """A short hash of a module's weights and buffers (identifies the supernet in the fingerprint)."""
    h = hashlib.sha1()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@EVALUATORS.register("supernet")
class SupernetEvaluator(Evaluator):
    """Weight inheritance from a SPOS supernet with BN recalibration (see the module docstring)."""

    def __init__(self, space: SearchSpace, data: DataSplits, supernet: str | nn.Module | None = None,
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
        self.space, self.data, self.path = space, data, path
        self.bn_batches, self.bn_batch_size, self.batch_size = bn_batches, bn_batch_size, batch_size
        self.seed, self.threads, self.device = seed, threads, torch.device(device)
        self.epochs, self.train_kwargs = epochs, dict(train or {})
        self.supernet_kwargs = dict(supernet_kwargs or {})
        self.costs = CostMetrics(space, data.input_shape, data.num_classes, latency, latency_table)
        self.supernet = self._load(supernet, checkpoint).to(self.device).eval()
        self._snapshot = {k: v.detach().clone() for k, v in self.supernet.named_buffers()}
        self._digest = state_digest(self.supernet)
        self._bn_data = self._bn_batches()
        self._val_data = [(x.to(self.device), y.to(self.device))
                          for x, y in DataLoader(data.val, batch_size=batch_size, shuffle=False)]

    # -- setup ------------------------------------------------------------------------------------
    def _load(self, supernet: str | nn.Module | None, checkpoint: str | None) -> nn.Module:
        from core.strategies.spos import SPOSTrainer, load_supernet  # lazy: core.strategies imports core.evaluation

        if isinstance(supernet, nn.Module):
            return supernet
        if isinstance(supernet, str):
            return load_supernet(self.space, supernet, **self.supernet_kwargs)
        kwargs = {"seed": self.seed, "checkpoint": checkpoint, "device": str(self.device), **self.train_kwargs}
        if self.supernet_kwargs:
            kwargs.setdefault("supernet_kwargs", self.supernet_kwargs)
        trainer = SPOSTrainer(self.space, self.data, epochs=self.epochs, **kwargs)
        model = trainer.fit()
        self.supernet_kwargs = {**trainer.supernet_kwargs, **trainer._num_classes_kwarg()}
        return model

    def _bn_batches(self) -> list[tuple[torch.Tensor, ...]]:
        if self.bn_batches == 0:
            return []
        loader = DataLoader(self.data.train, batch_size=self.bn_batch_size, shuffle=True, drop_last=False,
                            generator=torch.Generator().manual_seed(self.seed))
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
        from core.strategies.spos import supernet_path

        activate(self.supernet, supernet_path(self.space, arch))
        return self.supernet

    def _restore(self) -> None:
        with torch.no_grad():
            for name, value in self.supernet.named_buffers():
                value.copy_(self._snapshot[name])
        self.supernet.eval()

    @torch.no_grad()
    def score(self, arch: Arch, bn_batches: int | None = None) -> dict[str, float]:
        """Accuracy, top-5 and loss on `data.val` of `arch` with inherited weights (no cost metrics)."""
        net = self._network(arch)
        try:
            batches = self._bn_data if bn_batches is None else self._bn_data[:bn_batches]
            if batches:
                recalibrate_bn(net, batches)
            net.eval()
            n, loss, hits = 0, 0.0, {1: 0, 5: 0}
            for x, y in self._val_data:
                out = net(x)
                logits = out[0] if isinstance(out, tuple) else out
                loss += float(F.cross_entropy(logits, y, reduction="sum"))
                for k, v in topk_correct(logits, y).items():
                    hits[k] += v
                n += len(y)
        finally:
            if net is self.supernet:
                self._restore()
        return {"accuracy": hits[1] / max(n, 1), "top5": hits[5] / max(n, 1), "val_loss": loss / max(n, 1)}

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


__all__ = ["SupernetEvaluator", "recalibrate_bn", "batchnorm_layers", "state_digest"]
