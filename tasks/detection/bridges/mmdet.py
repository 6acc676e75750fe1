"""Searched backbones and necks in mmdetection's `MODELS` registry.

`register_mmdet()` adds two types to `mmdet.registry.MODELS`:

- `HitDetBackbone(arch='hit_detector', width=1.0, ...)`: image batch -> (C2, C3, C4, C5);
- `HitDetPAFPN(in_channels, out_channels=256, arch='hit_detector', ...)`: the searched
  PAFPN neck -> (P2, ..., P6) (or P3..P7 with `start_level=1, extra_convs=2`).

`arch` is `'hit_detector'` (the released architecture), a path to a
`best_arch.json` written by `archforge search`, or a dict of choices. A user
with a working mmdetection (mmdet 3.x + mmengine + mmcv) then writes, e.g.:

    custom_imports = dict(imports=['tasks.detection.bridges.mmdet'])
    model = dict(type='FasterRCNN',
                 backbone=dict(type='HitDetBackbone', arch='runs/.../best_arch.json'),
                 neck=dict(type='HitDetPAFPN', in_channels=[48, 96, 256, 2048], out_channels=256), ...)

Only the registry is needed here (mmdet + mmengine + mmcv-lite, no compiled
ops; `build_from_cfg` builds a config dict without importing `mmdet.models`);
full mmdetection training is not the default path of this suite because
mmcv's compiled ops do not build against current torch (DESIGN.md,
"Dependencies"). Importing this module registers the types when mmdet is
importable and does nothing otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tasks.detection.models import HitBackbone, HitNeck, scale
from tasks.detection.ops import make_op
from tasks.detection.space import HitDetectorSpace, hit_detector_arch


def resolve_arch(arch: str | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(arch, Mapping):
        return dict(arch)
    if arch in ("hit_detector", "hitdet"):
        return dict(hit_detector_arch())
    path = Path(arch).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"arch: not 'hit_detector' and no such arch file: {path}")
    return json.loads(path.read_text())


def _maker(values: Mapping[str, Any]):
    def make(name: str, in_ch: int, out_ch: int, stride: int) -> nn.Module:
        if name not in values:
            raise KeyError(f"arch has no value for {name!r}")
        return make_op(values[name], in_ch, out_ch, stride)
    return make


class HitDetBackbone(nn.Module):
    """The searched backbone as an mmdetection backbone: returns a tuple (C2, C3, C4, C5)."""

    def __init__(self, arch: Any = "hit_detector", width: float = 1.0, divisor: int = 8,
                 stage_blocks: Sequence[int] = (4, 4, 8, 4), init_cfg: Any = None):
        super().__init__()
        self.body = HitBackbone(_maker(resolve_arch(arch)), tuple(stage_blocks), width, divisor)
        self.out_channels = list(self.body.out_channels)

    def init_weights(self) -> None:  # mmengine calls this; torch's default init is kept
        return None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.body(x))


class HitDetPAFPN(nn.Module):
    """The searched PAFPN as an mmdetection neck: tuple of C features -> tuple of P features."""

    def __init__(self, in_channels: Sequence[int], out_channels: int = 256, arch: Any = "hit_detector",
                 start_level: int = 0, extra_convs: int = 0, init_cfg: Any = None):
        super().__init__()
        self.neck = HitNeck(_maker(resolve_arch(arch)), list(in_channels), out_channels, start_level, extra_convs)

    def init_weights(self) -> None:
        return None

    def forward(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        return tuple(self.neck(list(inputs)))


def register_mmdet(force: bool = True) -> bool:
    """Register both types in `mmdet.registry.MODELS`; False when mmdetection is not importable."""
    try:
        from mmdet.registry import MODELS
    except ImportError:  # mmdet missing: the bridge is optional
        return False
    MODELS.register_module(name="HitDetBackbone", module=HitDetBackbone, force=force)
    MODELS.register_module(name="HitDetPAFPN", module=HitDetPAFPN, force=force)
    return True


def build_from_cfg(cfg: Mapping[str, Any]) -> nn.Module:
    """Build an mmdet-style config dict (`type` + arguments) from `mmdet.registry.MODELS`.

    `MODELS.build(cfg)` does the same but first imports `mmdet.models`, which
    needs mmcv's compiled ops; this looks the type up in the registry's table
    directly, so it works with mmcv-lite.
    """
    from mmdet.registry import MODELS

    args = dict(cfg)
    name = args.pop("type", None)
    if not isinstance(name, str):
        raise KeyError(f"mmdet config: expected a string 'type', got {name!r}")
    cls = MODELS.module_dict.get(name)
    if cls is None:
        raise KeyError(f"mmdet config: type {name!r} is not in mmdet.registry.MODELS (call register_mmdet() first)")
    return cls(**args)


def released_in_channels(width: float = 1.0, divisor: int = 8) -> list[int]:
    """C2..C5 channels of the released backbone at `width` (48, 96, 256, 2048 at width 1)."""
    return [scale(c, width, divisor) for c in (48, 96, 256, 2048)]


REGISTERED = register_mmdet()

__all__ = ["HitDetBackbone", "HitDetPAFPN", "HitDetectorSpace", "build_from_cfg", "register_mmdet", "released_in_channels"]
