"""Portable GAN distillation: a student generator and a student discriminator trained together.

Chen et al., "Distilling Portable Generative Adversarial Networks for Image
Translation", AAAI 2020 (arXiv 2003.03519). A student generator G_S inherits
low- and high-level information from the teacher generator G_T, and a student
discriminator D_S, which sees real images, teacher outputs and student
outputs, is trained adversarially against G_S.

The paper's exact formulas and weights are not known (METHODS.md 3.4: no
official code; only the abstract was checked). What this class does, and why:

- G_S minimises `terms` of a core `Distiller` on G_T (frozen, eval mode) and
  G_S, tapped by module path: by default the task passes L1 between the
  outputs (the MindSpore CycleGAN `kd` option's term), feature terms on
  intermediate maps through 1x1 adapters (`hint`, L1 distance) and Gram-matrix
  style terms (`gram`; the GAN-Slimming reimplementation's style loss); plus
  `target_weight` x L1 to the ground truth when the data are paired (the
  pix2pix recipe the student would follow alone), plus `adversarial_weight` x
  the GAN generator loss through D_S.
- D_S takes real images and, with `teacher_as_real` (default), the teacher's
  outputs as positive, and the student's outputs as negative, so it learns what
  separates the student from both; the derivative reimplementation instead
  opposes teacher (real) to student (fake) only (`real_weight: 0` here). Its
  loss is the chosen `GANLoss` (standard, LSGAN or PU-GAN) halved, as pix2pix
  halves its discriminator loss.
- `conditional`: D sees (input, image) concatenated along channels, as the
  pix2pix PatchGAN does; unconditional for unpaired (CycleGAN-style) data.

One training step, as pix2pix orders it: `s, t = distill(x)`; a D_S step on
`discriminator_loss(x, y, s, t)`; a G_S step on `generator_loss(x, s, y)`
with D_S's parameters frozen. The two optimizers are the caller's.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.distill.distiller import Distiller
from core.distill.gan_losses import GANLoss


class PortableGANDistillation(nn.Module):
    def __init__(self, teacher: nn.Module, student: nn.Module, discriminator: nn.Module,
                 terms: Sequence[Mapping[str, Any]], gan_loss: GANLoss, adversarial_weight: float = 1.0,
                 target_weight: float = 0.0, teacher_as_real: bool = True, real_weight: float = 1.0,
                 conditional: bool = True, example_input: torch.Tensor | None = None, tap_backend: str = "auto"):
        super().__init__()
        if not teacher_as_real and real_weight <= 0:
            raise ValueError("distill: the student discriminator needs positives: teacher_as_real or real_weight > 0")
        self.distiller = Distiller(teacher, student, list(terms), example_input, tap_backend)
        self.discriminator = discriminator
        self.gan_loss = gan_loss
        self.adversarial_weight, self.target_weight = float(adversarial_weight), float(target_weight)
        self.teacher_as_real, self.real_weight = bool(teacher_as_real), float(real_weight)
        self.conditional = bool(conditional)

    @property
    def student(self) -> nn.Module:
        return self.distiller.student

    @property
    def teacher(self) -> nn.Module:
        return self.distiller.teacher

    def generator_parameters(self) -> Iterator[nn.Parameter]:
        """What the generator optimizer updates: the student and the distillation terms' adapters."""
        return self.distiller.trainable_parameters()

    def train(self, mode: bool = True) -> "PortableGANDistillation":
        super().train(mode)
        self.distiller.train(mode)  # keeps the teacher in eval mode
        return self

    def _d_in(self, x: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, image], 1) if self.conditional else image

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(student output, teacher output) on `x`; the taps are kept for `generator_loss`."""
        student_out = self.distiller(x)
        teacher_out = self.distiller.last_teacher_output
        if teacher_out is None:  # no term reads the teacher: run it for the discriminator
            with torch.no_grad():
                teacher_out = self.teacher(x)
        return student_out, teacher_out.detach()

    def discriminator_loss(self, x: torch.Tensor, real: torch.Tensor | None, student_out: torch.Tensor,
                           teacher_out: torch.Tensor, iteration: int = 0) -> tuple[torch.Tensor, dict[str, float]]:
        """D_S's loss: positives (real images, teacher outputs), negatives (student outputs, detached)."""
        positives = []
        if real is not None and self.real_weight > 0:
            positives.append(self.discriminator(self._d_in(x, real)))
        if self.teacher_as_real:
            positives.append(self.discriminator(self._d_in(x, teacher_out)))
        if not positives:
            raise ValueError("distill: no positive images for the student discriminator (no real batch given)")
        negative = self.discriminator(self._d_in(x, student_out.detach()))
        loss = 0.5 * self.gan_loss.discriminator(torch.cat(positives), negative, iteration)
        return loss, {"d_loss": float(loss.detach())}

    def generator_loss(self, x: torch.Tensor, student_out: torch.Tensor, target: torch.Tensor | None = None,
                       ) -> tuple[torch.Tensor, dict[str, float]]:
        """G_S's loss: the distillation terms + target L1 (paired data) + the adversarial term through D_S."""
        distill = self.distiller.loss(student_out)
        parts = {f"kd_{k}": v for k, v in self.distiller.last_terms.items()}
        total = distill
        if target is not None and self.target_weight > 0:
            l1 = F.l1_loss(student_out, target)
            total = total + self.target_weight * l1
            parts["l1_target"] = float(l1.detach())
        if self.adversarial_weight > 0:
            adv = self.gan_loss.generator(self.discriminator(self._d_in(x, student_out)))
            total = total + self.adversarial_weight * adv
            parts["g_adv"] = float(adv.detach())
        parts["g_loss"] = float(total.detach())
        return total, parts

    def close(self) -> None:
        self.distiller.close()


__all__ = ["PortableGANDistillation"]
