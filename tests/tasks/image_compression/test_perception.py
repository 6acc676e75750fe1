"""The perception-consistency term and the rate-distortion loss."""

import math

import pytest
import torch
import torchvision

from core.distill import mmd
from tasks.image_compression.losses import RateDistortionLoss
from tasks.image_compression.models import CodecOutput
from tasks.image_compression.perception import Classifier, PerceptionConsistency


def _phi():
    torch.manual_seed(0)
    return Classifier(torchvision.models.resnet18(num_classes=4))


def test_mmd_is_zero_for_identical_images_and_grows_with_distortion():
    term = PerceptionConsistency(_phi(), ["layer1", "layer2"])
    x = torch.rand(4, 3, 64, 64)
    zero, parts = term(x, x.clone())
    assert float(zero) == pytest.approx(0.0, abs=1e-6) and set(parts) == {"mmd/layer1", "mmd/layer2"}
    small, _ = term(x, (x + 0.02 * torch.randn_like(x)).clamp(0, 1))
    large, _ = term(x, (x + 0.3 * torch.randn_like(x)).clamp(0, 1))
    assert 0 < float(small) < float(large)


def test_mmd_matches_the_core_estimator_on_the_tapped_features():
    phi = _phi().eval()
    term = PerceptionConsistency(phi, ["layer2"], mode="batch", kernel="gaussian", sigma=2.0)
    x, y = torch.rand(3, 3, 64, 64), torch.rand(3, 3, 64, 64)
    feats = {}
    handle = phi.model.layer2.register_forward_hook(lambda m, i, o: feats.setdefault(len(feats), o))
    with torch.no_grad():
        phi(x)
        phi(y)
    handle.remove()
    expected = mmd(feats[1].flatten(1), feats[0].flatten(1), kernel="gaussian", sigma=2.0)
    got, _ = term(x, y)
    assert float(got) == pytest.approx(float(expected), rel=1e-5)


def test_gradients_reach_the_decoded_image_not_phi():
    term = PerceptionConsistency(_phi(), ["layer2"])
    x = torch.rand(2, 3, 64, 64)
    x_hat = (x + 0.1 * torch.randn_like(x)).clamp(0, 1).requires_grad_(True)
    value, _ = term(x, x_hat)
    value.backward()
    assert x_hat.grad is not None and x_hat.grad.abs().sum() > 0
    assert all(p.grad is None for p in term.classifier.parameters())
    term.train()
    assert not term.classifier.training  # phi stays in eval mode (BatchNorm statistics frozen)


def test_unknown_layer_names_the_closest_modules():
    with pytest.raises(KeyError, match="layer2"):
        PerceptionConsistency(_phi(), ["layr2"])


def test_rate_distortion_loss_by_hand():
    x = torch.full((1, 3, 4, 4), 0.5)
    x_hat = x + 0.1
    likelihoods = (torch.full((1, 2, 1, 1), 0.25), torch.full((1, 1, 1, 1), 0.5))  # 2 x 2 bits + 1 bit = 5 bits
    loss, logs = RateDistortionLoss(lmbda=0.01)(CodecOutput(x_hat, likelihoods), x)
    bpp = 5 / 16
    assert logs["bpp"] == pytest.approx(bpp)
    assert float(loss) == pytest.approx(bpp + 0.01 * 255 ** 2 * 0.01, rel=1e-5)
    loss_ms, logs_ms = RateDistortionLoss(lmbda=2.0, distortion="ms-ssim")(
        CodecOutput(torch.rand(1, 3, 64, 64), likelihoods), torch.rand(1, 3, 64, 64))
    assert float(loss_ms) == pytest.approx(5 / 64 ** 2 + 2.0 * (1 - logs_ms["ms_ssim"]), rel=1e-5)
    with pytest.raises(ValueError, match="perception"):
        RateDistortionLoss(beta=1.0)


def test_the_perception_term_adds_beta_times_mmd():
    term = PerceptionConsistency(_phi(), ["layer2"])
    x = torch.rand(2, 3, 64, 64)
    x_hat = (x + 0.1).clamp(0, 1)
    out = CodecOutput(x_hat, (torch.full((2, 1, 1, 1), 0.5),))
    plain, _ = RateDistortionLoss(0.01)(out, x)
    with_mmd, logs = RateDistortionLoss(0.01, beta=3.0, perception=term)(out, x)
    assert float(with_mmd - plain) == pytest.approx(3.0 * logs["mmd"], rel=1e-4)
    assert logs["mmd"] > 0 and not math.isnan(logs["mmd/layer2"])
