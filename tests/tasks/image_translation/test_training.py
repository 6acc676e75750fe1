"""GAN training loops on a few embedded tiles: pix2pix (standard and PU-GAN losses), CycleGAN and portable
distillation each lower their reconstruction term, write per-epoch checkpoints, and load weights-only."""

import pytest
import torch
from torch.utils.data import Subset

from core.distill import GANLoss
from core.engine.runs import load_checkpoint
from tasks.image_translation.data import translation_embedded
from tasks.image_translation.models import PatchDiscriminator, ResnetGenerator, init_gan_weights, pix2pix_unet
from tasks.image_translation.task import default_terms
from tasks.image_translation.space import unet_arch
from tasks.image_translation.training import ImagePool, Recipe, linear_decay, train_cyclegan, train_distillation, \
    train_pix2pix


@pytest.fixture(scope="module")
def data():
    return translation_embedded()


def small(dataset, n=16):
    sub = Subset(dataset, list(range(n)))
    sub.paired, sub.in_channels, sub.out_channels = True, dataset.in_channels, dataset.out_channels
    return sub


def test_linear_decay_and_image_pool():
    f = linear_decay(100, 0.5)
    assert [f(0), f(49), f(50), f(75), f(99)] == [1.0, 1.0, 1.0, 0.5, pytest.approx(0.02)]
    pool = ImagePool(2)
    a = torch.zeros(2, 1, 2, 2)
    assert torch.equal(pool.query(a), a) and len(pool.images) == 2


@pytest.mark.parametrize("mode", ["vanilla", "pu"])
def test_pix2pix_lowers_l1_and_checkpoints_every_epoch(data, tmp_path, mode):
    torch.manual_seed(0)
    g = init_gan_weights(pix2pix_unet(1, 3, 4, 6))
    d = init_gan_weights(PatchDiscriminator(4, 8, 3))
    recipe = Recipe(epochs=6, batch_size=4, lr=2e-3, decay_fraction=0.0, checkpoint_dir=str(tmp_path / "ckpt"))
    summary = train_pix2pix(g, d, small(data.train), GANLoss(mode, {"every": 4}), recipe)
    history = summary["history"]
    assert summary["steps"] == 24 and len(history) == 6
    assert history[-1]["l1"] < 0.8 * history[0]["l1"], history
    payload = load_checkpoint(tmp_path / "ckpt" / "epoch_006.pt")
    assert payload["iteration"] == 24 and set(payload) >= {"generator", "discriminator", "optimizer0"}
    g.load_state_dict(payload["generator"])


@pytest.mark.slow
def test_cyclegan_lowers_the_cycle_loss(data):
    torch.manual_seed(0)
    unpaired = translation_embedded(unpaired=True)
    train = Subset(unpaired.train, list(range(12)))
    g_a, g_b = ResnetGenerator(1, 3, 4, 2, "instance"), ResnetGenerator(3, 1, 4, 2, "instance")
    d_a, d_b = PatchDiscriminator(3, 8, 2, "instance"), PatchDiscriminator(1, 8, 2, "instance")
    for m in (g_a, g_b, d_a, d_b):
        init_gan_weights(m)
    recipe = Recipe(epochs=12, batch_size=4, lr=2e-3, decay_fraction=0.0, lambda_identity=0.5)
    summary = train_cyclegan(g_a, g_b, d_a, d_b, train, GANLoss("lsgan"), recipe)
    history = summary["history"]
    assert "identity" not in history[0]  # 1 vs 3 channels: no identity term
    assert history[-1]["cycle"] < 0.75 * history[0]["cycle"], [h["cycle"] for h in history]


def test_distillation_brings_the_student_to_the_teacher(data):
    from core.distill import PortableGANDistillation

    torch.manual_seed(0)
    teacher = init_gan_weights(pix2pix_unet(1, 3, 8, 6)).eval()
    student = init_gan_weights(pix2pix_unet(1, 3, 2, 6))
    terms = default_terms(unet_arch(2, 6))
    assert [t["loss"] for t in terms] == ["l1", "hint", "gram", "hint", "gram"]
    assert {t["student"] for t in terms} == {"", "downs.3", "ups.2"}
    train = small(data.train)
    distill = PortableGANDistillation(teacher, student, init_gan_weights(PatchDiscriminator(4, 8, 3)), terms,
                                      GANLoss("pu", {"every": 5}), target_weight=0.0,
                                      example_input=torch.zeros(2, 1, 64, 64))
    x = torch.stack([train[i][0] for i in range(8)])
    with torch.no_grad():
        before = (student(x) - teacher(x)).abs().mean().item()
    summary = train_distillation(distill, train, Recipe(epochs=6, batch_size=4, lr=2e-3, decay_fraction=0.0))
    with torch.no_grad():
        after = (student.eval()(x) - teacher(x)).abs().mean().item()
    assert after < 0.6 * before, (before, after)
    assert summary["history"][-1]["kd_0:l1"] < summary["history"][0]["kd_0:l1"]
    assert teacher.training is False
