"""Fixed face networks as a one-choice space: iResNet teachers and the MobileFaceNet baseline.

`space: {name: face_backbone, model: iresnet18, width: 0.25}` lets the same
train / test / export commands and the teacher spec build hand-designed
networks; the space's single choice names the network, so a run's
`arch.json` still says what was trained.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from core.engine.registry import SPACES
from core.api import Arch, Choice, SearchSpace
from tasks.face_recognition.iresnet import IResNet
from tasks.face_recognition.mobilefacenet import MobileFaceNet
from tasks.face_recognition.space import PUBLISHED, pocketnet

MODELS = ("mobilefacenet", "iresnet18", "iresnet34", "iresnet50", "iresnet100", *PUBLISHED)


def build_backbone(model: str, embedding_size: int = 128, width: float = 1.0, input_size: int = 112,
                   in_channels: int = 3) -> nn.Module:
    """A face embedding network by name (`MODELS`)."""
    if model == "mobilefacenet":
        return MobileFaceNet(embedding_size, width, input_size, in_channels)
    if model.startswith("iresnet"):
        return IResNet(int(model[7:]), embedding_size, width, input_size, in_channels=in_channels)
    if model in PUBLISHED:
        return pocketnet(model, input_size)
    raise ValueError(f"space.model: unknown face network {model!r}; known: {', '.join(MODELS)}")


@SPACES.register("face_backbone")
class FaceBackboneSpace(SearchSpace):
    """One fixed network (`model`); `embedding_size`, `width`, `input_size` size it (PocketNet names fix their own)."""

    def __init__(self, model: str = "mobilefacenet", embedding_size: int = 128, width: float = 1.0,
                 input_size: int = 112, in_channels: int = 3, num_classes: int = 10):
        if model not in MODELS:
            raise ValueError(f"space.model: unknown face network {model!r}; known: {', '.join(MODELS)}")
        if width <= 0:
            raise ValueError(f"space.width: expected a positive multiplier, got {width!r}")
        self.model, self.embedding_size, self.width = model, embedding_size, float(width)
        self.input_size, self.in_channels, self.num_classes = input_size, in_channels, num_classes
        super().__init__([Choice("model", (model,))])

    def build(self, arch: Any = None) -> nn.Module:
        if arch is not None:
            self.check(arch if isinstance(arch, Arch) else Arch(dict(arch)))
        return build_backbone(self.model, self.embedding_size, self.width, self.input_size, self.in_channels)


__all__ = ["MODELS", "FaceBackboneSpace", "build_backbone"]
