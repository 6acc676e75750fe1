"""The DARTS cell search space.

Liu, Simonyan, Yang. "DARTS: Differentiable Architecture Search", ICLR 2019
(arXiv 1806.09055); official code github.com/quark0/darts (`cnn/operations.py`,
`cnn/genotypes.py`, `cnn/model.py`, `cnn/model_search.py`).

A network stacks a normal and a reduction cell. Each cell has two inputs
(states 0 and 1: the outputs of the two previous cells) and `steps` (4)
intermediate nodes; node i sums two edges, each an op applied to one earlier
state (0 .. i+1). The cell output concatenates all intermediate nodes.

An `Arch` of this space names, per cell type c in {normal, reduce}, node i and
edge j in {0, 1}:

    c.node{i}.in{j}.input   index of the earlier state the edge reads
    c.node{i}.in{j}.op      one of the op names (default: the 8 DARTS ops)

which is the official `Genotype` with the per-node pairs spelled out; the two
inputs of a node must differ, as in every genotype DARTS derives. Module paths
of the evaluation network follow the official code (`cells.3._ops.1.op.2`,
`auxiliary_head.features.2`, ...) so state_dict keys line up with it.
"""

from __future__ import annotations

import ast
import math
from collections import namedtuple
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.engine.registry import SPACES
from core.space import Arch, Choice, ChoiceModule, SearchSpace, set_mixture
from core.space.modules import SPARSE_RELAXATIONS, choice_modules

PRIMITIVES = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
              "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")
CELL_TYPES = ("normal", "reduce")


# ---------------------------------------------------------------------------
# Operations (official `cnn/operations.py`)
# ---------------------------------------------------------------------------

class Zero(nn.Module):
    """The `none` op: no connection. Strided so a reduction edge has the right output size."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, ::self.stride, ::self.stride].mul(0.0)


class ReLUConvBN(nn.Module):
    """ReLU -> conv -> BN; the cells' 1x1 preprocessing."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int, affine: bool = True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(C_out, affine=affine))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class DilConv(nn.Module):
    """ReLU -> dilated depthwise conv -> pointwise conv -> BN."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int, dilation: int,
                 affine: bool = True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride=stride, padding=padding, dilation=dilation,
                      groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, 1, bias=False),
            nn.BatchNorm2d(C_out, affine=affine))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class SepConv(nn.Module):
    """Two stacked ReLU -> depthwise -> pointwise -> BN blocks; only the first one strides."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int, affine: bool = True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride=stride, padding=padding, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_in, 1, bias=False),
            nn.BatchNorm2d(C_in, affine=affine),
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride=1, padding=padding, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, 1, bias=False),
            nn.BatchNorm2d(C_out, affine=affine))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class FactorizedReduce(nn.Module):
    """Halve the resolution with two 1x1 stride-2 convs on pixel grids offset by one.

    The official op crops `x[:, :, 1:, 1:]`, which breaks on odd sizes; we pad
    one zero row/column first. For even sizes the pad is never sampled, so
    the result equals the official op's.
    """

    def __init__(self, C_in: int, C_out: int, affine: bool = True):
        super().__init__()
        if C_out % 2:
            raise ValueError(f"FactorizedReduce needs an even number of output channels, got {C_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        shifted = F.pad(x, (0, 1, 0, 1))[:, :, 1:, 1:]
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(shifted)], dim=1))


OPS = {
    "none": lambda C, stride, affine: Zero(stride),
    "avg_pool_3x3": lambda C, stride, affine: nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False),
    "max_pool_3x3": lambda C, stride, affine: nn.MaxPool2d(3, stride=stride, padding=1),
    "skip_connect": lambda C, stride, affine: nn.Identity() if stride == 1 else FactorizedReduce(C, C, affine),
    "sep_conv_3x3": lambda C, stride, affine: SepConv(C, C, 3, stride, 1, affine),
    "sep_conv_5x5": lambda C, stride, affine: SepConv(C, C, 5, stride, 2, affine),
    "dil_conv_3x3": lambda C, stride, affine: DilConv(C, C, 3, stride, 2, 2, affine),
    "dil_conv_5x5": lambda C, stride, affine: DilConv(C, C, 5, stride, 4, 2, affine),
}
"""name -> (C, stride, affine) -> module: the official `OPS` restricted to the 8 DARTS primitives."""


def make_op(name: str, C: int, stride: int, search: bool = False) -> nn.Module:
    """An op as the evaluation network (affine BN) or the search network (non-affine BN,
    pools followed by a BN, as `MixedOp` does in `model_search.py`) builds it."""
    op = OPS[name](C, stride, not search)
    if search and "pool" in name:
        op = nn.Sequential(op, nn.BatchNorm2d(C, affine=False))
    return op


def drop_path(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """Zero whole samples with probability `drop_prob` and rescale the rest (official `utils.drop_path`)."""
    if drop_prob <= 0.0:
        return x
    keep = 1.0 - drop_prob
    mask = torch.empty(x.size(0), 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(keep)
    return x * mask / keep


# ---------------------------------------------------------------------------
# Genotypes (official `cnn/genotypes.py`) and their Arch form
# ---------------------------------------------------------------------------

Genotype = namedtuple("Genotype", "normal normal_concat reduce reduce_concat")

DARTS_V1 = Genotype(
    normal=[("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 0), ("sep_conv_3x3", 1),
            ("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 2)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
            ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("avg_pool_3x3", 0)],
    reduce_concat=[2, 3, 4, 5])
"""First-order DARTS cell (official `genotypes.DARTS_V1`)."""

DARTS_V2 = Genotype(
    normal=[("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
            ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)],
    reduce_concat=[2, 3, 4, 5])
"""Second-order DARTS cell, the paper's CIFAR-10 result (official `genotypes.DARTS_V2`)."""

DARTS = DARTS_V2
GENOTYPES = {"DARTS_V1": DARTS_V1, "DARTS_V2": DARTS_V2, "DARTS": DARTS_V2}


def _edges(value: Any, field: str) -> list[tuple[str, int]]:
    try:
        edges = [(str(op), int(index)) for op, index in value]
    except (TypeError, ValueError):
        raise ValueError(f"genotype {field}: expected a list of (op, input index) pairs, got {value!r}") from None
    if not edges or len(edges) % 2:
        raise ValueError(f"genotype {field}: expected two (op, input) pairs per node, got {len(edges)} pairs")
    return edges


def make_genotype(normal, normal_concat, reduce, reduce_concat) -> Genotype:
    """A Genotype with lists of `(op, index)` tuples and list concats (ranges and JSON lists normalised)."""
    return Genotype(_edges(normal, "normal"), [int(i) for i in normal_concat],
                    _edges(reduce, "reduce"), [int(i) for i in reduce_concat])


def _literal(node: ast.expr) -> Any:
    """A Python literal, or `range(a[, b[, c]])` with literal ints (the form `genotype()` prints)."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range" \
            and not node.keywords:
        return list(range(*(ast.literal_eval(a) for a in node.args)))
    return ast.literal_eval(node)


def parse_genotype(text: str) -> Genotype:
    """Parse `"Genotype(normal=[('sep_conv_3x3', 0), ...], normal_concat=range(2, 6), ...)"` without eval."""
    try:
        call = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as e:
        raise ValueError(f"not a genotype string: {text!r} ({e.msg})") from None
    func = call.func if isinstance(call, ast.Call) else None
    name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
    if name != "Genotype":
        raise ValueError(f"expected 'Genotype(normal=..., normal_concat=..., reduce=..., reduce_concat=...)', "
                         f"got {text!r}")
    try:
        values = dict(zip(Genotype._fields, (_literal(a) for a in call.args)))
        values.update({kw.arg: _literal(kw.value) for kw in call.keywords})
    except ValueError:
        raise ValueError(f"genotype string holds something other than literals and range(): {text!r}") from None
    missing = [f for f in Genotype._fields if f not in values]
    unknown = [f for f in values if f not in Genotype._fields]
    if missing or unknown:
        raise ValueError(f"genotype string: missing fields {missing}, unknown fields {unknown}")
    return make_genotype(**values)


def to_genotype(value: Any) -> Genotype:
    """Accept what a config may hold: a Genotype, a known name (`DARTS_V2`), its string form, or a mapping."""
    if isinstance(value, str):
        return GENOTYPES[value] if value in GENOTYPES else parse_genotype(value)
    if isinstance(value, Mapping):
        return make_genotype(**value)
    if isinstance(value, Sequence) and len(value) == 4:
        return make_genotype(*value)
    raise ValueError(f"cannot read a genotype from {value!r}")


def _name(cell: str, node: int, edge: int, what: str) -> str:
    return f"{cell}.node{node}.in{edge}.{what}"


def genotype_to_arch(genotype: Any) -> Arch:
    """The Arch of a genotype; this space concatenates every intermediate node, as DARTS does."""
    genotype = to_genotype(genotype)
    values: dict[str, Any] = {}
    for cell in CELL_TYPES:
        edges = getattr(genotype, cell)
        steps = len(edges) // 2
        concat = list(getattr(genotype, f"{cell}_concat"))
        if concat != list(range(2, steps + 2)):
            raise ValueError(f"genotype {cell}_concat={concat}: this space concatenates all intermediate nodes, "
                             f"{list(range(2, steps + 2))}")
        for k, (op, index) in enumerate(edges):
            values[_name(cell, k // 2, k % 2, "op")] = op
            values[_name(cell, k // 2, k % 2, "input")] = index
    return Arch(values)


def _steps(arch: Mapping[str, Any], cell: str) -> int:
    steps = 0
    while _name(cell, steps, 0, "op") in arch:
        steps += 1
    if not steps:
        raise ValueError(f"arch has no {cell} cell choices (expected names like {_name(cell, 0, 0, 'op')!r})")
    return steps


def arch_to_genotype(arch: Mapping[str, Any]) -> Genotype:
    """The official Genotype of an Arch (concat lists like `DARTS_V2`'s)."""
    fields = {}
    for cell in CELL_TYPES:
        steps = _steps(arch, cell)
        fields[cell] = [(arch[_name(cell, i, j, "op")], arch[_name(cell, i, j, "input")])
                        for i in range(steps) for j in (0, 1)]
        fields[f"{cell}_concat"] = list(range(2, steps + 2))
    return Genotype(**fields)


# ---------------------------------------------------------------------------
# Evaluation network (official `cnn/model.py`: Cell, AuxiliaryHeadCIFAR, NetworkCIFAR)
# ---------------------------------------------------------------------------

class Cell(nn.Module):
    """A discrete cell: node i = op(state a) + op(state b); output = concat of the nodes."""

    def __init__(self, edges: Sequence[tuple[str, int]], concat: Sequence[int], C_prev_prev: int, C_prev: int,
                 C: int, reduction: bool, reduction_prev: bool):
        super().__init__()
        self.reduction = reduction
        self.preprocess0 = FactorizedReduce(C_prev_prev, C) if reduction_prev else ReLUConvBN(C_prev_prev, C, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0)
        self._steps = len(edges) // 2
        self._concat = list(concat)
        self.multiplier = len(self._concat)
        self._indices = [index for _, index in edges]
        self._ops = nn.ModuleList(make_op(op, C, 2 if reduction and index < 2 else 1) for op, index in edges)

    def _edge(self, k: int, states: list[torch.Tensor], drop_prob: float) -> torch.Tensor:
        op = self._ops[k]
        h = op(states[self._indices[k]])
        if self.training and drop_prob > 0.0 and not isinstance(op, nn.Identity):
            h = drop_path(h, drop_prob)
        return h

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float = 0.0) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for i in range(self._steps):
            states.append(self._edge(2 * i, states, drop_prob) + self._edge(2 * i + 1, states, drop_prob))
        return torch.cat([states[i] for i in self._concat], dim=1)


class AuxiliaryHeadCIFAR(nn.Module):
    """Auxiliary classifier on the 8x8 maps after the second reduction (official layers).

    The official head assumes 8x8 input (5x5/3 pooling -> 2x2 -> 2x2 conv -> 1x1).
    For smaller maps we skip the pooling and resize to 2x2 adaptively, so small
    images work; on 8x8 the computation is the official one.
    """

    def __init__(self, C: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.AvgPool2d(5, stride=3, padding=0, count_include_pad=False),
            nn.Conv2d(C, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
            nn.BatchNorm2d(768),
            nn.ReLU(inplace=True))
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features[0](x)
        if min(x.shape[-2:]) >= 5:
            x = self.features[1](x)
        if tuple(x.shape[-2:]) != (2, 2):
            x = F.adaptive_avg_pool2d(x, 2)
        x = self.features[2:](x)
        return self.classifier(x.flatten(1))


def _cell_plan(layers: int) -> list[bool]:
    """Which cells reduce: those at layers//3 and 2*layers//3."""
    return [i in (layers // 3, 2 * layers // 3) for i in range(layers)]


class NetworkCIFAR(nn.Module):
    """The DARTS evaluation network: stem, `layers` cells, optional auxiliary head, pooling, linear.

    `forward` returns the logits, except in training mode with the auxiliary
    head, where it returns `(logits, logits_aux)` as the official code does
    (the official code returns `(logits, None)` otherwise; we return bare logits).
    Set `drop_path_prob` between epochs (the official schedule ramps it linearly).
    """

    def __init__(self, genotype: Genotype, C: int = 36, num_classes: int = 10, layers: int = 20,
                 auxiliary: bool = False, drop_path_prob: float = 0.0, in_channels: int = 3,
                 stem_multiplier: int = 3):
        super().__init__()
        self._layers = layers
        self._auxiliary = auxiliary
        self.drop_path_prob = drop_path_prob
        C_curr = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C_curr, 3, padding=1, bias=False), nn.BatchNorm2d(C_curr))
        C_prev_prev, C_prev, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        C_to_auxiliary = C_prev
        for i, reduction in enumerate(_cell_plan(layers)):
            C_curr = C_curr * 2 if reduction else C_curr
            edges, concat = (genotype.reduce, genotype.reduce_concat) if reduction else \
                (genotype.normal, genotype.normal_concat)
            cell = Cell(edges, concat, C_prev_prev, C_prev, C_curr, reduction, reduction_prev)
            self.cells.append(cell)
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, cell.multiplier * C_curr
            if i == 2 * layers // 3:
                C_to_auxiliary = C_prev
        if auxiliary:
            self.auxiliary_head = AuxiliaryHeadCIFAR(C_to_auxiliary, num_classes)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

    def forward(self, x: torch.Tensor):
        logits_aux = None
        s0 = s1 = self.stem(x)
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == 2 * self._layers // 3 and self._auxiliary and self.training:
                logits_aux = self.auxiliary_head(s1)
        logits = self.classifier(self.global_pooling(s1).flatten(1))
        return (logits, logits_aux) if logits_aux is not None else logits


def count_parameters(model: nn.Module) -> int:
    """Parameters outside the auxiliary head, as the official `utils.count_parameters_in_MB` counts (x 1e6)."""
    return sum(p.numel() for name, p in model.named_parameters() if "auxiliary" not in name)


# ---------------------------------------------------------------------------
# Search network (official `cnn/model_search.py`: MixedOp, Cell, Network)
# ---------------------------------------------------------------------------

def _edge_list(steps: int) -> list[tuple[int, int]]:
    """(node, input state) of every edge, in the official order: node 0's two, node 1's three, ..."""
    return [(i, j) for i in range(steps) for j in range(i + 2)]


class SearchCell(nn.Module):
    """A cell holding every op on every edge; each edge is a `ChoiceModule` named `{cell}.edge{k}`.

    Spaces with another op set (PocketNet's face ops) subclass it and set `op_factory`
    (`(op, C, stride, search=True) -> nn.Module`) and the two input preprocessors.
    """

    op_factory = staticmethod(make_op)
    reduce_preprocess = FactorizedReduce   # (C_in, C_out, affine=False), for a stride-2 previous cell
    conv_preprocess = ReLUConvBN           # (C_in, C_out, kernel, stride, padding, affine=False)

    def __init__(self, cell_type: str, ops: Sequence[str], steps: int, C_prev_prev: int, C_prev: int, C: int,
                 reduction: bool, reduction_prev: bool):
        super().__init__()
        self.reduction = reduction
        self.preprocess0 = self.reduce_preprocess(C_prev_prev, C, affine=False) if reduction_prev else \
            self.conv_preprocess(C_prev_prev, C, 1, 1, 0, affine=False)
        self.preprocess1 = self.conv_preprocess(C_prev, C, 1, 1, 0, affine=False)
        self._steps = steps
        self._ops = nn.ModuleList()
        for k, (_, j) in enumerate(_edge_list(steps)):
            stride = 2 if reduction and j < 2 else 1
            choice = Choice(f"{cell_type}.edge{k}", tuple(ops))
            self._ops.append(ChoiceModule(choice, [self.op_factory(op, C, stride, search=True) for op in ops]))

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        fused = getattr(self, "fused", None)
        offset = 0
        for _ in range(self._steps):
            states.append(sum(self._edge(offset + j, h, fused) for j, h in enumerate(states)))
            offset += len(states) - 1
        return torch.cat(states[2:], dim=1)

    def _edge(self, k: int, h: torch.Tensor, fused: list | None) -> torch.Tensor:
        edge = self._ops[k]
        if fused is not None and edge.mode == "mixture" and edge.relaxation not in SPARSE_RELAXATIONS:
            return fused[k](h)
        return edge(h)


# ---------------------------------------------------------------------------
# Fused edges: the candidates of an edge as a few grouped convolutions
# ---------------------------------------------------------------------------

_PAIRS = (("sep_conv_3x3", "sep_conv_5x5"), ("dil_conv_3x3", "dil_conv_5x5"))


class _JointBatchNorm:
    """Two BatchNorms of the same width run as one over the concatenated channels.

    Their running statistics become views of one joint buffer, so a single
    `F.batch_norm` updates both modules' buffers (state_dict keys and values
    unchanged). When a module's buffers were replaced (the network moved to
    another device), the joint buffer is rebuilt from their current values.
    """

    def __init__(self, bns: Sequence[nn.BatchNorm2d]):
        if len({(b.num_features, b.eps, b.momentum, b.affine) for b in bns}) != 1 or bns[0].affine:
            raise ValueError("only identical non-affine BatchNorms can be fused")
        self.bns = list(bns)
        self._build()

    def _build(self) -> None:
        self.mean = torch.cat([b.running_mean for b in self.bns])
        self.var = torch.cat([b.running_var for b in self.bns])
        self.count = torch.stack([b.num_batches_tracked for b in self.bns])
        n = self.bns[0].num_features
        for i, b in enumerate(self.bns):
            b._buffers["running_mean"] = self.mean[i * n:(i + 1) * n]
            b._buffers["running_var"] = self.var[i * n:(i + 1) * n]
            b._buffers["num_batches_tracked"] = self.count[i]
        self._views = [(b.running_mean, b.running_var, b.num_batches_tracked) for b in self.bns]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if any(b.running_mean is not v[0] or b.running_var is not v[1] or b.num_batches_tracked is not v[2]
               for b, v in zip(self.bns, self._views)):
            self._build()
        bn = self.bns[0]
        factor = 0.0
        if bn.training:
            self.count.add_(1)
            factor = bn.momentum if bn.momentum is not None else 1.0 / float(self.count[0])
        return F.batch_norm(x, self.mean, self.var, None, None, bn.training, factor, bn.eps)


class _FusedPair:
    """Two ReLU -> depthwise -> pointwise -> BN chains (SepConv has two such blocks, DilConv one) whose
    kernel sizes differ (3 and 5): the 3x3 depthwise kernels are zero-padded to 5x5, so both ops run as
    one depthwise conv over the input seen twice and one pointwise conv in two groups."""

    def __init__(self, small: nn.Module, large: nn.Module):
        self.small, self.large = small.op, large.op
        blocks = 2 if isinstance(small, SepConv) else 1  # (depthwise, pointwise, BN) positions in `.op`
        self.blocks = [(4 * b + 1, 4 * b + 2, 4 * b + 3) for b in range(blocks)]
        self.bns = [_JointBatchNorm([self.small[bn], self.large[bn]]) for _, _, bn in self.blocks]

    def __call__(self, doubled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`doubled`: ReLU(x) concatenated with itself along channels."""
        h = doubled
        for i, ((dw, pw, _), bn) in enumerate(zip(self.blocks, self.bns)):
            if i:
                h = F.relu(h)
            a, b = self.small[dw], self.large[dw]
            grow = (b.kernel_size[0] - a.kernel_size[0]) // 2
            kernel = torch.cat([F.pad(a.weight, (grow,) * 4), b.weight])
            h = F.conv2d(h, kernel, None, b.stride, b.padding, b.dilation, groups=kernel.shape[0])
            h = F.conv2d(h, torch.cat([self.small[pw].weight, self.large[pw].weight]), groups=2)
            h = bn(h)
        return h.chunk(2, dim=1)


class FusedMixture:
    """The mixture output of one DARTS edge with fewer, larger kernels: one ReLU for every conv op, the
    separable and the dilated pairs as grouped convs (`_FusedPair`), `none` skipped (it adds zero), and
    the weighted sum of the candidates as one op. The edge's modules keep their parameters."""

    def __init__(self, edge: ChoiceModule):
        self.edge = edge
        names = list(edge.choice.options)
        modules = dict(zip(names, edge.candidates))
        self.pairs = [(names.index(a), names.index(b), _FusedPair(modules[a], modules[b]))
                      for a, b in _PAIRS if a in modules and b in modules]
        paired = {i for i, j, _ in self.pairs} | {j for _, j, _ in self.pairs}
        self.single = [i for i, n in enumerate(names) if i not in paired and n != "none"]
        self.order = sorted(paired | set(self.single))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.edge.weights()
        outs: dict[int, torch.Tensor] = {i: self.edge.candidates[i](x) for i in self.single}
        if self.pairs:
            doubled = F.relu(x).repeat(1, 2, 1, 1)
            for i, j, pair in self.pairs:
                outs[i], outs[j] = pair(doubled)
        stacked = torch.stack([outs[i] for i in self.order])
        w = weights[self.order].to(stacked.dtype)
        return (stacked * w.view(-1, *([1] * (stacked.dim() - 1)))).sum(0)


def fuse_edges(supernet: nn.Module) -> int:
    """Run the mixture of every edge of the DARTS search cells in `supernet` as a `FusedMixture` (same
    function and parameters, fewer kernel launches); returns the number of edges fused. Cells with
    another op set (PocketNet's) are left as they are. Single-path mode and sparse relaxations keep
    the plain `ChoiceModule` forward."""
    count = 0
    for cell in supernet.modules():
        if isinstance(cell, SearchCell) and type(cell).op_factory is SearchCell.op_factory and \
                all(set(e.choice.options) <= set(PRIMITIVES) for e in cell._ops):
            cell.fused = [FusedMixture(edge) for edge in cell._ops]
            count += len(cell.fused)
    return count


class SearchNetwork(nn.Module):
    """The DARTS supernet. All normal cells share one logits vector per edge (the official
    `alphas_normal` row), and so do all reduction cells; logits start at 1e-3 * N(0, 1)
    as in `_initialize_alphas`. Mixture (softmax) mode on creation; `activate` for single paths."""

    def __init__(self, ops: Sequence[str], C: int = 16, num_classes: int = 10, layers: int = 8, steps: int = 4,
                 in_channels: int = 3, stem_multiplier: int = 3):
        super().__init__()
        self.steps = steps
        C_curr = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C_curr, 3, padding=1, bias=False), nn.BatchNorm2d(C_curr))
        C_prev_prev, C_prev, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        for reduction in _cell_plan(layers):
            C_curr = C_curr * 2 if reduction else C_curr
            self.cells.append(SearchCell("reduce" if reduction else "normal", ops, steps, C_prev_prev, C_prev,
                                         C_curr, reduction, reduction_prev))
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, steps * C_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)
        self._share_logits()
        set_mixture(self)

    def _share_logits(self) -> None:
        shared: dict[str, nn.Parameter] = {}
        for m in choice_modules(self):
            if m.name not in shared:
                shared[m.name] = nn.Parameter(1e-3 * torch.randn(len(m.choice)))
            m.logits = shared[m.name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return self.classifier(self.global_pooling(s1).flatten(1))


def _edge_weights(supernet: nn.Module, cell: str) -> list[torch.Tensor]:
    """Softmax weights of each `{cell}.edge{k}`, in edge order (one module per name: the logits are shared)."""
    by_name = {m.name: m for m in choice_modules(supernet)}
    weights = []
    while f"{cell}.edge{len(weights)}" in by_name:
        m = by_name[f"{cell}.edge{len(weights)}"]
        weights.append(F.softmax(m.logits.detach().float().cpu(), dim=-1))
    if not weights:
        raise ValueError(f"supernet has no ChoiceModule named {cell}.edge0")
    return weights


def _steps_for_edges(n_edges: int) -> int:
    steps = 0
    while len(_edge_list(steps)) < n_edges:
        steps += 1
    if len(_edge_list(steps)) != n_edges:
        raise ValueError(f"{n_edges} edges do not form a DARTS cell (2 + 3 + ... edges per node)")
    return steps


def _parse_cell(weights: list[torch.Tensor], ops: Sequence[str]) -> list[tuple[str, int]]:
    """The DARTS rule: per node keep the 2 inputs whose strongest non-`none` op weighs most,
    each with that op (ties go to the lower index, as in the official `genotype()`)."""
    keep = [k for k, op in enumerate(ops) if op != "none"]
    gene, offset = [], 0
    for i in range(_steps_for_edges(len(weights))):
        W = weights[offset:offset + i + 2]
        strength = [max(float(w[k]) for k in keep) for w in W]
        for j in sorted(range(i + 2), key=lambda j: -strength[j])[:2]:
            best = max(keep, key=lambda k: (float(W[j][k]), -k))
            gene.append((ops[best], j))
        offset += i + 2
    return gene


def derive_genotype(supernet: nn.Module) -> Genotype:
    """The discrete cell DARTS derives from a supernet's edge logits (Liu et al. 2019, sec. 2.4)."""
    fields = {}
    for cell in CELL_TYPES:
        weights = _edge_weights(supernet, cell)
        ops = next(m.choice.options for m in choice_modules(supernet) if m.name == f"{cell}.edge0")
        fields[cell] = _parse_cell(weights, ops)
        fields[f"{cell}_concat"] = list(range(2, _steps_for_edges(len(weights)) + 2))
    return Genotype(**fields)


# ---------------------------------------------------------------------------
# The space
# ---------------------------------------------------------------------------

def check_op_names(ops: Sequence[str] | None, default: Sequence[str], known: Mapping | Sequence[str],
                   need_besides_none: bool = True, key: str = "ops") -> tuple[str, ...]:
    """A cell space's op list from a config: `default` when None; else distinct names from `known`
    (and, for cells that sum their edges, at least one besides `none`). Errors name `key` and the options."""
    if ops is None:
        return tuple(default)
    listed = list(default) + [op for op in known if op not in default]
    if isinstance(ops, str) or not ops:
        raise ValueError(f"{key}: expected a non-empty list of op names from {listed}, got {ops!r}")
    unknown = [op for op in ops if op not in known]
    if unknown:
        raise ValueError(f"{key}: unknown op(s) {unknown}; known: {listed}")
    if len(set(ops)) != len(ops):
        raise ValueError(f"{key}: repeated op names in {list(ops)}")
    if need_besides_none and set(ops) == {"none"}:
        raise ValueError(f"{key}: need at least one op besides 'none'")
    return tuple(ops)


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return value


class DartsSpace(SearchSpace):
    """DARTS cells: for each of the normal and reduction cell, each node's two (input, op) edges.

    `build` gives the official CIFAR evaluation network (`NetworkCIFAR`);
    `supernet` the official search network. Archs that only swap a node's two
    edges build the same function; they are kept distinct here (as in the
    official genotypes, where the order is whatever the search produced), so
    `size()` counts ordered pairs. `steps` (default 4, the paper's) sets the
    number of intermediate nodes; CSNAS, for one, uses 5.
    """

    def __init__(self, C: int = 36, layers: int = 20, num_classes: int = 10, in_channels: int = 3,
                 auxiliary: bool = False, drop_path_prob: float = 0.0, stem_multiplier: int = 3,
                 ops: list[str] | None = None, steps: int = 4):
        self.C = _positive_int("C", C)
        self.layers = _positive_int("layers", layers)
        self.num_classes = _positive_int("num_classes", num_classes)
        self.in_channels = _positive_int("in_channels", in_channels)
        self.stem_multiplier = _positive_int("stem_multiplier", stem_multiplier)
        self.steps = _positive_int("steps", steps)
        if not 0.0 <= drop_path_prob < 1.0:
            raise ValueError(f"drop_path_prob: expected a probability in [0, 1), got {drop_path_prob!r}")
        self.auxiliary = bool(auxiliary)
        self.drop_path_prob = float(drop_path_prob)
        self.ops = check_op_names(ops, PRIMITIVES, OPS)
        super().__init__(self._make_choices())

    def _make_choices(self) -> list[Choice]:
        choices = []
        for cell in CELL_TYPES:
            for i in range(self.steps):
                for j in (0, 1):
                    choices.append(Choice(_name(cell, i, j, "input"), tuple(range(i + 2)), default=j))
                    choices.append(Choice(_name(cell, i, j, "op"), self.ops))
        return choices

    def constraint_error(self, arch: Arch) -> str | None:
        for cell in CELL_TYPES:
            for i in range(self.steps):
                a, b = arch[_name(cell, i, 0, "input")], arch[_name(cell, i, 1, "input")]
                if a == b:
                    return (f"{_name(cell, i, 0, 'input')} and {_name(cell, i, 1, 'input')} are both {a}: "
                            f"a node's two inputs must differ")
        return None

    def size(self) -> int:
        """Ordered pairs of distinct inputs times ops per edge, per node; both cells independent."""
        n_ops = len(self.ops)
        per_cell = math.prod((i + 2) * (i + 1) * n_ops ** 2 for i in range(self.steps))
        return per_cell ** 2

    def build(self, arch: Mapping[str, Any], channel_divisor: float = 1, num_classes: int | None = None,
              **overrides: Any) -> NetworkCIFAR:
        """The evaluation network of `arch` (an Arch, or a genotype in any form `to_genotype` reads);
        `channel_divisor` shrinks C for cheap proxies (EcoNAS)."""
        if not isinstance(arch, Mapping) or set(arch) == set(Genotype._fields):
            arch = genotype_to_arch(arch)
        genotype = arch_to_genotype(self.check(arch))
        if channel_divisor <= 0:
            raise ValueError(f"channel_divisor: expected a positive number, got {channel_divisor!r}")
        settings = dict(C=max(1, int(self.C / channel_divisor)), num_classes=num_classes or self.num_classes,
                        layers=self.layers, auxiliary=self.auxiliary, drop_path_prob=self.drop_path_prob,
                        in_channels=self.in_channels, stem_multiplier=self.stem_multiplier)
        unknown = set(overrides) - set(settings)
        if unknown:
            raise ValueError(f"build: unknown overrides {sorted(unknown)}; known: {sorted(settings)}")
        settings.update(overrides)
        return NetworkCIFAR(genotype, **settings)

    def supernet(self, C: int = 16, layers: int = 8, num_classes: int | None = None) -> SearchNetwork:
        """The official search network; defaults are `train_search.py`'s (C=16, 8 cells)."""
        return SearchNetwork(self.ops, C=C, num_classes=num_classes or self.num_classes, layers=layers,
                             steps=self.steps, in_channels=self.in_channels, stem_multiplier=self.stem_multiplier)

    def supernet_arch(self, arch: Mapping[str, Any]) -> Arch:
        """The supernet's edge choices for `arch` (unused edges `none`), for `core.space.activate`."""
        if "none" not in self.ops:
            raise ValueError("supernet_arch needs 'none' among the ops to switch unused edges off")
        arch = self.check(arch)
        values = {}
        for cell in CELL_TYPES:
            chosen = {(i, arch[_name(cell, i, j, "input")]): arch[_name(cell, i, j, "op")]
                      for i in range(self.steps) for j in (0, 1)}
            for k, edge in enumerate(_edge_list(self.steps)):
                values[f"{cell}.edge{k}"] = chosen.get(edge, "none")
        return Arch(values)

    def derive(self, supernet: nn.Module) -> Arch:
        """The arch DARTS derives from a trained supernet."""
        return self.check(genotype_to_arch(derive_genotype(supernet)))


SPACES.register("darts", DartsSpace)

__all__ = ["PRIMITIVES", "OPS", "Zero", "ReLUConvBN", "SepConv", "DilConv", "FactorizedReduce", "make_op",
           "drop_path", "Genotype", "DARTS_V1", "DARTS_V2", "DARTS", "GENOTYPES", "make_genotype", "parse_genotype",
           "to_genotype", "genotype_to_arch", "arch_to_genotype", "Cell", "AuxiliaryHeadCIFAR", "NetworkCIFAR",
           "count_parameters", "SearchCell", "SearchNetwork", "derive_genotype", "DartsSpace", "FusedMixture",
           "fuse_edges"]
