"""Teachers a compression config can name: builders of small sequential networks."""

from __future__ import annotations

from torch import nn

from core.engine.registry import TEACHERS as DISTILL_TEACHERS


def digits_cnn(in_channels: int = 1, num_classes: int = 10) -> nn.Sequential:
    """A small VGG-style teacher for 8x8 digits: 3x[conv32] pool 2x[conv64] pool conv64, GAP, linear (~112k params)."""

    def cbr(c_in: int, c_out: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]

    return nn.Sequential(*cbr(in_channels, 32), *cbr(32, 32), *cbr(32, 32), nn.MaxPool2d(2),
                         *cbr(32, 64), *cbr(64, 64), nn.MaxPool2d(2), *cbr(64, 64),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes))


TEACHERS = {"digits_cnn": digits_cnn}
DISTILL_TEACHERS.register("digits_cnn", digits_cnn)  # also a teacher for `load_teacher` specs
"""name -> builder(in_channels, num_classes) of the teachers a config can name."""
