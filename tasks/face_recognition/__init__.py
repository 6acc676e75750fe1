"""Face recognition (PocketNet): a face DARTS space, ArcFace/CosFace training, multi-step KD, verification.

Importing the package registers the `pocketnet` and `face_backbone` spaces,
the `face_synthetic`, `face_recordio` and `face_imagefolder` datasets and the
`face_recognition` task.
"""

import core.zoo  # noqa: F401  (registers the reusable spaces)
import core.strategies  # noqa: F401  (registers the strategies, darts among them)
from tasks.face_recognition import backbones, data, space, task  # noqa: F401  (registrations)
from tasks.face_recognition.flops import count_paper_flops
from tasks.face_recognition.heads import ArcFace, CosFace, make_head
from tasks.face_recognition.iresnet import IResNet, iresnet18, iresnet50, iresnet100
from tasks.face_recognition.mobilefacenet import MobileFaceNet
from tasks.face_recognition.space import POCKETNET, PUBLISHED, PocketNet, PocketNetSpace, pocketnet

__all__ = ["POCKETNET", "PUBLISHED", "ArcFace", "CosFace", "IResNet", "MobileFaceNet", "PocketNet", "PocketNetSpace",
           "count_paper_flops", "iresnet18", "iresnet50", "iresnet100", "make_head", "pocketnet"]
