"""ResNets with a named feature-map regularizer placed as in Disout's official models.

Two styles:

- `cifar`: the pre-activation ResNet of the Disout repository
  (`models/resnet.py`; He et al., "Identity Mappings in Deep Residual
  Networks", ECCV 2016): a 3x3 stem, three stages of basic blocks
  (BN-ReLU-conv3x3-BN-ReLU-conv3x3, a bias-free 1x1 projection shortcut when
  the shape changes), BN-ReLU, global pooling and a linear classifier. Depth
  6n+2 has n blocks per stage. The regularizer sits right after *both*
  convolutions of every block of the regularized stages (official: the last
  stage, `layer3`, with dist_prob 0.09, block 6, alpha 5 for ResNet-56).
- `imagenet`: torchvision's bottleneck ResNet (ResNet-50 by default). The
  regularizer sits after conv1-BN-ReLU, conv2-BN-ReLU, conv3-BN (before the
  addition) and on the residual after the downsample, in the blocks of the
  regularized stages (official: `layer3` at a quarter of the rate and `layer4`
  at the full rate, `dist_prob 0.07, block 7, alpha 1`); bn3's scale starts at
  zero, as in the official model.

The regularizer is any operator registered in `core.engine.registry.OPS`
that maps a tensor to one of the same shape (`disout`, `dropout`,
`dropblock`), named in the config:

    space:
      name: resnet
      depth: 20
      regularizer: {name: disout, dist_prob: 0.09, block_size: 6, alpha: 5}

Every Disout takes its distortion scale from the next convolution in
module-registration order, projection shortcuts passed over
(`core.ops.disout.bind_weight_behind`), which is the official pairing.

Quantized networks (cifar style): `conv: {name: binary_conv}` (or
`kbit_conv` with `bits`) makes the two 3x3 convolutions of every block
quantized, the stem, the projection shortcuts and the classifier staying
full precision; `widen: w` makes the quantized features between a block's
two convolutions w times wider than the residual stream, the widening of
Liu et al., "Widening and Squeezing"; `squeeze: k` keeps the fraction k of
them: `build` then gives the squeezed network's shapes and
`build(arch, widened=True)` the wide one that is trained first and squeezed
into it (`core.ops.squeeze`; the classification task does both when the
space has `squeeze`).

The search choices are the blocks per stage (`stage{i}.depth`, options from
`depths`); by default each stage has one option, so the space is one network.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

import core.ops  # noqa: F401  (registers the operators a config may name)
from core.engine.registry import OPS, SPACES, ConfigError
from core.ops.disout import bind_weight_behind
from core.api import Arch, Choice, SearchSpace

STYLES = ("cifar", "imagenet")


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)


class PreActBlock(nn.Module):
    """BN-ReLU-conv-[reg]-BN-ReLU-conv-[reg] + shortcut (Disout's CIFAR `BasicBlock_disout`).

    `make_conv(cin, cout, kernel, stride)` builds the two 3x3 convolutions
    (default `nn.Conv2d`); a binary convolution binarizes its own input, so
    the ReLU before it is left out. `mid` is the width between the two
    convolutions (`cout` unless widened).
    """

    def __init__(self, cin: int, cout: int, stride: int, make_reg=None, make_conv=None, mid: int | None = None):
        super().__init__()
        mid = mid or cout
        make_conv = make_conv or (lambda i, o, k, s: nn.Conv2d(i, o, k, s, k // 2, bias=False))
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = make_conv(cin, mid, 3, stride)
        self.reg1 = make_reg() if make_reg else nn.Identity()
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv2 = make_conv(mid, cout, 3, 1)
        self.reg2 = make_reg() if make_reg else nn.Identity()
        binary = getattr(self.conv1, "act_bits", None) == 1
        self.relu = nn.Identity() if binary else nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.shortcut(x) if self.shortcut is not None else x
        out = self.reg1(self.conv1(self.relu(self.bn1(x))))
        out = self.reg2(self.conv2(self.relu(self.bn2(out))))
        return out + residual


class Bottleneck(nn.Module):
    """torchvision's bottleneck with Disout's four positions (`Bottleneck_disout`)."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, make_reg=None):
        super().__init__()
        out = planes * self.expansion
        reg = make_reg or nn.Identity
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.reg1 = reg()
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.reg2 = reg()
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.reg3 = reg()
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False), nn.BatchNorm2d(out))
                           if stride != 1 or cin != out else None)
        self.reg4 = reg()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.downsample(x) if self.downsample is not None else x
        out = self.reg1(self.relu(self.bn1(self.conv1(x))))
        out = self.reg2(self.relu(self.bn2(self.conv2(out))))
        out = self.reg3(self.bn3(self.conv3(out)))
        return self.relu(out + self.reg4(residual))


class ResNet(nn.Module):
    def __init__(self, stem: nn.Module, stages: nn.ModuleList, head: nn.Module, features: int, num_classes: int):
        super().__init__()
        self.stem, self.stages, self.head = stem, stages, head
        self.fc = nn.Linear(features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))


def _init_official(model: nn.Module, zero_bn3: bool) -> None:
    """Disout's initialisation: conv ~ N(0, 2 / (k*k*out)), BN scale 1 (bn3 0 in ImageNet style), shift 0."""
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0, math.sqrt(2.0 / n))
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 0.0 if zero_bn3 and name.endswith("bn3") else 1.0)
            nn.init.zeros_(m.bias)


class ResNetSpace(SearchSpace):
    """Blocks per stage of a CIFAR pre-activation or ImageNet bottleneck ResNet (see the module docstring)."""

    def __init__(self, style: str = "cifar", depth: int | None = None, depths: list | None = None,
                 widths: list[int] | None = None, width_multiplier: int = 1, num_classes: int = 10,
                 in_channels: int = 3, regularizer: dict | None = None, regularized_stages: list[int] | None = None,
                 regularizer_scales: list[float] | None = None, conv: dict | None = None, widen: float = 1.0,
                 squeeze: float | None = None):
        if style not in STYLES:
            raise ConfigError(f"style: expected one of {', '.join(STYLES)}, got {style!r}")
        self.style = style
        n_stages = 3 if style == "cifar" else 4
        self.widths = tuple(widths or ((16, 32, 64) if style == "cifar" else (64, 128, 256, 512)))
        if len(self.widths) != n_stages or not all(isinstance(w, int) and w > 0 for w in self.widths):
            raise ConfigError(f"widths: expected {n_stages} positive ints for style {style}, got {widths!r}")
        if not isinstance(width_multiplier, int) or width_multiplier < 1:
            raise ConfigError(f"width_multiplier: expected a positive int, got {width_multiplier!r}")
        self.width_multiplier = width_multiplier
        self.depths = self._depths(depth, depths, n_stages)
        self.num_classes, self.in_channels = num_classes, in_channels
        self.regularizer = dict(regularizer) if regularizer else None
        if self.regularizer is not None:
            OPS.build(self.regularizer, "space.regularizer")  # fail on a bad name or key now, not mid-build
        default_stages = [n_stages - 1] if style == "cifar" else [n_stages - 2, n_stages - 1]
        self.regularized_stages = list(default_stages if regularized_stages is None else regularized_stages)
        if any(not isinstance(i, int) or not 0 <= i < n_stages for i in self.regularized_stages):
            raise ConfigError(f"regularized_stages: expected stage indices in 0..{n_stages - 1}, "
                              f"got {regularized_stages!r}")
        if regularizer_scales is None:  # the official ImageNet model runs its second-last stage at a quarter rate
            official = style == "imagenet" and self.regularized_stages == default_stages
            regularizer_scales = [0.25, 1.0] if official else [1.0] * len(self.regularized_stages)
        if len(regularizer_scales) != len(self.regularized_stages):
            raise ConfigError(f"regularizer_scales: expected one scale per regularized stage "
                              f"({len(self.regularized_stages)}), got {regularizer_scales!r}")
        self.regularizer_scales = [float(s) for s in regularizer_scales]
        self.conv = dict(conv) if conv else None
        if self.conv is not None:
            if style != "cifar":
                raise ConfigError("conv: quantized convolutions are offered in the cifar style only")
            OPS.build(self.conv, "space.conv", in_channels=1, out_channels=1)
        if not isinstance(widen, (int, float)) or widen < 1:
            raise ConfigError(f"widen: expected a factor >= 1, got {widen!r}")
        self.widen = float(widen)
        if squeeze is not None and (not isinstance(squeeze, (int, float)) or not 0 < squeeze <= 1):
            raise ConfigError(f"squeeze: expected the fraction of widened channels kept, in (0, 1], got {squeeze!r}")
        self.squeeze = None if squeeze is None else float(squeeze)
        super().__init__([Choice(f"stage{i}.depth", d) for i, d in enumerate(self.depths)])

    def _depths(self, depth: int | None, depths: list | None, n_stages: int) -> list[tuple[int, ...]]:
        if depths is not None:
            if depth is not None:
                raise ConfigError("depth, depths: give one of them")
            if len(depths) != n_stages:
                raise ConfigError(f"depths: expected {n_stages} stages, got {depths!r}")
            out = [tuple(d) if isinstance(d, (list, tuple)) else (d,) for d in depths]
            if not all(all(isinstance(v, int) and v > 0 for v in d) and d for d in out):
                raise ConfigError(f"depths: expected positive ints per stage, got {depths!r}")
            return out
        if self.style == "imagenet":
            table = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
            depth = 50 if depth is None else depth
            if depth not in table:
                raise ConfigError(f"depth: imagenet style has bottleneck depths 50, 101, 152; got {depth!r}")
            return [(d,) for d in table[depth]]
        depth = 20 if depth is None else depth
        if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
            raise ConfigError(f"depth: the cifar style takes 6n+2 (20, 32, 44, 56, 110), got {depth!r}")
        return [((depth - 2) // 6,)] * 3

    def _make_reg(self, stage: int):
        if self.regularizer is None or stage not in self.regularized_stages:
            return None
        scale = self.regularizer_scales[self.regularized_stages.index(stage)]
        return lambda: OPS.build(self.regularizer, "space.regularizer", rate_scale=scale)

    def _make_conv(self):
        if self.conv is None:
            return None
        return lambda cin, cout, k, stride: OPS.build(self.conv, "space.conv", in_channels=cin, out_channels=cout,
                                                      kernel_size=k, stride=stride)

    def arch_of(self, model: ResNet) -> Arch:
        """The arch a network of this space was built from (its blocks per stage)."""
        return self.check({f"stage{i}.depth": len(stage) for i, stage in enumerate(model.stages)})

    def mid_width(self, width: int, widened: bool = False) -> int:
        """Channels between a block's two convs: widened, then squeezed unless `widened` asks for the wide net."""
        mid = max(1, round(width * self.widen))
        return mid if widened or self.squeeze is None else max(1, round(self.squeeze * mid))

    def build(self, arch: Mapping[str, Any], num_classes: int | None = None, channel_divisor: float = 1,
              widened: bool = False, **_: Any) -> ResNet:
        """The network of `arch`; with `squeeze` set, the squeezed one unless `widened` (the one to train first)."""
        arch = self.check(arch)
        classes = num_classes or self.num_classes
        widths = [max(1, int(w * self.width_multiplier / channel_divisor)) for w in self.widths]
        depths = [arch[f"stage{i}.depth"] for i in range(len(widths))]
        stages = nn.ModuleList()
        if self.style == "cifar":
            stem = _conv3x3(self.in_channels, widths[0])
            cin = widths[0]
            for i, (w, d) in enumerate(zip(widths, depths)):
                make_reg = self._make_reg(i)
                mid = self.mid_width(w, widened)
                blocks = [PreActBlock(cin if j == 0 else w, w, 2 if (j == 0 and i > 0) else 1, make_reg,
                                      self._make_conv(), mid) for j in range(d)]
                stages.append(nn.Sequential(*blocks))
                cin = w
            head = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten())
            model = ResNet(stem, stages, head, cin, classes)
        else:
            stem = nn.Sequential(nn.Conv2d(self.in_channels, widths[0], 7, 2, 3, bias=False),
                                 nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
            cin = widths[0]
            for i, (w, d) in enumerate(zip(widths, depths)):
                make_reg = self._make_reg(i)
                blocks = []
                for j in range(d):
                    blocks.append(Bottleneck(cin, w, 2 if (j == 0 and i > 0) else 1, make_reg))
                    cin = w * Bottleneck.expansion
                stages.append(nn.Sequential(*blocks))
            head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
            model = ResNet(stem, stages, head, cin, classes)
        _init_official(model, zero_bn3=self.style == "imagenet")
        bind_weight_behind(model)
        return model


SPACES.register("resnet", ResNetSpace)

__all__ = ["ResNetSpace", "ResNet", "PreActBlock", "Bottleneck", "STYLES"]
