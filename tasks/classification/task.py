"""The classification task: cross-entropy training, top-1/top-5 scores, on any dataset component."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.api import Arch, SearchSpace
from core.engine.data import DataSplits
from core.engine.lightning import SupervisedModule, make_trainer
from core.engine.registry import TASKS, ConfigError
from core.task import Task
from tasks.classification.baselines import BASELINES, BUDGET_BASELINES
from tasks.classification.metrics import classification_loss, evaluate_classifier, topk_correct


@dataclass
class ClassificationOptions:
    """The `classification:` config section."""

    label_smoothing: float = 0.0   # applies to every training of the task: proxies, supernets, the final model

    def __post_init__(self):
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"classification.label_smoothing: expected a value in [0, 1), got {self.label_smoothing!r}")


def batch_metrics(output: Any, target: torch.Tensor) -> dict[str, float]:
    logits = output[0] if isinstance(output, tuple) else output
    hits = topk_correct(logits, target)
    return {"accuracy": hits[1] / len(target), "top5": hits[5] / len(target)}


@TASKS.register("classification")
class ClassificationTask(Task):
    name = "classification"
    primary_metric = "accuracy"
    metrics = ("accuracy", "top5", "loss")
    table_metrics = ("accuracy", "top5")
    Options = ClassificationOptions

    @property
    def label_smoothing(self) -> float:
        return self.options.label_smoothing

    def build_context(self, data: DataSplits) -> dict[str, Any]:
        return {"in_channels": data.input_shape[0], "num_classes": data.num_classes}

    def baseline(self, name: str, space: SearchSpace, data: DataSplits, searched: Arch | None = None) -> Arch:
        if name in BUDGET_BASELINES:
            from core.objective import Constraint

            bounds = [Constraint.parse(c).bound for c in self.cfg["objective"]["constraints"]
                      if Constraint.parse(c).metric == "macs"]
            if not bounds:
                raise ConfigError(f"retrain.baselines: {name!r} needs a 'macs <= N' constraint in objective.constraints")
            return BUDGET_BASELINES[name](space, min(bounds), data.input_shape)
        named = getattr(space, "named_archs", {})  # published architectures a space holds (hournas_f, pnasnet5)
        if name in named:
            return named[name]
        named = getattr(space, "named_archs", {})  # published architectures a space holds (hournas_f, pnasnet5)
        if name in named:
            return named[name]
        if name not in BASELINES:
            known = sorted(BASELINES) + sorted(BUDGET_BASELINES) + sorted(named) + sorted(named)
            raise ConfigError(f"retrain.baselines: unknown baseline {name!r}; known: {', '.join(known)}")
        return BASELINES[name](space)

    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        x, y = batch
        output = model(x)
        loss = classification_loss(output, y, self.label_smoothing)
        logits = output[0] if isinstance(output, tuple) else output
        return loss, {"correct": (logits.detach().argmax(1) == y).sum(), "n": len(y)}

    def score(self, model: nn.Module, loader: Iterable) -> dict[str, float]:
        return evaluate_classifier(model, loader)

    def train(self, model: nn.Module, data: DataSplits, run_dir: Path, progress: bool = True) -> dict[str, float]:
        space = self.space(data)
        if getattr(space, "squeeze", None):
            return self._train_widened_then_squeezed(model, space, data, run_dir, progress)
        return self._fit(model, data, self.cfg["train"], run_dir, progress)

    def _fit(self, model: nn.Module, data: DataSplits, cfg: dict, run_dir: Path, progress: bool) -> dict[str, float]:
        module = SupervisedModule(model, lambda out, y: classification_loss(out, y, self.label_smoothing),
                                  batch_metrics, cfg)
        trainer = make_trainer(cfg, run_dir, progress=progress)
        trainer.fit(module, self.loader(data.train, cfg["batch_size"], shuffle=True, seed=self.cfg["seed"],
                                        num_workers=cfg["num_workers"]),
                    self.loader(data.val, self.cfg["test"]["batch_size"], num_workers=cfg["num_workers"]))
        return {k.split("/", 1)[1]: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}

    def _train_widened_then_squeezed(self, model: nn.Module, space: SearchSpace, data: DataSplits, run_dir: Path,
                                     progress: bool) -> dict[str, float]:
        """Widening and squeezing (`core.ops.squeeze`): the wide network trains for the first 3/4 of the epochs,
        is squeezed on 512 training images into `model` and fine-tuned for the rest, the learning rate
        going on from where the cosine schedule was."""
        import math

        from core.ops.squeeze import squeeze_blocks

        cfg = self.cfg["train"]
        tail = max(1, cfg["epochs"] // 4)
        if cfg["epochs"] <= tail:
            raise ConfigError(f"train.epochs: squeezing needs at least 2 epochs (wide, then squeezed), "
                              f"got {cfg['epochs']}")
        wide = space.build(space.arch_of(model), widened=True)
        self._fit(wide, data, {**cfg, "epochs": cfg["epochs"] - tail}, Path(run_dir) / "widened", progress)
        subset = torch.utils.data.Subset(data.train, range(min(512, len(data.train))))
        calibration = [x for x, _ in self.loader(subset, 128)]
        squeeze_blocks(wide, calibration, space.squeeze)
        model.load_state_dict(wide.state_dict())
        lr = cfg["lr"] * 0.5 * (1 + math.cos(math.pi * (cfg["epochs"] - tail) / cfg["epochs"]))
        return self._fit(model, data, {**cfg, "epochs": tail, "lr": lr}, run_dir, progress)

    def test(self, model: nn.Module, data: DataSplits, run_dir: Path | None = None) -> dict[str, float]:
        return self.score(model, self.loader(data.test, self.cfg["test"]["batch_size"],
                                             num_workers=self.cfg["train"]["num_workers"]))
