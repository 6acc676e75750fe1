"""`unet_translator`: the U-Net translator search space, plus the hand-designed generators as baselines.

Shu and Wang, "Automatically Searching for U-Net Image Translator
Architecture" (arXiv 2002.11581) evolve cheaper U-Net translators; the paper's
encoding is not known (METHODS.md 3.5: only the abstract could be read). The
encoding chosen here covers the decisions a U-Net designer makes, level by
level, around pix2pix's U-Net (`models.UNet`):

- `depth`: the number of stride-2 levels (inputs must divide by 2^depth);
- `level{i}.width`: the channels of level i (0 = the top);
- `level{i}.block`: what follows the level's resampling conv in encoder and
  decoder: `conv` (nothing, pix2pix), `double` (a 3x3 conv), `res` (a residual
  pair of 3x3 convs), `dwres` (a depthwise-separable residual 3x3);
- `level{i}.skip`: the encoder-decoder connection of level i: `concat`
  (pix2pix), `add`, `none`;
- `upsample`: the decoder's x2 operator: `transposed` (pix2pix's 4x4
  transposed conv), `bilinear` or `nearest` resize + 3x3 conv, `pixelshuffle`.

Levels past `depth` are inactive (reset to defaults, so equal networks share
one key). Mutation changes one active choice (`SearchSpace.mutate`), as
regularized evolution (Real et al. 2019) expects.

Baselines build the hand designs with the same norm: `{"baseline": "unet",
"ngf": N, "num_downs": D, "dropout": bool}` (pix2pix's U-Net) and
`{"baseline": "resnet", "ngf": N, "n_blocks": B}` (CycleGAN's ResNet).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from core.engine.registry import SPACES
from core.api import Arch, Choice, SearchSpace
from tasks.image_translation.models import (BLOCKS, SKIPS, UPSAMPLERS, ResnetGenerator, UNet, init_gan_weights,
                                            pix2pix_unet)

DEFAULT_WIDTHS = (4, 6, 8, 12, 16, 24, 32, 48, 64)
BASELINE_KINDS = ("unet", "resnet")


@SPACES.register("unet_translator")
class UNetTranslatorSpace(SearchSpace):
    def __init__(self, in_channels: int = 3, out_channels: int = 3, image_size: int = 64,
                 depths: Sequence[int] = (3, 4, 5, 6), widths: Sequence[int] = DEFAULT_WIDTHS,
                 blocks: Sequence[str] = BLOCKS, skips: Sequence[str] = SKIPS,
                 upsamplers: Sequence[str] = UPSAMPLERS, norm: str = "batch"):
        depths = tuple(int(d) for d in depths)
        bad = [d for d in depths if d < 1 or image_size % (2 ** d)]
        if bad:
            raise ValueError(f"space.depths: {bad[0]} levels need an image side divisible by {2 ** bad[0]}, "
                             f"got {image_size}")
        for name, given, known in (("blocks", blocks, BLOCKS), ("skips", skips, SKIPS),
                                   ("upsamplers", upsamplers, UPSAMPLERS)):
            unknown = [v for v in given if v not in known]
            if unknown:
                raise ValueError(f"space.{name}: unknown {unknown[0]!r}; known: {', '.join(known)}")
        self.in_channels, self.out_channels, self.image_size = int(in_channels), int(out_channels), int(image_size)
        self.norm = norm
        self.max_depth = max(depths)
        widths = tuple(int(w) for w in widths)
        mid = widths[len(widths) // 2]
        choices = [Choice("depth", depths, default=self.max_depth)]
        for i in range(self.max_depth):
            choices += [Choice(f"level{i}.width", widths, default=mid),
                        Choice(f"level{i}.block", tuple(blocks), default=blocks[0])]
            if i < self.max_depth - 1:
                choices.append(Choice(f"level{i}.skip", tuple(skips), default=skips[0]))
        choices.append(Choice("upsample", tuple(upsamplers), default=upsamplers[0]))
        super().__init__(choices)

    # -- rules ----------------------------------------------------------------------------------
    def active(self, arch: Mapping[str, Any]) -> list[str]:
        depth = int(arch.get("depth", self.max_depth))

        def on(name: str) -> bool:
            if not name.startswith("level"):
                return True
            i = int(name[5:].split(".")[0])
            return i < depth - 1 if name.endswith(".skip") else i < depth

        return [n for n in self.names if on(n)]

    def size(self) -> int:
        total = 0
        per_level = len(self.choice("level0.width")) * len(self.choice("level0.block"))
        skips = len(self.choice("level0.skip")) if "level0.skip" in self else 1
        for depth in self.choice("depth").options:
            total += per_level ** depth * skips ** (depth - 1)
        return total * len(self.choice("upsample"))

    def check(self, arch: Mapping[str, Any]) -> Arch:
        if "baseline" in arch:
            return self.check_baseline(arch)
        return super().check(arch)

    def check_baseline(self, arch: Mapping[str, Any]) -> Arch:
        kind = arch["baseline"]
        keys = {"unet": {"baseline", "ngf", "num_downs", "dropout"}, "resnet": {"baseline", "ngf", "n_blocks"}}
        if kind not in keys:
            raise ValueError(f"baseline {kind!r}: expected one of {BASELINE_KINDS}")
        if set(arch) != keys[kind]:
            raise ValueError(f"baseline {kind!r}: expected keys {sorted(keys[kind])}, got {sorted(arch)}")
        if kind == "unet" and self.image_size % (2 ** int(arch["num_downs"])):
            raise ValueError(f"baseline unet: num_downs={arch['num_downs']} needs an image side divisible by "
                             f"{2 ** int(arch['num_downs'])}, got {self.image_size}")
        return Arch(arch)

    # -- networks -----------------------------------------------------------------------------------
    def build(self, arch: Mapping[str, Any], num_classes: int | None = None, **_: Any) -> nn.Module:
        """The generator of `arch` with pix2pix's N(0, 0.02) init (`num_classes` is ignored)."""
        arch = self.check(arch)
        if "baseline" in arch:
            if arch["baseline"] == "unet":
                model = pix2pix_unet(self.in_channels, self.out_channels, int(arch["ngf"]), int(arch["num_downs"]),
                                     self.norm, bool(arch["dropout"]))
            else:
                model = ResnetGenerator(self.in_channels, self.out_channels, int(arch["ngf"]), int(arch["n_blocks"]),
                                        self.norm)
            model.arch = arch  # what default distillation taps are chosen from
            return init_gan_weights(model)
        depth = int(arch["depth"])
        model = UNet(self.in_channels, self.out_channels, [int(arch[f"level{i}.width"]) for i in range(depth)],
                     [arch[f"level{i}.block"] for i in range(depth)], [arch[f"level{i}.skip"] for i in range(depth - 1)],
                     arch["upsample"], self.norm)
        model.arch = arch
        return init_gan_weights(model)

    def macs(self, arch: Mapping[str, Any]) -> float:
        """MACs of one image at the space's image size (torch's FlopCounterMode / 2)."""
        from core.cost import count_macs

        return float(count_macs(self.build(arch), torch.zeros(1, self.in_channels, self.image_size, self.image_size)))


def unet_arch(ngf: int, num_downs: int, dropout: bool = True) -> Arch:
    return Arch({"baseline": "unet", "ngf": int(ngf), "num_downs": int(num_downs), "dropout": bool(dropout)})


def resnet_arch(ngf: int, n_blocks: int = 9) -> Arch:
    return Arch({"baseline": "resnet", "ngf": int(ngf), "n_blocks": int(n_blocks)})


def unet_budget(space: UNetTranslatorSpace, max_macs: float, num_downs: int, dropout: bool = True,
                ngfs: Sequence[int] = tuple(range(1, 129))) -> Arch:
    """The hand-designed pix2pix U-Net scaled to the largest width (ngf) whose MACs are <= `max_macs`."""
    best = None
    for ngf in ngfs:
        arch = unet_arch(ngf, num_downs, dropout)
        if space.macs(arch) > max_macs:
            break
        best = arch
    if best is None:
        raise ValueError(f"no pix2pix U-Net of {num_downs} levels fits {max_macs:.3g} MACs")
    return best


__all__ = ["UNetTranslatorSpace", "unet_arch", "resnet_arch", "unet_budget", "BASELINE_KINDS", "DEFAULT_WIDTHS"]
