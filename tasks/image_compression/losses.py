"""The training objective: `R + lambda * D (+ beta * MMD(phi(x), phi(x_hat)))`.

R is the estimated rate in bits per pixel, `-sum log2 p(y_hat) - sum log2 p(z_hat)` over the number of
pixels (Ballé et al., ICLR 2018, eq. 1). D is either `255^2 * MSE` on images in [0, 1] (so lambda is on
the scale of the reference implementations: CompressAI's 0.0018 ... 0.18 for its eight quality
levels) or `1 - MS-SSIM` (lambda 2.4 ... 220 there). The perception term is `PerceptionConsistency`
(Yang et al., ACM MM 2020), weighted by beta; beta = 0 leaves the plain rate-distortion codec.
"""

from __future__ import annotations

import torch
from torch import nn

from tasks.image_compression.metrics import ms_ssim
from tasks.image_compression.models import CodecOutput, bits_per_pixel
from tasks.image_compression.perception import PerceptionConsistency

DISTORTIONS = ("mse", "ms-ssim")


class RateDistortionLoss(nn.Module):
    def __init__(self, lmbda: float = 0.0067, distortion: str = "mse", beta: float = 0.0,
                 perception: PerceptionConsistency | None = None):
        super().__init__()
        if distortion not in DISTORTIONS:
            raise ValueError(f"distortion: expected one of {DISTORTIONS}, got {distortion!r}")
        if lmbda <= 0:
            raise ValueError(f"lmbda: expected a positive number, got {lmbda!r}")
        if beta < 0:
            raise ValueError(f"beta: expected >= 0, got {beta!r}")
        if beta > 0 and perception is None:
            raise ValueError("beta > 0 needs a perception model (the classifier phi)")
        self.lmbda, self.distortion, self.beta = float(lmbda), distortion, float(beta)
        self.perception = perception if beta > 0 else None

    def forward(self, output: CodecOutput, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        num_pixels = x.shape[0] * x.shape[2] * x.shape[3]
        bpp = bits_per_pixel(output.likelihoods, num_pixels)
        mse = torch.mean((output.x_hat - x) ** 2)
        logs = {"bpp": float(bpp.detach()), "mse": float(mse.detach())}
        if self.distortion == "mse":
            distortion = 255.0 ** 2 * mse
        else:
            value = ms_ssim(output.x_hat.clamp(0, 1), x)
            distortion = 1.0 - value
            logs["ms_ssim"] = float(value.detach())
        loss = bpp + self.lmbda * distortion
        if self.perception is not None:
            mmd, parts = self.perception(x, output.x_hat.clamp(0, 1))
            loss = loss + self.beta * mmd
            logs.update(mmd=float(mmd.detach()), **parts)
        logs["loss"] = float(loss.detach())
        return loss, logs


__all__ = ["RateDistortionLoss", "DISTORTIONS"]
