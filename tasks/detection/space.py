"""The Hit-Detector search space: backbone x neck x head, one op choice per searched position.

Choices (Guo et al., CVPR 2020, Sec. 3; 8^(20+8+4) ~ 7.9e28 architectures with
8 candidates per component):
- `backbone.block{i}.op`, i < 20 (stages 4+4+8+4);
- `neck.lateral{i}.op` and `neck.post{i}.op`, i < 4 (levels C2..C5);
- `head.block{i}.op`, i < 4.

`candidates` picks each component's options: `paper` (the 8-op sub-spaces the
paper's screening kept, `ops.PAPER_SUBSPACES`), `all` (the 32 ops), or a
mapping `{backbone: [...], neck: [...], head: [...]}` (e.g. the output of
`screening.screen`). `build(arch)` gives a torchvision detector;
`supernet()` the same detector with a `ChoiceModule` of every candidate at
every position (mixture mode for the differentiable search).
`RELEASED` is the published Hit-Detector (`hit_detector_arch()`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from core.engine.registry import SPACES, ConfigError
from core.api import Arch, Choice, ChoiceModule, SearchSpace
from tasks.detection.models import INITS, build_detector
from tasks.detection.ops import (
    ALL_OPS,
    OFFICIAL_NAMES,
    PAPER_SUBSPACES,
    make_op,
    parse_op,
)

COMPONENTS = ("backbone", "neck", "head")

#: the released architecture (fbnet_arch.py `fbnet_hit`, 2stage_hitdet.py neck genotype [7,7,6,5,5,7,7,5]
#: over hit_neck_search.PRIMITIVES, and the head genotype), in the official names
RELEASED_OFFICIAL = {
    "backbone": ["ir_k3_e3", "ir_k3_e3", "ir_k3_e3_r2", "ir_k3_e3",
                 "ir_k5_e6", "ir_k5_e6", "ir_k3_e3", "ir_k3_e3",
                 "ir_k7_e6", "ir_k5_e6", "ir_k5_e6_r2", "ir_k5_e3",
                 "ir_k5_e6", "ir_k5_e6_r2", "ir_k5_e6", "ir_k5_e6_r2",
                 "ir_k7_e6", "ir_k5_e6", "ir_k5_e6_r2", "ir_k5_e6"],
    "neck": ["sd_k5_d3", "sd_k5_d3", "sd_k5_d2", "sd_k3_d3",   # laterals C2..C5
             "sd_k3_d3", "sd_k5_d3", "sd_k5_d3", "sd_k3_d3"],  # post-top-down ops
    "head": ["ir_k5_e6", "ir_k3_e6", "ir_k5_e6", "ir_k5_e6"],
}


def hit_detector_arch() -> Arch:
    """The released Hit-Detector as an Arch of the default (paper sub-space) `HitDetectorSpace`."""
    ops = {k: [OFFICIAL_NAMES[o] for o in v] for k, v in RELEASED_OFFICIAL.items()}
    values = {f"backbone.block{i}.op": op for i, op in enumerate(ops["backbone"])}
    values.update({f"neck.lateral{i}.op": op for i, op in enumerate(ops["neck"][:4])})
    values.update({f"neck.post{i}.op": op for i, op in enumerate(ops["neck"][4:])})
    values.update({f"head.block{i}.op": op for i, op in enumerate(ops["head"])})
    return Arch(values)


def resolve_candidates(candidates: str | Mapping[str, Sequence[str]]) -> dict[str, tuple[str, ...]]:
    if candidates == "paper":
        return dict(PAPER_SUBSPACES)
    if candidates == "all":
        return {c: ALL_OPS for c in COMPONENTS}
    if not isinstance(candidates, Mapping):
        raise ConfigError(f"space.candidates: expected paper, all or a mapping of component -> ops, got {candidates!r}")
    out = {}
    for comp in COMPONENTS:
        ops = candidates.get(comp, PAPER_SUBSPACES[comp])
        ops = ALL_OPS if ops == "all" else tuple(ops)
        for op in ops:
            try:
                parse_op(op)
            except ValueError as err:
                raise ConfigError(f"space.candidates.{comp}: {err}") from None
        out[comp] = ops
    extra = set(candidates) - set(COMPONENTS)
    if extra:
        raise ConfigError(f"space.candidates: unknown component(s) {sorted(extra)}; known: {', '.join(COMPONENTS)}")
    return out


@SPACES.register("hitdet")
class HitDetectorSpace(SearchSpace):
    """Backbone, neck and head ops of a Hit-Detector (see the module docstring).

    `width` scales every channel count (1.0 = the paper's), `stage_blocks` the
    backbone depth (the paper screens with 2+2+4+2), `detector` is
    `faster_rcnn` or `retinanet`; `min_size`/`max_size` are torchvision's
    resize bounds (800/1333 for COCO); `detector_kwargs` go to torchvision's
    `FasterRCNN`/`RetinaNet` (e.g. `rpn_post_nms_top_n_test`).
    `head_channels` (before `width`; None = `fpn_channels`, the paper's) is
    the searched box-head blocks' width; `init` is `torch` (PyTorch's layer
    defaults) or `official` (the released code's, `models.init_weights`);
    `zero_init_residual` (default true) starts every residual backbone op as
    the identity (last BN weight 0), in `build` and in `supernet` alike.
    """

    @staticmethod
    def nested_kwargs(section: dict[str, Any]) -> dict[str, tuple[Any, tuple[str, ...], tuple[str, ...]]]:
        """`detector_kwargs` feed torchvision's `FasterRCNN` or `RetinaNet` (`anchor_sizes` is read by us;
        `size_divisible` and `fixed_size` go on to its `GeneralizedRCNNTransform`)."""
        from torchvision.models.detection import FasterRCNN, RetinaNet

        if section.get("detector", "faster_rcnn") == "retinanet":
            return {"detector_kwargs": (RetinaNet, ("anchor_sizes", "size_divisible", "fixed_size"),
                                        ("backbone", "num_classes", "min_size", "max_size", "anchor_generator",
                                         "head"))}
        return {"detector_kwargs": (FasterRCNN, ("anchor_sizes", "size_divisible", "fixed_size"),
                                    ("backbone", "num_classes", "min_size", "max_size", "rpn_anchor_generator",
                                     "box_roi_pool", "box_head", "box_predictor"))}

    def __init__(self, num_classes: int = 80, candidates: Any = "paper", detector: str = "faster_rcnn",
                 width: float = 1.0, divisor: int = 8, stage_blocks: Sequence[int] = (4, 4, 8, 4),
                 fpn_channels: int = 256, fc_channels: int = 512, head_blocks: int = 4, min_size: int = 800,
                 max_size: int = 1333, detector_kwargs: dict | None = None, head_channels: int | None = None,
                 init: str = "torch", zero_init_residual: bool = True):
        if detector not in ("faster_rcnn", "retinanet"):
            raise ConfigError(f"space.detector: expected faster_rcnn or retinanet, got {detector!r}")
        from core.engine.registry import check_kwargs

        check_kwargs(HitDetectorSpace, {"detector": detector, "detector_kwargs": detector_kwargs}, "space")
        if len(stage_blocks) != 4 or min(stage_blocks) < 1:
            raise ConfigError(f"space.stage_blocks: expected 4 positive block counts, got {list(stage_blocks)!r}")
        if width <= 0:
            raise ConfigError(f"space.width: expected a positive multiplier, got {width!r}")
        self.num_classes, self.detector, self.width, self.divisor = num_classes, detector, width, divisor
        self.stage_blocks = tuple(stage_blocks)
        if head_channels is not None and head_channels < 1:
            raise ConfigError(f"space.head_channels: expected a positive channel count or null, got {head_channels!r}")
        if init not in INITS:
            raise ConfigError(f"space.init: expected one of {', '.join(INITS)}, got {init!r}")
        self.fpn_channels, self.fc_channels, self.head_blocks = fpn_channels, fc_channels, head_blocks
        self.head_channels, self.init, self.zero_init_residual = head_channels, init, bool(zero_init_residual)
        self.min_size, self.max_size = min_size, max_size
        self.detector_kwargs = dict(detector_kwargs or {})
        self.candidates = resolve_candidates(candidates)
        released = hit_detector_arch()
        choices = []
        for name in self.position_names():
            comp = name.split(".")[0]
            options = self.candidates[comp]
            default = released.get(name) if released.get(name) in options else options[0]
            choices.append(Choice(name, options, default))
        super().__init__(choices)

    def position_names(self) -> list[str]:
        names = [f"backbone.block{i}.op" for i in range(sum(self.stage_blocks))]
        levels = range(1 if self.detector == "retinanet" else 0, 4)
        names += [f"neck.lateral{i}.op" for i in levels] + [f"neck.post{i}.op" for i in levels]
        names += [f"head.block{i}.op" for i in range(self.head_blocks)]
        return names

    def component(self, name: str) -> str:
        return name.split(".")[0]

    def _detector(self, make, num_classes: int | None) -> nn.Module:
        return build_detector(make, self.num_classes if num_classes is None else num_classes, self.detector,
                              self.stage_blocks, self.width, self.divisor, self.fpn_channels, self.fc_channels,
                              self.head_blocks, self.min_size, self.max_size, self.detector_kwargs,
                              self.head_channels, self.init, self.zero_init_residual)

    def build(self, arch: Mapping[str, Any], num_classes: int | None = None) -> nn.Module:
        arch = self.check(arch)
        return self._detector(lambda name, i, o, s: make_op(arch[name], i, o, s), num_classes)

    def supernet(self, num_classes: int | None = None, candidates: Mapping[str, Sequence[str]] | None = None,
                 fixed: Mapping[str, str] | None = None) -> nn.Module:
        """Every candidate at every position as a `ChoiceModule`.

        `candidates` narrows a component's options (screening results);
        `fixed` pins positions to one op (built as a plain op, not searched).
        Positions of the same name (RetinaNet's two subnets) share one logits tensor.
        """
        narrowed = {c: tuple(candidates[c]) if candidates and c in candidates else self.candidates[c]
                    for c in COMPONENTS}
        shared: dict[str, ChoiceModule] = {}

        def make(name: str, in_ch: int, out_ch: int, stride: int) -> nn.Module:
            if fixed and name in fixed:
                return make_op(fixed[name], in_ch, out_ch, stride)
            choice = Choice(name, narrowed[self.component(name)])
            module = ChoiceModule(choice, [make_op(op, in_ch, out_ch, stride) for op in choice.options])
            if name in shared:
                module.logits = shared[name].logits
            else:
                shared[name] = module
            return module

        return self._detector(make, num_classes)


__all__ = ["COMPONENTS", "RELEASED_OFFICIAL", "HitDetectorSpace", "hit_detector_arch", "resolve_candidates"]
