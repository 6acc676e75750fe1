"""Object detection: Hit-Detector search over backbone, neck and head; COCO/VOC data; COCO mAP.

Importing the package registers the `coco`, `voc` and `shapes` datasets, the
`hitdet` space and search strategy, the `detection` task and the released
architecture as model `hit_detector` (`core.engine.registry.MODELS`).
"""

from core.engine.registry import MODELS
from tasks.detection import data, search, space, task  # noqa: F401  (registrations)
from tasks.detection.space import HitDetectorSpace, hit_detector_arch


@MODELS.register("hit_detector")
def hit_detector(num_classes: int = 80, **space_kwargs):
    """The released Hit-Detector (Faster R-CNN, 27,123,916 parameters at 80 classes + background)."""
    detector_space = HitDetectorSpace(num_classes=num_classes, **space_kwargs)
    return detector_space.build(hit_detector_arch())


__all__ = ["HitDetectorSpace", "hit_detector", "hit_detector_arch"]
