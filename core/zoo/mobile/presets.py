"""Hand-designed networks expressed in the mobile space (EfficientNet-B0, MobileNetV2) and presets for small inputs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


from core.engine.registry import SPACES, check_kwargs
from core.api import Arch
from core.zoo.mobile.space import DEFAULT_FIRST_BLOCK, DEFAULT_STAGES, MobileSpace


# hand-designed networks and presets
# ---------------------------------------------------------------------------------------------
def arch_from_layers(space: MobileSpace, layers: Sequence[Sequence[str]]) -> Arch:
    values = {c.name: c.default for c in space.choices}
    for i, ops in enumerate(layers):
        values[f"stage{i}.depth"] = len(ops)
        values.update({f"stage{i}.layer{j}.op": op for j, op in enumerate(ops)})
    return space.check(values)


def efficientnet_b0_space_and_arch() -> tuple[MobileSpace, Arch]:
    """EfficientNet-B0 (Tan & Le, ICML 2019) in the default space.

    5,288,548 parameters at 1000 classes; 385.8M MACs at 224x224 as counted by
    torch's FlopCounterMode (the SE 1x1 convs included, SE gating and BN not),
    the paper's "0.39B FLOPs".
    """
    space = MobileSpace(stem_channels=32, stages=DEFAULT_STAGES, kernels=(3, 5, 7), expansions=(1, 3, 6),
                        allow_skip=True, se_ratio=0.25, activation="swish", head_channels=1280,
                        num_classes=1000, dropout=0.2, first_block=DEFAULT_FIRST_BLOCK)
    layers = [["mb6_k3"] * 2, ["mb6_k5"] * 2, ["mb6_k3"] * 3, ["mb6_k5"] * 3, ["mb6_k5"] * 4, ["mb6_k3"]]
    return space, arch_from_layers(space, layers)


MOBILENETV2_STAGES = (
    {"channels": 24, "stride": 2, "depths": [1, 2, 3]},
    {"channels": 32, "stride": 2, "depths": [2, 3, 4]},
    {"channels": 64, "stride": 2, "depths": [2, 3, 4]},
    {"channels": 96, "stride": 1, "depths": [2, 3, 4]},
    {"channels": 160, "stride": 2, "depths": [2, 3, 4]},
    {"channels": 320, "stride": 1, "depths": [1]},
)


def mobilenetv2_space_and_arch() -> tuple[MobileSpace, Arch]:
    """MobileNetV2 1.0 (Sandler et al., CVPR 2018) in a ProxylessNAS-like space (ReLU6, no SE).

    3,504,872 parameters at 1000 classes; 300.8M MACs at 224x224 (the paper's "300M").
    """
    space = MobileSpace(stem_channels=32, stages=MOBILENETV2_STAGES, kernels=(3, 5, 7), expansions=(3, 6),
                        allow_skip=True, se_ratio=0.0, activation="relu6", head_channels=1280,
                        num_classes=1000, dropout=0.2, first_block=DEFAULT_FIRST_BLOCK)
    layers = [["mb6_k3"] * 2, ["mb6_k3"] * 3, ["mb6_k3"] * 4, ["mb6_k3"] * 3, ["mb6_k3"] * 3, ["mb6_k3"]]
    return space, arch_from_layers(space, layers)


DIGITS = dict(
    in_channels=1, stem_channels=16, stem_stride=1, first_block=None,
    stages=[{"channels": [16, 24], "stride": 1, "depths": [1, 2]},
            {"channels": [24, 32], "stride": 2, "depths": [1, 2, 3]},
            {"channels": [32, 48], "stride": 2, "depths": [1, 2]}],
    kernels=[3, 5], expansions=[1, 3, 6], allow_skip=True, se_ratio=0.25, activation="swish",
    head_channels=0, num_classes=10, dropout=0.1)

CIFAR = dict(
    in_channels=3, stem_channels=32, stem_stride=1, first_block={"channels": 16},
    stages=[{"channels": 24, "stride": 1, "depths": [1, 2, 3]},
            {"channels": 40, "stride": 2, "depths": [1, 2, 3, 4]},
            {"channels": 80, "stride": 2, "depths": [1, 2, 3, 4]},
            {"channels": 96, "stride": 1, "depths": [1, 2, 3]},
            {"channels": 192, "stride": 2, "depths": [1, 2, 3, 4]},
            {"channels": 320, "stride": 1, "depths": [1]}],
    kernels=[3, 5, 7], expansions=[3, 6], allow_skip=True, se_ratio=0.0, activation="relu6",
    head_channels=1280, num_classes=10, dropout=0.2)


def _preset(base: dict, overrides: Mapping[str, Any]) -> MobileSpace:
    return MobileSpace(**{**base, **check_kwargs(MobileSpace, overrides, "space")})


def digits_space(**overrides: Any) -> MobileSpace:
    """A tiny space for 8x8 one-channel digits (scikit-learn's): strides 1, 2, 2 keep a 2x2 map at the end."""
    return _preset(DIGITS, overrides)


def cifar_space(**overrides: Any) -> MobileSpace:
    """A 32x32 space (ProxylessNAS-like ops, stem stride 1; maps 32 -> 16 -> 8 -> 4)."""
    return _preset(CIFAR, overrides)


SPACES.register("mobile", MobileSpace)
SPACES.register("mobile_digits", digits_space)
SPACES.register("mobile_cifar", cifar_space)
