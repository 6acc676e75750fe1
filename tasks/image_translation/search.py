"""`translation_train`: the U-Net search's fitness, a short training of each candidate on the task's data.

The U-Net translator search (Shu and Wang, arXiv 2002.11581) evolves U-Nets
scored by how well they translate; its fitness recipe is not known
(METHODS.md 3.5). Chosen here: train the candidate for `steps` Adam steps on
the training pairs and report PSNR and SSIM on the validation pairs, with
params and MACs (known before training, so a `macs <= X` constraint rejects a
candidate without training it). By default the proxy trains with L1 alone at
a higher learning rate (1e-3) than the GAN recipe: a few hundred adversarial
steps rank candidates by how the discriminator happens to start more than by
what they can learn; `adversarial: true` uses the full pix2pix recipe
instead. Any sample-based strategy searches with it through the core's
search loop (`strategy: {name: evolution}` is regularized evolution, Real et
al. 2019; `random`, `tpe`, ... work the same way).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from core.distill.gan_losses import GANLoss
from core.engine.data import DataSplits
from core.engine.registry import EVALUATORS
from core.evaluation.base import Evaluator
from core.evaluation.costs import CostMetrics
from core.evaluation.result import Result
from core.api import Arch, SearchSpace
from tasks.image_translation.metrics import score_generator
from tasks.image_translation.models import PatchDiscriminator, init_gan_weights
from tasks.image_translation.training import Recipe, train_l1, train_pix2pix


@EVALUATORS.register("translation_train")
class TranslationEvaluator(Evaluator):
    def __init__(self, space: SearchSpace, data: DataSplits, steps: int = 200, batch_size: int = 8, lr: float = 1e-3,
                 adversarial: bool = False, lambda_l1: float = 100.0, ndf: int = 16, gan_loss: str = "vanilla",
                 seed: int = 0, threads: int | None = 1, device: str = "cpu", latency: str = "none"):
        if steps < 1:
            raise ValueError(f"evaluator.steps: expected >= 1, got {steps}")
        if not getattr(data.val, "paired", True):
            raise ValueError("evaluator: the U-Net search scores candidates on paired validation images; "
                             "these data's validation split is unpaired")
        self.space, self.data = space, data
        self.steps, self.batch_size, self.lr = steps, batch_size, lr
        self.adversarial, self.lambda_l1, self.ndf, self.gan_loss = adversarial, lambda_l1, ndf, gan_loss
        self.seed, self.threads, self.device = seed, threads, device
        self.costs = CostMetrics(space, data.input_shape, latency)

    def cost_metrics(self, arch: Arch) -> dict[str, float]:
        return self.costs(arch)

    def config(self) -> dict[str, Any]:
        return {"type": "translation_train", "space": type(self.space).__name__, "data": self.data.name,
                "steps": self.steps, "batch_size": self.batch_size, "lr": self.lr, "adversarial": self.adversarial,
                "lambda_l1": self.lambda_l1, "ndf": self.ndf, "gan_loss": self.gan_loss, "seed": self.seed,
                **self.costs.config()}

    def evaluate(self, arch: Arch) -> Result:
        start = time.perf_counter()
        arch = self.space.check(arch)
        metrics = self.costs(arch)
        previous = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            torch.manual_seed(self.seed)
            model = self.space.build(arch)
            recipe = Recipe(max_steps=self.steps, batch_size=self.batch_size, lr=self.lr, seed=self.seed,
                            device=self.device, lambda_l1=self.lambda_l1)
            if self.adversarial:
                d = init_gan_weights(PatchDiscriminator(self.data.train.in_channels + self.data.train.out_channels,
                                                        self.ndf))
                train_pix2pix(model, d, self.data.train, GANLoss(self.gan_loss), recipe, desc="candidate")
            else:
                train_l1(model, self.data.train, recipe, desc="candidate")
            scores = score_generator(model, self.data.val, device=self.device)
        except FloatingPointError as err:
            return Result.failed(str(err), time.perf_counter() - start, **metrics)
        finally:
            torch.set_num_threads(previous)
        metrics.update(psnr=scores["psnr"], ssim=scores["ssim"], val_l1=scores["l1"])
        return Result(metrics=metrics, cost=time.perf_counter() - start)


__all__ = ["TranslationEvaluator"]
