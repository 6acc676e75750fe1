"""`codec_rd`: the evaluator that lets any sample-based strategy search the `codec` space.

Each candidate codec is trained from scratch (`fit_codec`) for `steps` at each of `lambdas`, then coded
through its real bitstream on the validation images. Reported metrics (besides params and MACs at
the space's `cost_size`, known before training so `macs <= X` / `latency_ms <= X` constraints reject
a candidate before it costs anything):

- `rd_cost`: mean over the lambdas of `bpp + lambda * 255^2 * MSE` on the real bits (minimise);
- `bpp@<lambda>`, `psnr@<lambda>`: each trained point;
- with two or more lambdas: `psnr_at_bpp`, the PSNR at `target_bpp` (linear in log-rate between the
  nearest points; maximise), and `bd_rate_jpeg`, the BD-rate against JPEG's curve on the same images
  (percent, minimise; absent when the candidate's PSNR range misses JPEG's).

The objective names one of these; a shipped config: `configs/image_compression/search_hyperprior.yaml`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import torch

from core.engine.data import DataSplits
from core.engine.registry import EVALUATORS, ConfigError
from core.evaluation.base import Evaluator
from core.evaluation.costs import CostMetrics
from core.evaluation.result import Result
from core.api import Arch, SearchSpace
from tasks.image_compression.losses import DISTORTIONS, RateDistortionLoss


@EVALUATORS.register("codec_rd")
class CodecRDEvaluator(Evaluator):
    def __init__(self, space: SearchSpace, data: DataSplits, lambdas: Sequence[float] = (0.0035, 0.013),
                 steps: int = 300, batch_size: int = 8, lr: float = 2e-3, aux_lr: float = 1e-3,
                 distortion: str = "mse", target_bpp: float = 0.4, seed: int = 0, threads: int | None = 1,
                 latency: str = "none", val_images: int | None = None):
        if not lambdas or any(not isinstance(v, (int, float)) or v <= 0 for v in lambdas):
            raise ConfigError(f"evaluator.lambdas: expected a list of positive numbers, got {lambdas!r}")
        if steps < 1:
            raise ConfigError(f"evaluator.steps: expected >= 1, got {steps!r}")
        if distortion not in DISTORTIONS:
            raise ConfigError(f"evaluator.distortion: expected one of {DISTORTIONS}, got {distortion!r}")
        if target_bpp <= 0:
            raise ConfigError(f"evaluator.target_bpp: expected a positive number, got {target_bpp!r}")
        self.space, self.data = space, data
        self.lambdas = tuple(sorted(float(v) for v in lambdas))
        self.steps, self.batch_size, self.lr, self.aux_lr = int(steps), int(batch_size), float(lr), float(aux_lr)
        self.distortion, self.target_bpp, self.seed, self.threads = distortion, float(target_bpp), int(seed), threads
        n = len(data.val) if val_images is None else min(int(val_images), len(data.val))
        self.images = [data.val[i] for i in range(n)]
        self.costs = CostMetrics(space, (3, *space.cost_size), latency)
        self._jpeg = None

    def cost_metrics(self, arch: Arch) -> dict[str, float]:
        return self.costs(arch)

    def config(self) -> dict[str, Any]:
        return {"type": "codec_rd", "space": type(self.space).__name__, "prior": self.space.prior,
                "data": self.data.name, "lambdas": list(self.lambdas), "steps": self.steps,
                "batch_size": self.batch_size, "lr": self.lr, "aux_lr": self.aux_lr, "distortion": self.distortion,
                "target_bpp": self.target_bpp, "seed": self.seed, "val_images": len(self.images),
                **self.costs.config()}

    def jpeg_curve(self):
        from tasks.image_compression.classical import sweep
        from tasks.image_compression.evaluate import measure_curve

        if self._jpeg is None:
            self._jpeg = measure_curve("JPEG", sweep("jpeg"), self.images)
        return self._jpeg

    def evaluate(self, arch: Arch) -> Result:
        from tasks.image_compression.evaluate import Curve, compare, evaluate_images, mean_row
        from tasks.image_compression.metrics import quality_at_rate
        from tasks.image_compression.train import fit_codec

        start = time.perf_counter()
        arch = self.space.check(arch)
        metrics = self.costs(arch)
        previous = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            curve = Curve("candidate")
            for lmbda in self.lambdas:
                torch.manual_seed(self.seed)
                codec = self.space.build(arch)
                fit_codec(codec, self.data.train, RateDistortionLoss(lmbda, self.distortion), self.steps,
                          batch_size=self.batch_size, lr=self.lr, aux_lr=self.aux_lr, seed=self.seed)
                point = mean_row(evaluate_images(codec, self.images)[0])
                point["rd_cost"] = point["bpp"] + lmbda * 255.0 ** 2 * 10 ** (-point["psnr"] / 10)
                metrics[f"bpp@{lmbda:g}"], metrics[f"psnr@{lmbda:g}"] = point["bpp"], point["psnr"]
                curve.points.append(point)
        except FloatingPointError as err:
            return Result.failed(str(err), time.perf_counter() - start, **metrics)
        finally:
            torch.set_num_threads(previous)
        metrics["rd_cost"] = sum(p["rd_cost"] for p in curve.points) / len(curve.points)
        if len(curve.points) >= 2:
            curve = curve.sorted()
            metrics["psnr_at_bpp"] = quality_at_rate(curve.column("bpp"), curve.column("psnr"), self.target_bpp)
            bd = compare(self.jpeg_curve(), curve)["bd_rate_psnr"]
            if math.isfinite(bd):  # left out when the PSNR ranges do not overlap (the objective then ranks it last)
                metrics["bd_rate_jpeg"] = bd
        return Result(metrics=metrics, cost=time.perf_counter() - start)


__all__ = ["CodecRDEvaluator"]
