"""A restricted view of a search space: fewer options per choice, sampled from per-choice probabilities,
within a cost budget (HourNAS's space proposal builds one)."""
from __future__ import annotations

import functools
import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from core.api.arch import Arch
from core.api.choice import Choice
from core.api.space import SearchSpace



class ShrunkSpace(SearchSpace):
    """`base` with fewer options per choice, sampled from per-choice probabilities, within a cost budget.

    Archs are checked against the kept options and `cost(arch) <= budget`
    (sampling and mutation retry until they hold); `build`, `inherit`,
    `supernet` and `active` are the base space's, so supernets and the
    supernet evaluator work unchanged. Inactive choices are reset to this
    space's defaults (kept options); `base.check(arch)` gives the base form.
    """

    def __init__(self, base: SearchSpace, options: Mapping[str, Sequence[Any]] | None = None,
                 probs: Mapping[str, Sequence[float]] | None = None, budget: float = math.inf,
                 cost=None, metric: str = "macs"):
        self.base, self.budget, self.cost, self.metric = base, budget, cost, metric
        options = dict(options or {})
        choices = []
        for c in base.choices:
            keep = tuple(o for o in c.options if o in options[c.name]) if c.name in options else c.options
            if not keep:
                raise ValueError(f"ShrunkSpace: no option of {c.name} kept")
            choices.append(Choice(c.name, keep, default=c.default if c.default in keep else keep[0]))
        super().__init__(choices)
        self.probs: dict[str, list[float]] = {}
        for c in self.choices:
            if probs and c.name in probs:
                full = dict(zip(base.choice(c.name).options, probs[c.name]))
                w = [max(float(full.get(o, 0.0)), 0.0) for o in c.options]
                total = sum(w)
                self.probs[c.name] = [x / total for x in w] if total > 0 else [1.0 / len(w)] * len(w)
        base_build, base_inherit = base.build, getattr(base, "inherit", None)

        @functools.wraps(base_build)
        def build(arch, *args, **kwargs):
            return base_build(self.check(arch), *args, **kwargs)

        self.build = build
        if callable(base_inherit):
            @functools.wraps(base_inherit)
            def inherit(supernet, arch, *args, **kwargs):
                return base_inherit(supernet, self.check(arch), *args, **kwargs)

            self.inherit = inherit

    def __getattr__(self, name: str) -> Any:  # plan, stages, layer_specs, describe, ... of the base space
        if name in ("base", "__setstate__", "__getstate__") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.base, name)

    def active(self, arch: Mapping[str, Any]) -> list[str]:
        return self.base.active(arch)

    def constraint_error(self, arch: Arch) -> str | None:
        reason = self.base.constraint_error(arch)
        if reason:
            return reason
        if self.cost is not None and math.isfinite(self.budget):
            value = self.cost(arch)
            if value > self.budget:
                return f"{self.metric} {value:g} is over the budget {self.budget:g}"
        return None

    def sample(self, rng: random.Random) -> Arch:
        if not self.probs:
            return super().sample(rng)

        def make() -> Arch:
            return Arch({c.name: (rng.choices(c.options, weights=self.probs[c.name])[0] if c.name in self.probs
                                  else rng.choice(c.options)) for c in self.choices})

        return self._until_valid(make, "sample")

    def supernet(self, *args: Any, **kwargs: Any) -> nn.Module:
        return self.base.supernet(*args, **kwargs)


# ---------------------------------------------------------------------------------------------
