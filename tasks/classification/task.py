"""The classification task: top-1/top-5 on any dataset component, trained with Lightning."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from core.engine.data import DataSplits
from core.engine.lightning import SupervisedModule, make_trainer
from core.engine.registry import TASKS, ConfigError
from core.engine.task import Task
from core.evaluation.train import classification_loss, evaluate_classifier, topk_correct
from core.space import Arch, SearchSpace
from tasks.classification.baselines import BASELINES, BUDGET_BASELINES


def batch_metrics(output: Any, target: torch.Tensor) -> dict[str, float]:
    logits = output[0] if isinstance(output, tuple) else output
    hits = topk_correct(logits, target)
    return {"accuracy": hits[1] / len(target), "top5": hits[5] / len(target)}


@TASKS.register("classification")
class ClassificationTask(Task):
    name = "classification"
    table_metrics = ("accuracy", "top5")

    def space_overrides(self, data: DataSplits) -> dict[str, Any]:
        return {"in_channels": data.input_shape[0], "num_classes": data.num_classes}

    def baseline(self, name: str, space: SearchSpace, data: DataSplits) -> Arch:
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
        if name not in BASELINES:
            known = sorted(BASELINES) + sorted(BUDGET_BASELINES) + sorted(named)
            raise ConfigError(f"retrain.baselines: unknown baseline {name!r}; known: {', '.join(known)}")
        return BASELINES[name](space)

    def _loader(self, dataset, shuffle: bool, batch_size: int) -> DataLoader:
        g = torch.Generator().manual_seed(self.cfg["seed"])
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=g if shuffle else None,
                          num_workers=self.cfg["train"]["num_workers"])

    def train(self, model: nn.Module, data: DataSplits, run_dir: Path, progress: bool = True) -> dict[str, float]:
        space = self.space(data)
        if getattr(space, "squeeze", None):
            return self._train_widened_then_squeezed(model, space, data, run_dir, progress)
        return self._fit(model, data, self.cfg["train"], run_dir, progress)

    def _fit(self, model: nn.Module, data: DataSplits, cfg: dict, run_dir: Path, progress: bool) -> dict[str, float]:
        module = SupervisedModule(model, classification_loss, batch_metrics, cfg)
        trainer = make_trainer(cfg, run_dir, progress=progress)
        trainer.fit(module, self._loader(data.train, True, cfg["batch_size"]),
                    self._loader(data.val, False, self.cfg["test"]["batch_size"]))
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
        wide = space.build(space.arch_of(model), num_classes=data.num_classes, widened=True)
        self._fit(wide, data, {**cfg, "epochs": cfg["epochs"] - tail}, run_dir / "widened", progress)
        calibration = [x for x, _ in self._loader(torch.utils.data.Subset(data.train, range(min(512, len(data.train)))),
                                                  False, 128)]
        squeeze_blocks(wide, calibration, space.squeeze)
        model.load_state_dict(wide.state_dict())
        lr = cfg["lr"] * 0.5 * (1 + math.cos(math.pi * (cfg["epochs"] - tail) / cfg["epochs"]))
        return self._fit(model, data, {**cfg, "epochs": tail, "lr": lr}, run_dir, progress)

    def test(self, model: nn.Module, data: DataSplits, run_dir: Path | None = None) -> dict[str, float]:
        return evaluate_classifier(model, self._loader(data.test, False, self.cfg["test"]["batch_size"]))
