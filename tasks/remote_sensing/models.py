"""ResNet18 and UNet with DGConv, plain or FGConv convolutions (Yang et al., TGRS 2022, arXiv 2109.06094).

As in the official code (model/resnet.py, model/unet.py):

- ResNet18-DGConv: the 7x7 stride-2 stem and both 3x3 convolutions of every
  BasicBlock are `DGConv2d`; the 1x1 downsample is plain; max-pool after the
  stem; global average pooling and a linear classifier. Patches of 11x11
  (MUUFL) or 17x17 (Berlin) pixels.
- UNet-DGConv (milesial's UNet): every convolution of the double convs is
  `DGConv2d` (with bias, as there); transposed-convolution upsampling
  (`bilinear=False`); a plain 1x1 output convolution.
- `conv="plain"`: the same networks with `nn.Conv2d` (`groups` per stage
  when a search asks for static groups).
- `conv="fgconv"`: the multi-stream equivalent. The first convolution joins
  each source's bands only to its own share of the output channels
  (`FGConv2d`, in_groups = the source split, out_groups = equal shares, the
  official [64, 2] -> [32, 32]); every later convolution (and the 1x1
  downsample) is grouped in as many equal streams as there are sources, as
  the official `fix_groups` network. The streams meet in the classifier
  (ResNet) or the output convolution (UNet). Deviation: the official code
  hard-codes the stem split [64, 2] whatever the data and leaves the UNet's
  transposed convolutions dense; here the split comes from the data and the
  transposed convolutions are grouped too.

Widths are the paper's (64, 128, 256, 512 for the ResNet, 64 ... 1024 for the
UNet) times `width / 64`; the search space changes them per stage.
Initialisation: Kaiming normal (fan_out) for convolutions, as the official
MUUFL runs (`init="kaiming"`), or PyTorch's default (`init="default"`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from core.engine.registry import MODELS
from core.ops.dgconv import DGConv2d, FGConv2d, even_split

CONVS = ("dgconv", "plain", "fgconv")


def make_conv(kind: str, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0, bias: bool = False,
              streams: int = 1, groups: int = 1, in_split: Sequence[int] | None = None) -> nn.Module:
    """One convolution of the given kind. `streams` > 1 (fgconv) groups it in equal streams; `in_split` makes
    it the first layer, splitting the input by source; `groups` is a static grouping (plain)."""
    if kind == "dgconv":
        return DGConv2d(cin, cout, kernel, stride=stride, padding=padding, bias=bias)
    if kind == "fgconv":
        if in_split is not None:
            return FGConv2d(cin, cout, kernel, stride=stride, padding=padding, bias=bias, in_groups=list(in_split),
                            out_groups=even_split(cout, len(in_split)))
        if streams > 1:
            return FGConv2d(cin, cout, kernel, stride=stride, padding=padding, bias=bias,
                            in_groups=even_split(cin, streams), out_groups=even_split(cout, streams))
        return nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=bias)
    if kind == "plain":
        return nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=bias, groups=groups)
    raise ValueError(f"conv: expected one of {', '.join(CONVS)}, got {kind!r}")


def init_weights(model: nn.Module, how: str) -> None:
    if how == "default":
        return
    if how != "kaiming":
        raise ValueError(f"init: expected kaiming or default, got {how!r}")
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, conv: str, streams: int, groups: int):
        super().__init__()
        self.conv1 = make_conv(conv, cin, cout, 3, stride, 1, streams=streams, groups=groups)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = make_conv(conv, cout, cout, 3, 1, 1, streams=streams, groups=groups)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            down_groups = streams if conv == "fgconv" and cin % streams == 0 and cout % streams == 0 else 1
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False, groups=down_groups),
                                            nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (self.downsample(x) if self.downsample is not None else x))


class ResNet18(nn.Module):
    """ResNet18 for patch classification; `widths` per stage, `blocks` per stage, `groups` per stage (plain)."""

    def __init__(self, in_channels: int, num_classes: int, conv: str = "dgconv",
                 source_split: Sequence[int] | None = None, stem_width: int = 64,
                 widths: Sequence[int] = (64, 128, 256, 512), blocks: Sequence[int] = (2, 2, 2, 2),
                 groups: Sequence[int] = (1, 1, 1, 1), init: str = "kaiming"):
        super().__init__()
        split = list(source_split) if source_split else [in_channels]
        if sum(split) != in_channels:
            raise ValueError(f"source_split {split} does not add up to {in_channels} input channels")
        streams = len(split) if conv == "fgconv" else 1
        self.conv1 = make_conv(conv, in_channels, stem_width, 7, 2, 3, in_split=split if conv == "fgconv" else None)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        layers, cin = [], stem_width
        for i, (width, depth, g) in enumerate(zip(widths, blocks, groups)):
            stage = []
            for b in range(depth):
                stage.append(BasicBlock(cin, width, 2 if (i > 0 and b == 0) else 1, conv, streams, g))
                cin = width
            layers.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.fc = nn.Linear(cin, num_classes)
        init_weights(self, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class DoubleConv(nn.Sequential):
    def __init__(self, cin: int, cout: int, conv: str, streams: int, groups: int = 1,
                 in_split: Sequence[int] | None = None):
        super().__init__(make_conv(conv, cin, cout, 3, 1, 1, bias=True, streams=streams, groups=groups,
                                   in_split=in_split),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         make_conv(conv, cout, cout, 3, 1, 1, bias=True, streams=streams, groups=groups),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Up(nn.Module):
    """Transposed convolution from `cin` to `cout` channels, concatenation with the skip (`cout` channels),
    double conv back to `cout` (milesial's Up with bilinear=False when cin = 2 cout)."""

    def __init__(self, cin: int, cout: int, conv: str, streams: int, groups: int = 1):
        super().__init__()
        up_groups = streams if conv == "fgconv" and cin % streams == 0 and cout % streams == 0 else 1
        self.up = nn.ConvTranspose2d(cin, cout, kernel_size=2, stride=2, groups=up_groups)
        self.conv = DoubleConv(2 * cout, cout, conv, streams, groups)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        dy, dx = skip.shape[2] - x.shape[2], skip.shape[3] - x.shape[3]
        x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([skip, x], dim=1))


class UNet(nn.Module):
    """milesial's UNet with transposed-convolution upsampling; `widths` are the five encoder levels."""

    def __init__(self, in_channels: int, num_classes: int, conv: str = "dgconv",
                 source_split: Sequence[int] | None = None, widths: Sequence[int] = (64, 128, 256, 512, 1024),
                 groups: Sequence[int] = (1, 1, 1, 1, 1), init: str = "default"):
        super().__init__()
        split = list(source_split) if source_split else [in_channels]
        if sum(split) != in_channels:
            raise ValueError(f"source_split {split} does not add up to {in_channels} input channels")
        streams = len(split) if conv == "fgconv" else 1
        w = list(widths)
        self.inc = DoubleConv(in_channels, w[0], conv, streams, groups[0], in_split=split if conv == "fgconv" else None)
        self.downs = nn.ModuleList(nn.Sequential(nn.MaxPool2d(2), DoubleConv(w[i], w[i + 1], conv, streams,
                                                                             groups[i + 1]))
                                   for i in range(len(w) - 1))
        self.ups = nn.ModuleList(Up(w[i + 1], w[i], conv, streams, groups[i]) for i in reversed(range(len(w) - 1)))
        self.outc = nn.Conv2d(w[0], num_classes, kernel_size=1)
        init_weights(self, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        x = skips.pop()
        for up in self.ups:
            x = up(x, skips.pop())
        return self.outc(x)


def _register(name: str, cls, conv: str) -> None:
    def build(in_channels: int, num_classes: int, source_split: Sequence[int] | None = None, width: int = 64,
              init: str = "kaiming" if cls is ResNet18 else "default"):
        scale = width / 64
        if cls is ResNet18:
            return ResNet18(in_channels, num_classes, conv, source_split, stem_width=width,
                            widths=[round(c * scale) for c in (64, 128, 256, 512)], init=init)
        return UNet(in_channels, num_classes, conv, source_split,
                    widths=[round(c * scale) for c in (64, 128, 256, 512, 1024)], init=init)

    build.__name__ = name
    build.__doc__ = f"{cls.__name__} with {conv} convolutions; `width` is the first stage's (64 in the paper)."
    MODELS.register(name, build)


for _cls, _family in ((ResNet18, "resnet18"), (UNet, "unet")):
    for _conv in CONVS:
        _register(f"{_family}_{_conv}", _cls, _conv)


__all__ = ["BasicBlock", "CONVS", "DoubleConv", "ResNet18", "UNet", "Up", "init_weights", "make_conv"]
