"""An additive cost model of a staged space (HourNAS, Yang et al., CVPR 2021, Sec. 3.3): per-stage, per-layer
op costs measured once, summed for any arch; used to propose affordable sub-spaces."""
from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from core.cost.counting import count_macs, count_params
from core.engine.registry import ConfigError
from core.api.space import SearchSpace


LAYER_PATTERN = re.compile(r"^stage(\d+)\.layer(\d+)\.op$")
SKIP = "skip"


# ---------------------------------------------------------------------------------------------


class StageCostModel:
    """Exact per-layer costs of a `MobileSpace` and the expected total under independent choices.

    The network's MACs (or params) are the sum of its layers' (stem, first
    block, every active MBConv, head conv, classifier). A layer's cost depends
    on its input width, output width and op (and its fixed resolution): stage
    i's first layer on (width of stage i-1, width of stage i, op), later
    layers on (width of stage i, op) and count only when the stage's depth
    exceeds their index. `arch_cost(arch)` is exact (equal to
    `count_macs(space.build(arch), input)`); `expected(probs)` is the exact
    expectation when every choice is drawn independently from `probs`
    (option-index tensors; missing choices sit at their only option).
    """

    def __init__(self, space: SearchSpace, input_shape: Sequence[int], num_classes: int | None = None,
                 metric: str = "macs"):
        for needed in ("plan", "stages"):
            if not hasattr(space, needed):
                raise ConfigError(f"hournas needs a mobile-style space with plan() and stages; "
                                  f"{type(space).__name__} has no {needed}")
        if metric not in ("macs", "params"):
            raise ConfigError(f"hournas: the budget metric must be macs or params, got {metric!r}")
        self.space, self.metric = space, metric
        self.input_shape, self.num_classes = tuple(input_shape), num_classes
        self._cache: dict[Any, float] = {}
        self.n = len(space.stages)
        base = space.check(space.default())
        self.widths = [self._opts(f"stage{i}.width", (space.stage_width(base, i),)) for i in range(self.n)]
        self.depths = [space.choice(f"stage{i}.depth").options for i in range(self.n)]
        self.ops = [[space.choice(f"stage{i}.layer{j}.op").options for j in range(max(self.depths[i]))]
                    for i in range(self.n)]
        self._tables()

    def _opts(self, name: str, fallback: tuple) -> tuple:
        return self.space.choice(name).options if name in self.space else fallback

    def _count(self, layer, res: tuple[int, int]) -> float:
        key = (layer, res)
        if key not in self._cache:
            module = layer.make()
            if self.metric == "params":
                self._cache[key] = float(count_params(module))
            else:
                self._cache[key] = float(count_macs(module, (1, layer.in_ch, *res)))
        return self._cache[key]

    def _plan(self, values: Mapping[str, Any]):
        arch = dict(self.space.default())
        arch.update(values)
        return self.space.plan(self.space.check(arch), num_classes=self.num_classes)

    def _tables(self) -> None:
        full = {f"stage{i}.depth": max(self.depths[i]) for i in range(self.n)}
        plan = self._plan(full)
        res = tuple(self.input_shape[1:])
        self.fixed = self._count(plan.stem, res)
        res = plan.stem.out_size(*res)
        if plan.first_block is not None:
            self.fixed += self._count(plan.first_block, res)
            res = plan.first_block.out_size(*res)
        self.res_in, self.res_out = [], []
        for i in range(self.n):
            self.res_in.append(res)
            res = plan.stages[i][0].out_size(*res)
            self.res_out.append(res)
        # first layers: [w_prev, w, op]; later layers: [w, op]; head+classifier: [w_last]
        self.first: list[torch.Tensor] = []
        self.later: list[list[torch.Tensor]] = []
        for i in range(self.n):
            prev = self.widths[i - 1] if i > 0 else (None,)
            t = torch.zeros(len(prev), len(self.widths[i]), len(self.ops[i][0]), dtype=torch.float64)
            for (a, wp), (b, w), (k, op) in itertools.product(enumerate(prev), enumerate(self.widths[i]),
                                                              enumerate(self.ops[i][0])):
                values = {**full, **self._width(i, w), f"stage{i}.layer0.op": op}
                if i > 0:
                    values.update(self._width(i - 1, wp))
                t[a, b, k] = self._count(self._plan(values).stages[i][0], self.res_in[i])
            self.first.append(t)
            rows = []
            for j in range(1, len(self.ops[i])):
                t = torch.zeros(len(self.widths[i]), len(self.ops[i][j]), dtype=torch.float64)
                for (b, w), (k, op) in itertools.product(enumerate(self.widths[i]), enumerate(self.ops[i][j])):
                    layer = self._plan({**full, **self._width(i, w), f"stage{i}.layer{j}.op": op}).stages[i][j]
                    t[b, k] = 0.0 if layer.kind == "skip" else self._count(layer, self.res_out[i])
                rows.append(t)
            self.later.append(rows)
        last = self.n - 1
        self.tail = torch.zeros(len(self.widths[last]), dtype=torch.float64)
        for b, w in enumerate(self.widths[last]):
            plan = self._plan({**full, **self._width(last, w)})
            cost, r = 0.0, self.res_out[last]
            if plan.head is not None:
                cost += self._count(plan.head, r)
            self.tail[b] = cost + self._count(plan.classifier, r)

    def _width(self, i: int, w: Any) -> dict[str, Any]:
        name = f"stage{i}.width"
        return {name: w} if name in self.space else {}

    # -- names of the choices the model reads -----------------------------------------------------
    def names(self) -> list[str]:
        out = []
        for i in range(self.n):
            if f"stage{i}.width" in self.space:
                out.append(f"stage{i}.width")
            out.append(f"stage{i}.depth")
            out += [f"stage{i}.layer{j}.op" for j in range(len(self.ops[i]))]
        return out

    def options(self, name: str) -> tuple:
        return self.space.choice(name).options

    # -- costs ------------------------------------------------------------------------------------
    def expected(self, probs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Expected total cost under independent per-choice distributions (differentiable)."""
        def p(name: str, size: int) -> torch.Tensor:
            if name in probs:
                return probs[name].to(torch.float64)
            if size != 1:
                raise KeyError(f"expected(): no distribution for {name} ({size} options)")
            return torch.ones(1, dtype=torch.float64)

        total = torch.tensor(self.fixed, dtype=torch.float64)
        prev = torch.ones(1, dtype=torch.float64)
        for i in range(self.n):
            pw = p(f"stage{i}.width", len(self.widths[i]))
            p0 = p(f"stage{i}.layer0.op", len(self.ops[i][0]))
            total = total + torch.einsum("a,b,k,abk->", prev, pw, p0, self.first[i])
            pd = p(f"stage{i}.depth", len(self.depths[i]))
            for j, t in enumerate(self.later[i], start=1):
                active = sum((pd[k] for k, d in enumerate(self.depths[i]) if d > j),
                             torch.zeros((), dtype=torch.float64))
                pj = p(f"stage{i}.layer{j}.op", t.shape[1])
                total = total + active * torch.einsum("b,k,bk->", pw, pj, t)
            prev = pw
        return total + (prev * self.tail).sum()

    def one_hot(self, arch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        out = {}
        for name in self.names():
            opts = self.options(name)
            t = torch.zeros(len(opts), dtype=torch.float64)
            t[opts.index(arch[name])] = 1.0
            out[name] = t
        return out

    def arch_cost(self, arch: Mapping[str, Any]) -> float:
        """Exact cost of one arch (inactive layers count nothing)."""
        return float(self.expected(self.one_hot(arch)))

    def min_cost(self, allowed: Mapping[str, Sequence[Any]] | None = None) -> float:
        """The cheapest arch using only the `allowed` options (others: every option); inf when none exists.

        Dynamic programming over stages on the width of each stage (the only
        coupling between stages); within a stage the cheapest depth and ops.
        """
        allowed = allowed or {}

        def idx(name: str, options: tuple) -> list[int]:
            keep = allowed.get(name)
            return [k for k, o in enumerate(options) if keep is None or o in keep]

        best_prev = {0: self.fixed}  # width index of the previous stage -> cheapest cost so far
        for i in range(self.n):
            widths = idx(f"stage{i}.width", self.widths[i]) if f"stage{i}.width" in self.space else [0]
            ops0 = idx(f"stage{i}.layer0.op", self.ops[i][0])
            depths = [self.depths[i][k] for k in idx(f"stage{i}.depth", self.depths[i])]
            current: dict[int, float] = {}
            for b in widths:
                if not ops0 or not depths:
                    continue
                later = [min((float(t[b, k]) for k in idx(f"stage{i}.layer{j}.op", self.ops[i][j])), default=math.inf)
                         for j, t in enumerate(self.later[i], start=1)]
                stage = min(sum(later[:d - 1]) for d in depths)
                first = min(float(self.first[i][a, b, k]) + c for a, c in best_prev.items() for k in ops0)
                current[b] = first + stage
            if not current:
                return math.inf
            best_prev = current
        return min(c + float(self.tail[b]) for b, c in best_prev.items())


# ---------------------------------------------------------------------------------------------
