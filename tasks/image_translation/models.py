"""Image-to-image networks: a configurable U-Net, the CycleGAN ResNet generator and the PatchGAN discriminator.

Layouts follow the pix2pix/CycleGAN code (Isola et al., CVPR 2017; Zhu et al.,
ICCV 2017; `junyanz/pytorch-CycleGAN-and-pix2pix`, `models/networks.py`), with
a width multiplier applied to `ngf`/`ndf` by the caller (`scaled`):

- `UNet`: per level i (top = 1) a stride-2 4x4 down convolution to `widths[i]`
  channels, a decoder step back up, and a skip connection from encoder level i
  to the decoder. With `pix2pix_unet` the levels are pix2pix's `unet_256`
  (`UnetGenerator`): widths ngf, 2ngf, 4ngf, 8ngf..., no norm on the outermost and
  innermost down steps, dropout 0.5 in the up steps of the 8ngf levels between
  the fourth and the innermost, concatenated skips, transposed-conv upsampling,
  LeakyReLU(0.2) before every down conv but the first, ReLU before every up
  conv, tanh output. The U-Net search space varies the same structure: the
  depth, each level's width, an extra block per level (`BLOCKS`), each skip
  (`SKIPS`) and the upsampling operator (`UPSAMPLERS`).
- `ResnetGenerator`: CycleGAN's `resnet_9blocks` (reflection padding, 7x7 stem,
  two stride-2 convs, `n_blocks` residual blocks, two transposed convs, 7x7 head).
- `PatchDiscriminator`: `NLayerDiscriminator`, the 70x70 PatchGAN at `n_layers=3`.

Modules are named so a distillation tap is a short path: `downs.3`, `ups.1`
(U-Net), `blocks.4` (ResNet), `model.8` (PatchGAN).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

BLOCKS = ("conv", "double", "res", "dwres")
SKIPS = ("concat", "add", "none")
UPSAMPLERS = ("transposed", "bilinear", "nearest", "pixelshuffle")
NORMS = ("batch", "instance")


def scaled(width: int, multiplier: float) -> int:
    """A base width times a width multiplier, rounded, at least 1."""
    return max(1, int(round(width * multiplier)))


def norm_layer(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    raise ValueError(f"norm: expected one of {NORMS}, got {kind!r}")


def init_gan_weights(module: nn.Module, gain: float = 0.02) -> nn.Module:
    """pix2pix's `init_weights(net, 'normal', 0.02)`: conv weights N(0, gain), norm weights N(1, gain), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)
    return module


class Residual(nn.Module):
    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def extra_block(kind: str, channels: int, norm: str | None, act: nn.Module) -> list[nn.Module]:
    """What a level's block type adds after its resampling conv (`conv` adds nothing)."""
    bias = norm != "batch"

    def n(c):
        return [norm_layer(norm, c)] if norm else []

    if kind == "conv":
        return []
    if kind == "double":
        return [act, nn.Conv2d(channels, channels, 3, 1, 1, bias=bias), *n(channels)]
    if kind == "res":
        return [Residual(nn.Sequential(act, nn.Conv2d(channels, channels, 3, 1, 1, bias=bias), *n(channels),
                                       nn.ReLU(), nn.Conv2d(channels, channels, 3, 1, 1, bias=bias),
                                       *n(channels)))]
    if kind == "dwres":
        return [Residual(nn.Sequential(act, nn.Conv2d(channels, channels, 3, 1, 1, groups=channels, bias=False),
                                       nn.Conv2d(channels, channels, 1, bias=bias), *n(channels)))]
    raise ValueError(f"block: expected one of {BLOCKS}, got {kind!r}")


def upsampler(kind: str, cin: int, cout: int, bias: bool) -> list[nn.Module]:
    """A x2 upsampling convolution of the given kind."""
    if kind == "transposed":
        return [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=bias)]
    if kind in ("bilinear", "nearest"):
        up = nn.Upsample(scale_factor=2, mode=kind, align_corners=False if kind == "bilinear" else None)
        return [up, nn.Conv2d(cin, cout, 3, 1, 1, bias=bias)]
    if kind == "pixelshuffle":
        return [nn.Conv2d(cin, cout * 4, 3, 1, 1, bias=bias), nn.PixelShuffle(2)]
    raise ValueError(f"upsample: expected one of {UPSAMPLERS}, got {kind!r}")


class UNet(nn.Module):
    """A U-Net of `len(widths)` levels (see the module docstring); input sides must be multiples of 2^depth."""

    def __init__(self, in_channels: int, out_channels: int, widths: Sequence[int], blocks: Sequence[str] | None = None,
                 skips: Sequence[str] | None = None, upsample: str = "transposed", norm: str = "batch",
                 dropout: Sequence[bool] | None = None):
        super().__init__()
        depth = len(widths)
        if depth < 1:
            raise ValueError("unet: needs at least one level")
        blocks = list(blocks or ["conv"] * depth)
        skips = list(skips or ["concat"] * (depth - 1))
        dropout = list(dropout or [False] * depth)
        if len(blocks) != depth or len(skips) != depth - 1 or len(dropout) != depth:
            raise ValueError(f"unet: {depth} levels need {depth} blocks, {depth - 1} skips and {depth} dropout flags")
        for s in skips:
            if s not in SKIPS:
                raise ValueError(f"skip: expected one of {SKIPS}, got {s!r}")
        self.depth, self.skips = depth, skips
        self.widths = [int(w) for w in widths]
        bias = norm != "batch"
        downs, ups = [], []
        for i in range(depth):
            cin = in_channels if i == 0 else self.widths[i - 1]
            cout = self.widths[i]
            innermost = i == depth - 1
            layers: list[nn.Module] = [] if i == 0 else [nn.LeakyReLU(0.2)]
            layers.append(nn.Conv2d(cin, cout, 4, 2, 1, bias=bias))  # pix2pix: no bias under BatchNorm, even unnormed
            level_norm = None if (i == 0 or innermost) else norm
            if level_norm:
                layers.append(norm_layer(norm, cout))
            layers += extra_block(blocks[i], cout, None if innermost else norm, nn.LeakyReLU(0.2))
            downs.append(nn.Sequential(*layers))
        for i in range(depth):
            # up step i takes the decoder tensor at level i+1 (the innermost encoder output for the deepest)
            cin = self.widths[i] if i == depth - 1 else self._merged(i)
            if i == 0:
                ups.append(nn.Sequential(nn.ReLU(), *upsampler(upsample, cin, out_channels, True), nn.Tanh()))
                continue
            cout = self.widths[i - 1]
            layers = [nn.ReLU(), *upsampler(upsample, cin, cout, bias), norm_layer(norm, cout)]
            layers += extra_block(blocks[i - 1], cout, norm, nn.ReLU())
            if dropout[i]:
                layers.append(nn.Dropout(0.5))
            ups.append(nn.Sequential(*layers))
        self.downs = nn.ModuleList(downs)
        self.ups = nn.ModuleList(ups)

    def _merged(self, i: int) -> int:
        """Channels entering up step i: the up output of level i+1 merged with encoder level i by skip i."""
        return 2 * self.widths[i] if self.skips[i] == "concat" else self.widths[i]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = []
        for down in self.downs:
            x = down(x)
            feats.append(x)
        h = feats[-1]
        for i in reversed(range(self.depth)):
            h = self.ups[i](h)
            if i > 0:
                skip, e = self.skips[i - 1], feats[i - 1]
                h = torch.cat([e, h], 1) if skip == "concat" else (h + e if skip == "add" else h)
        return h


def pix2pix_levels(ngf: int, num_downs: int) -> tuple[list[int], list[bool]]:
    """pix2pix `UnetGenerator` widths per level (ngf, 2ngf, 4ngf, then 8ngf) and its dropout levels."""
    widths = [ngf * min(2 ** i, 8) for i in range(num_downs)]
    dropout = [4 <= i < num_downs - 1 for i in range(num_downs)]
    return widths, dropout


def pix2pix_unet(in_channels: int, out_channels: int, ngf: int = 64, num_downs: int = 8, norm: str = "batch",
                 dropout: bool = True) -> UNet:
    """pix2pix's U-Net generator (`unet_256` is num_downs=8, `unet_128` num_downs=7) at width `ngf`."""
    widths, drops = pix2pix_levels(ngf, num_downs)
    return UNet(in_channels, out_channels, widths, norm=norm, dropout=drops if dropout else None)


class ResnetBlock(nn.Module):
    def __init__(self, channels: int, norm: str, dropout: bool):
        super().__init__()
        bias = norm != "batch"
        layers = [nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3, bias=bias), norm_layer(norm, channels),
                  nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(0.5))
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3, bias=bias), norm_layer(norm, channels)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """CycleGAN's ResNet generator (`resnet_9blocks` at n_blocks=9, `resnet_6blocks` at 6); sides multiples of 4."""

    def __init__(self, in_channels: int, out_channels: int, ngf: int = 64, n_blocks: int = 9,
                 norm: str = "instance", dropout: bool = False):
        super().__init__()
        bias = norm != "batch"
        self.stem = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(in_channels, ngf, 7, bias=bias),
                                  norm_layer(norm, ngf), nn.ReLU())
        self.down = nn.Sequential(nn.Conv2d(ngf, 2 * ngf, 3, 2, 1, bias=bias), norm_layer(norm, 2 * ngf), nn.ReLU(),
                                  nn.Conv2d(2 * ngf, 4 * ngf, 3, 2, 1, bias=bias), norm_layer(norm, 4 * ngf),
                                  nn.ReLU())
        self.blocks = nn.Sequential(*[ResnetBlock(4 * ngf, norm, dropout) for _ in range(n_blocks)])
        self.up = nn.Sequential(
            nn.ConvTranspose2d(4 * ngf, 2 * ngf, 3, 2, 1, output_padding=1, bias=bias), norm_layer(norm, 2 * ngf),
            nn.ReLU(), nn.ConvTranspose2d(2 * ngf, ngf, 3, 2, 1, output_padding=1, bias=bias),
            norm_layer(norm, ngf), nn.ReLU())
        self.head = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_channels, 7), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.up(self.blocks(self.down(self.stem(x)))))


class PatchDiscriminator(nn.Module):
    """The PatchGAN discriminator (`NLayerDiscriminator`): one logit per overlapping patch (70x70 at n_layers=3)."""

    def __init__(self, in_channels: int, ndf: int = 64, n_layers: int = 3, norm: str = "batch"):
        super().__init__()
        bias = norm != "batch"
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2 ** n, 8)
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, 2, 1, bias=bias), norm_layer(norm, ndf * mult),
                       nn.LeakyReLU(0.2)]
        prev, mult = mult, min(2 ** n_layers, 8)
        layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, 1, 1, bias=bias), norm_layer(norm, ndf * mult),
                   nn.LeakyReLU(0.2), nn.Conv2d(ndf * mult, 1, 4, 1, 1)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


__all__ = ["BLOCKS", "SKIPS", "UPSAMPLERS", "NORMS", "UNet", "ResnetGenerator", "PatchDiscriminator",
           "pix2pix_unet", "pix2pix_levels", "init_gan_weights", "scaled", "norm_layer"]
