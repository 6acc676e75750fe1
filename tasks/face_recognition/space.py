"""The PocketNet search space: DARTS cells over the face op set, a 112x112 stem and an embedding head.

Boutros et al., "PocketNet", IEEE Access 2022 (arXiv 2108.10710), sec. III;
official code github.com/fdbtrs/PocketNet (`backbones/augment_cnn.py`,
`backbones/augment_cells.py`, `DART/models/search_cnn.py`, `config/config.py`).

- Cells: the DARTS cell (`core.zoo.darts`, 4 nodes, two edges per node,
  output = concat of the 4 nodes) over `FACE_PRIMITIVES`. The Arch names are
  the DARTS space's (`normal.node2.in0.op`, ...), so genotypes, derivation and
  the DARTS searcher are shared.
- Reduction cells at n//3, 2n//3 and n-1 (three, not DARTS's two), so a
  112x112 face ends on a 7x7 map.
- Stem: 3x3 conv stride 2 -> BN, with `stem_multiplier` x C channels (4 in
  the evaluation network, 3 in the search network, as the official configs).
- Embedding head (MobileFaceNet's): PReLU -> 1x1 conv to 512 (1024 for a
  512-d embedding) -> BN -> PReLU -> global depthwise conv (kernel = final map
  size, 7 at 112x112) -> BN -> 1x1 conv to the embedding -> BN.
- The search network adds a linear softmax classifier on the embedding (the
  "softmax" search of the paper, sec. III-B). Deviation: the official search
  tail groups its GDConv by 128 (`DART/models/search_cnn.py`) while the
  evaluation network is fully depthwise; we use the depthwise head in both.

The published cell is `POCKETNET` (official `genotypes["softmax_casia"]`,
found on CASIA-WebFace); `PocketNetS` is C=16 with 18 cells, `PocketNetM` C=32
with 9 cells. `PocketNetS-128` has 925,632 parameters (`tests`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from core.engine.registry import SPACES
from core.api import Arch, SearchSpace, set_mixture
from core.api.modules import choice_modules
from core.zoo.darts import (
    CELL_TYPES,
    DartsSpace,
    Genotype,
    SearchCell,
    check_op_names,
    arch_to_genotype,
    genotype_to_arch,
    make_genotype,
    parse_genotype,
)
from tasks.face_recognition.ops import (
    FACE_OPS,
    FACE_PRIMITIVES,
    FaceFactorizedReduce,
    StdConv,
    make_face_op,
)


def _nodes(pairs: Sequence[Sequence[tuple[str, int]]]) -> list[tuple[str, int]]:
    return [edge for node in pairs for edge in node]


POCKETNET = make_genotype(
    normal=_nodes([[("dw_conv_3x3", 0), ("dw_conv_1x1", 1)], [("dw_conv_3x3", 2), ("dw_conv_5x5", 0)],
                   [("dw_conv_3x3", 3), ("dw_conv_3x3", 0)], [("dw_conv_3x3", 4), ("skip_connect", 0)]]),
    normal_concat=range(2, 6),
    reduce=_nodes([[("dw_conv_3x3", 1), ("dw_conv_7x7", 0)], [("skip_connect", 2), ("dw_conv_5x5", 1)],
                   [("max_pool_3x3", 0), ("skip_connect", 2)], [("max_pool_3x3", 0), ("max_pool_3x3", 1)]]),
    reduce_concat=range(2, 6))
"""The published PocketNet cell, searched on CASIA-WebFace (official `config.genotypes["softmax_casia"]`)."""

POCKETNET_CIFAR10 = make_genotype(
    normal=_nodes([[("dw_conv_7x7", 0), ("dw_conv_3x3", 1)], [("dw_conv_1x1", 1), ("dw_conv_1x1", 2)],
                   [("max_pool_3x3", 2), ("dw_conv_7x7", 3)], [("dw_conv_5x5", 4), ("max_pool_3x3", 0)]]),
    normal_concat=range(2, 6),
    reduce=_nodes([[("max_pool_3x3", 0), ("dw_conv_7x7", 1)], [("max_pool_3x3", 0), ("max_pool_3x3", 1)],
                   [("max_pool_3x3", 0), ("max_pool_3x3", 2)], [("max_pool_3x3", 0), ("max_pool_3x3", 1)]]),
    reduce_concat=range(2, 6))
"""The cell the official code also ships from a CIFAR-10 search (`genotypes["softmax_cifar10"]`); not the paper's."""

FACE_GENOTYPES = {"PocketNet": POCKETNET, "softmax_casia": POCKETNET, "softmax_cifar10": POCKETNET_CIFAR10}

PUBLISHED = {
    "PocketNetS-128": dict(C=16, layers=18, embedding_size=128),
    "PocketNetS-256": dict(C=16, layers=18, embedding_size=256),
    "PocketNetM-128": dict(C=32, layers=9, embedding_size=128),
    "PocketNetM-256": dict(C=32, layers=9, embedding_size=256),
}
"""The paper's four models (Table II): S = 16 channels x 18 cells, M = 32 channels x 9 cells."""


def to_face_genotype(value: Any) -> Genotype:
    """A Genotype from a name (`PocketNet`), a genotype string (flat or the official per-node nesting) or a mapping."""
    if isinstance(value, Genotype):
        return value
    if isinstance(value, str):
        if value in FACE_GENOTYPES:
            return FACE_GENOTYPES[value]
        genotype = parse_genotype(value.replace("[[", "[").replace("]]", "]").replace("], [", ", "))
        return genotype
    if isinstance(value, Mapping):
        return make_genotype(**value)
    raise ValueError(f"cannot read a face genotype from {value!r}; known names: {sorted(FACE_GENOTYPES)}")


def reduction_plan(layers: int) -> list[bool]:
    """Which cells reduce: n//3, 2n//3 and n-1 (official `augment_cnn.py`)."""
    return [i in (layers // 3, 2 * layers // 3, layers - 1) for i in range(layers)]


def final_map_size(input_size: int, layers: int) -> int:
    """Side of the last feature map: the stem and each reduction halve it (rounding up)."""
    size = math.ceil(input_size / 2)
    for reduction in reduction_plan(layers):
        size = math.ceil(size / 2) if reduction else size
    return size


class EmbeddingHead(nn.Module):
    """MobileFaceNet's global-depthwise-conv (GDC) embedding head (official `AugmentCNN.tail`)."""

    def __init__(self, C_in: int, embedding_size: int = 128, kernel: int = 7):
        super().__init__()
        width = 1024 if embedding_size == 512 else 512
        self.tail = nn.Sequential(
            nn.PReLU(C_in),
            nn.Conv2d(C_in, width, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.PReLU(width),
            nn.Conv2d(width, width, kernel, groups=width, bias=False),
            nn.BatchNorm2d(width),
            nn.Conv2d(width, embedding_size, 1, bias=False),
            nn.BatchNorm2d(embedding_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(x).flatten(1)


class FaceCell(nn.Module):
    """A discrete PocketNet cell (official `AugmentCell`): node i = op(state a) + op(state b)."""

    def __init__(self, genotype: Genotype, C_prev_prev: int, C_prev: int, C: int, reduction: bool,
                 reduction_prev: bool):
        super().__init__()
        self.reduction = reduction
        self.preproc0 = FaceFactorizedReduce(C_prev_prev, C) if reduction_prev else StdConv(C_prev_prev, C, 1, 1, 0)
        self.preproc1 = StdConv(C_prev, C, 1, 1, 0)
        edges = genotype.reduce if reduction else genotype.normal
        self.concat = list(genotype.reduce_concat if reduction else genotype.normal_concat)
        self._indices = [index for _, index in edges]
        self.ops = nn.ModuleList(make_face_op(op, C, 2 if reduction and index < 2 else 1) for op, index in edges)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        states = [self.preproc0(s0), self.preproc1(s1)]
        for i in range(len(self.ops) // 2):
            a, b = 2 * i, 2 * i + 1
            states.append(self.ops[a](states[self._indices[a]]) + self.ops[b](states[self._indices[b]]))
        return torch.cat([states[i] for i in self.concat], dim=1)


class PocketNet(nn.Module):
    """The PocketNet embedding network (official `AugmentCNN`): image -> embedding (not normalised)."""

    def __init__(self, genotype: Genotype | str = "PocketNet", C: int = 16, layers: int = 18,
                 embedding_size: int = 128, input_size: int = 112, in_channels: int = 3, stem_multiplier: int = 4):
        super().__init__()
        genotype = to_face_genotype(genotype)
        self.embedding_size = embedding_size
        C_cur = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C_cur, 3, 2, 1, bias=False), nn.BatchNorm2d(C_cur))
        C_pp, C_p, C_cur = C_cur, C_cur, C
        self.cells = nn.ModuleList()
        reduction_p = False
        for reduction in reduction_plan(layers):
            C_cur = C_cur * 2 if reduction else C_cur
            cell = FaceCell(genotype, C_pp, C_p, C_cur, reduction, reduction_p)
            self.cells.append(cell)
            reduction_p = reduction
            C_pp, C_p = C_p, C_cur * len(cell.concat)
        self.head = EmbeddingHead(C_p, embedding_size, final_map_size(input_size, layers))
        self._init_params()

    def _init_params(self) -> None:
        """Kaiming-uniform convs, BN at (1, 0), as the official `_init_params`."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight)
            elif isinstance(m, nn.BatchNorm2d) and m.affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return self.head(s1)


def pocketnet(name: str = "PocketNetS-128", input_size: int = 112, genotype: Genotype | str = "PocketNet") -> PocketNet:
    """One of the paper's models by name: PocketNetS-128, PocketNetS-256, PocketNetM-128, PocketNetM-256."""
    if name not in PUBLISHED:
        raise ValueError(f"unknown PocketNet model {name!r}; known: {', '.join(PUBLISHED)}")
    return PocketNet(genotype, input_size=input_size, **PUBLISHED[name])


# ---------------------------------------------------------------------------
# Search network (official `DART/models/search_cnn.py`, `search_cells.py`)
# ---------------------------------------------------------------------------

class FaceSearchCell(SearchCell):
    """Every face op on every edge; edge k is a `ChoiceModule` named `{cell}.edge{k}` as in the DARTS space."""

    op_factory = staticmethod(make_face_op)
    reduce_preprocess = FaceFactorizedReduce
    conv_preprocess = StdConv


class FaceSearchNetwork(nn.Module):
    """The PocketNet supernet with a softmax classifier on the embedding; `forward` returns class logits.

    All normal cells share one logits vector per edge, and so do all reduction
    cells (the official `alpha_normal` / `alpha_reduce`), initialised 1e-3 N(0, 1).
    """

    def __init__(self, ops: Sequence[str] = FACE_PRIMITIVES, C: int = 16, num_classes: int = 10, layers: int = 8,
                 steps: int = 4, embedding_size: int = 128, input_size: int = 112, in_channels: int = 3,
                 stem_multiplier: int = 3):
        super().__init__()
        C_cur = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C_cur, 3, 2, 1, bias=False), nn.BatchNorm2d(C_cur))
        C_pp, C_p, C_cur = C_cur, C_cur, C
        self.cells = nn.ModuleList()
        reduction_p = False
        for reduction in reduction_plan(layers):
            C_cur = C_cur * 2 if reduction else C_cur
            self.cells.append(FaceSearchCell("reduce" if reduction else "normal", ops, steps, C_pp, C_p, C_cur,
                                             reduction, reduction_p))
            reduction_p = reduction
            C_pp, C_p = C_p, steps * C_cur
        self.head = EmbeddingHead(C_p, embedding_size, final_map_size(input_size, layers))
        self.classifier = nn.Linear(embedding_size, num_classes)
        shared: dict[str, nn.Parameter] = {}
        for m in choice_modules(self):
            if m.name not in shared:
                shared[m.name] = nn.Parameter(1e-3 * torch.randn(len(m.choice)))
            m.logits = shared[m.name]
        set_mixture(self)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return self.head(s1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


# ---------------------------------------------------------------------------
# The space
# ---------------------------------------------------------------------------

def _positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"space.{name}: expected an integer >= 1, got {value!r}")
    return value


@SPACES.register("pocketnet")
class PocketNetSpace(DartsSpace):
    """DARTS cells with the face ops; `build` gives the PocketNet embedding network, `supernet` the
    softmax-headed search network. Defaults are PocketNetS-128 at 112x112.

    Subclasses `DartsSpace` for its choices, constraint (a node's two inputs
    differ), size, `supernet_arch` and `derive`, so `DartsSearcher` applies
    the DARTS derivation rule to it unchanged.
    """

    def __init__(self, C: int = 16, layers: int = 18, embedding_size: int = 128, input_size: int = 112,
                 in_channels: int = 3, stem_multiplier: int = 4, ops: list[str] | None = None, steps: int = 4,
                 num_classes: int = 10):
        self.C = _positive("C", C)
        self.layers = _positive("layers", layers)
        if layers < 3:
            raise ValueError(f"space.layers: PocketNet needs >= 3 cells (three reduction cells), got {layers!r}")
        self.embedding_size = _positive("embedding_size", embedding_size)
        self.input_size = _positive("input_size", input_size)
        self.in_channels = _positive("in_channels", in_channels)
        self.stem_multiplier = _positive("stem_multiplier", stem_multiplier)
        self.steps = _positive("steps", steps)
        self.num_classes = _positive("num_classes", num_classes)
        self.ops = check_op_names(ops, FACE_PRIMITIVES, FACE_OPS, key="space.ops")
        self.auxiliary, self.drop_path_prob = False, 0.0
        SearchSpace.__init__(self, self._make_choices())

    def arch_of(self, value: Any) -> Arch:
        """An Arch from an Arch/mapping of choices, a genotype name (`PocketNet`) or a genotype string."""
        if isinstance(value, Mapping) and set(value) != set(Genotype._fields):
            return self.check(value)
        return self.check(genotype_to_arch(to_face_genotype(value)))

    def genotype(self, arch: Mapping[str, Any]) -> Genotype:
        return arch_to_genotype(self.check(arch))

    def build(self, arch: Any, channel_divisor: float = 1, **overrides: Any) -> PocketNet:
        """The embedding network of `arch` (the margin head over identities lives in the training module,
        not in the exported network)."""
        genotype = arch_to_genotype(self.arch_of(arch))
        if channel_divisor <= 0:
            raise ValueError(f"channel_divisor: expected a positive number, got {channel_divisor!r}")
        settings = dict(C=max(1, int(self.C / channel_divisor)), layers=self.layers,
                        embedding_size=self.embedding_size, input_size=self.input_size,
                        in_channels=self.in_channels, stem_multiplier=self.stem_multiplier)
        unknown = set(overrides) - set(settings)
        if unknown:
            raise ValueError(f"build: unknown overrides {sorted(unknown)}; known: {sorted(settings)}")
        settings.update(overrides)
        return PocketNet(genotype, **settings)

    def supernet(self, C: int = 16, layers: int = 8, num_classes: int | None = None, stem_multiplier: int = 3,
                 embedding_size: int | None = None) -> FaceSearchNetwork:
        """The search network; defaults are the official search config (C=16, 8 cells, stem x3)."""
        return FaceSearchNetwork(self.ops, C=C, num_classes=num_classes or self.num_classes, layers=layers,
                                 steps=self.steps, embedding_size=embedding_size or self.embedding_size,
                                 input_size=self.input_size, in_channels=self.in_channels,
                                 stem_multiplier=stem_multiplier)


__all__ = [
    "CELL_TYPES",
    "FACE_GENOTYPES",
    "POCKETNET",
    "POCKETNET_CIFAR10",
    "PUBLISHED",
    "EmbeddingHead",
    "FaceCell",
    "FaceSearchCell",
    "FaceSearchNetwork",
    "PocketNet",
    "PocketNetSpace",
    "final_map_size",
    "pocketnet",
    "reduction_plan",
    "to_face_genotype",
]
