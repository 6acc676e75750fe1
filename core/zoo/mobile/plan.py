"""Ops and plans of the mobile space: one description drives build(), supernet() and layer_specs(); config validation."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from core.engine.registry import ConfigError
from core.zoo.mobile.blocks import ClassifierHead, InvertedResidual, OP_PATTERN, SKIP, conv_bn_act


# ops and plans: one description drives build(), supernet() and layer_specs()
# ---------------------------------------------------------------------------------------------
def op_name(expansion: float, kernel: int) -> str:
    return f"mb{expansion:g}_k{kernel}"


def parse_op(name: str) -> tuple[float, int] | None:
    """`"mb6_k5"` -> (6, 5); `"skip"` -> None."""
    if name == SKIP:
        return None
    match = OP_PATTERN.match(name)
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


def check_positive_ints(key: str, value: Any, allow_empty: bool = False) -> tuple[int, ...]:
    values = tuple(value) if isinstance(value, (list, tuple)) else (value,)
    if (not values and not allow_empty) or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                                   for v in values):
        raise ConfigError(f"{key}: expected a positive int or a non-empty list of them, got {value!r}")
    if len(set(values)) != len(values):
        raise ConfigError(f"{key}: repeated values in {value!r}")
    return values


def check_positive_int(key: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{key}: expected a positive int, got {value!r}")
    return value


def check_odd_kernels(key: str, value: Any) -> tuple[int, ...]:
    kernels = check_positive_ints(key, value)
    if any(k % 2 == 0 for k in kernels):
        raise ConfigError(f"{key}: kernels must be odd (same padding), got {value!r}")
    return kernels


def check_expansions(key: str, value: Any) -> tuple[float, ...]:
    values = tuple(value) if isinstance(value, (list, tuple)) else (value,)
    if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 1 for v in values):
        raise ConfigError(f"{key}: expected a non-empty list of expansions >= 1, got {value!r}")
    return tuple(int(v) if float(v).is_integer() else float(v) for v in values)


_STAGE_KEYS = {"channels", "stride", "depths", "kernels", "expansions"}


def check_stage_config(i: int, cfg: Any, kernels: tuple, expansions: tuple) -> StageConfig:
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
    return StageConfig(channels=check_positive_ints(f"{key}.channels", cfg["channels"]), stride=stride,
                       depths=check_positive_ints(f"{key}.depths", cfg["depths"]),
                       kernels=check_odd_kernels(f"{key}.kernels", cfg["kernels"]) if "kernels" in cfg else kernels,
                       expansions=(check_expansions(f"{key}.expansions", cfg["expansions"])
                                   if "expansions" in cfg else expansions))


_FIRST_BLOCK_DEFAULTS = {"kernel": 3, "expansion": 1, "stride": 1}


def check_first_block(cfg: Any) -> dict | None:
    if cfg is None:
        return None
    if not isinstance(cfg, Mapping) or "channels" not in cfg:
        raise ConfigError(f"first_block: expected null or a mapping with channels (and kernel, expansion, "
                          f"stride, se_ratio), got {cfg!r}")
    unknown = sorted(set(cfg) - {"channels", "kernel", "expansion", "stride", "se_ratio"})
    if unknown:
        raise ConfigError(f"first_block.{unknown[0]}: unknown key")
    out = {**_FIRST_BLOCK_DEFAULTS, **cfg}
    check_positive_int("first_block.channels", out["channels"])
    check_odd_kernels("first_block.kernel", check_positive_int("first_block.kernel", out["kernel"]))
    if isinstance(out["expansion"], (list, tuple)):
        raise ConfigError(f"first_block.expansion: expected one number >= 1, got {out['expansion']!r}")
    out["expansion"] = check_expansions("first_block.expansion", out["expansion"])[0]
    if out["stride"] not in (1, 2):
        raise ConfigError(f"first_block.stride: expected 1 or 2, got {out['stride']!r}")
    return out


def check_pointwise(spec: Mapping | None) -> tuple:
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
