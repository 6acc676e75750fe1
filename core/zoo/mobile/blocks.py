"""Building blocks of the mobile space: activations, conv-BN-act, squeeze-excite, the inverted residual (MBConv), the classifier head and the assembled network."""

from __future__ import annotations

import re

import torch
from torch import nn
from torchvision.ops import stochastic_depth

from core.engine.registry import ConfigError


ACTIVATIONS = {"relu": nn.ReLU, "relu6": nn.ReLU6, "swish": nn.SiLU, "silu": nn.SiLU,
               "hswish": nn.Hardswish, "hardswish": nn.Hardswish}
SKIP = "skip"
OP_PATTERN = re.compile(r"^mb(\d+(?:\.\d+)?)_k(\d+)$")


def make_activation(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name](inplace=True)
    except KeyError:
        raise ConfigError(f"activation: unknown {name!r}; known: {', '.join(ACTIVATIONS)}") from None


def conv_bn_act(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1,
                act: str | None = None) -> nn.Sequential:
    """Conv (no bias, 'same' padding for odd kernels) + BatchNorm (+ activation)."""
    layers = [nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False),
              nn.BatchNorm2d(out_ch)]
    if act:
        layers.append(make_activation(act))
    return nn.Sequential(*layers)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al., CVPR 2018): channel gates from globally pooled features."""

    def __init__(self, channels: int, reduced: int, act: str, bias: bool = True):
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1, bias=bias)
        self.act = make_activation(act)
        self.expand = nn.Conv2d(reduced, channels, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.expand(self.act(self.reduce(x.mean((2, 3), keepdim=True))))
        return x * torch.sigmoid(gate)


def pointwise_bn_act(in_ch: int, out_ch: int, pointwise: tuple, dim: str, act: str | None = None) -> nn.Sequential:
    """A 1x1 conv (+ BN, activation) built by the operator `pointwise` names (`core.engine.registry.OPS`):
    `(("name", "epitome_conv"), ("multiplier", 2), ...)`; `dim` tells it whether the conv expands ("out")
    or projects ("in")."""
    from core.engine.registry import OPS

    spec = dict(pointwise)
    extra = {"dim": dim} if spec.get("name") == "epitome_conv" else {}
    layers = [OPS.build(spec, "space.pointwise", in_channels=in_ch, out_channels=out_ch, **extra),
              nn.BatchNorm2d(out_ch)]
    if act:
        layers.append(make_activation(act))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """MBConv: 1x1 expand -> kxk depthwise -> SE -> 1x1 linear projection, residual when shapes allow.

    Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018;
    with SE and drop-connect as in Tan & Le, "EfficientNet", ICML 2019. Expansion 1
    has no expand conv (the MB1 block of both papers) unless `expand_always` (HourNAS's
    released code keeps it). `pointwise` (an operator spec, see `pointwise_bn_act`) replaces
    both 1x1 convs, e.g. by epitome convs.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, kernel: int, expansion: float,
                 se_channels: int = 0, act: str = "relu6", drop_connect: float = 0.0, se_bias: bool = True,
                 expand_always: bool = False, pointwise: tuple = ()):
        super().__init__()
        mid = int(round(in_ch * expansion))
        if pointwise:
            self.expand = (pointwise_bn_act(in_ch, mid, pointwise, "out", act) if mid != in_ch or expand_always
                           else nn.Identity())
        else:
            self.expand = conv_bn_act(in_ch, mid, 1, act=act) if mid != in_ch or expand_always else nn.Identity()
        self.depthwise = conv_bn_act(mid, mid, kernel, stride, groups=mid, act=act)
        self.se = SqueezeExcite(mid, se_channels, act, se_bias) if se_channels else nn.Identity()
        self.project = pointwise_bn_act(mid, out_ch, pointwise, "in") if pointwise else conv_bn_act(mid, out_ch, 1)
        self.use_residual = stride == 1 and in_ch == out_ch
        self.drop_connect = drop_connect

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.se(self.depthwise(self.expand(x))))
        if not self.use_residual:
            return out
        if self.drop_connect > 0:
            out = stochastic_depth(out, self.drop_connect, "row", self.training)
        return out + x


class ClassifierHead(nn.Module):
    """Global average pooling, dropout and a linear layer."""

    def __init__(self, in_ch: int, num_classes: int, dropout: float):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(torch.flatten(self.pool(x), 1)))


class MobileNet(nn.Module):
    """stem -> first block -> stages -> head conv -> classifier. Standalone nets and supernets share it."""

    def __init__(self, stem: nn.Module, first_block: nn.Module, stages: nn.ModuleList, head: nn.Module,
                 classifier: nn.Module):
        super().__init__()
        self.stem, self.first_block, self.stages = stem, first_block, stages
        self.head, self.classifier = head, classifier
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.first_block(self.stem(x))
        for stage in self.stages:
            x = stage(x)
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x))


def init_weights(model: nn.Module) -> None:
    """torchvision's MobileNetV2/EfficientNet initialisation."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


# ---------------------------------------------------------------------------------------------
