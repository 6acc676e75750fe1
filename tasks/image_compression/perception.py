"""The perception-consistency term: MMD between a pretrained classifier's features of x and of x_hat.

Yang, Wang, Xu, Du, Xu, Xu, Tian, "Discernible Image Compression", ACM MM 2020 (arXiv 2002.06810):
the compressor is trained with an appearance loss plus the maximum mean discrepancy between the
feature distributions a pretrained CNN phi gives the original and the decoded image, so that models
trained on originals still recognise decoded images. The paper's kernel, layers and weights are not
public (no code); the choices here, all configurable, are:

- phi: any classifier (a torchvision model with weights from a local path, see `load_classifier`),
  frozen, in eval mode, fed images normalised with its `mean` / `std`;
- layers: module paths tapped with `core.distill.Taps` (default `layer2` and `layer3` of a
  torchvision ResNet: mid-level features that carry shape; the logits are not used);
- MMD (`core.distill.losses.feature_mmd`): `mode="channels"` (default) compares, per image, the
  distributions of the channels' L2-normalised spatial maps of x and x_hat (Huang & Wang's
  neuron-selectivity formulation), with a Gaussian kernel whose bandwidth is the median pairwise
  distance (`sigma: null`); `mode="batch"` compares the distributions over the batch of each image's
  flattened features. The biased estimate (Gretton et al. 2012, eq. 3), summed over the layers.

phi(x) runs without gradients; phi(x_hat) passes gradients back to the codec (phi's weights stay fixed).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from core.distill import MMDTerm, Taps, freeze_teacher

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_LAYERS = ("layer2", "layer3")


class Normalized(nn.Module):
    """phi's input convention: (x - mean) / std, optionally resized to `input_size`."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 input_size: int | None = None):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.input_size = input_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_size:
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False, antialias=True)
        return (x - self.mean) / self.std


class Classifier(nn.Module):
    """`normalize` then `model`: a classifier that takes images in [0, 1]. Module paths (taps) are
    those of `model`, as its own `named_modules()` spells them."""

    def __init__(self, model: nn.Module, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 input_size: int | None = None):
        super().__init__()
        self.model = model
        self.normalize = Normalized(mean, std, input_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(x))


class PerceptionConsistency(nn.Module):
    """`sum over layers of MMD(phi_l(x), phi_l(x_hat))` (multiply by beta outside); see the module docstring.

    `classifier` is a `Classifier` (its own input convention) or a bare network, then wrapped with
    ImageNet's mean and std. `layers` are module paths of the bare network.
    """

    def __init__(self, classifier: nn.Module, layers: Sequence[str] = DEFAULT_LAYERS, mode: str = "channels",
                 kernel: str = "gaussian", sigma: float | None = None):
        super().__init__()
        if isinstance(layers, str) or not layers:
            raise ValueError(f"perception.layers: expected a list of module paths, got {layers!r}")
        classifier = classifier if isinstance(classifier, Classifier) else Classifier(classifier)
        self.classifier = freeze_teacher(classifier)
        self.layers = tuple(layers)
        self.term = MMDTerm(mode=mode, kernel=kernel, sigma=sigma)
        self._taps = Taps(self.classifier.model, self.layers)

    def train(self, mode: bool = True) -> "PerceptionConsistency":
        super().train(mode)
        self.classifier.eval()
        return self

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        _, feats = self._taps(self.classifier.normalize(x))
        return feats

    def forward(self, x: torch.Tensor, x_hat: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        with torch.no_grad():
            reference = self.features(x)
        decoded = self.features(x_hat)
        parts = {layer: self.term(decoded[layer], reference[layer]) for layer in self.layers}
        total = sum(parts.values())
        return total, {f"mmd/{k}": float(v.detach()) for k, v in parts.items()}


__all__ = ["PerceptionConsistency", "Classifier", "Normalized", "IMAGENET_MEAN", "IMAGENET_STD", "DEFAULT_LAYERS"]
