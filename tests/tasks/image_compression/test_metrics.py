"""PSNR, MS-SSIM, BD-rate and the Pillow codecs, against hand computations."""

import math

import pytest
import torch

from tasks.image_compression.classical import PillowCodec, sweep
from tasks.image_compression.evaluate import Curve, compare, evaluate_images, rate_saving_at
from tasks.image_compression.metrics import (bd_quality, bd_rate, image_metrics, ms_ssim_scales, ms_ssim_uint8,
                                             psnr_uint8, quality_at_rate, to_db)


def _photo(h=64, w=80, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.nn.functional.interpolate(torch.rand(1, 3, h // 8, w // 8, generator=g), size=(h, w),
                                           mode="bicubic", align_corners=False)[0].clamp(0, 1)
    return (base * 255).round().to(torch.uint8)


def test_psnr_on_8bit_images_by_hand():
    a = torch.full((3, 4, 4), 100, dtype=torch.uint8)
    b = a.clone()
    b[0, 0, 0] = 104  # one error of 4 in 48 values: MSE = 16 / 48
    assert psnr_uint8(a, b) == pytest.approx(10 * math.log10(255 ** 2 / (16 / 48)))
    assert psnr_uint8(a, a) == math.inf


def test_ms_ssim_identity_and_scales():
    image = _photo(200, 240)
    assert ms_ssim_uint8(image, image) == pytest.approx(1.0, abs=1e-6)
    noisy = (image.int() + torch.randint(-20, 21, image.shape, generator=torch.Generator().manual_seed(1))).clamp(
        0, 255).to(torch.uint8)
    value = ms_ssim_uint8(image, noisy)
    assert 0.5 < value < 1.0
    assert to_db(value) == pytest.approx(-10 * math.log10(1 - value))
    assert ms_ssim_scales(512, 768) == 5 and ms_ssim_scales(172, 448) == 4 and ms_ssim_scales(64, 64) == 3
    assert ms_ssim_scales(24, 24) == 2
    text = _photo(172, 200)
    assert 0.99 < ms_ssim_uint8(text, text) <= 1.0 + 1e-6  # 4 scales: torchmetrics accepts it


def test_bd_rate_of_a_curve_shifted_in_rate():
    rates = [0.1, 0.2, 0.4, 0.8]
    psnr = [26.0, 29.0, 32.0, 35.0]
    assert bd_rate(rates, psnr, [0.8 * r for r in rates], psnr) == pytest.approx(-20.0, abs=1e-6)
    assert bd_rate(rates, psnr, [1.5 * r for r in rates], psnr) == pytest.approx(50.0, abs=1e-6)
    assert bd_quality(rates, psnr, rates, [q + 1.25 for q in psnr]) == pytest.approx(1.25, abs=1e-9)
    # no common quality range: undefined
    assert math.isnan(bd_rate(rates, psnr, rates, [q + 20 for q in psnr]))


def test_quality_at_rate_is_log_linear():
    assert quality_at_rate([0.1, 0.4], [20.0, 30.0], 0.2) == pytest.approx(25.0)
    assert quality_at_rate([0.1, 0.4], [20.0, 30.0], 0.8) == pytest.approx(35.0)  # the end segment, extrapolated


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_pillow_codecs_round_trip_and_count_every_byte(fmt):
    image = _photo()
    low, high = PillowCodec(fmt, 10), PillowCodec(fmt, 90)
    small, big = low.compress(image), high.compress(image)
    assert small[:4] in (b"\xff\xd8\xff\xe0", b"\xff\xd8\xff\xdb") if fmt == "jpeg" else small[:4] == b"RIFF"
    assert len(small) < len(big)
    decoded = high.decompress(big)
    assert decoded.shape == image.shape and decoded.dtype == torch.uint8
    metrics = image_metrics(image, decoded, big)
    assert metrics["bpp"] == pytest.approx(8 * len(big) / (64 * 80))
    assert metrics["psnr"] > image_metrics(image, low.decompress(small), small)["psnr"]
    with pytest.raises(ValueError, match="quality"):
        PillowCodec(fmt, 101)


def test_curves_compare_a_codec_with_itself_as_zero():
    images = [_photo(seed=s) for s in range(2)]
    rows, kept = evaluate_images(PillowCodec("jpeg", 50), images, ["a", "b"], keep=1)
    assert [r["image"] for r in rows] == ["a", "b"] and len(kept) == 1
    assert all(r["encode_ms"] > 0 and r["decode_ms"] > 0 for r in rows)
    from tasks.image_compression.evaluate import measure_curve

    jpeg = measure_curve("JPEG", sweep("jpeg", (10, 30, 60, 90)), images)
    assert [p["bpp"] for p in jpeg.points] == sorted(p["bpp"] for p in jpeg.points)
    same = compare(jpeg, Curve("copy", [dict(p) for p in jpeg.points]))
    assert same["bd_rate_psnr"] == pytest.approx(0.0, abs=1e-9) and same["bd_psnr"] == pytest.approx(0.0, abs=1e-9)
    middle = jpeg.points[1]
    assert rate_saving_at(jpeg, middle["bpp"] * 0.9, middle["psnr"]) == pytest.approx(-10.0, abs=1e-6)
