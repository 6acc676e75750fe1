"""GAN training loops: pix2pix, CycleGAN and portable GAN distillation, with per-epoch checkpoints.

A plain PyTorch loop rather than Lightning: each step updates two or three
modules with their own optimizers in a fixed order (the discriminator on
detached fakes, then the generator with the discriminator frozen), which is
the whole loop; the task contract only asks `train` for the trained
generator and a summary.

Recipes follow the official code (`junyanz/pytorch-CycleGAN-and-pix2pix`):
Adam with lr 2e-4 and betas (0.5, 0.999); the learning rate constant for the
first half of the steps and linearly decayed to 0 over the second half (the
`linear` policy with n_epochs = n_epochs_decay; `decay_fraction`); the
discriminator loss halved.

- pix2pix (Isola et al., CVPR 2017, eq. 4): G minimises
  L_GAN(G, D) + lambda_L1 * ||y - G(x)||_1 (lambda_L1 = 100); the conditional
  PatchGAN D sees (x, y) and (x, G(x)).
- CycleGAN (Zhu et al., ICCV 2017, eq. 3 and sec. 5.2): G_A: A -> B, G_B: B -> A;
  L_GAN(G_A, D_A) + L_GAN(G_B, D_B) + lambda * (||G_B(G_A(a)) - a||_1 +
  ||G_A(G_B(b)) - b||_1) + lambda * lambda_idt * (||G_A(b) - b||_1 + ||G_B(a) - a||_1)
  with lambda = 10, lambda_idt = 0.5 (the identity term only when both domains
  have the same number of channels), the LSGAN loss and a 50-image history of
  generated images for the discriminators (Shrivastava et al. 2017).
- Distillation: `core.distill.PortableGANDistillation` (its docstring), the
  student discriminator updated first, then the student generator.

Any `GANLoss` (standard, LSGAN, PU-GAN, PU-LSGAN) plugs into all three; the
PU prior follows the loop's iteration count.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from core.distill.gan_losses import GANLoss
from core.distill.portable_gan import PortableGANDistillation


@dataclass
class Recipe:
    """One GAN training run's settings (the task fills them from its config)."""

    epochs: int = 10
    max_steps: int | None = None      # stop after this many steps (a step budget shared by compared runs)
    batch_size: int = 8
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    decay_fraction: float = 0.5       # the last fraction of the steps decays the lr linearly to 0
    lambda_l1: float = 100.0
    lambda_cycle: float = 10.0
    lambda_identity: float = 0.5
    pool_size: int = 50
    seed: int = 0
    device: str = "cpu"
    progress: bool = False
    checkpoint_dir: str | None = None  # per-epoch checkpoints go here (none when None)
    num_workers: int = 0


def set_requires_grad(module: nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


def linear_decay(total_steps: int, decay_fraction: float) -> Callable[[int], float]:
    """LR factor: 1 for the first (1 - f) of the steps, then linearly down to 0 at the end."""
    start = int(round(total_steps * (1.0 - decay_fraction)))
    span = max(1, total_steps - start)

    def factor(step: int) -> float:
        return 1.0 if step < start else max(0.0, 1.0 - (step - start) / span)

    return factor


class ImagePool:
    """CycleGAN's history of generated images: half the time a stored older image replaces the new one."""

    def __init__(self, size: int = 50):
        self.size = size
        self.images: list[torch.Tensor] = []

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return images
        out = []
        for image in images.detach():
            image = image[None]
            if len(self.images) < self.size:
                self.images.append(image)
                out.append(image)
            elif random.random() > 0.5:
                i = random.randrange(self.size)
                out.append(self.images[i].clone())
                self.images[i] = image
            else:
                out.append(image)
        return torch.cat(out)


def _adam(params, recipe: Recipe) -> torch.optim.Optimizer:
    return torch.optim.Adam([p for p in params if p.requires_grad], lr=recipe.lr, betas=(recipe.beta1, recipe.beta2))


def _loop(dataset: Dataset, recipe: Recipe, step: Callable[[tuple, int], dict[str, float]],
          optimizers: list[torch.optim.Optimizer], modules: dict[str, nn.Module], desc: str) -> dict[str, Any]:
    """Epochs over `dataset` calling `step(batch, iteration)`; lr schedules, checkpoints, a summary."""
    from tqdm.auto import tqdm

    from core.engine.runs import save_checkpoint
    from core.engine.progress import progress_enabled

    g = torch.Generator().manual_seed(recipe.seed)
    loader = DataLoader(dataset, batch_size=recipe.batch_size, shuffle=True, generator=g,
                        drop_last=len(dataset) >= recipe.batch_size, num_workers=recipe.num_workers)
    per_epoch = len(loader)
    total = per_epoch * recipe.epochs if recipe.max_steps is None else int(recipe.max_steps)
    epochs = math.ceil(total / max(per_epoch, 1))
    schedules = [torch.optim.lr_scheduler.LambdaLR(o, linear_decay(total, recipe.decay_fraction)) for o in optimizers]
    bar = tqdm(total=total, desc=desc, unit="step", disable=not progress_enabled(recipe.progress), dynamic_ncols=True)
    history: list[dict[str, float]] = []
    iteration, start = 0, time.perf_counter()
    for module in modules.values():
        module.train()
    for epoch in range(epochs):
        sums: dict[str, float] = {}
        count = 0
        for batch in loader:
            if iteration >= total:
                break
            batch = tuple(t.to(recipe.device) for t in batch)
            parts = step(batch, iteration)
            for k, v in parts.items():
                if not math.isfinite(v):
                    raise FloatingPointError(f"{desc}: {k} is {v} at step {iteration}")
                sums[k] = sums.get(k, 0.0) + v
            count += 1
            for s in schedules:
                s.step()
            iteration += 1
            bar.update(1)
            if iteration % 10 == 0:
                bar.set_postfix({k: f"{v:.3g}" for k, v in parts.items() if k in ("g_loss", "d_loss")}, refresh=False)
        history.append({"epoch": epoch + 1, "steps": iteration, **{k: v / max(count, 1) for k, v in sums.items()}})
        if recipe.checkpoint_dir:
            save_checkpoint(Path(recipe.checkpoint_dir) / f"epoch_{epoch + 1:03d}.pt", {
                "epoch": epoch + 1, "iteration": iteration,
                **{name: m.state_dict() for name, m in modules.items()},
                **{f"optimizer{i}": o.state_dict() for i, o in enumerate(optimizers)}})
        if iteration >= total:
            break
    bar.close()
    for module in modules.values():
        module.eval()
    return {"steps": iteration, "seconds": time.perf_counter() - start, "history": history}


def _seed(recipe: Recipe) -> None:
    random.seed(recipe.seed)
    torch.manual_seed(recipe.seed)
    import numpy as np

    np.random.seed(recipe.seed % 2**32)


def train_pix2pix(generator: nn.Module, discriminator: nn.Module, dataset: Dataset, gan_loss: GANLoss,
                  recipe: Recipe, desc: str = "pix2pix") -> dict[str, Any]:
    """pix2pix: conditional adversarial loss + lambda_L1 * L1 to the target (see the module docstring)."""
    _seed(recipe)
    generator.to(recipe.device)
    discriminator.to(recipe.device)
    opt_g, opt_d = _adam(generator.parameters(), recipe), _adam(discriminator.parameters(), recipe)

    def step(batch, it):
        x, y = batch
        fake = generator(x)
        set_requires_grad(discriminator, True)
        opt_d.zero_grad(set_to_none=True)
        d_loss = 0.5 * gan_loss.discriminator(discriminator(torch.cat([x, y], 1)),
                                              discriminator(torch.cat([x, fake.detach()], 1)), it)
        d_loss.backward()
        opt_d.step()
        set_requires_grad(discriminator, False)
        opt_g.zero_grad(set_to_none=True)
        adv = gan_loss.generator(discriminator(torch.cat([x, fake], 1)))
        l1 = F.l1_loss(fake, y)
        g_loss = adv + recipe.lambda_l1 * l1
        g_loss.backward()
        opt_g.step()
        set_requires_grad(discriminator, True)
        return {"d_loss": d_loss.item(), "g_adv": adv.item(), "l1": l1.item(), "g_loss": g_loss.item()}

    return _loop(dataset, recipe, step, [opt_g, opt_d], {"generator": generator, "discriminator": discriminator},
                 desc)


def train_cyclegan(g_a: nn.Module, g_b: nn.Module, d_a: nn.Module, d_b: nn.Module, dataset: Dataset,
                   gan_loss: GANLoss, recipe: Recipe, desc: str = "cyclegan") -> dict[str, Any]:
    """CycleGAN: two generators, two discriminators, cycle and identity terms (see the module docstring).

    `d_a` judges domain B (G_A's outputs), `d_b` domain A, as in the official code."""
    _seed(recipe)
    for m in (g_a, g_b, d_a, d_b):
        m.to(recipe.device)
    opt_g = _adam(list(g_a.parameters()) + list(g_b.parameters()), recipe)
    opt_d = _adam(list(d_a.parameters()) + list(d_b.parameters()), recipe)
    pool_a, pool_b = ImagePool(recipe.pool_size), ImagePool(recipe.pool_size)

    def step(batch, it):
        real_a, real_b = batch
        fake_b, fake_a = g_a(real_a), g_b(real_b)
        rec_a, rec_b = g_b(fake_b), g_a(fake_a)
        set_requires_grad(d_a, False)
        set_requires_grad(d_b, False)
        opt_g.zero_grad(set_to_none=True)
        adv = gan_loss.generator(d_a(fake_b)) + gan_loss.generator(d_b(fake_a))
        cycle = F.l1_loss(rec_a, real_a) + F.l1_loss(rec_b, real_b)
        g_loss = adv + recipe.lambda_cycle * cycle
        parts = {"g_adv": adv.item(), "cycle": cycle.item()}
        if recipe.lambda_identity > 0 and real_a.shape[1] == real_b.shape[1]:
            idt = F.l1_loss(g_a(real_b), real_b) + F.l1_loss(g_b(real_a), real_a)
            g_loss = g_loss + recipe.lambda_cycle * recipe.lambda_identity * idt
            parts["identity"] = idt.item()
        g_loss.backward()
        opt_g.step()
        set_requires_grad(d_a, True)
        set_requires_grad(d_b, True)
        opt_d.zero_grad(set_to_none=True)
        d_loss = 0.5 * gan_loss.discriminator(d_a(real_b), d_a(pool_b.query(fake_b)), it) + \
            0.5 * gan_loss.discriminator(d_b(real_a), d_b(pool_a.query(fake_a)), it)
        d_loss.backward()
        opt_d.step()
        return {**parts, "g_loss": g_loss.item(), "d_loss": d_loss.item()}

    return _loop(dataset, recipe, step, [opt_g, opt_d], {"generator": g_a, "generator_b": g_b,
                                                         "discriminator_a": d_a, "discriminator_b": d_b}, desc)


def train_distillation(distill: PortableGANDistillation, dataset: Dataset, recipe: Recipe, paired: bool = True,
                       desc: str = "distill") -> dict[str, Any]:
    """Portable GAN distillation: per step a student-discriminator update, then a student-generator update.

    `paired`: the batch's second tensor is the input's target (its L1 term and, for a conditional
    D_S, the real pair); otherwise it is an unrelated real image of the output domain."""
    _seed(recipe)
    distill.to(recipe.device)
    opt_g = _adam(distill.generator_parameters(), recipe)
    opt_d = _adam(distill.discriminator.parameters(), recipe)

    def step(batch, it):
        x, y = batch
        student_out, teacher_out = distill(x)
        set_requires_grad(distill.discriminator, True)
        opt_d.zero_grad(set_to_none=True)
        d_loss, d_parts = distill.discriminator_loss(x, y, student_out, teacher_out, it)
        d_loss.backward()
        opt_d.step()
        set_requires_grad(distill.discriminator, False)
        opt_g.zero_grad(set_to_none=True)
        g_loss, g_parts = distill.generator_loss(x, student_out, y if paired else None)
        g_loss.backward()
        opt_g.step()
        set_requires_grad(distill.discriminator, True)
        return {**d_parts, **g_parts}

    return _loop(dataset, recipe, step, [opt_g, opt_d],
                 {"student": distill.student, "student_discriminator": distill.discriminator,
                  "terms": distill.distiller.terms}, desc)


def train_l1(generator: nn.Module, dataset: Dataset, recipe: Recipe, desc: str = "l1") -> dict[str, Any]:
    """Plain L1 regression (no discriminator): the short proxy training of the U-Net search."""
    _seed(recipe)
    generator.to(recipe.device)
    opt = _adam(generator.parameters(), recipe)

    def step(batch, it):
        x, y = batch
        loss = F.l1_loss(generator(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"l1": loss.item(), "g_loss": loss.item()}

    return _loop(dataset, recipe, step, [opt], {"generator": generator}, desc)


__all__ = ["Recipe", "ImagePool", "linear_decay", "set_requires_grad", "train_pix2pix", "train_cyclegan",
           "train_distillation", "train_l1"]
