"""PSNR and SSIM as the SR literature reports them: on the Y channel, `scale` pixels of border cropped.

Both come from `basicsr.metrics` (`calculate_psnr`, `calculate_ssim` with
`test_y_channel=True`, MATLAB's BT.601 Y of 8-bit images); a network's [0, 1]
RGB output is rounded to 8 bits first by basicsr's `tensor2img`, as basicsr's
own validation does.
"""

from __future__ import annotations

import numpy as np
import torch

from tasks.super_resolution._basicsr import calculate_psnr, calculate_ssim, tensor2img


def to_image(t: torch.Tensor) -> np.ndarray:
    """A CHW RGB tensor in [0, 1] as an 8-bit HWC BGR array (basicsr's and OpenCV's order)."""
    return tensor2img(t.detach().float().cpu(), rgb2bgr=True, min_max=(0, 1))


def psnr_y(sr: torch.Tensor | np.ndarray, hr: torch.Tensor | np.ndarray, scale: int) -> float:
    sr, hr = (to_image(x) if isinstance(x, torch.Tensor) else x for x in (sr, hr))
    return float(calculate_psnr(sr, hr, crop_border=scale, input_order="HWC", test_y_channel=True))


def ssim_y(sr: torch.Tensor | np.ndarray, hr: torch.Tensor | np.ndarray, scale: int) -> float:
    sr, hr = (to_image(x) if isinstance(x, torch.Tensor) else x for x in (sr, hr))
    return float(calculate_ssim(sr, hr, crop_border=scale, input_order="HWC", test_y_channel=True))


__all__ = ["to_image", "psnr_y", "ssim_y"]
