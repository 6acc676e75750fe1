"""HourNAS: search the vital blocks first, then a space shrunk to what the budget affords.

Yang, Wang, Chen, Guo, Zhang, Xu, Xu, Tao, Xu. "HourNAS: Extremely Fast Neural
Architecture Search Through an Hourglass Lens", CVPR 2021 (arXiv 2005.14446);
the official release (mindspore `model_zoo/research/cv/HourNAS`) holds only
the searched architectures. What the paper states (abstract and Sec. 1; the
method section was not available to us, see below): the "vital blocks" on
the guaranteed path from input to output restrict the information flow and
decide the accuracy (the neck of the hourglass), the other blocks decide the
complexity (the bulbs); the vital blocks are searched first, and the space of
the non-vital blocks is shrunk to the candidates that are affordable under
the resource constraint. The released HourNAS-F fixes the first block of every
stage to `ir_k5_e6_se`.

What we do (`HourNASSearch.fit(module, data) -> Arch`), on the mobile space
(`core.zoo.mobile.MobileSpace` and its presets: choices grouped into stages
as `stage{i}.layer{j}.op`, `stage{i}.depth`, `stage{i}.width`):

1. **Vital blocks** (`vital_choices`): the first layer of every stage,
   `stage{i}.layer0.op`. It is the block on the guaranteed path: it always
   runs (every depth includes it, and the space offers no `skip` for it) and
   it carries the stage's stride and width change. Every other layer can be
   skipped or cut by the depth choice.
2. **Vital search.** The supernet is trained by SPOS for `vital_epochs` with
   only the vital choices sampled; the other blocks are fixed to the cheapest
   structure (each stage at its smallest depth, `skip` where a layer below it
   must run, else the cheapest op) and the widths at their maximum (what the
   supernet runs). Vital candidates (all combinations, or a seeded sample of
   `vital_evaluations` when there are more) whose cheapest completion fits the
   budget are scored with the supernet evaluator (inherited weights, BN
   recalibration); the best is fixed.
3. **Space proposal (our reading of "shrunk to the affordable candidates";
   the paper's algorithm is not known here).** The non-vital choices (widths,
   depths, the ops of layers j >= 1) get one categorical distribution each:
   the maximum-entropy distributions whose *expected* total cost (MACs or
   params, exact under independent choices: `StageCostModel.expected`) fits
   the budget. The stationarity condition of that problem gives
   `p_c(o) ~ exp(-beta * dE/dp_c(o))` (a Gibbs distribution on each option's
   marginal cost); we solve it by damped fixed-point iteration for a given
   beta and bisect beta (beta = 0, the uniform distribution, when it already
   fits). The shrunk space keeps, per choice, the options that are
   *affordable* (the cheapest complete arch using the option fits the budget;
   for a layer's op, with the layer active) and that the proposal gives at
   least `keep_ratio / n_options` probability; the cheapest option of every
   choice is always kept, so the cheapest arch, feasible whenever anything
   is, stays in the space.
4. **Search in the shrunk space.** The supernet trains on for
   `proposal_epochs` with paths drawn from the proposal (vital blocks fixed;
   archs over the budget rejected), then regularized evolution
   (`core.strategies.evolution`, `evaluations` candidates) with the supernet
   evaluator returns the best arch within the budget (the space itself
   rejects over-budget archs by the additive cost model, and the objective
   re-checks the evaluator's measured MACs/params).

Deviations and choices of ours: HourNAS's spaces have fixed widths; ours
may offer width choices, which we treat as non-vital resource choices
(decided by the proposal and the final evolution; the vital search runs at
the widest widths, the only ones the supernet trains). The vital search
scores candidates exhaustively or by a seeded sample rather than by the
paper's (unknown) schedule, and the search in the shrunk space is
regularized evolution, not a method read from the paper.

The budget is `constraint` ("macs <= 2e6" or "params <= 5e4") or the
objective's macs/params constraint; without one, every option is affordable
and the proposal is uniform. MACs are counted on `data.input_shape` as the
evaluators count them (`core.cost.count_macs`).

This is a `core.oneshot.base.Searcher`: `archforge search` calls
`search(context)`, which sets `checkpoint` and calls `fit(None, data)`: the phase-2 supernet training
saves to it and the phase-4 training to `<checkpoint>.proposal`, after every
epoch; a rerun resumes both (the vital search, the proposal and the evolution
are deterministic for a seed and cheap, so they are recomputed).
"""
from __future__ import annotations

import itertools
import math
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.task import Task
from core.oneshot.base import Searcher
from core.engine.data import DataSplits
from core.engine.registry import STRATEGIES, ConfigError
from core.evaluation.base import safe_evaluate
from core.evaluation.result import Result
from core.evaluation.supernet import SupernetEvaluator
from core.objective import Constraint, Objective
from core.api import Arch, SearchSpace
from core.api.shrunk import ShrunkSpace
from core.cost.stage_model import LAYER_PATTERN, SKIP, StageCostModel
from core.strategies.evolution import RegularizedEvolution
from core.supernet.spos import SPOSTrainer, build_supernet



def vital_choices(space: SearchSpace) -> list[str]:
    """The choice of the first layer of every stage (`stage{i}.layer0.op`), in stage order.

    Works for any space whose layer choices are named `stage{i}.layer{j}.op`;
    raises when a stage's first layer can be skipped (it would not be on the
    guaranteed path).
    """
    firsts: dict[int, tuple[int, str]] = {}
    for c in space.choices:
        m = LAYER_PATTERN.match(c.name)
        if m:
            i, j = int(m.group(1)), int(m.group(2))
            if i not in firsts or j < firsts[i][0]:
                firsts[i] = (j, c.name)
    if not firsts:
        raise ConfigError(f"strategy.name: hournas needs a space whose layers are named stage<i>.layer<j>.op; "
                          f"{type(space).__name__} has none")
    names = [firsts[i][1] for i in sorted(firsts)]
    for name in names:
        if SKIP in space.choice(name).options:
            raise ConfigError(f"hournas: {name} offers {SKIP!r}, so the stage's first block is not on the guaranteed "
                              "path; use allow_skip only for later layers")
    return names


# ---------------------------------------------------------------------------------------------


def space_proposal(model: StageCostModel, fixed: Mapping[str, Any], budget: float,
                   allowed: Mapping[str, Sequence[Any]] | None = None, iterations: int = 30,
                   damping: float = 0.5, bisections: int = 30, tolerance: float = 1e-3) -> dict[str, torch.Tensor]:
    """Maximum-entropy per-choice distributions whose expected cost fits `budget` (see the module docstring).

    `fixed` choices sit at one option; the others spread over their `allowed`
    options (default: all). For a given beta, `iterations` damped fixed-point
    steps of `p_c ~ exp(-beta * dE/dp_c / budget)` (warm-started); beta is
    bracketed by doubling and bisected until the expected cost lies within
    `tolerance` (relative) below the budget. Returns {choice name:
    probabilities over the choice's options in the base space} for every
    choice the cost model reads; the expected cost never exceeds the budget.
    """
    names = model.names()
    free = [n for n in names if n not in fixed and len(model.options(n)) > 1]
    masks = {}
    for n in names:
        opts = model.options(n)
        keep = [fixed[n]] if n in fixed else list((allowed or {}).get(n, opts))
        masks[n] = torch.tensor([o in keep for o in opts], dtype=torch.bool)
        if not masks[n].any():
            raise ValueError(f"space_proposal: no allowed option for {n}")
    uniform = {n: masks[n].double() / masks[n].sum() for n in names}
    if not math.isfinite(budget):
        return uniform
    scale = budget if budget > 0 else 1.0

    def solve(beta: float, start: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], float]:
        p = {n: v.clone() for n, v in start.items()}
        for _ in range(iterations if free else 0):
            leaves = {n: p[n].clone().requires_grad_(n in free) for n in names}
            grads = torch.autograd.grad(model.expected(leaves), [leaves[n] for n in free])
            for n, g in zip(free, grads):
                logits = (-beta * g / scale).masked_fill(~masks[n], -math.inf)
                p[n] = (1 - damping) * p[n] + damping * torch.softmax(logits, 0)
        with torch.no_grad():
            return p, float(model.expected(p))

    with torch.no_grad():
        if float(model.expected(uniform)) <= budget:
            return uniform
    lo, hi = 0.0, 1.0
    p_hi, e_hi = solve(hi, uniform)
    for _ in range(60):
        if e_hi <= budget:
            break
        lo, hi = hi, hi * 2
        p_hi, e_hi = solve(hi, p_hi)
    if e_hi > budget:
        cheapest = model.min_cost({**{k: [v] for k, v in fixed.items()}, **(allowed or {})})
        raise ValueError(f"space proposal: no distribution has an expected cost within {budget:g} "
                         f"(the cheapest architecture costs {cheapest:g})")
    for _ in range(bisections):
        if e_hi >= budget * (1 - tolerance):
            break
        mid = (lo + hi) / 2
        p_mid, e_mid = solve(mid, p_hi)
        if e_mid <= budget:
            hi, p_hi, e_hi = mid, p_mid, e_mid
        else:
            lo = mid
    return p_hi


def affordable_options(model: StageCostModel, fixed: Mapping[str, Any], budget: float) -> dict[str, list[Any]]:
    """Per non-fixed choice, the options some arch within `budget` uses (a layer's op: with the layer active)."""
    base_allowed = {k: [v] for k, v in fixed.items()}
    out = {}
    for name in model.names():
        if name in fixed:
            continue
        keep = []
        for o in model.options(name):
            allowed = {**base_allowed, name: [o]}
            m = LAYER_PATTERN.match(name)
            if m and int(m.group(2)) > 0:
                i, j = int(m.group(1)), int(m.group(2))
                allowed[f"stage{i}.depth"] = [d for d in model.depths[i] if d > j
                                              and d in base_allowed.get(f"stage{i}.depth", [d])]
            if model.min_cost(allowed) <= budget:
                keep.append(o)
        out[name] = keep
    return out


def cheapest_options(model: StageCostModel, fixed: Mapping[str, Any]) -> dict[str, Any]:
    """Per non-fixed choice, the option of the cheapest arch (narrowest width, smallest depth, cheapest op)."""
    allowed = {k: [v] for k, v in fixed.items()}
    out = {}
    for name in model.names():
        if name in fixed:
            continue
        costs = [model.min_cost({**allowed, name: [o]}) for o in model.options(name)]
        m = LAYER_PATTERN.match(name)
        if m and int(m.group(2)) > 0:  # a later layer's op: compare the ops with the layer active
            i, j = int(m.group(1)), int(m.group(2))
            deeper = [d for d in model.depths[i] if d > j]
            costs = [model.min_cost({**allowed, name: [o], f"stage{i}.depth": deeper}) for o in model.options(name)]
        out[name] = model.options(name)[min(range(len(costs)), key=costs.__getitem__)]
    return out


@STRATEGIES.register("hournas")
class HourNASSearch(Searcher):
    """HourNAS (see the module docstring). `fit(module, data) -> Arch`; config keys are the arguments below.

    - budget: `constraint` ("macs <= N" / "params <= N"; None: the objective's).
    - supernet: `vital_epochs` (phase 2), `proposal_epochs` (phase 4),
      `train` (more `SPOSTrainer` keys), `supernet_kwargs`, `checkpoint`.
    - `vital_evaluations`: vital candidates scored (all when there are fewer);
      `keep_ratio`: options under `keep_ratio / n_options` proposal probability
      are dropped; `evaluations`, `population_size`, `sample_size`: the final
      evolution; `bn_batches`: BN recalibration of the supernet evaluator.
    """


    def __init__(self, space: SearchSpace, seed: int = 0, objective: Objective | None = None,
                 constraint: str | None = None, vital_epochs: int = 5, proposal_epochs: int = 5,
                 train: dict | None = None, supernet_kwargs: dict | None = None, vital_evaluations: int = 64,
                 keep_ratio: float = 0.5, evaluations: int = 100, population_size: int = 20,
                 sample_size: int = 5, bn_batches: int = 4, checkpoint: str | None = None,
                 progress: bool = False, device: str = "cpu", task: Task | None = None):
        self.task = task
        self.vital = vital_choices(space)
        for key, value in (("vital_epochs", vital_epochs), ("proposal_epochs", proposal_epochs)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"strategy.{key}: expected an integer >= 0, got {value!r}")
        for key, value in (("vital_evaluations", vital_evaluations), ("evaluations", evaluations)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"strategy.{key}: expected an integer >= 1, got {value!r}")
        if not 0 <= keep_ratio <= 1:
            raise ConfigError(f"strategy.keep_ratio: expected a number in [0, 1], got {keep_ratio!r}")
        self.space, self.seed = space, seed
        self.objective = objective or Objective()
        self.constraint = self._constraint(constraint, self.objective)
        self.vital_epochs, self.proposal_epochs = vital_epochs, proposal_epochs
        self.train_kwargs, self.supernet_kwargs = dict(train or {}), dict(supernet_kwargs or {})
        self.vital_evaluations, self.keep_ratio = vital_evaluations, keep_ratio
        self.evaluations, self.population_size, self.sample_size = evaluations, population_size, sample_size
        self.bn_batches = bn_batches
        self.checkpoint = Path(checkpoint) if checkpoint else None
        self.progress, self.device = progress, device
        self.supernet: nn.Module | None = None
        self.cost_model: StageCostModel | None = None
        self.vital_space: ShrunkSpace | None = None
        self.vital_results: list[tuple[dict[str, Any], Result]] = []
        self.vital_arch: dict[str, Any] | None = None
        self.proposal: dict[str, list[float]] = {}
        self.shrunk: ShrunkSpace | None = None
        self.trials: list[tuple[Arch, Result]] = []
        self.history: list[dict[str, Any]] = []
        self.result: dict[str, Any] | None = None
        self.arch: Arch | None = None

    @staticmethod
    def _constraint(text: str | None, objective: Objective) -> Constraint | None:
        if text:
            try:
                c = Constraint.parse(text)
            except ValueError as e:
                raise ConfigError(f"strategy.constraint: {e}") from None
            if c.metric not in ("macs", "params") or c.op not in ("<=", "<"):
                raise ConfigError(f"strategy.constraint: HourNAS takes 'macs <= N' or 'params <= N', got {text!r}")
            return c
        found = [c for c in objective.constraints if c.metric in ("macs", "params") and c.op in ("<=", "<")]
        return found[0] if found else None

    @property
    def budget(self) -> float:
        return self.constraint.bound if self.constraint else math.inf

    def _ckpt(self, tag: str) -> str | None:
        """Phase 2 checkpoints to `checkpoint` itself (what `--resume` looks for), phase 4 to
        `<checkpoint>.proposal`."""
        if not self.checkpoint:
            return None
        if tag == "vital":
            return str(self.checkpoint)
        return str(self.checkpoint.with_name(f"{self.checkpoint.name}.{tag}"))

    def _train(self, space: SearchSpace, data: DataSplits, supernet: nn.Module, epochs: int, tag: str) -> nn.Module:
        if epochs == 0:
            return supernet
        kwargs = {"seed": self.seed, "progress": self.progress, "device": self.device, **self.train_kwargs}
        trainer = SPOSTrainer(space, data, self.task, epochs=epochs, checkpoint=self._ckpt(tag), **kwargs)
        return trainer.fit(supernet)

    def _evaluator(self, space: SearchSpace, data: DataSplits) -> SupernetEvaluator:
        kwargs = {**self.supernet_kwargs}
        if "num_classes" not in kwargs:
            kwargs["num_classes"] = data.num_classes
        return SupernetEvaluator(space, data, self.task, supernet=self.supernet, bn_batches=self.bn_batches, seed=self.seed,
                                 device=self.device, supernet_kwargs=kwargs)

    # -- phases ----------------------------------------------------------------------------------------
    def vital_space_for(self, model: StageCostModel) -> ShrunkSpace:
        """Phase-2 space: vital choices free, widths at their maximum, the rest at the cheapest structure."""
        options: dict[str, list[Any]] = {}
        for name in model.names():
            if name in self.vital:
                continue
            opts = model.options(name)
            if name.endswith(".width"):
                options[name] = [max(opts)]
            elif name.endswith(".depth"):
                options[name] = [min(opts)]
            else:
                options[name] = [SKIP] if SKIP in opts else [self._cheapest_op(model, name)]
        return ShrunkSpace(self.space, options)

    @staticmethod
    def _cheapest_op(model: StageCostModel, name: str) -> Any:
        m = LAYER_PATTERN.match(name)
        i, j = int(m.group(1)), int(m.group(2))
        table = model.first[i].amax(dim=(0, 1)) if j == 0 else model.later[i][j - 1].amax(dim=0)
        return model.options(name)[int(torch.argmin(table))]

    def search_vital(self, data: DataSplits, model: StageCostModel) -> dict[str, Any]:
        space = self.vital_space = self.vital_space_for(model)
        self.supernet = self._train(space, data, self.supernet, self.vital_epochs, "vital")
        combos = list(itertools.product(*(space.choice(n).options for n in self.vital)))
        rng = random.Random(f"{self.seed}-hournas-vital")
        if len(combos) > self.vital_evaluations:
            combos = rng.sample(combos, self.vital_evaluations)
        evaluator = self._evaluator(space, data)
        ranking = Objective(self.objective.metric, self.objective.direction)
        base = dict(space.check(space.default()))
        best, best_fit = None, -math.inf
        self.vital_results = []
        for combo in combos:
            values = dict(zip(self.vital, combo))
            if model.min_cost({k: [v] for k, v in values.items()}) > self.budget:
                continue  # no completion of this vital choice fits the budget
            result = safe_evaluate(evaluator, space.check({**base, **values}))
            self.vital_results.append((values, result))
            fit = ranking.fitness(result)
            if best is None or fit > best_fit:
                best, best_fit = values, fit
        if best is None:
            raise ValueError(f"HourNAS: no vital-block choice has a completion within {self.constraint}; "
                             f"the cheapest architecture costs {model.min_cost():g}")
        return best

    def shrink(self, model: StageCostModel, vital: Mapping[str, Any]) -> ShrunkSpace:
        """Space proposal + affordability filter (phase 3); returns the shrunk space with its proposal."""
        budget = self.budget
        afford = affordable_options(model, vital, budget)
        probs = space_proposal(model, vital, budget, allowed=afford)
        cheapest = cheapest_options(model, vital)
        options: dict[str, list[Any]] = {n: [v] for n, v in vital.items()}
        for name, affordable in afford.items():
            opts, p = model.options(name), probs[name]
            floor = self.keep_ratio / max(len(affordable), 1)
            keep = [o for k, o in enumerate(opts) if o in affordable and float(p[k]) >= floor]
            if cheapest[name] not in keep:
                keep.append(cheapest[name])
            options[name] = keep
        self.proposal = {n: [float(x) for x in v] for n, v in probs.items()}
        return ShrunkSpace(self.space, options, probs=self.proposal, budget=budget, cost=model.arch_cost,
                           metric=model.metric)

    # -- everything -------------------------------------------------------------------------------------
    def fit(self, module: nn.Module | None = None, data: DataSplits | None = None) -> Arch:
        """Vital search, space proposal, search in the shrunk space; returns an arch within the budget."""
        if data is None:
            raise TypeError("HourNASSearch.fit: data is required")
        metric = self.constraint.metric if self.constraint else "macs"
        model = self.cost_model = StageCostModel(self.space, data.input_shape, data.num_classes, metric)
        if module is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                module = build_supernet(self.space, data.num_classes, **self.supernet_kwargs)
        self.supernet = module.to(self.device)

        self.vital_arch = self.search_vital(data, model)
        shrunk = self.shrunk = self.shrink(model, self.vital_arch)
        self.supernet = self._train(shrunk, data, self.supernet, self.proposal_epochs, "proposal")

        extra = [self.constraint] if self.constraint and self.constraint not in self.objective.constraints else []
        objective = Objective(self.objective.metric, self.objective.direction, [*self.objective.constraints, *extra])
        population = max(2, min(self.population_size, self.evaluations))
        evolution = RegularizedEvolution(shrunk, self.seed, objective, population,
                                         max(1, min(self.sample_size, population)))
        evaluator = self._evaluator(shrunk, data)
        self.trials, self.history = [], []
        for _ in range(self.evaluations):
            arch = evolution.ask(1)[0]
            result = safe_evaluate(evaluator, arch)
            evolution.tell(arch, result)
            self.trials.append((arch, result))
            self.history.append({"arch_key": arch.key, "status": result.status, **result.metrics})
        found = evolution.best()
        if found is None:
            failed = [r for _, r in self.trials if r.status != "ok"]
            if len(failed) == len(self.trials):
                raise RuntimeError(f"HourNAS: all {len(failed)} evaluations failed; the first: {failed[0].reason}")
            raise ValueError(f"HourNAS: no evaluated architecture satisfies {objective.constraints}")
        arch, result = found
        self.arch = self.space.check(arch)
        self.result = {"arch": self.arch.to_dict(), "arch_key": self.arch.key, "metrics": result.metrics,
                       "vital": dict(self.vital_arch), "constraint": str(self.constraint) if self.constraint else None,
                       "shrunk_options": {c.name: list(c.options) for c in shrunk.choices},
                       "options": {"full": math.prod(len(c) for c in self.space.choices),
                                   "shrunk": math.prod(len(c) for c in shrunk.choices)}}
        return self.arch

    def report(self) -> dict[str, Any]:
        return {"vital": [{"choices": v, "metrics": r.metrics, "status": r.status} for v, r in self.vital_results],
                "proposal": self.proposal,
                "trials": [{"arch": a.to_dict(), "metrics": r.metrics, "status": r.status} for a, r in self.trials],
                "result": self.result}


__all__ = ["HourNASSearch", "StageCostModel", "ShrunkSpace", "vital_choices", "space_proposal",
           "affordable_options", "cheapest_options"]
