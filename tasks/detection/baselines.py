"""Hand-designed detectors from torchvision's components, for side-by-side comparisons.

`mobilenetv2_fpn_faster_rcnn`: MobileNetV2 (Sandler et al., CVPR 2018; any
`width_mult`) features at strides 4/8/16/32, torchvision's FPN (+ P6 by max
pooling), RPN, MultiScaleRoIAlign 7x7 and the standard two-FC box head -- the
same detector frame as the searched one, with a hand-designed backbone, neck
and head. Trained from scratch, so BatchNorm is trainable (not frozen).
`zero_init_residual` zeroes the last BatchNorm weight of every residual
block, as `HitDetectorSpace(zero_init_residual=True)` does for the searched
ops, so that a comparison can give both detectors the same initialisation
rule; off by default (torchvision's own MobileNetV2 initialisation).
"""

from __future__ import annotations

from torch import nn
from torchvision.models import mobilenet_v2
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign

from tasks.detection.models import HitFasterRCNN

#: MobileNetV2 feature indices ending each stride (4, 8, 16, 32)
_MBV2_ENDS = {"3": "0", "6": "1", "13": "2", "18": "3"}


def mobilenetv2_fpn_faster_rcnn(num_classes: int, width_mult: float = 1.0, fpn_channels: int = 256,
                                representation: int = 1024, min_size: int = 800, max_size: int = 1333,
                                zero_init_residual: bool = False, **detector_kwargs) -> nn.Module:
    """Faster R-CNN with a MobileNetV2-FPN backbone; `num_classes` excludes background."""
    features = mobilenet_v2(weights=None, width_mult=width_mult, norm_layer=nn.BatchNorm2d).features
    if zero_init_residual:  # each residual block starts as the identity (its projection BN at weight 0)
        for block in features.modules():
            if getattr(block, "use_res_connect", False):
                nn.init.zeros_([m for m in block.conv.modules() if isinstance(m, nn.BatchNorm2d)][-1].weight)
    in_channels = [features[int(i)].out_channels if hasattr(features[int(i)], "out_channels")
                   else features[int(i)][0].out_channels for i in _MBV2_ENDS]
    backbone = BackboneWithFPN(features, dict(_MBV2_ENDS), in_channels, fpn_channels)
    anchors = AnchorGenerator(((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5)
    return HitFasterRCNN(backbone, num_classes=None, min_size=min_size, max_size=max_size,
                         rpn_anchor_generator=anchors,
                         box_roi_pool=MultiScaleRoIAlign(["0", "1", "2", "3"], 7, sampling_ratio=2),
                         box_head=TwoMLPHead(fpn_channels * 49, representation),
                         box_predictor=FastRCNNPredictor(representation, num_classes + 1), **detector_kwargs)


__all__ = ["mobilenetv2_fpn_faster_rcnn"]
