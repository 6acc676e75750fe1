"""Hit-Detector's backbone, neck and head, and the detectors assembled from torchvision's parts.

Each searched position is built by a `make(name, in_ch, out_ch, stride)`
callback, so one piece of code builds both a standalone network (one op per
position) and the supernet (a `ChoiceModule` of candidates per position).

Layouts follow the official code (ggjy/HitDet.pytorch):
- backbone (`backbones/fbnet.py`, arch `fbnet_hit`): 3x3 s2 stem (16 ch, conv
  with bias + BN + ReLU), 20 searched blocks in stages 4+4+8+4 with channels
  48 / 96 / 184x4 + 256x4 / 352 (first block of a stage has stride 2), then a
  fixed `ir_k3_e3` 352 -> 1024 and a 1x1 conv 1024 -> 2048 (+BN+ReLU); outputs
  C2..C5 after blocks 4, 8, 16 and the last conv (strides 4, 8, 16, 32);
- neck (`necks/search_pafpn.py` + `auto_neck/hit_neck_search.py`): searched
  laterals C_i -> 256, top-down nearest-upsample add, searched post ops
  256 -> 256, bottom-up path aggregation N_{i+1} = conv3x3(maxpool2(N_i) +
  P'_{i+1}) (3x3 convs with bias, no norm or activation), P6 = max_pool(k=1, s=2);
- head (`bbox_heads/convfc_bbox_head.py` + `auto_head/mbblock_head_search.py`):
  RoIAlign 7x7, 4 searched blocks at 256 channels, one shared FC (512) then the
  class and box layers (`SharedFCBBoxHead(num_fcs=1)`).

The detectors are torchvision's `FasterRCNN` (anchors 32..512 at strides
4..64, ratios 0.5/1/2, RPN, MultiScaleRoIAlign, NMS, box coding and losses)
and `RetinaNet` (the one-stage variant: P3..P7, the searched head blocks
replace the 4 convs of each RetinaNet subnet). `width` scales every channel
count (rounded to `divisor`) so the same layouts run small on a CPU.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.ops import MultiScaleRoIAlign

from tasks.detection.ops import conv_bn, make_op, zero_init_residuals

MakeFn = Callable[[str, int, int, int], nn.Module]

#: fbnet_hit: per-stage channels (stage 3 switches from 184 to 256 half way)
STEM_CHANNELS = 16
STAGE_CHANNELS = ((48,), (96,), (184, 256), (352,))
TAIL_CHANNELS = (1024, 2048)


def scale(channels: int, width: float, divisor: int = 8) -> int:
    """`channels * width` rounded to a multiple of `divisor` (at least `divisor`); width 1 is exact."""
    if width == 1.0:
        return channels
    return max(divisor, int(channels * width + divisor / 2) // divisor * divisor)


def backbone_plan(stage_blocks: Sequence[int], width: float = 1.0, divisor: int = 8) -> list[tuple[int, int]]:
    """(out_channels, stride) of every searched backbone block, in order."""
    plan = []
    for stage, (n, widths) in enumerate(zip(stage_blocks, STAGE_CHANNELS)):
        for j in range(n):
            c = widths[0] if len(widths) == 1 or j < n // 2 else widths[1]
            plan.append((scale(c, width, divisor), 2 if j == 0 else 1))
    return plan


class HitBackbone(nn.Module):
    """Stem, 20 (or `sum(stage_blocks)`) searched blocks, fixed tail; returns [C2, C3, C4, C5]."""

    def __init__(self, make: MakeFn, stage_blocks: Sequence[int] = (4, 4, 8, 4), width: float = 1.0,
                 divisor: int = 8, prefix: str = "backbone"):
        super().__init__()
        stem = scale(STEM_CHANNELS, width, divisor)
        self.stem = conv_bn(3, stem, 3, stride=2, bias=True)
        blocks, in_ch = [], stem
        for i, (out_ch, stride) in enumerate(backbone_plan(stage_blocks, width, divisor)):
            blocks.append(make(f"{prefix}.block{i}.op", in_ch, out_ch, stride))
            in_ch = out_ch
        self.blocks = nn.ModuleList(blocks)
        mid, top = (scale(c, width, divisor) for c in TAIL_CHANNELS)
        self.tail = nn.Sequential(make_op("ir_k3_d1_e3", in_ch, mid, 1), conv_bn(mid, top, 1))
        ends = list(itertools.accumulate(stage_blocks))
        self.out_blocks = tuple(e - 1 for e in ends[:3])
        self.out_channels = [backbone_plan(stage_blocks, width, divisor)[i][0] for i in self.out_blocks] + [top]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        outs = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.out_blocks:
                outs.append(x)
        outs.append(self.tail(x))
        return outs


class HitNeck(nn.Module):
    """Searched PAFPN: laterals, top-down, post ops, bottom-up aggregation, P6 by stride-2 max pooling.

    `start_level=1` (the one-stage variant) drops C2 and adds two stride-2 3x3
    convs on the top output (P6, P7) in place of the max pooling.
    """

    def __init__(self, make: MakeFn, in_channels: Sequence[int], out_channels: int = 256, start_level: int = 0,
                 extra_convs: int = 0, prefix: str = "neck"):
        super().__init__()
        self.start_level = start_level
        levels = range(start_level, len(in_channels))
        self.laterals = nn.ModuleList([make(f"{prefix}.lateral{i}.op", in_channels[i], out_channels, 1)
                                       for i in levels])
        self.posts = nn.ModuleList([make(f"{prefix}.post{i}.op", out_channels, out_channels, 1) for i in levels])
        self.pa_convs = nn.ModuleList([nn.Conv2d(out_channels, out_channels, 3, padding=1)
                                       for _ in range(len(levels) - 1)])
        self.extra = nn.ModuleList([nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1)
                                    for _ in range(extra_convs)])
        self.out_channels = out_channels

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        feats = list(feats)[self.start_level:]
        lat = [op(f) for op, f in zip(self.laterals, feats)]
        for i in range(len(lat) - 1, 0, -1):
            lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], size=lat[i - 1].shape[-2:], mode="nearest")
        mid = [op(f) for op, f in zip(self.posts, lat)]
        outs = [mid[0]]
        for i, conv in enumerate(self.pa_convs):
            down = F.max_pool2d(outs[-1], 2, stride=2, ceil_mode=True)
            outs.append(conv(down[..., :mid[i + 1].shape[-2], :mid[i + 1].shape[-1]] + mid[i + 1]))
        if self.extra:
            for conv in self.extra:
                outs.append(conv(outs[-1] if conv is self.extra[0] else F.relu(outs[-1])))
        else:
            outs.append(F.max_pool2d(outs[-1], 1, stride=2))
        return outs


class BackboneWithNeck(nn.Module):
    """What torchvision's detectors call a backbone: image -> OrderedDict of same-width feature maps."""

    def __init__(self, backbone: HitBackbone, neck: HitNeck):
        super().__init__()
        self.body = backbone
        self.neck = neck
        self.out_channels = neck.out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        outs = self.neck(self.body(x))
        names = [str(i) for i in range(len(outs) - 1)] + ["pool"]
        return OrderedDict(zip(names, outs))


class SearchBoxHead(nn.Module):
    """Searched blocks on the 7x7 RoI features, then the shared FC (`SharedFCBBoxHead(num_fcs=1)`).

    `head_channels` (default: `channels`, the paper's layout) is the width of
    the blocks: the first block maps the RoI features' `channels` to it (no
    residual then), the others keep it, and the FC reads `head_channels` x 7 x 7.
    The official `MbblockHead` takes per-block `out_channels` (all 256 in the
    released config); a narrower head frees per-RoI MACs for the backbone on a
    fixed MACs budget. Measured on the shapes benchmark, it cost AP (the FC
    then reads fewer RoI features); `head_blocks=0` (FC on the RoI features,
    no searched head) did not (docs/benchmarks.md, detection diagnostics).
    """

    def __init__(self, make: MakeFn, channels: int = 256, blocks: int = 4, fc_channels: int = 512,
                 roi_size: int = 7, prefix: str = "head", head_channels: int | None = None):
        super().__init__()
        width = head_channels or channels
        self.blocks = nn.Sequential(*[make(f"{prefix}.block{i}.op", channels if i == 0 else width, width, 1)
                                      for i in range(blocks)])
        self.fc = nn.Linear((width if blocks else channels) * roi_size * roi_size, fc_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc(self.blocks(x).flatten(1)))


class _DetectorMixin:
    """Accepts a batch tensor as well as a list of images (so cost counters and exporters can call it)."""

    def forward(self, images, targets=None):
        if isinstance(images, torch.Tensor):
            images = list(images.unbind(0))
        return super().forward(images, targets)


class HitFasterRCNN(_DetectorMixin, FasterRCNN):
    pass


class HitRetinaNet(_DetectorMixin, RetinaNet):
    pass


INITS = ("official", "torch")


def init_weights(backbone: nn.Module, neck: nn.Module, head: nn.Module | None) -> None:
    """The official code's initialisation for training from scratch (ggjy/HitDet.pytorch).

    - backbone (`backbones/fbnet.py` `FBNet.init_weights(pretrained=None)`): mmcv
      `kaiming_init` on every conv (normal, fan_out, ReLU gain, bias 0) and
      `constant_init(1)` on every norm (weight 1, bias 0);
    - neck (`necks/search_pafpn.py` `SearchPAFPN.init_weights`): `xavier_init(
      distribution='uniform')` on every conv of the neck, the searched ops included;
    - searched head blocks (`bbox_heads/auto_head/mbblock_ops.py` `ConvBNReLU`):
      `kaiming_normal_(mode='fan_out', nonlinearity='relu')`; the shared FC
      (`ConvFCBBoxHead.init_weights`): xavier uniform, bias 0.

    torchvision's RPN head and box predictor keep their own initialisation
    (normal std 0.01 for the RPN convs, as mmdetection's `RPNHead`).
    """
    for m in backbone.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for m in neck.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    if head is not None:
        for m in head.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)


def build_detector(make: MakeFn, num_classes: int, detector: str = "faster_rcnn",
                   stage_blocks: Sequence[int] = (4, 4, 8, 4), width: float = 1.0, divisor: int = 8,
                   fpn_channels: int = 256, fc_channels: int = 512, head_blocks: int = 4, min_size: int = 800,
                   max_size: int = 1333, detector_kwargs: dict | None = None, head_channels: int | None = None,
                   init: str = "torch", zero_init_residual: bool = True) -> nn.Module:
    """A Faster R-CNN (or RetinaNet) on the searched backbone, neck and head; `num_classes` excludes background.

    `head_channels` (before `width`; None = the neck's width) sets the searched
    box-head blocks' width (Faster R-CNN only); `init` is `torch` (PyTorch's
    default layer initialisation, the default) or `official` (`init_weights`).
    Trained from scratch on the shapes benchmark, `official` gave lower AP
    (docs/benchmarks.md, detection diagnostics), so it is opt-in.
    `zero_init_residual` (default) then zeroes the last BN weight of every
    residual backbone op (`ops.zero_init_residuals`), so each such block
    starts as the identity; the released code starts every norm at 1 (it
    trains from an ImageNet-pretrained backbone). From scratch, weight 1
    gave the 15 residual backbone blocks first gradient norms of 50-200 and
    less than half the AP on the shapes benchmark (docs/benchmarks.md, Detection).
    """
    if init not in INITS:
        raise ValueError(f"init: expected one of {INITS}, got {init!r}")
    kwargs = dict(detector_kwargs or {})
    backbone = HitBackbone(make, stage_blocks, width, divisor)
    fpn = scale(fpn_channels, width, divisor)
    sizes = ((32,), (64,), (128,), (256,), (512,))
    ratios = ((0.5, 1.0, 2.0),) * 5
    if detector == "faster_rcnn":
        neck = HitNeck(make, backbone.out_channels, fpn)
        fc = scale(fc_channels, width, divisor)
        head = SearchBoxHead(make, fpn, head_blocks, fc,
                             head_channels=scale(head_channels, width, divisor) if head_channels else None)
        model = HitFasterRCNN(
            BackboneWithNeck(backbone, neck), num_classes=None, min_size=min_size, max_size=max_size,
            rpn_anchor_generator=AnchorGenerator(kwargs.pop("anchor_sizes", sizes), ratios),
            box_roi_pool=MultiScaleRoIAlign(["0", "1", "2", "3"], 7, sampling_ratio=2),
            box_head=head, box_predictor=FastRCNNPredictor(fc, num_classes + 1), **kwargs)
        if init == "official":
            init_weights(backbone, neck, head)
        if zero_init_residual:
            zero_init_residuals(backbone)
        return model
    if detector == "retinanet":
        neck = HitNeck(make, backbone.out_channels, fpn, start_level=1, extra_convs=2)
        anchor_sizes = kwargs.pop("anchor_sizes", tuple((s, int(s * 2 ** (1 / 3)), int(s * 2 ** (2 / 3)))
                                                        for s in (32, 64, 128, 256, 512)))
        anchors = AnchorGenerator(anchor_sizes, ((0.5, 1.0, 2.0),) * len(anchor_sizes))
        head = RetinaNetHead(fpn, anchors.num_anchors_per_location()[0], num_classes + 1)
        head.classification_head.conv = nn.Sequential(
            *[make(f"head.block{i}.op", fpn, fpn, 1) for i in range(head_blocks)])
        head.regression_head.conv = nn.Sequential(
            *[make(f"head.block{i}.op", fpn, fpn, 1) for i in range(head_blocks)])
        if init == "official":  # the searched subnet blocks as the head blocks; RetinaNetHead's own layers keep theirs
            init_weights(backbone, neck, nn.ModuleList([head.classification_head.conv, head.regression_head.conv]))
        if zero_init_residual:
            zero_init_residuals(backbone)
        return HitRetinaNet(BackboneWithNeck(backbone, neck), num_classes + 1, min_size=min_size,
                            max_size=max_size, anchor_generator=anchors, head=head, **kwargs)
    raise ValueError(f"space.detector: expected faster_rcnn or retinanet, got {detector!r}")


__all__ = [
    "BackboneWithNeck",
    "HitBackbone",
    "HitNeck",
    "SearchBoxHead",
    "backbone_plan",
    "build_detector",
    "init_weights",
    "scale",
]
