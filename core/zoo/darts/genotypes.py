"""DARTS genotypes (official `cnn/genotypes.py`) and their Arch form."""

from __future__ import annotations

import ast
from collections import namedtuple
from collections.abc import Mapping, Sequence
from typing import Any


from core.api import Arch
from core.zoo.darts.ops import CELL_TYPES



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


def choice_name(cell: str, node: int, edge: int, what: str) -> str:
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
            values[choice_name(cell, k // 2, k % 2, "op")] = op
            values[choice_name(cell, k // 2, k % 2, "input")] = index
    return Arch(values)


def _steps(arch: Mapping[str, Any], cell: str) -> int:
    steps = 0
    while choice_name(cell, steps, 0, "op") in arch:
        steps += 1
    if not steps:
        raise ValueError(f"arch has no {cell} cell choices (expected names like {choice_name(cell, 0, 0, 'op')!r})")
    return steps


def arch_to_genotype(arch: Mapping[str, Any]) -> Genotype:
    """The official Genotype of an Arch (concat lists like `DARTS_V2`'s)."""
    fields = {}
    for cell in CELL_TYPES:
        steps = _steps(arch, cell)
        fields[cell] = [(arch[choice_name(cell, i, j, "op")], arch[choice_name(cell, i, j, "input")])
                        for i in range(steps) for j in (0, 1)]
        fields[f"{cell}_concat"] = list(range(2, steps + 2))
    return Genotype(**fields)
