"""Lightning module and trainer factory for training a chosen architecture.

`SupervisedModule` wraps any network with a loss and an evaluation function
supplied by the task; `make_trainer` turns the `train` config section into a
`lightning.Trainer` (accelerator, devices, strategy, num_nodes and precision
come from config keys, so scaling out is Lightning's job, not ours).

Distributed training: `train.strategy: ddp` with `train.devices: N` (and
`train.num_nodes: M`) starts the other processes by re-running the same
command with `LOCAL_RANK` set (Lightning's launcher), or runs under
`torchrun` / SLURM, which start every process themselves. Every process
trains; only global rank 0 writes the outputs after training
(`is_global_zero`), and all processes of one node share the run folder
(`core.engine.runs.make_run_dir`). `ddp_spawn` starts its processes from
inside the training call instead, so it also works where the command does
more than train (a search followed by retraining).
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


class ContractModule(L.LightningModule):
    """Any task through the task contract: `task.loss` on training batches, `task.score` on the validation
    loader at the end of each training epoch (the default `Task.train`)."""

    def __init__(self, task: Any, trainable: nn.Module, model: nn.Module, train_cfg: dict[str, Any], val_loader):
        super().__init__()
        self.task, self.trainable, self.model = task, trainable, model
        self.train_cfg, self.val_loader = train_cfg, val_loader
        self.last_scores: dict[str, float] = {}

    def forward(self, x: Any) -> Any:
        return self.model(x)

    def training_step(self, batch, batch_idx):
        loss, logs = self.task.loss(self.trainable, batch)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"training loss is {value} at step {self.global_step}")
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=_batch_len(batch))
        return loss

    def on_train_epoch_end(self):
        if self.val_loader is None:
            return
        was = self.model.training
        self.model.eval()
        with torch.no_grad():
            self.last_scores = {k: float(v) for k, v in self.task.score(self.model, self.val_loader).items()}
        self.model.train(was)
        for name, value in self.last_scores.items():
            self.log(f"val/{name}", value, prog_bar=name == self.task.primary_metric, rank_zero_only=True)

    def configure_optimizers(self):
        opt = build_optimizer(self.trainable.parameters(), self.train_cfg, nesterov=True)
        return with_schedule(opt, self.train_cfg, int(self.trainer.estimated_stepping_batches))


def _batch_len(batch: Any) -> int:
    first = batch[0] if isinstance(batch, (list, tuple)) else batch
    return len(first) if hasattr(first, "__len__") else 1


#: strategies whose launcher re-runs the command in every process (the spawn-based ones do not)
_RELAUNCHING = ("ddp", "fsdp", "deepspeed")


def relaunches_command(train_cfg: dict[str, Any]) -> bool:
    """True when `train.strategy` would start its processes by re-running this command (plain `ddp` etc.
    on several devices or nodes), which a command that does more than train must not allow."""
    strategy = str(train_cfg.get("strategy", "auto"))
    if "spawn" in strategy or "fork" in strategy or "notebook" in strategy:
        return False
    devices = train_cfg.get("devices", 1)
    several = train_cfg.get("num_nodes", 1) > 1 or devices in (-1, "auto") or \
        (isinstance(devices, int) and devices > 1) or (isinstance(devices, (list, tuple)) and len(devices) > 1) or \
        (isinstance(devices, str) and devices not in ("1", "0"))
    return strategy.startswith(_RELAUNCHING) and several


def is_global_zero() -> bool:
    """True in the process that writes outputs: global rank 0 of a distributed training, or a plain run."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def all_ranks(obj: Any) -> list[Any]:
    """`obj` of every process of a distributed run, in rank order (`[obj]` outside one): for validation
    metrics that need the whole validation set (COCO mAP, 10-fold verification) rather than a mean."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def interleave_ranks(parts: list[torch.Tensor], length: int) -> torch.Tensor:
    """The first `length` items in dataset order from the per-rank outputs of an unshuffled loader.

    Lightning splits a validation loader with `DistributedSampler(shuffle=False)`: rank r of W gets
    items r, r + W, r + 2W, ..., the last ones wrapped around to the start so every rank gets as many.
    """
    world = len(parts)
    if world == 1:
        return parts[0][:length]
    n = max(len(p) for p in parts)
    out = parts[0].new_zeros((n * world, *parts[0].shape[1:]))
    for rank, part in enumerate(parts):
        out[rank::world][:len(part)] = part
    return out[:length]


def make_trainer(train_cfg: dict[str, Any], run_dir: Path, progress: bool = True) -> L.Trainer:
    """A Trainer logging to TensorBoard in `run_dir/tb` and keeping the last checkpoint in `run_dir/checkpoints`."""
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import TensorBoardLogger

    import logging

    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
    from lightning.fabric.utilities.warnings import PossibleUserWarning

    warnings.filterwarnings("ignore", category=PossibleUserWarning)  # hints about tiny data, not errors
    return L.Trainer(
        max_epochs=train_cfg["epochs"], accelerator=train_cfg["accelerator"], devices=train_cfg["devices"],
        strategy=train_cfg["strategy"], num_nodes=train_cfg.get("num_nodes", 1), precision=train_cfg["precision"],
        gradient_clip_val=train_cfg["grad_clip"] or None, log_every_n_steps=train_cfg["log_every_n_steps"],
        logger=TensorBoardLogger(str(run_dir), name="tb", version=""),
        callbacks=[ModelCheckpoint(dirpath=run_dir / "checkpoints", save_last=True, save_top_k=0)],
        enable_progress_bar=progress, enable_model_summary=False, default_root_dir=str(run_dir),
    )
