"""`rs_net`: the search space of the remote-sensing networks around the hand-set ResNet18 / UNet.

The learned grouping of DGConv is this task's architecture search done by
gradient inside one training. This space lets a sample-based strategy search
the rest, or search groupings the other way, by sampling and training:

- `conv`: dgconv, plain or fgconv (the options given by `conv_options`);
- ResNet18, per stage i = 1..4: `stage{i}.width` (the hand-set width times
  each of `width_mults`, rounded to a multiple of 4), `stage{i}.blocks`
  (`depth_options`) and `stage{i}.groups` (`group_options`, a static
  `nn.Conv2d(groups=G)` grouping, active only with plain convolutions); the
  stem has the first stage's width;
- UNet, per level i = 1..5: `level{i}.width` and `level{i}.groups`.

The default arch (first conv option, every multiplier 1, full depth, one
group) is the hand-set network: ResNet18-DGConv with `conv_options` starting
with dgconv. The data gives `in_channels`, `num_classes` and `source_split`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from core.engine.registry import SPACES
from core.api import Arch, Choice, SearchSpace
from tasks.remote_sensing.models import CONVS, ResNet18, UNet

FAMILIES = {"resnet18": (64, 128, 256, 512), "unet": (64, 128, 256, 512, 1024)}


def _round4(value: float) -> int:
    return max(4, int(round(value / 4.0)) * 4)


@SPACES.register("rs_net")
class RSNetSpace(SearchSpace):
    def __init__(self, in_channels: int, num_classes: int, source_split: Sequence[int] | None = None,
                 model: str = "resnet18", width: int = 64, width_mults: Sequence[float] = (0.5, 0.75, 1.0),
                 depth_options: Sequence[int] = (2, 1), group_options: Sequence[int] = (1, 2, 4, 8),
                 conv_options: Sequence[str] = CONVS, init: str | None = None):
        if model not in FAMILIES:
            raise ValueError(f"space.model: expected one of {', '.join(FAMILIES)}, got {model!r}")
        bad = [c for c in conv_options if c not in CONVS]
        if bad or not conv_options:
            raise ValueError(f"space.conv_options: expected a non-empty list of {', '.join(CONVS)}, got "
                             f"{list(conv_options)}")
        if 1.0 not in [float(m) for m in width_mults]:
            raise ValueError(f"space.width_mults: must include 1.0 (the hand-set width), got {list(width_mults)}")
        if 1 not in group_options:
            raise ValueError(f"space.group_options: must include 1, got {list(group_options)}")
        self.in_channels, self.num_classes, self.model = in_channels, num_classes, model
        self.source_split = list(source_split) if source_split else [in_channels]
        if sum(self.source_split) != in_channels:
            raise ValueError(f"space.source_split: {self.source_split} does not add up to {in_channels} channels")
        self.init = init or ("kaiming" if model == "resnet18" else "default")
        base = [width * c / 64 for c in FAMILIES[model]]
        self.prefix = "stage" if model == "resnet18" else "level"
        choices = [Choice("conv", tuple(conv_options))]
        for i, b in enumerate(base, start=1):
            widths = sorted({_round4(b * m) for m in width_mults})
            choices.append(Choice(f"{self.prefix}{i}.width", tuple(widths), default=_round4(b)))
            if model == "resnet18":
                choices.append(Choice(f"{self.prefix}{i}.blocks", tuple(depth_options),
                                      default=max(depth_options)))
            choices.append(Choice(f"{self.prefix}{i}.groups", tuple(group_options), default=1))
        self.levels = len(base)
        super().__init__(choices)

    def active(self, arch: Mapping[str, Any]) -> list[str]:
        if arch.get("conv") == "plain":
            return self.names
        return [n for n in self.names if not n.endswith(".groups")]

    def constraint_error(self, arch: Arch) -> str | None:
        if arch["conv"] != "plain":
            return None
        for i in range(1, self.levels + 1):
            w, g = arch[f"{self.prefix}{i}.width"], arch[f"{self.prefix}{i}.groups"]
            if w % g:
                return f"{self.prefix}{i}.width={w} is not divisible by {self.prefix}{i}.groups={g}"
            # the level's first convolution reads the previous level (the ResNet stem has stage 1's width)
            if i == 1:
                cin = w if self.model == "resnet18" else self.in_channels
            else:
                cin = arch[f"{self.prefix}{i - 1}.width"]
            if cin % g:
                return f"{self.prefix}{i}.groups={g} does not divide its {cin} input channels"
        return None

    def with_conv(self, conv: str) -> Arch:
        """The hand-set network with `conv` convolutions."""
        if conv not in self.choice("conv").options:
            raise ValueError(f"conv {conv!r} is not among space.conv_options {list(self.choice('conv').options)}")
        return self.canonical(self.default().replace(conv=conv))

    def build(self, arch: Mapping[str, Any], num_classes: int | None = None, channel_divisor: int = 1,
              **overrides: Any) -> nn.Module:
        if overrides:
            raise TypeError(f"rs_net.build: unknown arguments {sorted(overrides)}")
        arch = self.check(arch)
        n = self.levels
        widths = [max(4, arch[f"{self.prefix}{i}.width"] // channel_divisor) for i in range(1, n + 1)]
        groups = [arch[f"{self.prefix}{i}.groups"] for i in range(1, n + 1)]
        classes = num_classes or self.num_classes
        if self.model == "resnet18":
            blocks = [arch[f"stage{i}.blocks"] for i in range(1, n + 1)]
            return ResNet18(self.in_channels, classes, arch["conv"], self.source_split, stem_width=widths[0],
                            widths=widths, blocks=blocks, groups=groups, init=self.init)
        return UNet(self.in_channels, classes, arch["conv"], self.source_split, widths=widths, groups=groups,
                    init=self.init)


__all__ = ["RSNetSpace"]
