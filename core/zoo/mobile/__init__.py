"""A MobileNetV2/EfficientNet-style search space of inverted-residual (MBConv) blocks.

The macro skeleton is fixed: a stem convolution, an optional fixed first block,
a list of stages, an optional 1x1 head convolution, global pooling and a linear
classifier. Per stage the search picks a depth (`stage{i}.depth`) and, when the
stage lists several widths, a width (`stage{i}.width`); per layer it picks an op
(`stage{i}.layer{j}.op`): `mb{e}_k{k}` is an inverted residual with expansion e
and depthwise kernel k (MobileNetV2, Sandler et al., CVPR 2018), with
squeeze-and-excitation (Hu et al., CVPR 2018) when `se_ratio > 0` as in
EfficientNet (Tan & Le, ICML 2019); `skip` is the identity, offered on layers
that keep the shape (every layer but a stage's first) when `allow_skip`.
Layers beyond a stage's depth are inactive and reset by `canonical()`.

Widths are used exactly as configured (no rounding to multiples of 8). With
`build(arch, channel_divisor=d)` every width (stem, blocks, SE, head) is divided
by d and rounded half up to an int >= 1: the channel proxy of EcoNAS (Zhou et
al., CVPR 2020; c4 divides 36 channels into 9, so no rounding to 8 there either).
An expanded width is the (divided) input width times the expansion; the SE
width is `max(1, int(se_ratio * block input width))`, EfficientNet's rule.

`efficientnet_b0_space_and_arch()` and `mobilenetv2_space_and_arch()` express
the two hand-designed networks in the space (5,288,548 and 3,504,872
parameters at 1000 classes, as in the papers and torchvision);
`digits_space()` and `cifar_space()` are presets for 8x8 and 32x32 inputs.
`supernet()` holds every op of every layer for single-path one-shot training
(SPOS, Guo et al., ECCV 2020) and `inherit(supernet, arch)` copies an arch's
path out of it into a standalone network.
"""

from core.zoo.mobile.blocks import (ACTIVATIONS, SKIP, ClassifierHead, InvertedResidual, MobileNet, SqueezeExcite,
                                    conv_bn_act, init_weights, make_activation)
from core.zoo.mobile.plan import LayerPlan, NetPlan, StageConfig, op_name, parse_op, scale_width
from core.zoo.mobile.presets import (CIFAR, DIGITS, arch_from_layers, cifar_space, digits_space, efficientnet_b0_space_and_arch,
                                     mobilenetv2_space_and_arch)
from core.zoo.mobile.space import DEFAULT_FIRST_BLOCK, DEFAULT_STAGES, MobileSpace
from core.zoo.mobile.supernet import SupernetStage, assemble

__all__ = ["ACTIVATIONS", "SKIP", "ClassifierHead", "InvertedResidual", "MobileNet", "SqueezeExcite", "conv_bn_act",
           "init_weights", "make_activation", "LayerPlan", "NetPlan", "StageConfig", "op_name", "parse_op",
           "scale_width", "CIFAR", "DIGITS", "cifar_space", "digits_space", "efficientnet_b0_space_and_arch",
           "mobilenetv2_space_and_arch", "DEFAULT_FIRST_BLOCK", "DEFAULT_STAGES", "MobileSpace", "SupernetStage",
           "assemble", "arch_from_layers"]
