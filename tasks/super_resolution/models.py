"""The derived trilevel network as a plain module, registered in basicsr's `ARCH_REGISTRY`.

`TrilevelSRNet(upscale, num_feat, arch)` rebuilds the network an arch of the
`trilevel_sr` space stands for, with no search machinery: a head conv
(3 -> C, LeakyReLU), the stem cells, then the searched path (the network
level: a string of moves, `C` a cell at the current resolution, `U` an
upsampler), a tail conv (C -> 3) at HR, plus the bicubic upsampling of the
input (a global residual, as MSRResNet adds its bilinear one). Each cell is
its searched ops (cell level) with the searched intermediate widths (kernel
level), output `x + res_scale * ops(x)` (0.2 in the derivative code).

Because it is in basicsr's registry, basicsr's own training script builds it
from a YAML option block once this module is imported:

    network_g:
      type: TrilevelSRNet
      upscale: 2
      num_feat: 24
      arch: {network.path: CCCU, stem0.op0: conv3x3, ...}   # best_arch.json

(`python -m tasks.super_resolution.basicsr_train -opt options.yml` imports it
and runs `basicsr.train.train_pipeline`.)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tasks.super_resolution._basicsr import ARCH_REGISTRY, default_init_weights
from tasks.super_resolution.ops import Upsampler, cell_macs, head_tail_macs, plain_cell_ops, upsample_factors, \
    upsampler_macs


def _count(arch: Mapping[str, Any], prefix: str) -> int:
    n = 0
    while f"{prefix}{n}.op0" in arch:
        n += 1
    return n


def _ops_per_cell(arch: Mapping[str, Any], prefix: str) -> int:
    n = 0
    while f"{prefix}.op{n}" in arch:
        n += 1
    return n


def cell_spec(arch: Mapping[str, Any], prefix: str) -> tuple[list[str], list[int]]:
    """(ops, intermediate widths in twelfths) of cell `prefix` (e.g. `stem0`, `cell1`)."""
    n = _ops_per_cell(arch, prefix)
    if n == 0:
        raise ValueError(f"arch has no {prefix}.op0")
    return [arch[f"{prefix}.op{j}"] for j in range(n)], [int(arch[f"{prefix}.width{j}"]) for j in range(n - 1)]


def read_arch(arch: Mapping[str, Any] | str) -> dict[str, Any]:
    if isinstance(arch, str):
        arch = json.loads(arch)
    if not isinstance(arch, Mapping) or "network.path" not in arch:
        raise ValueError("TrilevelSRNet.arch: expected a trilevel_sr arch (a mapping with 'network.path'), "
                         f"got {arch!r}")
    return dict(arch)


def check_path(path: str, scale: int, path_cells: int | None = None) -> None:
    ups = len(upsample_factors(scale))
    if set(path) - {"C", "U"} or path.count("U") != ups or (path_cells is not None and path.count("C") > path_cells):
        raise ValueError(f"network.path {path!r}: expected C (cell) and U (upsampler) moves with exactly {ups} U"
                         f" for x{scale}" + (f" and at most {path_cells} C" if path_cells is not None else ""))


def arch_macs(arch: Mapping[str, Any], scale: int, num_feat: int, out_hw: tuple[int, int] = (720, 1280)) -> float:
    """Multiply-accumulates of the derived network at an output of `out_hw` (the SR literature's 1280x720).

    Counts convolutions only (as `core.cost.count_macs` does); the bicubic
    global residual is an interpolation, not a learned layer, and is not counted.
    """
    arch = read_arch(arch)
    path = arch["network.path"]
    check_path(path, scale)
    lr_pixels = (out_hw[0] / scale) * (out_hw[1] / scale)
    head, tail = head_tail_macs(num_feat, scale)
    total = head + sum(cell_macs(num_feat, *cell_spec(arch, f"stem{i}")) for i in range(_count(arch, "stem")))
    factors, pixels, cells, ups = upsample_factors(scale), 1.0, 0, 0
    for move in path:
        if move == "C":
            total += pixels * cell_macs(num_feat, *cell_spec(arch, f"cell{cells}"))
            cells += 1
        else:
            total += pixels * upsampler_macs(num_feat, factors[ups])
            pixels *= factors[ups] ** 2
            ups += 1
    return float((total + tail) * lr_pixels)


class PlainCell(nn.Module):
    def __init__(self, num_feat: int, ops: list[str], widths: list[int], res_scale: float = 0.2):
        super().__init__()
        self.ops = plain_cell_ops(num_feat, ops, widths)
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for op in self.ops:
            out = op(out)
        return x + self.res_scale * out


@ARCH_REGISTRY.register()
class TrilevelSRNet(nn.Module):
    """A network derived by trilevel NAS (see the module docstring); `arch` is a dict or its JSON."""

    def __init__(self, upscale: int = 2, num_feat: int = 24, arch: Mapping[str, Any] | str | None = None,
                 num_in_ch: int = 3, num_out_ch: int = 3, res_scale: float = 0.2, init_scale: float | None = 0.1):
        super().__init__()
        if arch is None:
            raise ValueError("TrilevelSRNet: arch is required (the best_arch.json of a trilevel search)")
        if num_in_ch != num_out_ch:
            raise ValueError("TrilevelSRNet: the bicubic global residual needs num_in_ch == num_out_ch")
        arch = read_arch(arch)
        path = arch["network.path"]
        check_path(path, upscale)
        self.upscale, self.num_feat, self.path = upscale, num_feat, path
        self.arch = arch
        self.head = nn.Conv2d(num_in_ch, num_feat, 3, padding=1)
        self.stem = nn.ModuleList(PlainCell(num_feat, *cell_spec(arch, f"stem{i}"), res_scale)
                                  for i in range(_count(arch, "stem")))
        body, cells, factors = [], 0, iter(upsample_factors(upscale))
        for move in path:
            if move == "C":
                body.append(PlainCell(num_feat, *cell_spec(arch, f"cell{cells}"), res_scale))
                cells += 1
            else:
                body.append(Upsampler(num_feat, next(factors)))
        self.body = nn.ModuleList(body)
        self.tail = nn.Conv2d(num_feat, num_out_ch, 3, padding=1)
        if init_scale is not None:
            # basicsr's MSRResNet/EDSR initialisation: Kaiming-normal weights x 0.1, zero biases; every residual
            # branch starts near zero, so a deep stack starts near the bicubic answer (None: PyTorch's default)
            default_init_weights(list(self.modules()), init_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.head(x), 0.1)
        for cell in self.stem:
            h = cell(h)
        for module in self.body:
            h = module(h)
        base = F.interpolate(x, scale_factor=self.upscale, mode="bicubic", align_corners=False)
        return self.tail(h) + base


__all__ = ["TrilevelSRNet", "PlainCell", "arch_macs", "cell_spec", "read_arch", "check_path"]
