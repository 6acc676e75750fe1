"""core.distill.gan_losses: PU-GAN, PU-LSGAN, standard and LSGAN losses against hand computations, the official
prior schedule, and a small PU-GAN that learns a 1-D distribution."""

import math

import pytest
import torch
from torch import nn

from core.distill import GANLoss, PriorSchedule, pu_discriminator_loss, pu_lsgan_discriminator_loss


def softplus(z: float) -> float:
    return math.log1p(math.exp(z))


def bce(zs, target):
    """Logistic loss of logits zs against a constant target, batch mean, written out."""
    return sum(softplus(-z) if target == 1 else softplus(z) for z in zs) / len(zs)


REAL, FAKE = [0.5, -1.0, 2.0], [1.5, 0.0, -0.5]


def test_pu_discriminator_loss_matches_a_hand_computation():
    prior = 0.3
    positive = prior * bce(REAL, 1)
    negative = bce(FAKE, 0) - prior * bce(REAL, 0)
    assert negative > 0
    expected = positive + negative
    got = pu_discriminator_loss(torch.tensor(REAL), torch.tensor(FAKE), prior)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # the same through GANLoss with a fixed prior, on PatchGAN-shaped outputs (means over batch and patches)
    loss = GANLoss("pu", {"init": prior, "mode": "fixed"})
    got = loss.discriminator(torch.tensor(REAL).view(3, 1, 1, 1), torch.tensor(FAKE).view(3, 1, 1, 1), 123456)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_pu_negative_risk_is_clamped_at_zero():
    """When the unlabeled risk is below pi times the positive-as-negative risk, only the positive term remains."""
    real, fake = [-3.0, -2.5], [-4.0, -5.0]   # D calls the fakes very negative: l(D(G),0) is tiny
    prior = 0.6
    assert bce(fake, 0) - prior * bce(real, 0) < 0
    got = pu_discriminator_loss(torch.tensor(real), torch.tensor(fake), prior)
    assert got.item() == pytest.approx(prior * bce(real, 1), rel=1e-6)
    # and the gradient then does not reach the fake logits
    fake_t = torch.tensor(fake, requires_grad=True)
    pu_discriminator_loss(torch.tensor(real), fake_t, prior).backward()
    assert fake_t.grad.abs().sum().item() == 0.0


def test_pu_lsgan_discriminator_loss_matches_a_hand_computation():
    prior = 0.4
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    positive = prior * mean([(r - 1) ** 2 for r in REAL])
    negative = mean([(f + 1) ** 2 for f in FAKE]) - prior * mean([(r + 1) ** 2 for r in REAL])
    expected = positive + max(0.0, negative)
    got = pu_lsgan_discriminator_loss(torch.tensor(REAL), torch.tensor(FAKE), prior)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    gen = GANLoss("pu_lsgan").generator(torch.tensor(FAKE))
    assert gen.item() == pytest.approx(mean([(f - 1) ** 2 for f in FAKE]), rel=1e-6)


def test_standard_and_lsgan_losses_match_hand_computations():
    vanilla, ls = GANLoss("vanilla"), GANLoss("lsgan")
    r, f = torch.tensor(REAL), torch.tensor(FAKE)
    assert vanilla.discriminator(r, f).item() == pytest.approx(bce(REAL, 1) + bce(FAKE, 0), rel=1e-6)
    # non-saturating generator loss: -log D(G(z)) = softplus(-logit)
    assert vanilla.generator(f).item() == pytest.approx(bce(FAKE, 1), rel=1e-6)
    assert GANLoss("pu").generator(f).item() == pytest.approx(bce(FAKE, 1), rel=1e-6)
    expected_d = sum((x - 1) ** 2 for x in REAL) / 3 + sum(x ** 2 for x in FAKE) / 3
    assert ls.discriminator(r, f).item() == pytest.approx(expected_d, rel=1e-6)
    assert ls.generator(f).item() == pytest.approx(sum((x - 1) ** 2 for x in FAKE) / 3, rel=1e-6)


def test_prior_schedule_follows_the_official_loop():
    """+0.1 when (i + 1) % 10000 == 0, capped at 0.6 (mode 0); fixed (mode 1); +0.2 (mode 2)."""
    stepped = PriorSchedule()
    assert [round(stepped.value(i), 6) for i in (0, 9998, 9999, 19998, 19999, 29999, 39999, 99999)] == \
        [0.3, 0.3, 0.4, 0.4, 0.5, 0.6, 0.6, 0.6]
    assert PriorSchedule(mode="fixed").value(99999) == 0.3
    fast = PriorSchedule(increment=0.2)
    assert [round(fast.value(i), 6) for i in (9998, 9999, 19999, 29999)] == [0.3, 0.5, 0.6, 0.6]
    short = PriorSchedule(every=10)
    assert round(short.value(9), 6) == 0.4
    # the loss uses the scheduled prior of the iteration it is given
    loss = GANLoss("pu", short)
    r, f = torch.tensor(REAL), torch.tensor(FAKE)
    assert loss.discriminator(r, f, 9).item() == pytest.approx(pu_discriminator_loss(r, f, 0.4).item())
    with pytest.raises(ValueError, match="prior.mode"):
        PriorSchedule(mode="linear")
    with pytest.raises(ValueError, match="prior.cap"):
        PriorSchedule(init=0.7)
    with pytest.raises(ValueError, match="gan_loss"):
        GANLoss("wgan")


@pytest.mark.parametrize("mode", ["pu", "pu_lsgan"])
def test_a_pu_gan_learns_a_shifted_gaussian(mode):
    """G(z) = a z + b against real N(3, 0.5^2): trained with the PU losses, G's mean moves to the real mean."""
    torch.manual_seed(0)
    g = nn.Linear(1, 1)
    d = nn.Sequential(nn.Linear(1, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))
    loss = GANLoss(mode, {"init": 0.3, "every": 100, "increment": 0.1, "cap": 0.6})
    opt_g = torch.optim.Adam(g.parameters(), lr=2e-2, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=2e-2, betas=(0.5, 0.999))
    start = g.bias.item()
    means = []
    for i in range(600):
        real = 3.0 + 0.5 * torch.randn(64, 1)
        fake = g(torch.randn(64, 1))
        opt_d.zero_grad()
        loss.discriminator(d(real), d(fake.detach()), i).backward()
        opt_d.step()
        opt_g.zero_grad()
        loss.generator(d(fake)).backward()
        opt_g.step()
        means.append(g.bias.item())
    end = sum(means[-200:]) / 200  # G's mean, averaged over the last steps (a GAN oscillates around it)
    assert abs(start - 3.0) > 2.0 and abs(end - 3.0) < 0.25, (start, end)
