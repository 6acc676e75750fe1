"""The NetAdaptV2 search space: one width per layer, where width 0 bypasses the layer.

Yang, Liao, Sze. "NetAdaptV2: Efficient Neural Architecture Search with Fast
Super-Network Training and Architecture Optimization", CVPR 2021
(arXiv 2104.00031). With channel-level bypass connections (CBC, Sec. 2.2)
depth and width are one search dimension, so an architecture is just the
number of channels of every layer; the super-network is the largest network
and is trained with ordered dropout (Sec. 2.3); every architecture is a
leading-channel slice of it (`extract`). The layers are the ops of
`core.ops.ordered_dropout`.

The network is a chain of layers, each a dict in `layers`:

- `{"type": "conv", "channels": C, "stride": s, "kernel": k}`: conv-BN-act
  that changes the shape (the stem, or a stage's downsampling layer). It has
  no bypass (its input and output shapes differ), so its widths are
  `width_fractions` of C, never 0. It also fixes its stage's width: the
  projections of the stage's `mb` blocks output as many channels as it does
  (the residual additions tie them, as NetAdapt ties layers joined by
  residual connections).
- `{"type": "cbc", "kernel": k}`: a stride-1 conv-BN-act with channel-level
  bypass over the stage's C channels: widths 0 and the fractions of C; output
  channel c is the conv's for c < width, else the input's; width 0 is the
  identity.
- `{"type": "mb", "expansion": e, "kernel": k}`: a stride-1 inverted residual
  block (1x1 expand, kxk depthwise, 1x1 linear projection, residual;
  MobileNetV2) whose searched width is its expanded width: 0 and the
  fractions of e*C. Width 0 leaves the residual path: the block is the
  identity.

A `widths` list in a layer's dict replaces the fractions with explicit
options. Then global average pooling and a linear classifier (fixed).
Choices are `layer{i}.width` with ascending options; the default is the
largest, the network NetAdaptV2's optimizer starts from.

Our choices (the paper's super-network is MobileNetV3-like on 224x224
ImageNet; its layer-level details were not available to us): no bypass on
shape-changing layers (no width 0 there; we do not add 1x1 projection
shortcuts, which would cost compute the bypass is meant to remove); no
searched kernel sizes (the paper also searches kernel sizes, Sec. 2.1); no
squeeze-and-excitation. `DIGITS_LAYERS` is a ~0.56M-MAC network for
scikit-learn's 8x8 digits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from core.cost.lut import LayerSpec
from core.engine.registry import SPACES, ConfigError
from core.ops.ordered_dropout import (OrderedBatchNorm2d, OrderedConv2d, OrderedLinear, Width, add_padded,
                                      channel_bypass, sample_widths)
from core.api import Choice, SearchSpace

#: activations with f(0) = 0, so a zeroed (ordered-dropout) channel stays zero through them
ACTIVATIONS = {"relu": nn.ReLU, "relu6": nn.ReLU6, "hswish": nn.Hardswish, "swish": nn.SiLU, "silu": nn.SiLU}
LAYER_TYPES = ("conv", "cbc", "mb")
_LAYER_KEYS = {"conv": {"type", "channels", "stride", "kernel", "widths"},
               "cbc": {"type", "kernel", "widths"},
               "mb": {"type", "expansion", "kernel", "widths"}}

DIGITS_LAYERS = (
    {"type": "conv", "channels": 16, "stride": 1},   # stem, 8x8
    {"type": "cbc"},
    {"type": "conv", "channels": 32, "stride": 2},   # 4x4
    {"type": "mb", "expansion": 3},
    {"type": "mb", "expansion": 3},
    {"type": "conv", "channels": 48, "stride": 2},   # 2x2
    {"type": "mb", "expansion": 3},
)


def _act(name: str) -> nn.Module:
    return ACTIVATIONS[name]()


# ---------------------------------------------------------------------------------------------
# layers: the same classes make standalone networks (exact sizes) and the super-network (largest sizes)
# ---------------------------------------------------------------------------------------------
class ConvLayer(nn.Module):
    """conv-BN-act with ordered widths; `bypass=True` makes it a CBC layer (NetAdaptV2 Sec. 2.2)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, act: str = "relu",
                 bypass: bool = False):
        super().__init__()
        if bypass and stride != 1:
            raise ValueError("a channel-level bypass needs stride 1")
        self.conv = OrderedConv2d(in_ch, out_ch, kernel, stride, kernel // 2, bias=False)
        self.bn = OrderedBatchNorm2d(out_ch)
        self.act = _act(act)
        self.bypass = bypass

    def forward(self, x: torch.Tensor, width: Width = None) -> torch.Tensor:
        if self.bypass and isinstance(width, int) and width == 0:
            return x
        y = self.act(self.bn(self.conv(x, width), width))
        return channel_bypass(y, x, width) if self.bypass else y


class MBLayer(nn.Module):
    """Inverted residual (stride 1): expand -> depthwise -> linear projection, plus the input.

    `width` is the expanded width (0: the block is its residual path, the
    identity); `out_width` the projection's (the stage width).
    """

    def __init__(self, in_ch: int, mid: int, out_ch: int, kernel: int = 3, act: str = "relu"):
        super().__init__()
        self.expand = OrderedConv2d(in_ch, mid, 1, bias=False)
        self.bn1 = OrderedBatchNorm2d(mid)
        self.act1 = _act(act)
        self.depthwise = OrderedConv2d(mid, mid, kernel, 1, kernel // 2, groups=mid, bias=False)
        self.bn2 = OrderedBatchNorm2d(mid)
        self.act2 = _act(act)
        self.project = OrderedConv2d(mid, out_ch, 1, bias=False)
        self.bn3 = OrderedBatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor, width: Width = None, out_width: Width = None) -> torch.Tensor:
        if isinstance(width, int) and width == 0:
            return x
        h = self.act1(self.bn1(self.expand(x, width), width))
        h = self.act2(self.bn2(self.depthwise(h, width), width))
        y = self.bn3(self.project(h, out_width), out_width)
        if isinstance(width, torch.Tensor):  # images whose block has width 0 take the residual path only
            y = y * (width > 0).to(y.dtype).reshape(-1, 1, 1, 1)
        return add_padded(x, y)


class Bypass(nn.Module):
    """A layer of width 0: the identity."""

    def forward(self, x: torch.Tensor, *widths: Any) -> torch.Tensor:
        return x


class Head(nn.Module):
    """Global average pooling and a linear classifier over the incoming channels."""

    def __init__(self, in_ch: int, num_classes: int):
        super().__init__()
        self.fc = OrderedLinear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean((2, 3)))


class NetAdaptNet(nn.Module):
    """A chain of ConvLayer/MBLayer/Bypass layers and a Head.

    `widths[i]` is passed to layer i on every forward (None: all its
    channels); an `mb` layer also gets `widths[ties[i]]`, its stage's width,
    for its projection.
    """

    def __init__(self, layers: Sequence[nn.Module], head: nn.Module, ties: Sequence[int | None]):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.head = head
        self.ties = list(ties)
        self.widths: list[Width] = [None] * len(self.layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for layer, width, tie in zip(self.layers, self.widths, self.ties):
            x = layer(x, width) if tie is None else layer(x, width, self.widths[tie])
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


class NetAdaptSupernet(NetAdaptNet):
    """The largest network, run at any widths: `activate(arch)` (truncated) or `sample(...)` (ordered dropout)."""

    def __init__(self, layers: Sequence[nn.Module], head: nn.Module, ties: Sequence[int | None],
                 names: Sequence[str], options: Sequence[Sequence[int]]):
        super().__init__(layers, head, ties)
        self.names = list(names)
        self.options = [tuple(o) for o in options]

    def activate(self, arch: Mapping[str, Any] | None) -> None:
        """Run `arch`'s sub-network (int widths: truncated compute); None: the largest network."""
        if arch is None:
            self.widths = [None] * len(self.layers)
            return
        missing = [n for n in self.names if n not in arch]
        if missing:
            raise KeyError(f"arch has no value for supernet choices {missing[:3]}")
        self.widths = [int(arch[n]) for n in self.names]

    def sample(self, batch: int, generator: torch.Generator | None = None, per_image: bool = True,
               device: torch.device | str | None = None) -> list[torch.Tensor]:
        """Ordered dropout: draw every layer's width uniformly from its options, per image (or per batch)."""
        self.widths = [sample_widths(o, batch, generator, per_image).to(device or "cpu") for o in self.options]
        return self.widths


# ---------------------------------------------------------------------------------------------
# plans
# ---------------------------------------------------------------------------------------------
def _out_size(size: int, kernel: int, stride: int) -> int:
    return (size + 2 * (kernel // 2) - kernel) // stride + 1


@dataclass(frozen=True)
class LayerPlan:
    """One layer of a concrete network; `width` is the arch's value for it (classifier: classes)."""

    kind: str      # conv | cbc | mb | head
    in_ch: int     # channels entering (the stream)
    width: int     # conv/cbc: computed channels; mb: expanded channels
    out_ch: int    # conv/cbc: = width; mb: projection channels (the stage width); head: classes
    kernel: int = 1
    stride: int = 1
    act: str = "relu"

    @property
    def bypassed(self) -> bool:
        return self.kind in ("cbc", "mb") and self.width == 0

    @property
    def stream_out(self) -> int:
        """Channels leaving the layer."""
        if self.bypassed:
            return self.in_ch
        if self.kind == "conv":
            return self.width
        if self.kind == "cbc":
            return max(self.in_ch, self.width)
        if self.kind == "mb":
            return max(self.in_ch, self.out_ch)
        return self.out_ch

    def make(self) -> nn.Module:
        if self.bypassed:
            return Bypass()
        if self.kind in ("conv", "cbc"):
            return ConvLayer(self.in_ch, self.width, self.kernel, self.stride, self.act, bypass=self.kind == "cbc")
        if self.kind == "mb":
            return MBLayer(self.in_ch, self.width, self.out_ch, self.kernel, self.act)
        return Head(self.in_ch, self.out_ch)

    def out_size(self, height: int, width: int) -> tuple[int, int]:
        if self.kind == "conv":
            return _out_size(height, self.kernel, self.stride), _out_size(width, self.kernel, self.stride)
        return height, width

    def key(self, height: int, width: int) -> str:
        res = f"r{height}x{width}"
        if self.kind == "mb":
            return f"netadapt_mb_i{self.in_ch}_m{self.width}_o{self.out_ch}_k{self.kernel}_{self.act}_{res}"
        if self.kind in ("conv", "cbc"):
            return (f"netadapt_{self.kind}_i{self.in_ch}_o{self.width}_k{self.kernel}_s{self.stride}"
                    f"_{self.act}_{res}")
        return f"netadapt_head_i{self.in_ch}_o{self.out_ch}_{res}"

    def macs(self, height: int, width: int) -> int:
        """Multiply-accumulates of the layer (convolutions and the linear layer, as core.cost counts them)."""
        if self.bypassed:
            return 0
        if self.kind in ("conv", "cbc"):
            ho, wo = self.out_size(height, width)
            return self.kernel * self.kernel * self.in_ch * self.width * ho * wo
        if self.kind == "mb":
            hw = height * width
            return hw * self.width * (self.in_ch + self.kernel * self.kernel + self.out_ch)
        return self.in_ch * self.out_ch


@dataclass(frozen=True)
class LayerConfig:
    kind: str
    channels: int      # the stage's largest width (conv: its own)
    stride: int
    kernel: int
    expansion: float
    options: tuple[int, ...]


def _int(key: str, value: Any, low: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(f"{key}: expected an int >= {low}, got {value!r}")
    return value


def _fractions(value: Any) -> tuple[float, ...]:
    values = tuple(value) if isinstance(value, (list, tuple)) else ()
    if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1
                             for v in values):
        raise ConfigError(f"width_fractions: expected a non-empty list of numbers in (0, 1], got {value!r}")
    if 1 not in values:
        raise ConfigError(f"width_fractions: must include 1 (the largest network), got {value!r}")
    return tuple(sorted(set(float(v) for v in values)))


def _layer_config(i: int, cfg: Any, stage_channels: int | None, fractions: tuple[float, ...]) -> LayerConfig:
    key = f"layers[{i}]"
    if not isinstance(cfg, Mapping) or cfg.get("type") not in LAYER_TYPES:
        raise ConfigError(f"{key}: expected a mapping with type one of {LAYER_TYPES}, got {cfg!r}")
    kind = cfg["type"]
    unknown = sorted(set(cfg) - _LAYER_KEYS[kind])
    if unknown:
        takes = ", ".join(sorted(_LAYER_KEYS[kind]))
        raise ConfigError(f"{key}.{unknown[0]}: unknown key; a {kind} layer takes {takes}")
    kernel = _int(f"{key}.kernel", cfg.get("kernel", 3))
    if kernel % 2 == 0:
        raise ConfigError(f"{key}.kernel: expected an odd kernel (same padding), got {kernel}")
    if kind == "conv":
        channels = _int(f"{key}.channels", cfg.get("channels"))
        stride = cfg.get("stride", 1)
        if stride not in (1, 2):
            raise ConfigError(f"{key}.stride: expected 1 or 2, got {stride!r}")
        expansion, largest = 1.0, channels
    else:
        if stage_channels is None:
            raise ConfigError(f"{key}: a {kind} layer needs a conv layer before it (the first layer is a conv)")
        channels, stride = stage_channels, 1
        expansion = float(cfg.get("expansion", 3)) if kind == "mb" else 1.0
        if kind == "mb" and not (isinstance(cfg.get("expansion", 3), (int, float)) and expansion >= 1):
            raise ConfigError(f"{key}.expansion: expected a number >= 1, got {cfg.get('expansion')!r}")
        largest = int(round(expansion * channels))
    if "widths" in cfg:
        widths = cfg["widths"]
        if (not isinstance(widths, (list, tuple)) or not widths
                or not all(isinstance(w, int) and not isinstance(w, bool) for w in widths)):
            raise ConfigError(f"{key}.widths: expected a non-empty list of ints, got {widths!r}")
        low = 1 if kind == "conv" else 0
        if min(widths) < low or max(widths) != largest or len(set(widths)) != len(widths):
            raise ConfigError(f"{key}.widths: expected distinct ints in [{low}, {largest}] including {largest}, "
                              f"got {widths!r}")
        options = tuple(sorted(widths))
    else:
        options = tuple(sorted({max(1, int(round(f * largest))) for f in fractions}))
        if kind != "conv":
            options = (0,) + options
    return LayerConfig(kind, channels, stride, kernel, expansion, options)


# ---------------------------------------------------------------------------------------------
# the space
# ---------------------------------------------------------------------------------------------
class NetAdaptSpace(SearchSpace):
    """Per-layer widths with channel-level bypass (see the module docstring)."""

    def __init__(self, layers: Sequence[Mapping] | None = None, in_channels: int = 1, num_classes: int = 10,
                 width_fractions: Sequence[float] = (0.25, 0.5, 0.75, 1.0), activation: str = "relu",
                 input_size: int = 8):
        layers = DIGITS_LAYERS if layers is None else layers
        if not isinstance(layers, (list, tuple)) or not layers:
            raise ConfigError(f"layers: expected a non-empty list of layer mappings, got {layers!r}")
        if activation not in ACTIVATIONS:
            raise ConfigError(f"activation: expected one of {', '.join(ACTIVATIONS)} (f(0) = 0), got {activation!r}")
        self.in_channels = _int("in_channels", in_channels)
        self.num_classes = _int("num_classes", num_classes)
        self.input_size = _int("input_size", input_size)
        self.activation = activation
        fractions = _fractions(width_fractions)
        configs, stage = [], None
        for i, cfg in enumerate(layers):
            config = _layer_config(i, cfg, stage, fractions)
            stage = config.channels if config.kind == "conv" else stage
            configs.append(config)
        if configs[0].kind != "conv":
            raise ConfigError("layers[0]: the first layer must be a conv (it changes the input's channels)")
        self.layers = tuple(configs)
        self.ties: list[int | None] = []
        last_conv = 0
        for i, c in enumerate(self.layers):
            last_conv = i if c.kind == "conv" else last_conv
            self.ties.append(last_conv if c.kind == "mb" else None)
        super().__init__([Choice(f"layer{i}.width", c.options, default=c.options[-1])
                          for i, c in enumerate(self.layers)])

    # -- plans ----------------------------------------------------------------------------------
    def widths(self, arch: Mapping[str, Any]) -> list[int]:
        return [int(arch[f"layer{i}.width"]) for i in range(len(self.layers))]

    def plan(self, arch: Mapping[str, Any] | None, num_classes: int | None = None) -> list[LayerPlan]:
        """The concrete layers of `arch` (None: the largest network), the head last."""
        widths = [c.options[-1] for c in self.layers] if arch is None else self.widths(self.check(arch))
        plans, stream = [], self.in_channels
        for i, (c, w) in enumerate(zip(self.layers, widths)):
            out = widths[self.ties[i]] if c.kind == "mb" else w
            plan = LayerPlan(c.kind, stream, w, out, c.kernel, c.stride, self.activation)
            plans.append(plan)
            stream = plan.stream_out
        plans.append(LayerPlan("head", stream, num_classes or self.num_classes, num_classes or self.num_classes))
        return plans

    def _input_hw(self, input_size: int | Sequence[int] | None) -> tuple[int, int]:
        if input_size is None:
            return self.input_size, self.input_size
        if isinstance(input_size, int):
            return input_size, input_size
        size = tuple(input_size)
        return (size[-2], size[-1]) if len(size) >= 2 else (size[0], size[0])

    # -- networks -------------------------------------------------------------------------------
    def build(self, arch: Mapping[str, Any], num_classes: int | None = None) -> NetAdaptNet:
        """The standalone network of `arch`: every layer at its exact width, width-0 layers as `Bypass`."""
        plans = self.plan(arch, num_classes)
        return NetAdaptNet([p.make() for p in plans[:-1]], plans[-1].make(), self.ties)

    def supernet(self, num_classes: int | None = None) -> NetAdaptSupernet:
        """The largest network with ordered-dropout layers; see `NetAdaptSupernet`."""
        plans = self.plan(None, num_classes)
        return NetAdaptSupernet([p.make() for p in plans[:-1]], plans[-1].make(), self.ties, self.names,
                                [c.options for c in self.layers])

    def extract(self, supernet: nn.Module, arch: Mapping[str, Any], num_classes: int | None = None) -> NetAdaptNet:
        """`build(arch)` with the leading channels of `supernet`'s weights and BN statistics.

        In eval mode it computes exactly what `supernet.activate(arch)` computes.
        """
        model = self.build(arch, num_classes)
        source = supernet.state_dict()
        target = {}
        for name, tensor in model.state_dict().items():
            src = source[name]
            target[name] = src[tuple(slice(0, n) for n in tensor.shape)].clone() if tensor.dim() else src.clone()
        model.load_state_dict(target)
        return model

    inherit = extract  # the name core.evaluation.supernet looks for

    # -- costs ------------------------------------------------------------------------------------
    def layer_specs(self, arch: Mapping[str, Any], input_size: int | Sequence[int] | None = None,
                    num_classes: int | None = None) -> list[LayerSpec]:
        """The layers of `build(arch)` for a latency table, bypassed (width-0) layers left out."""
        height, width = self._input_hw(input_size)
        specs = []
        for plan in self.plan(arch, num_classes):
            if not plan.bypassed:
                specs.append(LayerSpec(plan.key(height, width), plan.make, (plan.in_ch, height, width)))
            height, width = plan.out_size(height, width)
        return specs

    def macs(self, arch: Mapping[str, Any], input_size: int | Sequence[int] | None = None,
             num_classes: int | None = None) -> int:
        """Analytic MACs of `build(arch)`, equal to `core.cost.count_macs` of it."""
        height, width = self._input_hw(input_size)
        total = 0
        for plan in self.plan(arch, num_classes):
            total += plan.macs(height, width)
            height, width = plan.out_size(height, width)
        return total

    def describe(self, arch: Mapping[str, Any]) -> str:
        """One line per layer: `layer3 mb  32ch -> expand 48 (of 96)`."""
        lines = []
        for i, (plan, c) in enumerate(zip(self.plan(arch), self.layers)):
            what = "bypass" if plan.bypassed else (f"expand {plan.width}" if plan.kind == "mb" else f"{plan.width}ch")
            lines.append(f"layer{i} {plan.kind:<4} in {plan.in_ch:>3}ch -> {what} (of {c.options[-1]})")
        return "\n".join(lines)

    def depth(self, arch: Mapping[str, Any]) -> int:
        """Layers that are not bypassed (width > 0)."""
        return sum(1 for p in self.plan(arch)[:-1] if not p.bypassed)


SPACES.register("netadapt", NetAdaptSpace)
