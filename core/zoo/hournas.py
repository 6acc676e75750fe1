"""HourNAS's search space and its released architecture, HourNAS-F, in the mobile space.

Yang et al., "HourNAS: Extremely Fast Neural Architecture Search Through an
Hourglass Lens", CVPR 2021 (arXiv 2005.14446). The released code
(mindspore `model_zoo/research/cv/HourNAS`, `src/architectures.py` and
`src/hournasnet.py`) holds one network, `hournas_f_c10`, the CIFAR-10
HourNAS-F: a 3x3 stem of 32 channels (stride 1), the block `ir_k3_e1_se` of
16 channels, five stages of four inverted residuals (24, 40, 80, 112, 192
channels; strides 1, 1, 2, 1, 2) and one of 320, a 1x1 head of 1280,
global pooling, dropout 0.2 and a linear classifier. All activations are
ReLU; every block has SE with ratio 0.05 of the *expanded* width
(`se_reduce_mid=True`) and bias-free SE convs; the 1x1 expand conv exists
also at expansion 1 (the code's `InvertedResidual` always builds it); the
first block of every four-block stage is `ir_k5_e6_se`.

The ImageNet HourNAS-F of the README (383M FLOPs, 5.3M params, 77.0% top-1)
is not in the code; with the same blocks and EfficientNet-B0's ImageNet
strides (stem 2; stages 2, 2, 2, 1, 2, 1) the network has 5,343,112
parameters and 382,964,976 multiply-adds at 224x224 (1000 classes), which
matches both published figures; we take that as the ImageNet network.

`hournas_space(dataset)` is the space around it (registered as
`mobile_hournas`): the same skeleton with, per layer, kernels {3, 5} and
expansions {1, 3, 6}, depths 1-4 per four-block stage and `skip` on every
layer but a stage's first (the vital block of `core.oneshot.hournas`).
`space.named_archs["hournas_f"]` is HourNAS-F in it; the classification task
builds it by name (`train.arch: hournas_f`).
"""

from __future__ import annotations

from typing import Any

from core.engine.registry import SPACES, ConfigError, check_kwargs
from core.api import Arch
from core.zoo.mobile import MobileSpace, arch_from_layers

#: `predefine_archs['hournas_f_c10']['genotypes']` after the fixed first block, as mobile-space ops
HOURNAS_F = (
    ("mb6_k5", "mb1_k5", "mb1_k5", "mb1_k3"),
    ("mb6_k5", "mb1_k5", "mb1_k3", "mb1_k5"),
    ("mb6_k5", "mb6_k3", "mb6_k3", "mb6_k3"),
    ("mb6_k5", "mb3_k5", "mb3_k5", "mb3_k5"),
    ("mb6_k5", "mb6_k5", "mb6_k3", "mb6_k5"),
    ("mb6_k5",),
)
_CHANNELS = (24, 40, 80, 112, 192, 320)
_STRIDES = {"cifar10": (1, 1, 2, 1, 2, 1), "imagenet": (2, 2, 2, 1, 2, 1)}
_STEM_STRIDE = {"cifar10": 1, "imagenet": 2}
_CLASSES = {"cifar10": 10, "imagenet": 1000}


def hournas_space(dataset: str = "cifar10", **overrides: Any) -> MobileSpace:
    """HourNAS's mobile space for `dataset` ("cifar10": 32x32, "imagenet": 224x224) with HourNAS-F named."""
    if dataset not in _STRIDES:
        raise ConfigError(f"dataset: expected one of {', '.join(_STRIDES)}, got {dataset!r}")
    stages = [{"channels": c, "stride": s, "depths": [1, 2, 3, 4] if c != 320 else [1]}
              for c, s in zip(_CHANNELS, _STRIDES[dataset])]
    settings = dict(stem_channels=32, stages=stages, kernels=[3, 5], expansions=[1, 3, 6], allow_skip=True,
                    se_ratio=0.05, activation="relu", head_channels=1280, num_classes=_CLASSES[dataset],
                    dropout=0.2, stem_stride=_STEM_STRIDE[dataset],
                    first_block={"channels": 16, "kernel": 3, "expansion": 1, "stride": 1},
                    se_base="mid", se_bias=False, expand_always=True)
    settings.update(check_kwargs(MobileSpace, overrides, "space"))
    space = MobileSpace(**settings)
    space.named_archs = {"hournas_f": arch_from_layers(space, HOURNAS_F)}
    return space


def hournas_f_space_and_arch(dataset: str = "imagenet") -> tuple[MobileSpace, Arch]:
    """HourNAS-F and its space; 5,343,112 params / 382,964,976 MACs (ImageNet), 4,074,922 / 393,409,872 (CIFAR-10)."""
    space = hournas_space(dataset)
    return space, space.named_archs["hournas_f"]


SPACES.register("mobile_hournas", hournas_space)

__all__ = ["HOURNAS_F", "hournas_space", "hournas_f_space_and_arch"]
