"""`trilevel_sr`: the trilevel search space as Choices (Wu et al., arXiv 2101.06658).

Choices, all JSON-friendly:

- `network.path`: the network level, a string of moves from the stem to the
  output, `C` a cell and `U` an upsampler (exactly one U for x2/x3, two for
  x4; 0..path_cells C's). `CCCU` keeps every cell at LR; `UCCC` runs them at HR.
- `stem{i}.op{j}` / `cell{i}.op{j}`: the cell level, one of skip, conv3x3,
  resblock, dwsblock per op position; `cell{i}` is the i-th cell on the path
  (inactive past the path's number of C's).
- `stem{i}.width{j}` / `cell{i}.width{j}`: the kernel level, the width of the
  j-th tensor inside the cell in twelfths of the base width (4, 6, 8, 10, 12).

The space also builds the task's baselines, so the CLI can train and test
them like searched networks: `Arch({"baseline": "bicubic"})` (no parameters)
and `Arch({"baseline": "msrresnet", "num_feat": F, "num_block": B})`, basicsr's
MSRResNet (SRResNet without BN; Ledig et al., CVPR 2017; Wang et al., ESRGAN).

`cost_output` [H, W] is the output size `macs()` and the searcher's MACs term
count at (the task sets it from `super_resolution.cost_output`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from core.engine.registry import SPACES
from core.api import Arch, Choice, SearchSpace
from tasks.super_resolution._basicsr import MSRResNet, imresize
from tasks.super_resolution.models import TrilevelSRNet, arch_macs
from tasks.super_resolution.ops import OPS, WIDTHS, upsample_factors
from tasks.super_resolution.supernet import TrilevelSupernet, tree_nodes

BASELINE_KINDS = ("bicubic", "msrresnet")


class Bicubic(nn.Module):
    """MATLAB-compatible bicubic upsampling (`basicsr.utils.matlab_functions.imresize`): the classic baseline."""

    def __init__(self, scale: int):
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([imresize(img.detach().float().cpu(), self.scale) for img in x]).to(x.device)


def msrresnet_macs(num_feat: int, num_block: int, scale: int, out_hw: tuple[int, int] = (720, 1280)) -> float:
    """MSRResNet's conv MACs at an output of `out_hw` (matches `core.cost.count_macs`; checked in the tests)."""
    lr = (out_hw[0] / scale) * (out_hw[1] / scale)
    total = 9 * 3 * num_feat + num_block * 2 * 9 * num_feat * num_feat
    pixels = 1.0
    for f in upsample_factors(scale):
        total += pixels * 9 * num_feat * num_feat * f * f
        pixels *= f * f
    total += pixels * (9 * num_feat * num_feat + 9 * num_feat * 3)
    return float(total * lr)


@SPACES.register("trilevel_sr")
class TrilevelSpace(SearchSpace):
    """The trilevel SR space (see the module docstring). `supernet()` is a `TrilevelSupernet`."""

    def __init__(self, scale: int = 2, num_feat: int = 24, stem_cells: int = 1, path_cells: int = 3,
                 ops_per_cell: int = 3, ops: list | None = None, widths: list | None = None,
                 res_scale: float = 0.2, cost_output: list | None = None, init_scale: float | None = 0.1):
        if scale not in (2, 3, 4):
            raise ValueError(f"space.scale: expected 2, 3 or 4, got {scale!r}")
        if num_feat < 1 or stem_cells < 0 or path_cells < 0 or ops_per_cell < 1:
            raise ValueError("space: num_feat and ops_per_cell must be >= 1, stem_cells and path_cells >= 0")
        self.ops = tuple(ops or OPS)
        unknown = [o for o in self.ops if o not in OPS]
        if unknown:
            raise ValueError(f"space.ops: unknown op {unknown[0]!r}; known: {', '.join(OPS)}")
        self.widths = tuple(int(w) for w in (widths or WIDTHS))
        if any(not 1 <= w <= 12 for w in self.widths):
            raise ValueError(f"space.widths: expected twelfths in 1..12, got {list(self.widths)}")
        self.scale, self.num_feat, self.res_scale, self.init_scale = scale, num_feat, res_scale, init_scale
        self.cost_output = tuple(int(v) for v in (cost_output or (720, 1280)))
        self.stem_cells, self.path_cells, self.ops_per_cell = stem_cells, path_cells, ops_per_cell
        num_up = len(upsample_factors(scale))
        paths = tuple(n for n in tree_nodes(path_cells, num_up) if n.count("U") == num_up)
        default_op = "conv3x3" if "conv3x3" in self.ops else self.ops[0]
        choices = [Choice("network.path", paths, default="C" * path_cells + "U" * num_up)]
        for prefix in [f"stem{i}" for i in range(stem_cells)] + [f"cell{i}" for i in range(path_cells)]:
            choices += [Choice(f"{prefix}.op{j}", self.ops, default=default_op) for j in range(ops_per_cell)]
            choices += [Choice(f"{prefix}.width{j}", self.widths, default=max(self.widths))
                        for j in range(ops_per_cell - 1)]
        super().__init__(choices)

    # -- rules --------------------------------------------------------------------------------------
    def active(self, arch: Mapping[str, Any]) -> list[str]:
        cells = str(arch.get("network.path", "")).count("C")
        return [n for n in self.names if not (n.startswith("cell") and int(n[4:].split(".")[0]) >= cells)]

    def size(self) -> int:
        per_cell = len(self.ops) ** self.ops_per_cell * len(self.widths) ** (self.ops_per_cell - 1)
        return sum(per_cell ** (self.stem_cells + p.count("C")) for p in self.choice("network.path").options)

    def check(self, arch: Mapping[str, Any]) -> Arch:
        if "baseline" in arch:
            return self.check_baseline(arch)
        return super().check(arch)

    def check_baseline(self, arch: Mapping[str, Any]) -> Arch:
        kind = arch["baseline"]
        if kind not in BASELINE_KINDS:
            raise ValueError(f"baseline {kind!r}: expected one of {BASELINE_KINDS}")
        keys = {"baseline"} | ({"num_feat", "num_block"} if kind == "msrresnet" else set())
        if set(arch) != keys:
            raise ValueError(f"baseline {kind!r}: expected keys {sorted(keys)}, got {sorted(arch)}")
        return Arch(arch)

    # -- networks -----------------------------------------------------------------------------------
    def build(self, arch: Mapping[str, Any]) -> nn.Module:
        """The plain network of `arch`."""
        arch = self.check(arch)
        if "baseline" in arch:
            if arch["baseline"] == "bicubic":
                return Bicubic(self.scale)
            return MSRResNet(num_in_ch=3, num_out_ch=3, num_feat=arch["num_feat"], num_block=arch["num_block"],
                             upscale=self.scale)
        return TrilevelSRNet(self.scale, self.num_feat, arch.to_dict(), res_scale=self.res_scale,
                             init_scale=self.init_scale)

    def supernet(self) -> TrilevelSupernet:
        return TrilevelSupernet(self.scale, self.num_feat, self.stem_cells, self.path_cells, self.ops_per_cell,
                                self.ops, self.widths, self.res_scale)

    def macs(self, arch: Mapping[str, Any], out_hw: tuple[int, int] | None = None) -> float:
        """MACs at an output of `out_hw` (default the space's `cost_output`, 1280x720 as efficient-SR papers report)."""
        arch = self.check(arch)
        out_hw = tuple(out_hw or self.cost_output)
        if "baseline" in arch:
            if arch["baseline"] == "bicubic":
                return 0.0
            return msrresnet_macs(arch["num_feat"], arch["num_block"], self.scale, out_hw)
        return arch_macs(arch, self.scale, self.num_feat, out_hw)


def msrresnet_budget(scale: int, max_macs: float, out_hw: tuple[int, int] = (720, 1280),
                     feats: tuple[int, ...] = tuple(range(8, 65, 4)), blocks: tuple[int, ...] = tuple(range(1, 17)),
                     at_least: bool = False) -> Arch:
    """The MSRResNet (num_feat, num_block) with the most MACs <= `max_macs`; with `at_least`, the one with
    the fewest MACs >= `max_macs` (the baseline sized to no fewer MACs than a searched network)."""
    grid = [(msrresnet_macs(f, b, scale, out_hw), f, b) for f in feats for b in blocks]
    fits = [g for g in grid if (g[0] >= max_macs if at_least else g[0] <= max_macs)]
    if not fits:
        raise ValueError(f"no MSRResNet of num_feat {feats[0]}..{feats[-1]}, num_block {blocks[0]}..{blocks[-1]} "
                         f"has {'>=' if at_least else '<='} {max_macs:.3g} MACs")
    macs, f, b = (min if at_least else max)(fits)
    return Arch({"baseline": "msrresnet", "num_feat": f, "num_block": b})


__all__ = ["TrilevelSpace", "Bicubic", "msrresnet_macs", "msrresnet_budget", "BASELINE_KINDS"]
