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

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torchvision.ops import stochastic_depth

from core.cost.lut import LayerSpec
from core.engine.registry import SPACES, ConfigError, check_kwargs
from core.space import Arch, Choice, ChoiceModule, SearchSpace

ACTIVATIONS = {"relu": nn.ReLU, "relu6": nn.ReLU6, "swish": nn.SiLU, "silu": nn.SiLU,
               "hswish": nn.Hardswish, "hardswish": nn.Hardswish}
SKIP = "skip"
_OP_PATTERN = re.compile(r"^mb(\d+(?:\.\d+)?)_k(\d+)$")


# ---------------------------------------------------------------------------------------------
# building blocks
# ---------------------------------------------------------------------------------------------
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
# ops and plans: one description drives build(), supernet() and layer_specs()
# ---------------------------------------------------------------------------------------------
def op_name(expansion: float, kernel: int) -> str:
    return f"mb{expansion:g}_k{kernel}"


def parse_op(name: str) -> tuple[float, int] | None:
    """`"mb6_k5"` -> (6, 5); `"skip"` -> None."""
    if name == SKIP:
        return None
    match = _OP_PATTERN.match(name)
    if not match:
        raise ValueError(f"unknown mobile op {name!r}; expected 'mb<expansion>_k<kernel>' or 'skip'")
    expansion = float(match.group(1))
    return (int(expansion) if expansion.is_integer() else expansion), int(match.group(2))


def scale_width(channels: int, divisor: float) -> int:
    """Divide a width by `divisor`, rounding half up, at least 1 (identity for divisor 1)."""
    return channels if divisor == 1 else max(1, int(channels / divisor + 0.5))


def _out_size(size: int, kernel: int, stride: int) -> int:
    return (size + 2 * (kernel // 2) - kernel) // stride + 1


@dataclass(frozen=True)
class LayerPlan:
    """One layer of a concrete network: kind is conv (stem/head), mb, skip or classifier."""

    kind: str
    in_ch: int
    out_ch: int
    kernel: int = 1
    stride: int = 1
    expansion: float = 1
    se_channels: int = 0
    act: str = "relu6"
    drop: float = 0.0  # drop-connect for mb, dropout for the classifier
    se_bias: bool = True
    expand_always: bool = False
    pointwise: tuple = ()  # an operator spec for the 1x1 convs of mb layers, as sorted (key, value) pairs

    def make(self) -> nn.Module:
        if self.kind == "conv":
            return conv_bn_act(self.in_ch, self.out_ch, self.kernel, self.stride, act=self.act)
        if self.kind == "mb":
            return InvertedResidual(self.in_ch, self.out_ch, self.stride, self.kernel, self.expansion,
                                    self.se_channels, self.act, self.drop, self.se_bias, self.expand_always,
                                    self.pointwise)
        if self.kind == "skip":
            return nn.Identity()
        return ClassifierHead(self.in_ch, self.out_ch, self.drop)

    def key(self, height: int, width: int) -> str:
        """Latency-table key: everything that changes the op's cost (not dropout rates)."""
        res = f"r{height}x{width}"
        if self.kind == "mb":
            variant = ("" if self.se_bias else "_senobias") + ("_expand" if self.expand_always else "") + \
                "".join(f"_{k}-{v}" for k, v in self.pointwise)
            return (f"mb_i{self.in_ch}_o{self.out_ch}_e{self.expansion:g}_k{self.kernel}_s{self.stride}"
                    f"_se{self.se_channels}_{self.act}{variant}_{res}")
        if self.kind == "conv":
            return f"conv_i{self.in_ch}_o{self.out_ch}_k{self.kernel}_s{self.stride}_{self.act}_{res}"
        return f"{self.kind}_i{self.in_ch}_o{self.out_ch}_{res}"

    def out_size(self, height: int, width: int) -> tuple[int, int]:
        if self.kind in ("conv", "mb"):
            return _out_size(height, self.kernel, self.stride), _out_size(width, self.kernel, self.stride)
        return height, width


@dataclass(frozen=True)
class NetPlan:
    stem: LayerPlan
    first_block: LayerPlan | None
    stages: tuple[tuple[LayerPlan, ...], ...]
    head: LayerPlan | None
    classifier: LayerPlan

    def layers(self) -> Iterator[LayerPlan]:
        yield self.stem
        if self.first_block:
            yield self.first_block
        for stage in self.stages:
            yield from stage
        if self.head:
            yield self.head
        yield self.classifier


@dataclass(frozen=True)
class StageConfig:
    channels: tuple[int, ...]
    stride: int
    depths: tuple[int, ...]
    kernels: tuple[int, ...]
    expansions: tuple[float, ...]
    ops: tuple[str, ...] = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "ops", tuple(op_name(e, k) for e in self.expansions for k in self.kernels))


# ---------------------------------------------------------------------------------------------
# config validation
# ---------------------------------------------------------------------------------------------
def _positive_ints(key: str, value: Any, allow_empty: bool = False) -> tuple[int, ...]:
    values = tuple(value) if isinstance(value, (list, tuple)) else (value,)
    if (not values and not allow_empty) or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                                   for v in values):
        raise ConfigError(f"{key}: expected a positive int or a non-empty list of them, got {value!r}")
    if len(set(values)) != len(values):
        raise ConfigError(f"{key}: repeated values in {value!r}")
    return values


def _positive_int(key: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{key}: expected a positive int, got {value!r}")
    return value


def _odd_kernels(key: str, value: Any) -> tuple[int, ...]:
    kernels = _positive_ints(key, value)
    if any(k % 2 == 0 for k in kernels):
        raise ConfigError(f"{key}: kernels must be odd (same padding), got {value!r}")
    return kernels


def _expansions(key: str, value: Any) -> tuple[float, ...]:
    values = tuple(value) if isinstance(value, (list, tuple)) else (value,)
    if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 1 for v in values):
        raise ConfigError(f"{key}: expected a non-empty list of expansions >= 1, got {value!r}")
    return tuple(int(v) if float(v).is_integer() else float(v) for v in values)


_STAGE_KEYS = {"channels", "stride", "depths", "kernels", "expansions"}


def _stage_config(i: int, cfg: Any, kernels: tuple, expansions: tuple) -> StageConfig:
    key = f"stages[{i}]"
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"{key}: expected a mapping with channels, stride, depths; got {cfg!r}")
    unknown = sorted(set(cfg) - _STAGE_KEYS)
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}: unknown key; a stage takes {', '.join(sorted(_STAGE_KEYS))}")
    for required in ("channels", "depths"):
        if required not in cfg:
            raise ConfigError(f"{key}.{required}: missing")
    stride = cfg.get("stride", 1)
    if stride not in (1, 2):
        raise ConfigError(f"{key}.stride: expected 1 or 2, got {stride!r}")
    return StageConfig(channels=_positive_ints(f"{key}.channels", cfg["channels"]), stride=stride,
                       depths=_positive_ints(f"{key}.depths", cfg["depths"]),
                       kernels=_odd_kernels(f"{key}.kernels", cfg["kernels"]) if "kernels" in cfg else kernels,
                       expansions=(_expansions(f"{key}.expansions", cfg["expansions"])
                                   if "expansions" in cfg else expansions))


_FIRST_BLOCK_DEFAULTS = {"kernel": 3, "expansion": 1, "stride": 1}


def _first_block_config(cfg: Any) -> dict | None:
    if cfg is None:
        return None
    if not isinstance(cfg, Mapping) or "channels" not in cfg:
        raise ConfigError(f"first_block: expected null or a mapping with channels (and kernel, expansion, "
                          f"stride, se_ratio), got {cfg!r}")
    unknown = sorted(set(cfg) - {"channels", "kernel", "expansion", "stride", "se_ratio"})
    if unknown:
        raise ConfigError(f"first_block.{unknown[0]}: unknown key")
    out = {**_FIRST_BLOCK_DEFAULTS, **cfg}
    _positive_int("first_block.channels", out["channels"])
    _odd_kernels("first_block.kernel", _positive_int("first_block.kernel", out["kernel"]))
    if isinstance(out["expansion"], (list, tuple)):
        raise ConfigError(f"first_block.expansion: expected one number >= 1, got {out['expansion']!r}")
    out["expansion"] = _expansions("first_block.expansion", out["expansion"])[0]
    if out["stride"] not in (1, 2):
        raise ConfigError(f"first_block.stride: expected 1 or 2, got {out['stride']!r}")
    return out


def _pointwise_config(spec: Mapping | None) -> tuple:
    """Validate an operator spec for the 1x1 convs now (name and keys); store it as sorted (key, value) pairs."""
    if not spec:
        return ()
    if not isinstance(spec, Mapping) or "name" not in spec:
        raise ConfigError(f"pointwise: expected null or a mapping with a name (an operator), got {spec!r}")
    from core.engine.registry import OPS

    import core.ops  # noqa: F401  (registers the operators)

    extra = {"dim": "out"} if spec["name"] == "epitome_conv" else {}
    OPS.build(dict(spec), "space.pointwise", in_channels=2, out_channels=2, **extra)
    return tuple(sorted((str(k), v) for k, v in spec.items()))


# ---------------------------------------------------------------------------------------------
# the space
# ---------------------------------------------------------------------------------------------
#: EfficientNet-B0's macro skeleton with searchable depths (B0's own depths 2,2,3,3,4,1 included).
DEFAULT_STAGES = (
    {"channels": 24, "stride": 2, "depths": [1, 2, 3]},
    {"channels": 40, "stride": 2, "depths": [2, 3, 4]},
    {"channels": 80, "stride": 2, "depths": [2, 3, 4]},
    {"channels": 112, "stride": 1, "depths": [2, 3, 4]},
    {"channels": 192, "stride": 2, "depths": [2, 3, 4]},
    {"channels": 320, "stride": 1, "depths": [1]},
)
DEFAULT_FIRST_BLOCK = {"channels": 16, "kernel": 3, "expansion": 1, "stride": 1}


class MobileSpace(SearchSpace):
    """Inverted-residual (MBConv) search space; see the module docstring for the choices.

    Every argument is a plain JSON/YAML value. `stages` is a list of
    `{channels: int | [int, ...], stride: 1|2, depths: [int, ...], kernels?: [...],
    expansions?: [...]}`; per-stage kernels/expansions override the space-wide
    ones. `se_ratio` is relative to a block's input width (0: no SE).
    `head_channels=0` drops the 1x1 head conv. `first_block` is a fixed block
    after the stem (`{channels, kernel=3, expansion=1, stride=1, se_ratio?}`) or
    null. `drop_connect` is the largest stochastic-depth rate, scaled linearly
    with block index as in EfficientNet. The defaults are EfficientNet-B0's
    skeleton (Tan & Le, 2019) with searchable depths, kernels {3,5,7} and
    expansions {1,3,6}.

    Variants for published networks and operators: `se_base: mid` sizes SE
    on the expanded width instead of the block input (HourNAS's
    `se_reduce_mid`), `se_bias: false` drops the SE convs' biases,
    `expand_always` keeps the 1x1 expand conv at expansion 1, and `pointwise`
    names an operator of `core.engine.registry.OPS` for every MBConv's 1x1
    expand and project convs (`{name: epitome_conv, multiplier: 2, sampling:
    learned}`: Neural Epitome Search).
    """

    def __init__(self, stem_channels: int = 32, stages: Sequence[Mapping] | None = None,
                 kernels: Sequence[int] = (3, 5, 7), expansions: Sequence[float] = (1, 3, 6),
                 allow_skip: bool = True, se_ratio: float = 0.25, activation: str = "swish",
                 head_channels: int = 1280, num_classes: int = 1000, in_channels: int = 3,
                 dropout: float = 0.2, drop_connect: float = 0.0, stem_stride: int = 2,
                 first_block: Mapping | None = DEFAULT_FIRST_BLOCK, se_base: str = "in", se_bias: bool = True,
                 expand_always: bool = False, pointwise: Mapping | None = None):
        self.stem_channels = _positive_int("stem_channels", stem_channels)
        self.kernels = _odd_kernels("kernels", kernels)
        self.expansions = _expansions("expansions", expansions)
        stages = DEFAULT_STAGES if stages is None else stages
        if not isinstance(stages, (list, tuple)) or not stages:
            raise ConfigError(f"stages: expected a non-empty list of stage mappings, got {stages!r}")
        self.stages = tuple(_stage_config(i, s, self.kernels, self.expansions) for i, s in enumerate(stages))
        self._check_scalars(se_ratio, activation, head_channels, num_classes, in_channels, dropout,
                            drop_connect, stem_stride)
        self.allow_skip = bool(allow_skip)
        self.se_ratio, self.activation = float(se_ratio), activation
        self.head_channels, self.num_classes, self.in_channels = head_channels, num_classes, in_channels
        self.dropout, self.drop_connect, self.stem_stride = float(dropout), float(drop_connect), stem_stride
        self.first_block = _first_block_config(first_block)
        if se_base not in ("in", "mid"):
            raise ConfigError(f"se_base: expected 'in' (block input width) or 'mid' (expanded width), got {se_base!r}")
        self.se_base, self.se_bias, self.expand_always = se_base, bool(se_bias), bool(expand_always)
        self.pointwise = _pointwise_config(pointwise)
        super().__init__([c for i, stage in enumerate(self.stages) for c in self._stage_choices(i, stage)])

    @staticmethod
    def _check_scalars(se_ratio, activation, head_channels, num_classes, in_channels, dropout, drop_connect,
                       stem_stride) -> None:
        if not isinstance(se_ratio, (int, float)) or not 0 <= se_ratio <= 1:
            raise ConfigError(f"se_ratio: expected a number in [0, 1], got {se_ratio!r}")
        if activation not in ACTIVATIONS:
            raise ConfigError(f"activation: unknown {activation!r}; known: {', '.join(ACTIVATIONS)}")
        if not isinstance(head_channels, int) or head_channels < 0:
            raise ConfigError(f"head_channels: expected an int >= 0 (0: no head conv), got {head_channels!r}")
        _positive_int("num_classes", num_classes)
        _positive_int("in_channels", in_channels)
        for name, value in (("dropout", dropout), ("drop_connect", drop_connect)):
            if not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ConfigError(f"{name}: expected a number in [0, 1), got {value!r}")
        if stem_stride not in (1, 2):
            raise ConfigError(f"stem_stride: expected 1 or 2, got {stem_stride!r}")

    def _stage_choices(self, i: int, stage: StageConfig) -> list[Choice]:
        choices = []
        if len(stage.channels) > 1:
            choices.append(Choice(f"stage{i}.width", stage.channels))
        choices.append(Choice(f"stage{i}.depth", stage.depths))
        for j in range(max(stage.depths)):
            ops = stage.ops + ((SKIP,) if self.allow_skip and j > 0 else ())
            choices.append(Choice(f"stage{i}.layer{j}.op", ops))
        return choices

    # -- rules ----------------------------------------------------------------------------------
    def active(self, arch: Mapping[str, Any]) -> list[str]:
        """Widths and depths always; a layer's op only below its stage's depth."""
        names = []
        for i, stage in enumerate(self.stages):
            if len(stage.channels) > 1:
                names.append(f"stage{i}.width")
            names.append(f"stage{i}.depth")
            names += [f"stage{i}.layer{j}.op" for j in range(arch[f"stage{i}.depth"])]
        return names

    def size(self) -> int:
        """Exact number of canonical archs (skip layers can still make two archs build the same net)."""
        total = 1
        for i, stage in enumerate(self.stages):
            ops = [len(self.choice(f"stage{i}.layer{j}.op")) for j in range(max(stage.depths))]
            total *= len(stage.channels) * sum(math.prod(ops[:d]) for d in stage.depths)
        return total

    # -- plans ------------------------------------------------------------------------------------
    def stage_width(self, arch: Mapping[str, Any], i: int) -> int:
        stage = self.stages[i]
        return arch[f"stage{i}.width"] if len(stage.channels) > 1 else stage.channels[0]

    def _se(self, in_ch: int, ratio: float | None = None, expansion: float = 1) -> int:
        ratio = self.se_ratio if ratio is None else ratio
        base = int(round(in_ch * expansion)) if self.se_base == "mid" else in_ch
        return max(1, int(base * ratio)) if ratio > 0 else 0

    def _variant(self) -> dict[str, Any]:
        return {"se_bias": self.se_bias, "expand_always": self.expand_always, "pointwise": self.pointwise}

    def _mb(self, in_ch: int, out_ch: int, stride: int, op: str, drop: float) -> LayerPlan:
        parsed = parse_op(op)
        if parsed is None:
            return LayerPlan("skip", in_ch, out_ch, act=self.activation)
        expansion, kernel = parsed
        return LayerPlan("mb", in_ch, out_ch, kernel, stride, expansion, self._se(in_ch, expansion=expansion),
                         self.activation, drop, **self._variant())

    def _first_plan(self, in_ch: int, divisor: float) -> LayerPlan | None:
        fb = self.first_block
        if fb is None:
            return None
        return LayerPlan("mb", in_ch, scale_width(fb["channels"], divisor), fb["kernel"], fb["stride"],
                         fb["expansion"], self._se(in_ch, fb.get("se_ratio"), fb["expansion"]), self.activation,
                         **self._variant())

    def plan(self, arch: Mapping[str, Any], channel_divisor: float = 1, num_classes: int | None = None,
             drop_connect: float | None = None, widest: bool = False) -> NetPlan:
        """The concrete layers of `arch` (only active layers; `widest` uses every stage's largest width)."""
        if channel_divisor <= 0:
            raise ValueError(f"channel_divisor must be > 0, got {channel_divisor!r}")
        d = channel_divisor
        stem = LayerPlan("conv", self.in_channels, scale_width(self.stem_channels, d), 3, self.stem_stride,
                         act=self.activation)
        first = self._first_plan(stem.out_ch, d)
        ops = [[arch[f"stage{i}.layer{j}.op"] for j in range(arch[f"stage{i}.depth"])]
               for i in range(len(self.stages))]
        total = len(list(itertools.chain(*ops))) + (first is not None)
        index = int(first is not None)
        rate = self.drop_connect if drop_connect is None else drop_connect
        in_ch, stages = (first or stem).out_ch, []
        for i, stage in enumerate(self.stages):
            width = scale_width(max(stage.channels) if widest else self.stage_width(arch, i), d)
            layers = []
            for j, op in enumerate(ops[i]):
                layers.append(self._mb(in_ch, width, stage.stride if j == 0 else 1, op, rate * index / total))
                in_ch, index = width, index + 1
            stages.append(tuple(layers))
        head = (LayerPlan("conv", in_ch, scale_width(self.head_channels, d), 1, 1, act=self.activation)
                if self.head_channels else None)
        classifier = LayerPlan("classifier", head.out_ch if head else in_ch,
                               num_classes or self.num_classes, drop=self.dropout)
        return NetPlan(stem, first, tuple(stages), head, classifier)

    # -- networks -----------------------------------------------------------------------------------
    def build(self, arch: Mapping[str, Any], channel_divisor: float = 1, num_classes: int | None = None,
              drop_connect: float | None = None) -> MobileNet:
        """A standalone network; skipped layers stay as `nn.Identity` so `stages[i][j]` is layer j."""
        plan = self.plan(self.check(arch), channel_divisor, num_classes, drop_connect)
        stages = nn.ModuleList(nn.Sequential(*(layer.make() for layer in stage)) for stage in plan.stages)
        return _assemble(plan, stages)

    def layer_specs(self, arch: Mapping[str, Any], input_size: int | Sequence[int] = 224,
                    **build_overrides: Any) -> list[LayerSpec]:
        """The layers of `build(arch, **build_overrides)` for a latency table, skips left out."""
        height, width = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        plan = self.plan(self.check(arch), **build_overrides)
        specs = []
        for layer in plan.layers():
            if layer.kind != "skip":
                specs.append(LayerSpec(layer.key(height, width), layer.make, (layer.in_ch, height, width)))
            height, width = layer.out_size(height, width)
        return specs

    def supernet(self, channel_divisor: float = 1, num_classes: int | None = None) -> MobileNet:
        """Every op of every layer as a `ChoiceModule` (skip included), at each stage's largest width.

        Depth is a `ChoiceModule` per stage (`stage{i}.depth`) whose candidates
        are placeholders: in single-path mode the stage runs its first `depth`
        layers; in mixture mode it returns the depth-weighted sum of the
        outputs after each allowed depth. Width choices are not part of the
        supernet (it always runs the widest); `inherit` slices the leading
        channels for narrower archs. `core.space.activate(supernet, arch)`
        then computes what `inherit(supernet, arch)` computes.
        """
        plan = self.plan(self.default(), channel_divisor, num_classes, drop_connect=0.0, widest=True)
        stages, in_ch = nn.ModuleList(), (plan.first_block or plan.stem).out_ch
        for i, stage in enumerate(self.stages):
            width = scale_width(max(stage.channels), channel_divisor)
            layers = []
            for j in range(max(stage.depths)):
                choice = self.choice(f"stage{i}.layer{j}.op")
                stride = stage.stride if j == 0 else 1
                layers.append(ChoiceModule(choice, [self._mb(in_ch, width, stride, op, 0.0).make()
                                                    for op in choice.options]))
                in_ch = width
            stages.append(SupernetStage(self.choice(f"stage{i}.depth"), layers))
        return _assemble(plan, stages)

    def inherit(self, supernet: nn.Module, arch: Mapping[str, Any], **build_overrides: Any) -> MobileNet:
        """A standalone `build(arch)` with the weights of `arch`'s path in `supernet` (leading channels)."""
        arch = self.check(arch)
        model = self.build(arch, **build_overrides)
        source = supernet.state_dict()
        target = {}
        for name, tensor in model.state_dict().items():
            src = source[self._supernet_name(arch, name)]
            target[name] = src[tuple(slice(0, n) for n in tensor.shape)] if src.shape != tensor.shape else src
        model.load_state_dict(target)
        return model

    def _supernet_name(self, arch: Arch, name: str) -> str:
        match = re.match(r"^stages\.(\d+)\.(\d+)\.(.*)$", name)
        if not match:
            return name
        i, j, rest = int(match.group(1)), int(match.group(2)), match.group(3)
        choice = self.choice(f"stage{i}.layer{j}.op")
        return f"stages.{i}.layers.{j}.candidates.{choice.index(arch[choice.name])}.{rest}"

    def describe(self, arch: Mapping[str, Any]) -> str:
        """One line per stage: `stage2 80ch x3: mb6_k3 mb6_k5 skip`."""
        arch = self.check(arch)
        lines = []
        for i in range(len(self.stages)):
            ops = [arch[f"stage{i}.layer{j}.op"] for j in range(arch[f"stage{i}.depth"])]
            lines.append(f"stage{i} {self.stage_width(arch, i)}ch x{len(ops)}: {' '.join(ops)}")
        return "\n".join(lines)


class SupernetStage(nn.Module):
    """A stage of the supernet: layer ChoiceModules and a depth ChoiceModule (placeholders as candidates)."""

    def __init__(self, depth: Choice, layers: Sequence[ChoiceModule]):
        super().__init__()
        self.depth = ChoiceModule(depth, [nn.Identity() for _ in depth.options])
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        options = self.depth.choice.options
        if self.depth.mode == "single":
            for layer in self.layers[:options[self.depth.active_index]]:
                x = layer(x)
            return x
        weights, out = self.depth.weights(), 0
        for j, layer in enumerate(self.layers):
            x = layer(x)
            if j + 1 in options:
                out = out + weights[options.index(j + 1)] * x
        return out


def _assemble(plan: NetPlan, stages: nn.ModuleList) -> MobileNet:
    return MobileNet(plan.stem.make(), plan.first_block.make() if plan.first_block else nn.Identity(), stages,
                     plan.head.make() if plan.head else nn.Identity(), plan.classifier.make())


# ---------------------------------------------------------------------------------------------
# hand-designed networks and presets
# ---------------------------------------------------------------------------------------------
def _arch_from_layers(space: MobileSpace, layers: Sequence[Sequence[str]]) -> Arch:
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
    return space, _arch_from_layers(space, layers)


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
    return space, _arch_from_layers(space, layers)


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
