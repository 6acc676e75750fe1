"""iResNet (improved ResNet) face embedding networks: the ArcFace / PocketNet teachers.

Duta, Liu, Zhu, Shao. "Improved Residual Networks for Image and Video
Recognition", ICPR 2020; the face variant of insightface's `arcface_torch`
(`backbones/iresnet.py`), also shipped by PocketNet (`backbones/iresnet.py`):
3x3 stem at stride 1, four stages of IBasicBlocks (BN -> conv3x3 -> BN ->
PReLU -> conv3x3(stride) -> BN, + shortcut), each stage stride 2, then
BN -> flatten -> dropout -> FC -> BN1d (scale frozen at 1) to the embedding.

`width` scales every stage width (1.0 = 64/128/256/512) so a narrow teacher
fits a CPU benchmark; at other input sizes the FC takes the final map
(7x7 at 112x112). State-dict keys follow the official code, so insightface
checkpoints load into `iresnet50(num_features=512)` and friends.
"""

from __future__ import annotations

import math

import torch
from torch import nn

LAYERS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3)}


class IBasicBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (self.downsample(x) if self.downsample is not None else x)


class IResNet(nn.Module):
    """iResNet-{18,34,50,100}: image -> embedding (`num_features`, 512 in ArcFace, 128 for PocketNet's teacher)."""

    def __init__(self, depth: int = 100, num_features: int = 512, width: float = 1.0, input_size: int = 112,
                 dropout: float = 0.0, in_channels: int = 3):
        super().__init__()
        if depth not in LAYERS:
            raise ValueError(f"iresnet depth: expected one of {sorted(LAYERS)}, got {depth!r}")
        widths = [max(1, int(round(c * width))) for c in (64, 64, 128, 256, 512)]
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(in_channels, self.inplanes, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes, eps=1e-5)
        self.prelu = nn.PReLU(self.inplanes)
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            self._make_layer(planes, blocks) for planes, blocks in zip(widths[1:], LAYERS[depth]))
        self.bn2 = nn.BatchNorm2d(widths[4], eps=1e-5)
        self.dropout = nn.Dropout(p=dropout, inplace=True)
        side = input_size
        for _ in range(4):
            side = math.ceil(side / 2)
        self.fc = nn.Linear(widths[4] * side * side, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-5)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, planes: int, blocks: int) -> nn.Sequential:
        downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, 2, bias=False),
                                   nn.BatchNorm2d(planes, eps=1e-5))
        layers = [IBasicBlock(self.inplanes, planes, 2, downsample)]
        self.inplanes = planes
        layers += [IBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x))


def iresnet18(**kwargs) -> IResNet:
    return IResNet(18, **kwargs)


def iresnet34(**kwargs) -> IResNet:
    return IResNet(34, **kwargs)


def iresnet50(**kwargs) -> IResNet:
    return IResNet(50, **kwargs)


def iresnet100(**kwargs) -> IResNet:
    return IResNet(100, **kwargs)


__all__ = ["LAYERS", "IBasicBlock", "IResNet", "iresnet18", "iresnet34", "iresnet50", "iresnet100"]
