"""Training: the loss falls, the run has the asked number of steps, the tables come out usable."""

import pytest
import torch

from tasks.image_compression.losses import RateDistortionLoss
from tasks.image_compression.models import FactorizedPrior, ScaleHyperprior
from tasks.image_compression.train import fit_codec


def _crops(n=16, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, size // 8, size // 8, generator=g)
    return list(torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False))


@pytest.mark.slow
def test_rate_distortion_loss_falls_and_the_codec_becomes_usable():
    torch.manual_seed(0)
    codec = ScaleHyperprior(16, 16, 2, hyper_channels=8)
    crops = _crops()
    history = fit_codec(codec, crops, RateDistortionLoss(0.01), steps=60, batch_size=8, lr=5e-3, seed=0)
    assert len(history) == 60
    first = sum(h["loss"] for h in history[:10]) / 10
    last = sum(h["loss"] for h in history[-10:]) / 10
    assert last < 0.6 * first
    assert history[-1]["aux_loss"] < history[0]["aux_loss"]
    assert codec.ready and not codec.training
    image = (crops[0] * 255).round().to(torch.uint8)
    assert codec.decompress(codec.compress(image)).shape == image.shape


@pytest.mark.slow
def test_a_larger_lambda_buys_quality_with_bits():
    """(The factorized density starts nearly flat, so the rate needs ~100 steps before it bites.)"""
    results = {}
    for lmbda in (0.0002, 0.5):
        torch.manual_seed(0)
        codec = FactorizedPrior(16, 16, 2)
        history = fit_codec(codec, _crops(), RateDistortionLoss(lmbda), steps=150, batch_size=8, lr=1e-2, seed=0)
        results[lmbda] = (sum(h["bpp"] for h in history[-10:]) / 10, sum(h["mse"] for h in history[-10:]) / 10)
    assert results[0.5][0] > 1.5 * results[0.0002][0]  # more bits
    assert results[0.5][1] < 0.5 * results[0.0002][1]  # less distortion


def test_fine_tuning_a_trained_codec_trains_in_train_mode():
    """A codec left in eval mode by a first fit (update()) must fine-tune with noise, not rounding, so that
    g_a gets gradients (Lightning keeps each module's mode at the start of fit)."""
    torch.manual_seed(0)
    codec = ScaleHyperprior(8, 8, 2, hyper_channels=8)
    crops = _crops(n=8)
    fit_codec(codec, crops, RateDistortionLoss(0.01), steps=2, batch_size=4, seed=0)
    assert not codec.training
    modes = []
    handle = codec.g_a.register_forward_hook(lambda module, inputs, output: modes.append(module.training))
    before = [p.detach().clone() for p in codec.g_a.parameters()]
    fit_codec(codec, crops, RateDistortionLoss(0.01), steps=2, batch_size=4, seed=0)
    handle.remove()
    assert modes[:2] == [True, True]
    assert any(not torch.equal(a, b) for a, b in zip(before, codec.g_a.parameters()))
    assert codec.ready and not codec.training
