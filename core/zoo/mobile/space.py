"""The mobile (MBConv) search space: choices, validation, build, supernet and inheritance."""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from core.cost.lut import LayerSpec
from core.engine.registry import ConfigError
from core.api import Arch, Choice, ChoiceModule, SearchSpace
from core.zoo.mobile.blocks import ACTIVATIONS, MobileNet, SKIP
from core.zoo.mobile.plan import LayerPlan, NetPlan, StageConfig, check_expansions, check_first_block, check_pointwise, check_odd_kernels, check_positive_int, check_stage_config, parse_op, scale_width
from core.zoo.mobile.supernet import SupernetStage, assemble


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
        self.stem_channels = check_positive_int("stem_channels", stem_channels)
        self.kernels = check_odd_kernels("kernels", kernels)
        self.expansions = check_expansions("expansions", expansions)
        stages = DEFAULT_STAGES if stages is None else stages
        if not isinstance(stages, (list, tuple)) or not stages:
            raise ConfigError(f"stages: expected a non-empty list of stage mappings, got {stages!r}")
        self.stages = tuple(check_stage_config(i, s, self.kernels, self.expansions) for i, s in enumerate(stages))
        self._check_scalars(se_ratio, activation, head_channels, num_classes, in_channels, dropout,
                            drop_connect, stem_stride)
        self.allow_skip = bool(allow_skip)
        self.se_ratio, self.activation = float(se_ratio), activation
        self.head_channels, self.num_classes, self.in_channels = head_channels, num_classes, in_channels
        self.dropout, self.drop_connect, self.stem_stride = float(dropout), float(drop_connect), stem_stride
        self.first_block = check_first_block(first_block)
        if se_base not in ("in", "mid"):
            raise ConfigError(f"se_base: expected 'in' (block input width) or 'mid' (expanded width), got {se_base!r}")
        self.se_base, self.se_bias, self.expand_always = se_base, bool(se_bias), bool(expand_always)
        self.pointwise = check_pointwise(pointwise)
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
        check_positive_int("num_classes", num_classes)
        check_positive_int("in_channels", in_channels)
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
        return assemble(plan, stages)

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
        channels for narrower archs. `core.api.activate(supernet, arch)`
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
        return assemble(plan, stages)

    def inherit(self, supernet: nn.Module, arch: Mapping[str, Any], **build_overrides: Any) -> MobileNet:
        """A standalone `build(arch)` with the weights of `arch`'s path in `supernet` (leading channels)."""
        arch = self.check(arch)
        model = self.build(arch, **build_overrides).to(next(supernet.parameters()).device)  # no host round trip
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
