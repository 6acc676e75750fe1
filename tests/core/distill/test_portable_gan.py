"""core.distill.portable_gan and the l1 / gram terms: the student discriminator's loss against a hand
computation, Gram matrices by hand, and a student that learns its teacher's mapping."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from core.distill import GANLoss, GramTerm, PortableGANDistillation, gram_matrix
from core.distill.losses import L1Term


def conv_net(width: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, width, 3, 1, 1), nn.ReLU(), nn.Conv2d(width, width, 3, 1, 1), nn.ReLU(),
                         nn.Conv2d(width, 3, 3, 1, 1), nn.Tanh())


def test_gram_matrix_and_gram_term_match_hand_computations():
    f = torch.tensor([[[[1.0, 2.0], [0.0, 1.0]], [[3.0, 0.0], [1.0, -1.0]]]])  # (1, 2, 2, 2)
    a, b = [1.0, 2.0, 0.0, 1.0], [3.0, 0.0, 1.0, -1.0]
    dot = lambda u, v: sum(x * y for x, y in zip(u, v))  # noqa: E731
    expected = torch.tensor([[dot(a, a), dot(a, b)], [dot(b, a), dot(b, b)]]) / (2 * 2 * 2)
    torch.testing.assert_close(gram_matrix(f)[0], expected)
    g = torch.randn(2, 3, 4, 4)
    term = GramTerm()  # same channels: no adapter
    term.setup(g, g)
    assert term.adapter is None
    assert term(g, g).item() == 0.0
    h = torch.randn(2, 3, 4, 4)
    assert term(g, h).item() == pytest.approx(F.mse_loss(gram_matrix(g), gram_matrix(h)).item())
    # fewer student channels: a 1x1 adapter to the teacher's
    adapted = GramTerm(student_channels=2, teacher_channels=3)
    assert isinstance(adapted.adapter, nn.Conv2d) and adapted.adapter.out_channels == 3
    assert adapted(torch.randn(2, 2, 4, 4), h).dim() == 0
    with pytest.raises(ValueError, match="differ in shape"):
        L1Term()(torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 4, 4))


def test_student_discriminator_sees_real_and_teacher_as_positive():
    torch.manual_seed(0)
    teacher, student = conv_net(8).eval(), conv_net(2)
    disc = nn.Sequential(nn.Conv2d(4, 4, 3, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(4, 1, 3, 1, 1))
    gan = GANLoss("vanilla")
    distill = PortableGANDistillation(teacher, student, disc, [{"loss": "l1"}], gan, target_weight=100.0)
    x, y = torch.randn(3, 1, 8, 8), torch.rand(3, 3, 8, 8) * 2 - 1
    s, t = distill(x)
    torch.testing.assert_close(t, teacher(x))
    loss, _ = distill.discriminator_loss(x, y, s, t)
    d = lambda img: disc(torch.cat([x, img], 1))  # noqa: E731
    positives = torch.cat([d(y), d(t)])
    expected = 0.5 * (F.binary_cross_entropy_with_logits(positives, torch.ones_like(positives))
                      + F.binary_cross_entropy_with_logits(d(s), torch.zeros_like(d(s))))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    # the generator loss: L1 to the teacher + 100 x L1 to the target + the non-saturating adversarial term
    g_loss, parts = distill.generator_loss(x, s, y)
    expected_g = F.l1_loss(s, t) + 100 * F.l1_loss(s, y) + gan.generator(d(s))
    assert g_loss.item() == pytest.approx(expected_g.item(), rel=1e-5)
    assert set(parts) >= {"kd_0:l1", "l1_target", "g_adv", "g_loss"}
    # the reimplementation's variant: teacher as real, no real images
    only_teacher = PortableGANDistillation(teacher, student, disc, [{"loss": "l1"}], gan, real_weight=0.0)
    s, t = only_teacher(x)
    loss, _ = only_teacher.discriminator_loss(x, y, s, t)
    expected = 0.5 * gan.discriminator(d(t), d(s))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(ValueError, match="positives"):
        PortableGANDistillation(teacher, student, disc, [{"loss": "l1"}], gan, teacher_as_real=False, real_weight=0)


@pytest.mark.parametrize("mode", ["lsgan", "pu"])
def test_a_student_learns_the_teacher_mapping_with_features_and_adversary(mode):
    torch.manual_seed(0)
    teacher, student = conv_net(8).eval(), conv_net(4)
    disc = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(8, 1, 3, 1, 1))
    terms = [{"loss": "l1", "weight": 10.0},
             {"loss": "hint", "student": "2", "teacher": "2", "distance": "l1"},
             {"loss": "gram", "student": "2", "teacher": "2", "weight": 100.0}]
    x_val = torch.randn(16, 1, 8, 8)
    distill = PortableGANDistillation(teacher, student, disc, terms, GANLoss(mode, {"every": 20}), conditional=False,
                                      example_input=x_val[:2])
    assert isinstance(distill.distiller.terms[1].adapter, nn.Conv2d)  # 4 -> 8 channels
    opt_g = torch.optim.Adam(distill.generator_parameters(), lr=3e-3)
    opt_d = torch.optim.Adam(disc.parameters(), lr=1e-3)
    with torch.no_grad():
        before = F.l1_loss(student(x_val), teacher(x_val)).item()
    for i in range(150):
        x = torch.randn(8, 1, 8, 8)
        s, t = distill(x)
        opt_d.zero_grad()
        distill.discriminator_loss(x, None, s, t, i)[0].backward()
        opt_d.step()
        opt_g.zero_grad()
        distill.generator_loss(x, s)[0].backward()
        opt_g.step()
    with torch.no_grad():
        after = F.l1_loss(student(x_val), teacher(x_val)).item()
    assert after < 0.5 * before, (before, after)
    distill.close()
