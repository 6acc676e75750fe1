"""Where the MACs of a detector go: backbone + neck, RPN head, and the per-RoI box head (x 50 test RoIs).

    python benchmarks/detection_macs.py

On the benchmark's settings (shapes 128 px, searched space at width 0.25 with
32-channel neck/head, 50 proposals at test), for three random archs of the
Hit-Detector space and the two MobileNetV2-FPN baselines that
`benchmarks/detection.py` picked. MACs: torch FlopCounterMode FLOPs / 2.
"""

import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.detection import cost_parts
from core.cost import count_macs
from tasks.detection.baselines import mobilenetv2_fpn_faster_rcnn
from tasks.detection.data import shapes
from tasks.detection.space import HitDetectorSpace

TEST_ROIS = 50


def breakdown(model, image: torch.Tensor, name: str) -> None:
    model.eval()
    total = count_macs(model, image)
    body, rpn, head = cost_parts(model, image)
    print(f"{name}: total {total / 1e6:.1f}M  backbone+neck {body / 1e6:.1f}M  rpn {rpn / 1e6:.1f}M  "
          f"head/RoI {head / 1e6:.2f}M  x{TEST_ROIS} {TEST_ROIS * head / 1e6:.1f}M "
          f"({TEST_ROIS * head / total:.0%} of the total)")


def main() -> None:
    torch.set_num_threads(1)
    data = shapes(image_size=128, train=8, val=4, test=4, seed=0)
    kw = {"rpn_pre_nms_top_n_train": 300, "rpn_post_nms_top_n_train": 150, "rpn_pre_nms_top_n_test": 150,
              "rpn_post_nms_top_n_test": TEST_ROIS, "box_batch_size_per_image": 32}
    space = HitDetectorSpace(num_classes=data.num_classes, width=0.25, fpn_channels=128, fc_channels=512,
                             min_size=128, max_size=128, detector_kwargs=kw)
    image = data.test[0][0][None]
    for i in range(3):
        breakdown(space.build(space.sample(random.Random(i))), image, f"Hit-Detector space, random arch {i}")
    for wm, fpn in ((0.75, 64), (0.5, 64)):
        model = mobilenetv2_fpn_faster_rcnn(data.num_classes, wm, fpn_channels=fpn, representation=max(64, 4 * fpn),
                                            min_size=128, max_size=128, **kw)
        breakdown(model, image, f"MobileNetV2-FPN x{wm} (FPN {fpn})")


if __name__ == "__main__":
    main()
