"""Disout: feature-map distortion, and the linear schedule it shares with dropout and DropBlock.

Tang, Wang, Xu, Shi, Xu, Xu, Xu. "Beyond Dropout: Feature Map Distortion to
Regularize Deep Neural Networks", AAAI 2020 (arXiv 2002.11022), Sec. 3; the
formulas and defaults follow the official code (huawei-noah/Disout,
`disout.py`, `models/resnet.py`, `models/resnet_imagenet.py`).

At evaluation Disout is the identity. In training, for an input x of shape
(N, C, H, W) and block size b:

- seeds: gamma = dist_prob * H*W / b^2 / ((H-b+1)(W-b+1)); every position
  whose b x b block lies inside the map (a "valid centre") is a seed with
  probability gamma, independently per sample and channel;
- mask: 1 except in the b x b blocks around seeds (a min-pool of the seed-free
  pattern, stride 1, padding b//2, cropped by one row and column when b is
  even; the minimum over the whole map when b equals H and W);
- distortion: alpha * w * std(x) * N(0, 1), where std(x) is one detached
  scalar over the whole batch tensor and w (shape [1, C, 1, 1]) comes from
  the weight of the convolution that follows (`weight_behind`): its maximum
  over output channels, a random +-1 sign per entry, averaged over the kernel
  window, times 0.1 for a 1x1 kernel; without a following convolution w is
  the constant 0.01;
- output: (x * mask + dist * (1 - mask)) / mean(mask), the mean taken over the
  whole batch tensor.

`LinearSchedule` ramps a drop rate from 0 to its target over `steps` training
forwards (the official `LinearScheduler`, `nr_steps = len(loader) * epochs`),
stepping on every training forward; the target is reached at the last step.
Dropout and torchvision's DropBlock get the same schedule here, so the
benchmark compares the three under one recipe. Where `steps` is 0 the
training loop sets it (`set_total_steps`, called by the Lightning module and
the train evaluator with the number of optimizer steps).

Deviations: the official code crashes when the block is larger than the map
(negative gamma); here the block is clipped to the map. The official code
re-binds `weight_behind` on every forward; here the Disout holds a reference
to the convolution and reads its current weight at each forward, which is
the same value.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.engine.registry import OPS, ConfigError

__all__ = ["Disout", "LinearSchedule", "disout_mask", "weight_behind_factor", "bind_weight_behind",
           "set_total_steps", "make_disout", "make_dropout", "make_dropblock"]


def disout_mask(shape: tuple[int, ...], dist_prob: float, block_size: int, device=None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """The block mask (1 = keep, 0 = distort) for a (N, C, H, W) tensor, as in the official code."""
    n, c, h, w = shape
    b = min(block_size, h, w)
    gamma = dist_prob * (h * w) / b ** 2 / ((h - b + 1) * (w - b + 1))
    valid = torch.zeros(h, w, device=device)
    valid[b // 2:h - (b - 1) // 2, b // 2:w - (b - 1) // 2] = 1.0
    rand = torch.rand(shape, device=device, generator=generator)
    pattern = ((1 - valid + (1 - gamma) + rand) >= 1).float()
    if b == h and b == w:
        return pattern.flatten(2).min(dim=2)[0][..., None, None].expand(shape).contiguous()
    mask = -F.max_pool2d(-pattern, kernel_size=b, stride=1, padding=b // 2)
    if b % 2 == 0:
        mask = mask[:, :, :-1, :-1]
    return mask


def weight_behind_factor(weight: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """w of the distortion, [1, C_in, 1, 1], from the next convolution's weight [C_out, C_in, kh, kw]."""
    w = weight.max(dim=0, keepdim=True)[0]
    sign = torch.where(torch.rand(w.shape, device=w.device, generator=generator) < 0.5, -1.0, 1.0)
    w = (w * sign).mean(dim=(2, 3), keepdim=True)
    return 0.1 * w if weight.shape[3] == 1 else w


class Disout(nn.Module):
    """Feature-map distortion (see the module docstring); identity in eval mode."""

    def __init__(self, dist_prob: float = 0.09, block_size: int = 6, alpha: float = 5.0):
        super().__init__()
        if not 0 <= dist_prob < 1:
            raise ConfigError(f"dist_prob: expected a probability in [0, 1), got {dist_prob!r}")
        if block_size < 1:
            raise ConfigError(f"block_size: expected a positive int, got {block_size!r}")
        self.dist_prob, self.block_size, self.alpha = float(dist_prob), int(block_size), float(alpha)
        self._behind: list[nn.Module] = []  # a plain list: the next conv is not a submodule of this one

    @property
    def weight_behind(self) -> torch.Tensor | None:
        return self._behind[0].weight.detach() if self._behind else None

    def bind(self, conv: nn.Module | None) -> None:
        """Take the distortion's scale from `conv`'s weight (None: the 0.01 fallback)."""
        self._behind = [conv] if conv is not None else []

    def extra_repr(self) -> str:
        return f"dist_prob={self.dist_prob:g}, block_size={self.block_size}, alpha={self.alpha:g}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.dist_prob == 0:
            return x
        if x.dim() != 4:
            raise ValueError(f"Disout takes (N, C, H, W) inputs, got shape {tuple(x.shape)}")
        mask = disout_mask(tuple(x.shape), self.dist_prob, self.block_size, x.device).to(x.dtype)
        std = x.detach().var().sqrt()
        behind = self.weight_behind
        scale = weight_behind_factor(behind) if behind is not None else 0.01
        dist = self.alpha * scale * std * torch.randn_like(x)
        return (x * mask + dist * (1 - mask)) / mask.mean()


class LinearSchedule(nn.Module):
    """Ramp `module.<attribute>` linearly from 0 to `target` over `steps` training forwards.

    The i-th training forward (from 0) runs at `linspace(0, target, steps)[i]`,
    later ones at `target`; evaluation forwards do not step.
    """

    def __init__(self, module: nn.Module, attribute: str, target: float, steps: int = 0):
        super().__init__()
        self.module, self.attribute, self.target = module, attribute, float(target)
        self.steps, self.i = int(steps), 0
        setattr(module, attribute, 0.0 if self.steps else self.target)

    def set_total_steps(self, steps: int) -> None:
        """Called by the training loop with its number of optimizer steps, unless `steps` was configured."""
        if self.steps == 0:
            self.steps = int(steps)

    def value(self, i: int) -> float:
        if self.steps <= 1:
            return self.target
        return float(np.linspace(0.0, self.target, self.steps)[min(i, self.steps - 1)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            setattr(self.module, self.attribute, self.value(self.i))
            self.i += 1
        return self.module(x)

    def extra_repr(self) -> str:
        return f"{self.attribute}: 0 -> {self.target:g} over {self.steps or 'the run'} steps"


def set_total_steps(model: nn.Module, steps: int) -> None:
    """Tell every scheduled layer of `model` how many optimizer steps the training has."""
    for m in model.modules():
        if isinstance(m, LinearSchedule):
            m.set_total_steps(steps)


def bind_weight_behind(model: nn.Module, skip: Iterable[str] = ("downsample", "shortcut")) -> list[tuple[str, str]]:
    """Bind every Disout of `model` to the next Conv2d in module-registration order (the official rule).

    Convolutions whose name contains one of `skip` (projection shortcuts) are
    passed over, as the official ImageNet ResNet's hand-written table does; a
    Disout with no convolution after it keeps the 0.01 fallback. Returns the
    (disout name, conv name) pairs, conv name "" for the fallback.
    """
    named = list(model.named_modules())
    pairs = []
    for i, (name, module) in enumerate(named):
        if not isinstance(module, Disout):
            continue
        conv_name, conv = "", None
        for later_name, later in named[i + 1:]:
            if isinstance(later, nn.Conv2d) and not any(s in later_name for s in skip):
                conv_name, conv = later_name, later
                break
        module.bind(conv)
        pairs.append((name, conv_name))
    return pairs


def _check_rate(key: str, value: float) -> float:
    if not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ConfigError(f"{key}: expected a probability in [0, 1), got {value!r}")
    return float(value)


@OPS.register("disout")
def make_disout(dist_prob: float = 0.09, block_size: int = 6, alpha: float = 5.0, steps: int = 0,
                rate_scale: float = 1.0) -> LinearSchedule:
    """Disout under the linear schedule; defaults are the official CIFAR ResNet-56 ones (0.09, 6, 5)."""
    target = _check_rate("dist_prob", dist_prob) * rate_scale
    return LinearSchedule(Disout(target, block_size, alpha), "dist_prob", target, steps)


@OPS.register("dropout")
def make_dropout(p: float = 0.09, steps: int = 0, rate_scale: float = 1.0) -> LinearSchedule:
    """Element-wise dropout (`nn.Dropout`) under the same linear schedule."""
    target = _check_rate("p", p) * rate_scale
    return LinearSchedule(nn.Dropout(target), "p", target, steps)


@OPS.register("dropblock")
def make_dropblock(p: float = 0.09, block_size: int = 5, steps: int = 0, rate_scale: float = 1.0) -> LinearSchedule:
    """torchvision's DropBlock2d (Ghiasi et al., NeurIPS 2018) under the same linear schedule (odd blocks only)."""
    from torchvision.ops import DropBlock2d

    if not isinstance(block_size, int) or block_size < 1 or block_size % 2 == 0:
        raise ConfigError(f"block_size: torchvision's DropBlock2d takes an odd block size, got {block_size!r}")
    target = _check_rate("p", p) * rate_scale
    return LinearSchedule(DropBlock2d(target, block_size), "p", target, steps)
