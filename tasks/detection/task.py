"""The detection task: train with Lightning (SGD, linear warm-up, cosine), test with COCO mAP.

`test` writes, next to the checkpoint: `detections_test.json` (COCO result
format: image_id, category_id, xywh bbox, score), `map_table.md` (AP, AP50,
AP75, APs/m/l) and `detections.png` (a grid of test images with the
detections drawn in red and the ground truth in green).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader

from core.engine.data import DataSplits
from core.engine.lightning import all_ranks, build_optimizer, make_trainer, with_schedule
from core.engine.registry import TASKS, ConfigError
from core.engine.runs import atomic_write_text, write_json
from core.task import Task, batches_on
from core.api import Arch, SearchSpace
from tasks.detection.data import collate
from tasks.detection.metrics import (
    coco_map,
    draw_grid,
    map_table,
    predict,
    write_detections,
)


def detection_loss(model: nn.Module, images, targets) -> tuple[torch.Tensor, dict[str, float]]:
    """Sum of torchvision's detection losses (RPN objectness + box, RoI classification + box)."""
    losses = model(list(images), [dict(t) for t in targets])
    total = sum(losses.values())
    return total, {k: float(v.detach()) for k, v in losses.items()}


def warmup_cosine(step: int, total: int, warmup: int, ratio: float) -> float:
    """LR factor: linear warm-up from `ratio` over `warmup` steps (mmdetection's schedule), then cosine to 0."""
    if step < warmup:
        return ratio + (1 - ratio) * step / max(warmup, 1)
    progress = (step - warmup) / max(total - warmup, 1)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


class DetectionModule(L.LightningModule):
    def __init__(self, model: nn.Module, val_set, train_cfg: dict[str, Any], warmup_steps: int,
                 warmup_ratio: float):
        super().__init__()
        self.model = model
        self.val_set = val_set
        self.train_cfg = train_cfg
        self.warmup_steps, self.warmup_ratio = warmup_steps, warmup_ratio
        self._records: list[dict[str, Any]] = []

    def training_step(self, batch, batch_idx):
        images, targets = batch
        loss, parts = detection_loss(self.model, images, targets)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"detection loss is {loss.item()} at step {self.global_step} ({parts})")
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(images))
        return loss

    def on_validation_epoch_start(self):
        self._records = []

    def validation_step(self, batch, batch_idx):
        images, targets = batch
        outputs = self.model(list(images))
        for out, target in zip(outputs, targets):
            for box, label, score in zip(out["boxes"].tolist(), out["labels"].tolist(), out["scores"].tolist()):
                x1, y1, x2, y2 = box
                self._records.append({"image_id": int(target["image_id"]),
                                      "category_id": int(self.val_set.category_ids[label - 1]),
                                      "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)})

    def on_validation_epoch_end(self):
        records, seen = [], set()
        for part in all_ranks(self._records):  # DDP: each process saw part of the images (some twice, padded)
            ids = {r["image_id"] for r in part}
            records += [r for r in part if r["image_id"] not in seen]
            seen |= ids
        metrics = coco_map(self.val_set.coco, records)
        for name, value in metrics.items():
            self.log(f"val/{name}", value, prog_bar=name == "AP")

    def configure_optimizers(self):
        opt = build_optimizer(self.model.parameters(), self.train_cfg)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup, ratio = min(self.warmup_steps, total // 2), self.warmup_ratio
        return with_schedule(opt, self.train_cfg, total, lambda s: warmup_cosine(s, total, warmup, ratio))


@dataclass
class DetectionOptions:
    """The `detection:` config section."""

    warmup_steps: int = 100      # linear warm-up steps (the official config: 800 at batch 16)
    warmup_ratio: float = 0.1    # warm-up starts at lr * ratio
    draw: int = 8                # test images drawn in detections.png
    score_threshold: float = 0.3  # boxes drawn at or above this score
    val_every: int = 1           # epochs between validation mAP runs


@TASKS.register("detection")
class DetectionTask(Task):
    name = "detection"
    primary_metric = "AP"
    metrics = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    table_metrics = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    Options = DetectionOptions
    collate = staticmethod(collate)

    def build_context(self, data: DataSplits) -> dict[str, Any]:
        size = int(data.input_shape[1])
        return {"num_classes": data.num_classes, "min_size": size, "max_size": round(size * 1333 / 800)
                if size >= 512 else size}

    def baseline(self, name: str, space: SearchSpace, data: DataSplits, searched: Arch | None = None) -> Arch:
        from tasks.detection.space import hit_detector_arch

        if name in ("hit_detector", "hitdet"):
            arch = hit_detector_arch()
            missing = [n for n in space.names if n not in arch]
            if missing or any(n not in space.names for n in arch):
                raise ConfigError("retrain.baselines: hit_detector needs space.stage_blocks [4, 4, 8, 4], "
                                  "head_blocks 4 and detector faster_rcnn (the released layout)")
            try:
                return space.check(arch)
            except ValueError as err:
                raise ConfigError(f"retrain.baselines: hit_detector is not in this space's candidates ({err})") \
                    from None
        raise ConfigError(f"retrain.baselines: unknown baseline {name!r}; known: hit_detector")

    # -- the task contract ------------------------------------------------------------------------
    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        images, targets = batch
        loss, parts = detection_loss(model, images, targets)
        return loss, {"n": len(images)}

    @torch.no_grad()
    def score(self, model: nn.Module, loader) -> dict[str, float]:
        """COCO mAP (pycocotools) of the detections on `loader`'s images against its dataset's annotations."""
        was = model.training
        model.eval()
        records = []
        for images, targets in batches_on(loader, model):
            for out, target in zip(model(list(images)), targets):
                for box, label, score in zip(out["boxes"].tolist(), out["labels"].tolist(), out["scores"].tolist()):
                    x1, y1, x2, y2 = box
                    records.append({"image_id": int(target["image_id"]),
                                    "category_id": int(loader.dataset.category_ids[label - 1]),
                                    "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)})
        model.train(was)
        return coco_map(loader.dataset.coco, records)

    def resize(self, batch: Any, size: int) -> Any:
        raise ConfigError("evaluator.resolution_divisor: detection candidates train at the data's image size")

    def _loader(self, dataset, shuffle: bool, batch_size: int) -> DataLoader:
        g = torch.Generator().manual_seed(self.cfg["seed"])
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=g if shuffle else None,
                          collate_fn=collate, num_workers=self.cfg["train"]["num_workers"])

    def train(self, model: nn.Module, data: DataSplits, run_dir: Path, progress: bool = True) -> dict[str, float]:
        cfg = self.cfg["train"]
        opts = self.options
        module = DetectionModule(model, data.val, cfg, opts.warmup_steps, opts.warmup_ratio)
        trainer = make_trainer(cfg, run_dir, progress=progress)
        trainer.check_val_every_n_epoch = max(1, opts.val_every)
        trainer.fit(module, self._loader(data.train, True, cfg["batch_size"]),
                    self._loader(data.val, False, self.cfg["test"]["batch_size"]))
        return {k.split("/", 1)[1]: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}

    def test(self, model: nn.Module, data: DataSplits, run_dir: Path | None = None) -> dict[str, float]:
        from core.engine.progress import progress_enabled

        batch = min(self.cfg["test"]["batch_size"], 16)
        records = predict(model, data.test, batch, progress=progress_enabled(True))
        metrics = coco_map(data.test.coco, records)
        if run_dir is not None:
            run_dir = Path(run_dir)
            write_detections(run_dir / "detections_test.json", records)
            atomic_write_text(run_dir / "map_table.md", map_table(metrics))
            write_json(run_dir / "map_test.json", metrics)
            if self.options.draw > 0:
                draw_grid(run_dir / "detections.png", data.test, records, self.options.draw,
                          self.options.score_threshold)
        return metrics


__all__ = ["DetectionModule", "DetectionOptions", "DetectionTask", "detection_loss", "warmup_cosine"]
