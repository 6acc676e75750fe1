"""Adversarial losses for any GAN: the standard (non-saturating) GAN, LSGAN, and the PU-GAN losses.

PU-GAN (Guo et al., "On Positive-Unlabeled Classification in GAN", CVPR 2020,
arXiv 2002.01136, sec. 3; official code `huangjiadidi/PUGAN`, `GAN_losses_iter.py`)
lets the discriminator treat real data as positive and generated data as
unlabeled: a share pi of what the generator makes may already be as good as
real. With l the logistic loss on logits (`BCEWithLogits`, batch mean):

    L_D = pi * l(D(x), 1) + max(0, l(D(G(z)), 0) - pi * l(D(x), 0))          (`--loss_D 5`)
    L_G = l(D(G(z)), 1)                                 (the non-saturating generator loss)

and the least-squares variant with targets +1 / -1 (`--loss_D 6`):

    L_D = pi * mean((D(x) - 1)^2) + max(0, mean((D(G(z)) + 1)^2) - pi * mean((D(x) + 1)^2))
    L_G = mean((D(G(z)) - 1)^2)

The max(0, .) is taken on the batch means, as the official code does (the
non-negative PU risk estimator of Kiryo et al., NeurIPS 2017). For a PatchGAN
the means run over the batch and the patches together.

The prior pi follows the official schedule (`PriorSchedule`): `--prior 0.3`;
`--prior_increase_mode 0` adds 0.1 whenever (i + 1) % 10000 == 0 at iteration
i, capped at 0.6 (`mode: stepped`); mode 1 keeps it fixed (`mode: fixed`);
mode 2 adds 0.2 (`mode: stepped, increment: 0.2`). The official code counts
10,000 iterations of a 100,000-iteration run; for shorter runs set `every`.

The other modes are the pix2pix/CycleGAN ones (Isola et al. 2017, Zhu et al.
2017, `models/networks.py` `GANLoss`): `vanilla` (BCE with targets 1/0, the
generator with target 1) and `lsgan` (MSE with targets 1/0; Mao et al. 2017).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

GAN_MODES = ("vanilla", "lsgan", "pu", "pu_lsgan")


def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def _sq(logits: torch.Tensor, target: float) -> torch.Tensor:
    return (logits - target).pow(2).mean()


def pu_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, prior: float) -> torch.Tensor:
    """PU-GAN's discriminator loss (official `--loss_D 5`): pi*l(D(x),1) + max(0, l(D(G(z)),0) - pi*l(D(x),0))."""
    positive = prior * _bce(real_logits, 1.0)
    negative = _bce(fake_logits, 0.0) - prior * _bce(real_logits, 0.0)
    return positive + negative.clamp_min(0.0)


def pu_lsgan_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, prior: float) -> torch.Tensor:
    """PU-LSGAN's discriminator loss (official `--loss_D 6`), targets +1 for positive and -1 for negative."""
    positive = prior * _sq(real_logits, 1.0)
    negative = _sq(fake_logits, -1.0) - prior * _sq(real_logits, -1.0)
    return positive + negative.clamp_min(0.0)


@dataclass(frozen=True)
class PriorSchedule:
    """The class prior pi of PU-GAN over training iterations (see the module docstring).

    `value(i)` is the prior the official loop uses at iteration i (0-based):
    `init` for `mode: fixed`; for `mode: stepped`,
    min(cap, init + increment * floor((i + 1) / every)).
    """

    init: float = 0.3
    mode: str = "stepped"
    every: int = 10000
    increment: float = 0.1
    cap: float = 0.6

    def __post_init__(self):
        if self.mode not in ("stepped", "fixed"):
            raise ValueError(f"prior.mode: expected 'stepped' or 'fixed', got {self.mode!r}")
        if not 0.0 < self.init < 1.0:
            raise ValueError(f"prior.init: expected a number in (0, 1), got {self.init!r}")
        if self.every < 1:
            raise ValueError(f"prior.every: expected an integer >= 1, got {self.every!r}")
        if self.mode == "stepped" and not self.init <= self.cap < 1.0:
            raise ValueError(f"prior.cap: expected init <= cap < 1, got cap={self.cap!r} with init={self.init!r}")

    def value(self, iteration: int) -> float:
        if self.mode == "fixed":
            return self.init
        steps = (int(iteration) + 1) // self.every
        return min(self.cap, self.init + self.increment * steps)


class GANLoss:
    """Discriminator and generator losses of one `mode` on raw discriminator outputs (logits / scores).

    `discriminator(real, fake, iteration)` is the loss D minimises, with `real`
    the outputs on positive samples (several sets may be concatenated along the
    batch) and `fake` those on generated ones (detached by the caller);
    `generator(fake)` is the loss G minimises. `iteration` only matters to the
    PU modes (the prior schedule).
    """

    def __init__(self, mode: str = "vanilla", prior: PriorSchedule | dict | None = None):
        if mode not in GAN_MODES:
            raise ValueError(f"gan_loss: expected one of {', '.join(GAN_MODES)}, got {mode!r}")
        self.mode = mode
        self.prior = prior if isinstance(prior, PriorSchedule) else PriorSchedule(**(prior or {}))

    def prior_at(self, iteration: int) -> float:
        return self.prior.value(iteration)

    def discriminator(self, real: torch.Tensor, fake: torch.Tensor, iteration: int = 0) -> torch.Tensor:
        if self.mode == "vanilla":
            return _bce(real, 1.0) + _bce(fake, 0.0)
        if self.mode == "lsgan":
            return _sq(real, 1.0) + _sq(fake, 0.0)
        if self.mode == "pu":
            return pu_discriminator_loss(real, fake, self.prior_at(iteration))
        return pu_lsgan_discriminator_loss(real, fake, self.prior_at(iteration))

    def generator(self, fake: torch.Tensor) -> torch.Tensor:
        if self.mode in ("vanilla", "pu"):
            return _bce(fake, 1.0)
        return _sq(fake, 1.0)

    def __repr__(self) -> str:
        prior = f", prior={self.prior}" if self.mode.startswith("pu") else ""
        return f"GANLoss({self.mode!r}{prior})"


__all__ = ["GAN_MODES", "GANLoss", "PriorSchedule", "pu_discriminator_loss", "pu_lsgan_discriminator_loss"]
