"""Self-supervised (contrastive) evaluation of a candidate: CSNAS's objective, no labels.

Nguyen & Chang, "CSNAS: Contrastive Self-supervised Learning Neural
Architecture Search via Sequential Model-Based Optimization", arXiv
2102.10557, Sec. 3.2 (contrastive objective) and 3.3 (SMBO-TPE); official
code `namnguyen0510/CSNAS` (METHODS.md 1.4). Each candidate is trained
without labels for a few epochs with a PIRL-style NCE loss (Misra & van der
Maaten, CVPR 2020): cosine similarity of L2-normalised embeddings divided by
a temperature tau = 0.07, one positive and 2(B-1) negatives per anchor; TPE
then minimises the mean training loss of the last epoch.

What this evaluator does: the candidate is `space.build(arch)`; its feature
extractor is the network with the classifier replaced by a projection head
(the last `nn.Linear` with `num_classes` outputs, found generically, is
swapped for `Linear(features, projection_dim)`, PIRL's linear projection).
Two augmented views of every image of a batch (random integer shifts of up to
`shift` pixels with zero fill, plus Gaussian noise of std `noise`) are the
positive pair; the other 2(B-1) views of the batch are the negatives (the
NT-Xent form of InfoNCE, Chen et al. SimCLR, ICML 2020). Labels are never
read. Metrics: `contrastive_loss` (mean loss of the last epoch; use it with
`objective: {metric: contrastive_loss, direction: min}`), `contrastive_loss_first`
(the first epoch's), and the full network's `params` and `macs`.

Deviations from CSNAS: PIRL's memory bank and its jigsaw-patch term (0.5 image
/ 0.5 patch) are replaced by in-batch negatives over two augmented views of
the whole image: tiny 8x8 images have no room for 3x3 jigsaw patches, and a
memory bank adds nothing when an epoch is a handful of batches. CSNAS trains
10 epochs with SGD lr 1e-3, momentum 0.9, batch 256; the optimiser settings
are the defaults here except the learning rate (0.05): at 1e-3 a network
barely moves in the few steps 10 epochs of the embedded digits give, so the
last-epoch loss would mostly measure the initialisation.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset

from core.cost import count_macs, count_params
from core.engine.data import DataSplits
from core.engine.registry import EVALUATORS, ConfigError
from core.evaluation.base import Evaluator
from core.evaluation.result import Result
from core.api import Arch, SearchSpace


class NaNLoss(RuntimeError):
    pass


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """InfoNCE over two views: for each of the 2B embeddings, its other view is the positive and the
    remaining 2(B-1) embeddings of the batch are the negatives (cosine similarity / temperature)."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    sim = z @ z.t() / temperature
    sim.fill_diagonal_(-math.inf)
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift every image by its own random integer offset in [-max_shift, max_shift]^2, zero fill."""
    if max_shift <= 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    dy = torch.randint(0, 2 * max_shift + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * max_shift + 1, (b,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None, :])                     # b x h
    cols = (dx[:, None] + torch.arange(w)[None, :])                     # b x w
    idx = torch.arange(b)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx, rows[:, :, None], cols[:, None, :]]  # b x h x w x c
    return out.permute(0, 3, 1, 2).contiguous()


def replace_classifier(model: nn.Module, num_classes: int, head: nn.Module | None = None,
                       projection_dim: int = 128) -> nn.Module:
    """Swap the network's classifier (its last `nn.Linear` with `num_classes` outputs) for a projection head.

    Returns the model (changed in place). Raises ValueError when no such layer exists.
    """
    found = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module.out_features == num_classes and "aux" not in name:
            found = (name, module)
    if found is None:
        raise ValueError(f"{type(model).__name__} has no nn.Linear with {num_classes} outputs to replace "
                         "with a projection head")
    name, linear = found
    parent = model
    *path, leaf = name.split(".")
    for part in path:
        parent = getattr(parent, part)
    setattr(parent, leaf, head if head is not None else nn.Linear(linear.in_features, projection_dim))
    return model


@EVALUATORS.register("contrastive")
class ContrastiveEvaluator(Evaluator):
    """Train a candidate's feature extractor with a contrastive NCE loss and report its last-epoch loss.

    Config keys: `epochs` (10, CSNAS), `batch_size` (256, CSNAS), `lr` (0.05;
    CSNAS 1e-3, see the module docstring), `momentum` (0.9), `weight_decay`
    (0), `temperature` (0.07, CSNAS/PIRL), `projection_dim` (128, PIRL),
    `shift` (1 pixel), `noise` (0.1, in standardised pixel units),
    `sample_ratio` (1.0: fraction of the train split used), `seed`, `threads` (1),
    `build` (extra keyword arguments for `space.build`, e.g. `{channel_divisor: 2}`).
    """

    metrics = ("contrastive_loss", "contrastive_loss_first", "params", "macs")

    def __init__(self, space: SearchSpace, data: DataSplits, epochs: int = 10, batch_size: int = 256,
                 lr: float = 0.05, momentum: float = 0.9, weight_decay: float = 0.0, temperature: float = 0.07,
                 projection_dim: int = 128, shift: int = 1, noise: float = 0.1, sample_ratio: float = 1.0,
                 seed: int = 0, threads: int | None = 1, build: dict | None = None):
        for key, value in (("epochs", epochs), ("batch_size", batch_size), ("projection_dim", projection_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"evaluator.{key}: expected an int >= 1, got {value!r}")
        if batch_size < 2:
            raise ConfigError(f"evaluator.batch_size: a contrastive batch needs >= 2 images, got {batch_size}")
        if not temperature > 0:
            raise ConfigError(f"evaluator.temperature: expected a positive number, got {temperature!r}")
        if not 0 < sample_ratio <= 1:
            raise ConfigError(f"evaluator.sample_ratio: expected a number in (0, 1], got {sample_ratio!r}")
        if shift < 0 or noise < 0:
            raise ConfigError("evaluator.shift and evaluator.noise must be >= 0")
        self.space, self.data = space, data
        self.epochs, self.batch_size, self.lr = epochs, batch_size, lr
        self.momentum, self.weight_decay, self.temperature = momentum, weight_decay, temperature
        self.projection_dim, self.shift, self.noise = projection_dim, shift, noise
        self.sample_ratio, self.seed, self.threads = sample_ratio, seed, threads
        self.build_kwargs = dict(build or {})
        self._images: torch.Tensor | None = None

    def config(self) -> dict[str, Any]:
        return {"type": "contrastive", "space": type(self.space).__name__, "data": self.data.name,
                "epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr, "momentum": self.momentum,
                "weight_decay": self.weight_decay, "temperature": self.temperature,
                "projection_dim": self.projection_dim, "shift": self.shift, "noise": self.noise,
                "sample_ratio": self.sample_ratio, "seed": self.seed, "build": self.build_kwargs}

    # -- data ------------------------------------------------------------------------------------------
    def images(self) -> torch.Tensor:
        """The unlabelled training images (labels are dropped), loaded once."""
        if self._images is None:
            dataset = self.data.train
            if self.sample_ratio < 1:
                g = torch.Generator().manual_seed(self.seed)
                n = max(2, int(round(len(dataset) * self.sample_ratio)))
                dataset = Subset(dataset, torch.randperm(len(dataset), generator=g)[:n].tolist())
            batches = [b[0] if isinstance(b, (list, tuple)) else b for b in DataLoader(dataset, batch_size=512)]
            self._images = torch.cat(batches).float()
        return self._images

    def augment(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        x = random_shift(x, self.shift, generator)
        if self.noise > 0:
            x = x + self.noise * torch.randn(x.shape, generator=generator)
        return x

    # -- model -------------------------------------------------------------------------------------------
    def cost_metrics(self, arch: Arch) -> dict[str, float]:
        model = self.space.build(arch, num_classes=self.data.num_classes, **self.build_kwargs)
        x = torch.zeros(1, *self.data.input_shape)
        return {"params": float(count_params(model)), "macs": float(count_macs(model, x))}

    def feature_model(self, arch: Arch) -> nn.Module:
        model = self.space.build(arch, num_classes=self.data.num_classes, **self.build_kwargs)
        return replace_classifier(model, self.data.num_classes, projection_dim=self.projection_dim)

    def train(self, arch: Arch) -> tuple[nn.Module, list[float]]:
        """Train `arch`'s feature extractor; return it and the mean loss of every epoch."""
        images = self.images()
        torch.manual_seed(self.seed)
        model = self.feature_model(arch)
        g = torch.Generator().manual_seed(self.seed)
        opt = torch.optim.SGD(model.parameters(), lr=self.lr, momentum=self.momentum,
                              weight_decay=self.weight_decay)
        batch = min(self.batch_size, len(images))
        n_batches = max(1, len(images) // batch)  # drop the last partial batch: fewer negatives would skew it
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, self.epochs * n_batches)
        losses = []
        model.train()
        for epoch in range(self.epochs):
            order = torch.randperm(len(images), generator=g)
            total = 0.0
            for step in range(n_batches):
                x = images[order[step * batch:(step + 1) * batch]]
                z1, z2 = (self._embed(model, self.augment(x, g)) for _ in range(2))
                loss = nt_xent(z1, z2, self.temperature)
                if not math.isfinite(loss.item()):
                    raise NaNLoss(f"contrastive loss is {loss.item()} at epoch {epoch} step {step}")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), 5.0)
                opt.step()
                sched.step()
                total += loss.item()
            losses.append(total / n_batches)
        return model, losses

    @staticmethod
    def _embed(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        out = model(x)
        if isinstance(out, (tuple, list)):  # networks with an auxiliary head return (main, aux)
            out = out[0]
        return out.flatten(1)

    def evaluate(self, arch: Arch) -> Result:
        start = time.perf_counter()
        arch = self.space.check(arch)
        metrics = self.cost_metrics(arch)
        previous_threads = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            _, losses = self.train(arch)
        except NaNLoss as err:
            return Result.failed(str(err), time.perf_counter() - start, **metrics)
        finally:
            torch.set_num_threads(previous_threads)
        metrics.update(contrastive_loss=losses[-1], contrastive_loss_first=losses[0])
        return Result(metrics=metrics, cost=time.perf_counter() - start)
