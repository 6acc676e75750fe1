"""Training a codec with Lightning: the rate-distortion(-perception) loss and the bottlenecks' quantile loss.

Two optimizers, as in the reference implementations (tensorflow_compression, CompressAI's
`examples/train.py`): Adam on every parameter but the bottlenecks' `quantiles` for the main loss,
and Adam on the `quantiles` for the auxiliary loss that places them at the density's tails and
median. Gradients of the main loss are clipped to norm 1 (CompressAI's default). The learning rate
rises linearly over the first `warmup` steps (5% of the run, at most 200: GDN's parameters blow up
under a large first step) and then follows a cosine down to `lr * min_lr_ratio` (the short CPU runs
here need a decay to settle; the papers train for 1M+ steps and drop the rate late). After training, `update()`
builds the coding tables.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from tasks.image_compression.losses import RateDistortionLoss
from tasks.image_compression.models import Codec


class CodecModule(L.LightningModule):
    def __init__(self, codec: Codec, loss: RateDistortionLoss, lr: float = 1e-3, aux_lr: float = 1e-3,
                 total_steps: int = 1000, min_lr_ratio: float = 0.01, grad_clip: float = 1.0,
                 warmup: int | None = None):
        super().__init__()
        self.codec, self.loss = codec, loss
        self.lr, self.aux_lr, self.total_steps = float(lr), float(aux_lr), int(total_steps)
        self.warmup = min(200, self.total_steps // 20) if warmup is None else int(warmup)
        self.min_lr_ratio, self.grad_clip = float(min_lr_ratio), float(grad_clip)
        self.automatic_optimization = False
        self.history: list[dict[str, float]] = []

    def configure_optimizers(self):
        main = torch.optim.Adam(self.codec.main_parameters(), lr=self.lr)
        aux = torch.optim.Adam(self.codec.aux_parameters(), lr=self.aux_lr)
        floor = self.min_lr_ratio

        warmup, total = self.warmup, max(1, self.total_steps)

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            t = min((step - warmup) / max(1, total - warmup), 1.0)
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))

        return [main, aux], [torch.optim.lr_scheduler.LambdaLR(main, schedule)]

    def training_step(self, batch, batch_idx):
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        main, aux = self.optimizers()
        output = self.codec(x)
        loss, logs = self.loss(output, x)
        if not math.isfinite(logs["loss"]):
            raise FloatingPointError(f"training loss is {logs['loss']} at step {self.global_step}")
        main.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.codec.main_parameters(), self.grad_clip)
        main.step()
        aux_loss = self.codec.aux_loss()
        aux.zero_grad(set_to_none=True)
        self.manual_backward(aux_loss)
        aux.step()
        self.lr_schedulers().step()
        logs["aux_loss"] = float(aux_loss.detach())
        self.history.append(logs)
        self.log_dict({f"train/{k}": v for k, v in logs.items() if "/" not in k and k != "bpp"},
                      batch_size=len(x))
        self.log("train/bpp", logs["bpp"], prog_bar=True, batch_size=len(x))
        return loss


def fit_codec(codec: Codec, dataset: Dataset, loss: RateDistortionLoss, steps: int, batch_size: int = 8,
              lr: float = 1e-3, aux_lr: float = 1e-3, min_lr_ratio: float = 0.01, grad_clip: float = 1.0,
              seed: int = 0, run_dir: str | Path | None = None, progress: bool = False, accelerator: str = "cpu",
              devices: Any = 1, num_workers: int = 0, warmup: int | None = None) -> list[dict[str, float]]:
    """Train `codec` for `steps` optimizer steps on batches of `dataset`, then `codec.update()`.
    Returns the per-step logs (bpp, mse, loss, mmd, aux_loss). TensorBoard logs go to `run_dir/tb` when given."""
    import logging

    if steps < 1:
        raise ValueError(f"steps: expected >= 1, got {steps}")
    L.seed_everything(seed, workers=True, verbose=False)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    logger = False
    if run_dir is not None:
        from lightning.pytorch.loggers import TensorBoardLogger

        logger = TensorBoardLogger(str(run_dir), name="tb", version="")
    module = CodecModule(codec, loss, lr, aux_lr, steps, min_lr_ratio, grad_clip, warmup)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=len(dataset) >= batch_size,
                        num_workers=num_workers, generator=torch.Generator().manual_seed(seed))
    # with manual optimization, Lightning counts every optimizer.step() as a step: two per iteration here
    trainer = L.Trainer(max_steps=2 * steps, max_epochs=-1, accelerator=accelerator, devices=devices, logger=logger,
                        enable_checkpointing=False, enable_progress_bar=progress, enable_model_summary=False,
                        log_every_n_steps=max(1, min(50, steps // 10)),
                        default_root_dir=str(run_dir) if run_dir else None)
    # Lightning keeps each module's train/eval flag at the start of fit: a codec that was trained before (and
    # left in eval mode by update()) would fine-tune with rounding instead of noise, so g_a got no gradient
    codec.train()
    trainer.fit(module, loader)
    codec.cpu().eval()
    codec.update()
    return module.history


__all__ = ["CodecModule", "fit_codec"]
