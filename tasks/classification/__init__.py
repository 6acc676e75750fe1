"""Image classification: digits (embedded), ImageFolder and CIFAR data; top-1/top-5; Lightning training."""

import core.zoo  # noqa: F401  (registers the reusable spaces)
from tasks.classification import data, task  # noqa: F401  (registers datasets and the task)
from tasks.classification.baselines import BASELINES, mobilenetv2_style

__all__ = ["BASELINES", "mobilenetv2_style"]
