"""The DNA search space: EfficientNet-style blocks aligned with a teacher's stages, six MBConv ops per layer.

Li et al., "Blockwisely Supervised Neural Architecture Search with Knowledge
Distillation" (DNA), CVPR 2020, sec. 3.2-3.3 and the official code
(github.com/changlin31/DNA, `searching/dna/student_supernet.py`):

- stem: 3x3 conv, 32 channels, stride 2, then a fixed MB1 3x3 block with SE (16 channels);
- six blocks, `block_cfgs = [hidden, out, stride, layers]`:
  [24,48,2,2], [40,80,2,4], [80,160,2,4], [112,224,1,4], [192,384,2,4], [320,640,1,1];
- every layer picks one of MB6_3x3, MB6_5x5, MB6_7x7, MB3_3x3, MB3_5x5, MB3_7x7
  (`mb6_k3`, ... here), all with SE 0.25 (of the layer's input width) and swish.

During the search (`blockwise_supernet()`) the last layer of each block outputs
`out` channels, the width of the teacher's stage (EfficientNet-B7's, 2x B0's),
and block i+1 takes `out` channels in, because blockwise training feeds it the
teacher's feature. The searched network (`build(arch)`) uses the `hidden`
widths throughout, EfficientNet-B0's, with a 1x1 head conv of 1280 and a
classifier: it is a `MobileSpace` network (choice names `stage{i}.layer{j}.op`,
stage i being DNA block i; `stage{i}.depth` has the block's layer count as its
only option).

`dna_space_and_arch("a" | "b" | "c" | "d")` gives the published DNA-a..d
(architecture strings of the official `retraining/model.py`): 4,243,318 /
4,918,180 / 5,273,896 / 6,409,486 parameters at 1000 classes (README: 4.2 /
4.9 / 5.3 / 6.4M). DNA-c fits the six-block space above exactly. DNA-a, -b and
-d have other per-block layer counts (3,4,4,4,5,1 / 3,3,4,4,5,1 /
3,4,4,4,5,1) and DNA-a/b other widths (96/160, 96/192); they come from the
"multiple cells per block" variant the README refers to (the repository's issue #29), so they
are expressed in DNA spaces with those block configurations (same teacher
widths), which is our reconstruction of that variant.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from core.cost import count_macs, count_params
from core.engine.registry import SPACES, ConfigError, check_kwargs
from core.api import Arch, ChoiceModule
from core.zoo.mobile import DEFAULT_FIRST_BLOCK, MobileSpace, init_weights

#: [hidden, out (teacher width), stride, layers] per block (official `StudentSuperNet.block_cfgs`)
DNA_BLOCK_CFGS = ((24, 48, 2, 2), (40, 80, 2, 4), (80, 160, 2, 4), (112, 224, 1, 4), (192, 384, 2, 4),
                  (320, 640, 1, 1))
#: the official PRIMITIVES order: MB6 then MB3, kernels 3, 5, 7
DNA_OPS = ("mb6_k3", "mb6_k5", "mb6_k7", "mb3_k3", "mb3_k5", "mb3_k7")


def _block_cfgs(value: Any) -> tuple[tuple[int, int, int, int], ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"block_cfgs: expected a non-empty list of [hidden, out, stride, layers], got {value!r}")
    out = []
    for i, cfg in enumerate(value):
        if (not isinstance(cfg, (list, tuple)) or len(cfg) != 4
                or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in cfg)):
            raise ConfigError(f"block_cfgs[{i}]: expected [hidden, out, stride, layers] of positive ints, got {cfg!r}")
        if cfg[2] not in (1, 2):
            raise ConfigError(f"block_cfgs[{i}]: stride must be 1 or 2, got {cfg[2]!r}")
        out.append(tuple(cfg))
    return tuple(out)


class DNABlock(nn.Module):
    """One student block of the blockwise supernet: (the stem, for block 0) then its layer ChoiceModules."""

    def __init__(self, layers: Sequence[ChoiceModule], stem: nn.Module | None = None):
        super().__init__()
        self.stem = stem if stem is not None else nn.Identity()
        self.layers = nn.ModuleList(layers)

    @property
    def choice_names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for layer in self.layers:
            x = layer(x)
        return x


class DNASupernet(nn.Module):
    """The blockwise supernet: `blocks[i]` maps the teacher's stage i-1 feature (the image for i = 0) to stage i's.

    `forward(x, start=0, end=None)` chains blocks `start..end-1` on the active path
    (`core.api.activate(supernet, arch)` or per block `activate(blocks[i], ...)`).
    """

    def __init__(self, blocks: Sequence[DNABlock]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        init_weights(self)

    def forward(self, x: torch.Tensor, start: int = 0, end: int | None = None) -> torch.Tensor:
        for block in self.blocks[start:end]:
            x = block(x)
        return x


class DNASpace(MobileSpace):
    """The DNA space (see the module docstring); every argument is a plain config value.

    `block_cfgs` rows are `[hidden, out, stride, layers]`: `hidden` is the
    searched network's width, `out` the teacher's stage width the supernet's
    last layer of the block produces during the search. Ops are
    `mb{e}_k{k}` for e in `expansions`, k in `kernels` (the official six by default).
    """

    def __init__(self, block_cfgs: Sequence[Sequence[int]] = DNA_BLOCK_CFGS, kernels: Sequence[int] = (3, 5, 7),
                 expansions: Sequence[float] = (6, 3), se_ratio: float = 0.25, activation: str = "swish",
                 stem_channels: int = 32, stem_stride: int = 2, first_block: Mapping | None = DEFAULT_FIRST_BLOCK,
                 head_channels: int = 1280, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.2,
                 drop_connect: float = 0.0):
        self.block_cfgs = _block_cfgs(block_cfgs)
        stages = [{"channels": hidden, "stride": stride, "depths": [layers]}
                  for hidden, _, stride, layers in self.block_cfgs]
        super().__init__(stem_channels=stem_channels, stages=stages, kernels=kernels, expansions=expansions,
                         allow_skip=False, se_ratio=se_ratio, activation=activation, head_channels=head_channels,
                         num_classes=num_classes, in_channels=in_channels, dropout=dropout,
                         drop_connect=drop_connect, stem_stride=stem_stride, first_block=first_block)

    # -- blocks ---------------------------------------------------------------------------------
    @property
    def num_blocks(self) -> int:
        return len(self.block_cfgs)

    def block_choices(self, i: int) -> list[str]:
        """The op choice names of block i, in layer order."""
        return [f"stage{i}.layer{j}.op" for j in range(self.block_cfgs[i][3])]

    def block_arch(self, i: int, path: Sequence[int]) -> dict[str, str]:
        """Block i's choices for a path of option indices (one per layer)."""
        names = self.block_choices(i)
        if len(path) != len(names):
            raise ValueError(f"block {i} has {len(names)} layers, got a path of {len(path)}")
        return {n: self.choice(n).options[k] for n, k in zip(names, path)}

    def arch_from_paths(self, paths: Sequence[Sequence[int]]) -> Arch:
        """The full arch for one path (option indices) per block."""
        values = {c.name: c.default for c in self.choices}
        for i, path in enumerate(paths):
            values.update(self.block_arch(i, path))
        return self.check(values)

    def paths_of(self, arch: Mapping[str, Any]) -> list[tuple[int, ...]]:
        arch = self.check(arch)
        return [tuple(self.choice(n).index(arch[n]) for n in self.block_choices(i)) for i in range(self.num_blocks)]

    def blockwise_supernet(self) -> DNASupernet:
        """The search supernet: every op of every layer, last layer of each block at the teacher width `out`."""
        plan = self.plan(self.default(), drop_connect=0.0)
        stem = nn.Sequential(plan.stem.make(), plan.first_block.make()) if plan.first_block else plan.stem.make()
        in_ch = (plan.first_block or plan.stem).out_ch
        blocks = []
        for i, (hidden, out, stride, layers) in enumerate(self.block_cfgs):
            mods = []
            for j, name in enumerate(self.block_choices(i)):
                out_ch = out if j == layers - 1 else hidden
                choice = self.choice(name)
                mods.append(ChoiceModule(choice, [self._mb(in_ch, out_ch, stride if j == 0 else 1, op, 0.0).make()
                                                  for op in choice.options]))
                in_ch = out_ch
            blocks.append(DNABlock(mods, stem if i == 0 else None))
        return DNASupernet(blocks)

    def teacher_shapes(self, input_size: int | Sequence[int]) -> list[tuple[int, int, int]]:
        """(channels, height, width) the teacher's stage outputs must have for an input of `input_size`."""
        h, w = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        plan = self.plan(self.default())
        for layer in [plan.stem] + ([plan.first_block] if plan.first_block else []):
            h, w = layer.out_size(h, w)
        shapes = []
        for (hidden, out, stride, layers), stage in zip(self.block_cfgs, plan.stages):
            for layer in stage:
                h, w = layer.out_size(h, w)
            shapes.append((out, h, w))
        return shapes

    # -- costs of the searched network ------------------------------------------------------------
    def cost_table(self, metric: str = "macs", input_size: int | Sequence[int] = 224
                   ) -> tuple[float, list[list[list[float]]]]:
        """(fixed cost, table[block][layer][option]) of `build(arch)`: cost = fixed + sum of the chosen entries.

        Each layer's width and resolution are fixed in this space, so a layer's
        cost depends only on its own op and the network's cost is additive
        (the per-layer tables of the official `process_potential.py`). `metric`
        is "params" or "macs" (torch's FlopCounterMode / 2 at `input_size`).
        """
        if metric not in ("params", "macs"):
            raise ConfigError(f"constraint: DNA's traversal counts 'params' or 'macs', got {metric!r}")

        cache: dict[str, float] = {}

        def cost(spec) -> float:
            # layers with one key cost the same; meta tensors count MACs without computing anything
            if spec.key not in cache:
                with torch.device("meta"):
                    module = spec.make()
                cache[spec.key] = float(count_params(module) if metric == "params"
                                        else count_macs(module, (1, *spec.input_shape)))
            return cache[spec.key]

        default = self.default()
        base = self.layer_specs(default, input_size)
        first = 1 + (self.first_block is not None)
        searchable, table, index = set(), [], first
        for i in range(self.num_blocks):
            rows = []
            for name in self.block_choices(i):
                choice = self.choice(name)
                rows.append([cost(self.layer_specs(default.replace(**{name: op}), input_size)[index])
                             for op in choice.options])
                searchable.add(index)
                index += 1
            table.append(rows)
        fixed = sum(cost(spec) for k, spec in enumerate(base) if k not in searchable)
        return fixed, table


# ---------------------------------------------------------------------------------------------
# published networks (official retraining/model.py; the leading 'ds_r1_k3_s1_c16_se0.25' is the fixed first block)
# ---------------------------------------------------------------------------------------------
DNA_ARCH_STRINGS = {
    "a": [['ir_r1_k5_s2_e3_c24_se0.25', 'ir_r1_k3_s1_e3_c24_se0.25', 'ir_r1_k3_s1_e6_c24_se0.25'],
          ['ir_r2_k3_s2_e3_c40_se0.25', 'ir_r1_k5_s1_e3_c40_se0.25', 'ir_r1_k3_s1_e6_c40_se0.25'],
          ['ir_r1_k7_s2_e6_c80_se0.25', 'ir_r1_k3_s1_e3_c80_se0.25', 'ir_r1_k5_s1_e3_c80_se0.25',
           'ir_r1_k3_s1_e6_c80_se0.25'],
          ['ir_r1_k5_s1_e6_c96_se0.25', 'ir_r2_k5_s1_e3_c96_se0.25', 'ir_r1_k5_s1_e6_c96_se0.25'],
          ['ir_r1_k5_s2_e6_c160_se0.25', 'ir_r3_k5_s1_e3_c160_se0.25', 'ir_r1_k5_s1_e6_c160_se0.25'],
          ['ir_r1_k3_s1_e6_c320_se0.25']],
    "b": [['ir_r1_k3_s2_e3_c24_se0.25', 'ir_r1_k5_s1_e3_c24_se0.25', 'ir_r1_k7_s1_e6_c24_se0.25'],
          ['ir_r1_k7_s2_e6_c40_se0.25', 'ir_r1_k5_s1_e3_c40_se0.25', 'ir_r1_k7_s1_e6_c40_se0.25'],
          ['ir_r1_k5_s2_e6_c80_se0.25', 'ir_r2_k5_s1_e3_c80_se0.25', 'ir_r1_k3_s1_e6_c80_se0.25'],
          ['ir_r1_k5_s1_e6_c96_se0.25', 'ir_r2_k5_s1_e3_c96_se0.25', 'ir_r1_k5_s1_e6_c96_se0.25'],
          ['ir_r1_k7_s2_e6_c192_se0.25', 'ir_r3_k5_s1_e3_c192_se0.25', 'ir_r1_k7_s1_e6_c192_se0.25'],
          ['ir_r1_k3_s1_e6_c320_se0.25']],
    "c": [['ir_r1_k5_s2_e6_c24_se0.25', 'ir_r1_k3_s1_e6_c24_se0.25'],
          ['ir_r2_k5_s2_e6_c40_se0.25', 'ir_r1_k3_s1_e6_c40_se0.25', 'ir_r1_k5_s1_e6_c40_se0.25'],
          ['ir_r1_k5_s2_e6_c80_se0.25', 'ir_r1_k3_s1_e6_c80_se0.25', 'ir_r2_k5_s1_e6_c80_se0.25'],
          ['ir_r1_k3_s1_e6_c112_se0.25', 'ir_r2_k5_s1_e6_c112_se0.25', 'ir_r1_k5_s1_e3_c112_se0.25'],
          ['ir_r1_k5_s2_e6_c192_se0.25', 'ir_r1_k5_s1_e3_c192_se0.25', 'ir_r2_k5_s1_e6_c192_se0.25'],
          ['ir_r1_k3_s1_e6_c320_se0.25']],
    "d": [['ir_r1_k7_s2_e6_c24_se0.25', 'ir_r1_k5_s1_e6_c24_se0.25', 'ir_r1_k7_s1_e6_c24_se0.25'],
          ['ir_r4_k7_s2_e6_c40_se0.25'],
          ['ir_r1_k7_s2_e6_c80_se0.25', 'ir_r2_k5_s1_e6_c80_se0.25', 'ir_r1_k7_s1_e6_c80_se0.25'],
          ['ir_r1_k7_s1_e6_c112_se0.25', 'ir_r1_k5_s1_e6_c112_se0.25', 'ir_r1_k7_s1_e6_c112_se0.25',
           'ir_r1_k5_s1_e6_c112_se0.25'],
          ['ir_r1_k7_s2_e6_c192_se0.25', 'ir_r3_k5_s1_e6_c192_se0.25', 'ir_r1_k7_s1_e6_c192_se0.25'],
          ['ir_r1_k3_s1_e6_c320_se0.25']],
}
#: README numbers: (params, "FLOPs" = multiply-accumulates, top-1)
DNA_PUBLISHED = {"a": (4.2e6, 348e6, 77.1), "b": (4.9e6, 394e6, 77.5), "c": (5.3e6, 466e6, 77.8),
                 "d": (6.4e6, 611e6, 78.4)}

_BLOCK_STRING = re.compile(r"^ir_r(\d+)_k(\d+)_s(\d)_e(\d+(?:\.\d+)?)_c(\d+)_se0\.25$")


def decode_stage(strings: Sequence[str]) -> tuple[int, int, list[str]]:
    """timm gen-efficientnet strings of one stage -> (width, stride, ops), e.g. 'ir_r2_k5_s2_e6_c40_se0.25'."""
    ops, width, stride = [], None, None
    for k, text in enumerate(strings):
        m = _BLOCK_STRING.match(text)
        if not m:
            raise ValueError(f"unsupported block string {text!r}")
        repeats, kernel, s, expansion, channels = (int(m.group(1)), int(m.group(2)), int(m.group(3)),
                                                   float(m.group(4)), int(m.group(5)))
        if k == 0:
            width, stride = channels, s
        elif s != 1 or channels != width:
            raise ValueError(f"{text!r}: only a stage's first string may change stride or width")
        ops += [f"mb{expansion:g}_k{kernel}"] * repeats
    return width, stride, ops


def dna_space_and_arch(name: str, num_classes: int = 1000, **overrides: Any) -> tuple[DNASpace, Arch]:
    """DNA-a/b/c/d (official `retraining/model.py`) as (space, arch); `space.build(arch)` is the network.

    The teacher widths (`out`) stay EfficientNet-B7's; hidden widths and layer
    counts are the published network's (for DNA-c, exactly `DNA_BLOCK_CFGS`).
    Drop-connect 0.2 as in the official retraining when not overridden.
    """
    if name not in DNA_ARCH_STRINGS:
        raise ConfigError(f"DNA model: expected one of {', '.join(DNA_ARCH_STRINGS)}, got {name!r}")
    stages = [decode_stage(strings) for strings in DNA_ARCH_STRINGS[name]]
    cfgs = [(width, default[1], stride, len(ops)) for (width, stride, ops), default in zip(stages, DNA_BLOCK_CFGS)]
    kwargs = {"drop_connect": 0.2, **overrides}
    space = DNASpace(block_cfgs=cfgs, num_classes=num_classes, **kwargs)
    return space, space.arch_from_paths([[space.choice(n).index(op) for n, op in zip(space.block_choices(i), ops)]
                                         for i, (_, _, ops) in enumerate(stages)])


#: a scaled-down DNA space for 8x8 one-channel digits; teacher: `SmallCNN(widths=(32, 48, 64), strides=(1, 2, 2))`
DNA_DIGITS = dict(block_cfgs=((16, 32, 1, 2), (24, 48, 2, 2), (32, 64, 2, 1)), kernels=(3, 5), expansions=(6, 3),
                  stem_channels=16, stem_stride=1, first_block=None, head_channels=0, num_classes=10,
                  in_channels=1, dropout=0.1)


def dna_digits_space(**overrides: Any) -> DNASpace:
    """Three blocks, four ops (mb6/mb3 x k3/k5) per layer, stem stride 1: 8x8 -> 8, 4, 2 (16 x 16 x 4 block paths)."""
    return DNASpace(**{**DNA_DIGITS, **check_kwargs(DNASpace, overrides, "space")})


SPACES.register("dna", DNASpace)
SPACES.register("dna_digits", dna_digits_space)
