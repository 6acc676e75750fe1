"""Lightning module and trainer factory for training a chosen architecture.

`SupervisedModule` wraps any network with a loss and an evaluation function
supplied by the task; `make_trainer` turns the `train` config section into a
`lightning.Trainer` (accelerator, devices, DDP strategy, precision come from
config keys, so scaling out is Lightning's job, not ours).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn

from core.engine.registry import ConfigError


def build_optimizer(params, cfg: dict[str, Any], nesterov: bool = False) -> torch.optim.Optimizer:
    """The `train` section's optimizer (sgd, adam, adamw) over `params`; SGD is Nesterov when asked and momentum > 0."""
    params = [p for p in params if p.requires_grad]
    if cfg["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"],
                               nesterov=nesterov and cfg["momentum"] > 0)
    if cfg["optimizer"] in ("adam", "adamw"):
        cls = torch.optim.Adam if cfg["optimizer"] == "adam" else torch.optim.AdamW
        return cls(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    raise ConfigError(f"train.optimizer: expected sgd, adam or adamw, got {cfg['optimizer']!r}")


def with_schedule(opt: torch.optim.Optimizer, cfg: dict[str, Any], total_steps: int,
                  lr_lambda: Callable[[int], float] | None = None):
    """What `configure_optimizers` returns: `opt` alone (scheduler none), or with a per-step cosine schedule
    (`lr_lambda(step)` instead of plain cosine, e.g. cosine after a warm-up)."""
    if cfg["scheduler"] == "none":
        return opt
    if cfg["scheduler"] != "cosine":
        raise ConfigError(f"train.scheduler: expected cosine or none, got {cfg['scheduler']!r}")
    total = max(1, int(total_steps))
    sched = (torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda) if lr_lambda is not None
             else torch.optim.lr_scheduler.CosineAnnealingLR(opt, total))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class SupervisedModule(L.LightningModule):
    def __init__(self, model: nn.Module, loss_fn: Callable[[Any, torch.Tensor], torch.Tensor],
                 batch_metrics: Callable[[Any, torch.Tensor], dict[str, float]], train_cfg: dict[str, Any]):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn
        self.batch_metrics = batch_metrics
        self.train_cfg = train_cfg
        self._val: dict[str, float] = {}
        self._val_n = 0

    def forward(self, x: torch.Tensor) -> Any:
        return self.model(x)

    def on_fit_start(self):
        """Layers whose rate follows the training (Disout's linear schedule) learn its length in steps."""
        steps = int(self.trainer.estimated_stepping_batches)
        for m in self.model.modules():
            if hasattr(m, "set_total_steps"):
                m.set_total_steps(steps)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.loss_fn(self.model(x), y)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"training loss is {loss.item()} at step {self.global_step}")
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(y))
        return loss

    def on_validation_epoch_start(self):
        self._val, self._val_n = {}, 0

    def validation_step(self, batch, batch_idx):
        x, y = batch
        out = self.model(x)
        for name, value in self.batch_metrics(out, y).items():
            self._val[name] = self._val.get(name, 0.0) + value * len(y)
        self._val_n += len(y)

    def on_validation_epoch_end(self):
        for name, total in self._val.items():
            self.log(f"val/{name}", total / max(self._val_n, 1), prog_bar=name == "accuracy", sync_dist=True)

    def configure_optimizers(self):
        opt = build_optimizer(self.model.parameters(), self.train_cfg, nesterov=True)
        return with_schedule(opt, self.train_cfg, int(self.trainer.estimated_stepping_batches))


def make_trainer(train_cfg: dict[str, Any], run_dir: Path, progress: bool = True) -> L.Trainer:
    """A Trainer logging to TensorBoard in `run_dir/tb` and keeping the last checkpoint in `run_dir/checkpoints`."""
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import TensorBoardLogger

    import logging

    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
    return L.Trainer(
        max_epochs=train_cfg["epochs"], accelerator=train_cfg["accelerator"], devices=train_cfg["devices"],
        strategy=train_cfg["strategy"], precision=train_cfg["precision"],
        gradient_clip_val=train_cfg["grad_clip"] or None, log_every_n_steps=train_cfg["log_every_n_steps"],
        logger=TensorBoardLogger(str(run_dir), name="tb", version=""),
        callbacks=[ModelCheckpoint(dirpath=run_dir / "checkpoints", save_last=True, save_top_k=0)],
        enable_progress_bar=progress, enable_model_summary=False, default_root_dir=str(run_dir),
    )
