"""A NAS-Bench-201-style cell space, small enough to train exhaustively.

Dong & Yang, "NAS-Bench-201: Extending the Scope of Reproducible Neural
Architecture Search", ICLR 2020 (arXiv 2001.00326); official code
github.com/D-X-Y/AutoDL-Projects (`xautodl/models/cell_operations.py`,
`xautodl/models/cell_infers/cells.py`, `xautodl/models/cell_infers/tiny_network.py`).

The cell is a DAG of 4 nodes. Node 0 is the cell input, node 3 the cell
output, and node i (i > 0) is the sum over j < i of `op_{j->i}(node j)`: six
edges, one op each. An `Arch` of this space names each edge

    cell.e{j}{i}    the op on the edge from node j to node i
                    (cell.e01, cell.e02, cell.e12, cell.e03, cell.e13, cell.e23)

Op set: NAS-Bench-201 has five ops (none, skip_connect, nor_conv_1x1,
nor_conv_3x3, avg_pool_3x3), 5^6 = 15,625 cells. We default to three of
them, `none`, `skip_connect`, `nor_conv_3x3`: 3^6 = 729 cells, few enough to
train every one on the embedded digits data in minutes on a laptop CPU (the
shipped tabular benchmark, `core.evaluation.tabular`). We keep every labelled
cell distinct rather than merging isomorphic or functionally equivalent ones:
a merge would make `canonical` many-to-one, so uniform sampling, one-choice
mutations and per-choice models (TPE, Q-learning) would all see a distorted
space; NAS-Bench-201 itself keeps its 15,625 cells distinct too. Any subset
of the five ops can still be asked for (`ops=[...]`), at `len(ops)**6` cells.

The macro skeleton follows NAS-Bench-201's `TinyNetwork`, scaled for 8x8
one-channel digits: stem conv3x3 (C) + BN; N cells at C; a residual
reduction block (C -> 2C, stride 2); N cells at 2C; BN + ReLU; global average
pool; linear. Defaults C=8, N=1: the networks of the shipped tabular
benchmark (NAS-Bench-201 uses C=16, N=5 on 32x32 images, with a second
reduction and a third stage).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from core.engine.registry import SPACES
from core.api import Arch, Choice, ChoiceModule, SearchSpace
from core.zoo.darts import ReLUConvBN, check_op_names  # ReLUConvBN: NAS-Bench-201's nor_conv_kxk

ALL_OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
"""The five NAS-Bench-201 ops, in the official order."""

DEFAULT_OPS = ("none", "skip_connect", "nor_conv_3x3")
"""The ops of this suite's tabular benchmark (3^6 = 729 cells)."""

NODES = 4
EDGES = tuple((j, i) for i in range(1, NODES) for j in range(i))
"""(from, to) of the six edges, in NAS-Bench-201's order: 0->1, 0->2, 1->2, 0->3, 1->3, 2->3."""


def edge_name(j: int, i: int) -> str:
    """The choice name of the edge from node j to node i."""
    return f"cell.e{j}{i}"


EDGE_NAMES = tuple(edge_name(j, i) for j, i in EDGES)


# ---------------------------------------------------------------------------
# Operations (official `cell_operations.py`)
# ---------------------------------------------------------------------------

class Zero(nn.Module):
    """The `none` op: no connection (a zero tensor of the input's shape)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul(0.0)


OPS = {
    "none": lambda C, affine: Zero(),
    "skip_connect": lambda C, affine: nn.Identity(),
    "nor_conv_1x1": lambda C, affine: ReLUConvBN(C, C, 1, 1, 0, affine),
    "nor_conv_3x3": lambda C, affine: ReLUConvBN(C, C, 3, 1, 1, affine),
    "avg_pool_3x3": lambda C, affine: nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False),
}
"""name -> (C, affine) -> module; every op keeps the shape (cells never change resolution)."""


class ResNetBasicBlock(nn.Module):
    """The residual reduction block between stages (official `ResNetBasicblock`, stride 2)."""

    def __init__(self, C_in: int, C_out: int, stride: int = 2, affine: bool = True):
        super().__init__()
        self.conv_a = ReLUConvBN(C_in, C_out, 3, stride, 1, affine)
        self.conv_b = ReLUConvBN(C_out, C_out, 3, 1, 1, affine)
        if stride == 2:
            self.downsample = nn.Sequential(nn.AvgPool2d(2, stride=2, padding=0),
                                            nn.Conv2d(C_in, C_out, 1, bias=False))
        elif C_in != C_out:
            self.downsample = ReLUConvBN(C_in, C_out, 1, 1, 0, affine)
        else:
            self.downsample = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(x) + self.conv_b(self.conv_a(x))


# ---------------------------------------------------------------------------
# Cells and networks
# ---------------------------------------------------------------------------

class Cell(nn.Module):
    """One fixed cell: `edges[k]` is the op module of edge `EDGES[k]`."""

    def __init__(self, ops: Sequence[str], C: int, affine: bool = True):
        super().__init__()
        self.edges = nn.ModuleList(OPS[op](C, affine) for op in ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes = [x]
        for i in range(1, NODES):
            nodes.append(sum(self.edges[k](nodes[j]) for k, (j, t) in enumerate(EDGES) if t == i))
        return nodes[-1]


class SearchCell(Cell):
    """A cell whose every edge is a `ChoiceModule` named `cell.e{j}{i}` holding all the ops."""

    def __init__(self, ops: Sequence[str], C: int, affine: bool = False):
        nn.Module.__init__(self)
        self.edges = nn.ModuleList(
            ChoiceModule(Choice(edge_name(j, i), tuple(ops)), [OPS[op](C, affine) for op in ops])
            for j, i in EDGES)


class CellNetwork(nn.Module):
    """NAS-Bench-201's `TinyNetwork` with one reduction: stem, N cells, residual block, N cells at 2C, head."""

    def __init__(self, make_cell, C: int = 8, N: int = 1, num_classes: int = 10, in_channels: int = 1,
                 affine: bool = True):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))
        layers: list[nn.Module] = [make_cell(C) for _ in range(N)]
        layers.append(ResNetBasicBlock(C, 2 * C, 2, affine))
        layers += [make_cell(2 * C) for _ in range(N)]
        self.cells = nn.ModuleList(layers)
        self.lastact = nn.Sequential(nn.BatchNorm2d(2 * C), nn.ReLU(inplace=True))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(2 * C, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for cell in self.cells:
            x = cell(x)
        x = self.global_pooling(self.lastact(x)).flatten(1)
        return self.classifier(x)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
    return value


class Cell201Space(SearchSpace):
    """NAS-Bench-201-style cells (Dong & Yang, ICLR 2020): one op per edge of a 4-node DAG.

    Every combination of ops is a distinct, valid arch (`size() == len(ops) ** 6`,
    729 by default); `canonical` is the identity. The default arch puts
    `nor_conv_3x3` on every edge (when available).
    """

    def __init__(self, C: int = 8, N: int = 1, num_classes: int = 10, in_channels: int = 1,
                 ops: list[str] | None = None):
        self.C = _positive_int("C", C)
        self.N = _positive_int("N", N)
        self.num_classes = _positive_int("num_classes", num_classes)
        self.in_channels = _positive_int("in_channels", in_channels)
        self.ops = check_op_names(ops, DEFAULT_OPS, OPS, need_besides_none=False)
        default = "nor_conv_3x3" if "nor_conv_3x3" in self.ops else self.ops[-1]
        super().__init__([Choice(name, self.ops, default=default) for name in EDGE_NAMES])

    def config(self) -> dict[str, Any]:
        """Settings that change the networks (the tabular benchmark checks them)."""
        return {"C": self.C, "N": self.N, "num_classes": self.num_classes, "in_channels": self.in_channels,
                "ops": list(self.ops)}

    def all_archs(self) -> list[Arch]:
        """Every arch of the space, in `itertools.product` order of the option indices."""
        return [self.from_indices(idx) for idx in itertools.product(range(len(self.ops)), repeat=len(EDGES))]

    # -- networks -----------------------------------------------------------------
    def build(self, arch: Mapping[str, Any], channel_divisor: float = 1, num_classes: int | None = None,
              **overrides: Any) -> CellNetwork:
        """The network of `arch` (an Arch or a NAS-Bench-201 string); `channel_divisor` shrinks C (EcoNAS)."""
        if isinstance(arch, str):
            arch = from_str(arch)
        arch = self.check(arch)
        if channel_divisor <= 0:
            raise ValueError(f"channel_divisor: expected a positive number, got {channel_divisor!r}")
        settings = dict(C=max(1, int(self.C / channel_divisor)), N=self.N,
                        num_classes=num_classes or self.num_classes, in_channels=self.in_channels)
        unknown = set(overrides) - set(settings)
        if unknown:
            raise ValueError(f"build: unknown overrides {sorted(unknown)}; known: {sorted(settings)}")
        settings.update(overrides)
        ops = [arch[name] for name in EDGE_NAMES]
        return CellNetwork(lambda C: Cell(ops, C), **settings)

    def supernet(self, C: int | None = None, N: int | None = None, num_classes: int | None = None) -> CellNetwork:
        """Every op on every edge, as `ChoiceModule`s with non-affine BN (NAS-Bench-201's search cells).

        Each cell has its own weights; the ChoiceModules of an edge share its
        choice name in every cell, so `core.api.activate(net, arch)` sets
        them all, and share one logits tensor per edge (one cell genotype, as
        in DARTS on NAS-Bench-201). Starts in single-path mode on the
        default arch; call `core.api.set_mixture` for relaxed search.
        """
        ops = self.ops
        net = CellNetwork(lambda width: SearchCell(ops, width), C=C or self.C, N=N or self.N,
                          num_classes=num_classes or self.num_classes, in_channels=self.in_channels)
        shared: dict[str, nn.Parameter] = {}
        for m in net.modules():
            if isinstance(m, ChoiceModule):
                m.logits = shared.setdefault(m.name, nn.Parameter(1e-3 * torch.randn(len(m.choice))))
                m.activate(self.choice(m.name).default)
        return net

    # -- graph and string forms -----------------------------------------------------
    def graph(self, arch: Mapping[str, Any], prune: bool = False) -> tuple[np.ndarray, list[str]]:
        """The cell as a node-labelled DAG (ops on nodes), for graph predictors (GCN, auto-encoders).

        8 nodes: `input`, one node per edge in `EDGES` order labelled with its
        op, `output`. adjacency[a, b] = 1 when a feeds b: the input feeds the
        edges leaving node 0, an edge into node i feeds the edges leaving node
        i, the edges into node 3 feed the output. With `prune`, `none` nodes
        keep their label but lose all their links (they carry nothing), so
        every graph keeps 8 nodes.
        """
        arch = self.check(arch)
        ops = [arch[name] for name in EDGE_NAMES]
        n = len(EDGES) + 2
        adj = np.zeros((n, n), dtype=np.float32)
        for k, (j, i) in enumerate(EDGES):
            if j == 0:
                adj[0, k + 1] = 1
            if i == NODES - 1:
                adj[k + 1, n - 1] = 1
            for m, (j2, _) in enumerate(EDGES):
                if j2 == i:
                    adj[k + 1, m + 1] = 1
        if prune:
            for k, op in enumerate(ops):
                if op == "none":
                    adj[k + 1, :] = 0
                    adj[:, k + 1] = 0
        return adj, ["input", *ops, "output"]


def to_str(arch: Mapping[str, Any]) -> str:
    """NAS-Bench-201's string form: `|op~0|+|op~0|op~1|+|op~0|op~1|op~2|`."""
    return "+".join("|" + "|".join(f"{arch[edge_name(j, i)]}~{j}" for j in range(i)) + "|"
                    for i in range(1, NODES))


def from_str(text: str) -> Arch:
    """The Arch of a NAS-Bench-201 string (as `to_str` writes it)."""
    nodes = text.strip().split("+")
    if len(nodes) != NODES - 1:
        raise ValueError(f"expected {NODES - 1} '+'-separated nodes in a NAS-Bench-201 string, got {text!r}")
    values = {}
    for i, node in enumerate(nodes, start=1):
        parts = [p for p in node.split("|") if p]
        if len(parts) != i:
            raise ValueError(f"node {i} of {text!r} should have {i} edges, got {parts}")
        for part in parts:
            op, _, j = part.rpartition("~")
            if not op or not j.isdigit() or int(j) >= i:
                raise ValueError(f"bad edge {part!r} in {text!r}: expected 'op~j' with j < {i}")
            values[edge_name(int(j), i)] = op
    return Arch(values)


SPACES.register("cell201", Cell201Space)

__all__ = ["ALL_OPS", "DEFAULT_OPS", "EDGES", "EDGE_NAMES", "OPS", "Zero", "ReLUConvBN", "ResNetBasicBlock", "Cell",
           "SearchCell", "CellNetwork", "Cell201Space", "edge_name", "to_str", "from_str"]
