"""The DARTS cell search space: the Arch names of a genotype, validation, build and supernet."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from core.engine.registry import SPACES
from core.api import Arch, Choice, SearchSpace
from core.zoo.darts.genotypes import Genotype, choice_name, arch_to_genotype, genotype_to_arch
from core.zoo.darts.network import NetworkCIFAR
from core.zoo.darts.ops import CELL_TYPES, OPS, PRIMITIVES
from core.zoo.darts.supernet import SearchNetwork, edge_list, derive_genotype



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
                    choices.append(Choice(choice_name(cell, i, j, "input"), tuple(range(i + 2)), default=j))
                    choices.append(Choice(choice_name(cell, i, j, "op"), self.ops))
        return choices

    def constraint_error(self, arch: Arch) -> str | None:
        for cell in CELL_TYPES:
            for i in range(self.steps):
                a, b = arch[choice_name(cell, i, 0, "input")], arch[choice_name(cell, i, 1, "input")]
                if a == b:
                    return (f"{choice_name(cell, i, 0, 'input')} and {choice_name(cell, i, 1, 'input')} are both {a}: "
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
        """The supernet's edge choices for `arch` (unused edges `none`), for `core.api.activate`."""
        if "none" not in self.ops:
            raise ValueError("supernet_arch needs 'none' among the ops to switch unused edges off")
        arch = self.check(arch)
        values = {}
        for cell in CELL_TYPES:
            chosen = {(i, arch[choice_name(cell, i, j, "input")]): arch[choice_name(cell, i, j, "op")]
                      for i in range(self.steps) for j in (0, 1)}
            for k, edge in enumerate(edge_list(self.steps)):
                values[f"{cell}.edge{k}"] = chosen.get(edge, "none")
        return Arch(values)

    def derive(self, supernet: nn.Module) -> Arch:
        """The arch DARTS derives from a trained supernet."""
        return self.check(genotype_to_arch(derive_genotype(supernet)))


SPACES.register("darts", DartsSpace)
