"""Image compression metrics: bits per pixel from the bytes, PSNR on 8-bit RGB, MS-SSIM (and in dB), BD-rate.

- PSNR: 10 log10(255^2 / MSE) over all pixels and the three RGB channels of the 8-bit images
  (the convention of the learned-compression literature, e.g. CompressAI's `compute_metrics`).
- MS-SSIM: Wang, Simoncelli, Bovik, "Multi-scale structural similarity for image quality assessment",
  2003, through torchmetrics (5 scales, Gaussian window 11, sigma 1.5, the paper's weights) on the
  8-bit images scaled to [0, 1]; images too small for 5 scales use the first scales that fit, the
  weights renormalised. In dB: -10 log10(1 - MS-SSIM).
- BD-rate: Bjontegaard, "Calculation of average PSNR differences between RD-curves", VCEG-M33, 2001:
  the mean log-rate difference between two rate-distortion curves over their common quality range,
  as a percentage (negative: fewer bits for the same quality). Computed by the `bjontegaard` package
  with piecewise cubic Hermite interpolation (`pchip`, as the current JVET common test conditions do
  rather than VCEG-M33's cubic fit). `bd_quality` is the same integral along the rate axis
  (Bjontegaard's BD-PSNR), used here for BD-accuracy too.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
MS_SSIM_KERNEL = 11


def bits_per_pixel(data: bytes, height: int, width: int) -> float:
    return 8.0 * len(data) / (height * width)


def mse_uint8(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    return float((a.double() - b.double()).pow(2).mean())


def psnr_uint8(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB between two uint8 images (inf when identical)."""
    mse = mse_uint8(a, b)
    return math.inf if mse == 0 else 10.0 * math.log10(255.0 ** 2 / mse)


def ms_ssim_scales(height: int, width: int, kernel: int = MS_SSIM_KERNEL) -> int:
    """How many MS-SSIM scales an image of this size allows: the coarsest must still hold the window, and
    torchmetrics' own check (`side // (scales - 1)^2 > kernel - 1`) must pass."""
    side = min(height, width)
    scales = len(MS_SSIM_WEIGHTS)
    while scales > 1 and not (side // max(1, scales - 1) ** 2 > kernel - 1 and side / 2 ** (scales - 1) >= kernel):
        scales -= 1
    return scales


def ms_ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """MS-SSIM of (B, 3, H, W) float batches (differentiable; the loss uses it), mean over the batch."""
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

    n = ms_ssim_scales(*x.shape[-2:])
    betas = tuple(w / sum(MS_SSIM_WEIGHTS[:n]) for w in MS_SSIM_WEIGHTS[:n])
    return multiscale_structural_similarity_index_measure(x, y, data_range=data_range, betas=betas,
                                                          kernel_size=MS_SSIM_KERNEL)


def ms_ssim_uint8(a: torch.Tensor, b: torch.Tensor) -> float:
    """MS-SSIM of two uint8 images (float32: float64 is ten times slower on the CPU for no visible digit)."""
    return float(ms_ssim(a[None].float() / 255.0, b[None].float() / 255.0))


def to_db(ms_ssim_value: float) -> float:
    return math.inf if ms_ssim_value >= 1 else -10.0 * math.log10(1.0 - ms_ssim_value)


def image_metrics(original: torch.Tensor, decoded: torch.Tensor, data: bytes) -> dict[str, float]:
    """bpp (from the bytes), PSNR, MS-SSIM and MS-SSIM in dB of one decoded uint8 image."""
    h, w = original.shape[-2:]
    value = ms_ssim_uint8(original, decoded)
    return {"bytes": float(len(data)), "bpp": bits_per_pixel(data, h, w), "psnr": psnr_uint8(original, decoded),
            "ms_ssim": value, "ms_ssim_db": to_db(value)}


def _curve(rates: Sequence[float], quality: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    rates, quality = np.asarray(rates, dtype=np.float64), np.asarray(quality, dtype=np.float64)
    if rates.shape != quality.shape or len(rates) < 2:
        raise ValueError(f"a rate-distortion curve needs >= 2 (rate, quality) points, got {len(rates)}")
    if (rates <= 0).any() or not np.isfinite(quality).all():
        raise ValueError("a rate-distortion curve needs positive rates and finite qualities")
    return rates, quality


def _monotone(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort by x and drop points whose x repeats (interpolation needs a strictly increasing x)."""
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    keep = np.concatenate([[True], np.diff(x) > 0])
    return x[keep], y[keep]


def bd_rate(anchor_rates: Sequence[float], anchor_quality: Sequence[float], test_rates: Sequence[float],
            test_quality: Sequence[float], method: str = "pchip") -> float:
    """Bjontegaard delta rate of `test` against `anchor` in percent (negative = test needs fewer bits);
    NaN when the quality ranges do not overlap."""
    import bjontegaard

    ra, qa = _curve(anchor_rates, anchor_quality)
    rt, qt = _curve(test_rates, test_quality)
    qa, ra = _monotone(qa, ra)
    qt, rt = _monotone(qt, rt)
    if len(qa) < 2 or len(qt) < 2:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # partial overlap warns; the overlap is reported by the caller
        value = bjontegaard.bd_linear(qa, np.log10(ra), qt, np.log10(rt), method, require_matching_points=False,
                                      min_overlap=0)
    return float((10 ** value - 1) * 100) if np.isfinite(value) else math.nan


def bd_quality(anchor_rates: Sequence[float], anchor_quality: Sequence[float], test_rates: Sequence[float],
               test_quality: Sequence[float], method: str = "pchip") -> float:
    """Mean quality difference (test - anchor) over the common log-rate range (BD-PSNR, or BD-accuracy)."""
    import bjontegaard

    ra, qa = _curve(anchor_rates, anchor_quality)
    rt, qt = _curve(test_rates, test_quality)
    la, qa = _monotone(np.log10(ra), qa)
    lt, qt = _monotone(np.log10(rt), qt)
    if len(la) < 2 or len(lt) < 2:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = bjontegaard.bd_linear(la, qa, lt, qt, method, require_matching_points=False, min_overlap=0)
    return float(value)


def quality_at_rate(rates: Sequence[float], quality: Sequence[float], rate: float) -> float:
    """Quality at `rate`, linear in log-rate between the two nearest points (extrapolated from the
    end segment outside the curve)."""
    r, q = _curve(rates, quality)
    lr, q = _monotone(np.log(r), q)
    if len(lr) == 1:
        return float(q[0])
    target = math.log(rate)
    i = int(np.clip(np.searchsorted(lr, target) - 1, 0, len(lr) - 2))
    t = (target - lr[i]) / (lr[i + 1] - lr[i])
    return float(q[i] + t * (q[i + 1] - q[i]))


__all__ = ["bits_per_pixel", "psnr_uint8", "mse_uint8", "ms_ssim", "ms_ssim_uint8", "ms_ssim_scales", "to_db",
           "image_metrics", "bd_rate", "bd_quality", "quality_at_rate"]
