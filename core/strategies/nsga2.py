"""NSGA-II multi-objective search with EEEA-Net's early-exit population initialisation.

Deb, Pratap, Agarwal, Meyarivan. "A Fast and Elitist Multiobjective Genetic
Algorithm: NSGA-II", IEEE TEVC 6(2), 2002: Sec. III-A (fast non-dominated
sort), III-B (crowding distance, crowded-comparison operator), III-C (main
loop: parents + offspring, the best N by rank then crowding survive; binary
tournament by the crowded comparison picks the mothers). Survival is pymoo's
`RankAndCrowding` (the survival of `pymoo.algorithms.moo.nsga2.NSGA2`).

Termritthikun et al. "EEEA-Net: An Early Exit Evolutionary Neural
Architecture Search", EAAI 2021 (arXiv 2108.06156), Sec. 3.2 (early exit
population initialisation, EE-PI); official code `chakkritte/EEEA-Net`
(METHODS.md 1.3): every random individual is resampled *while* its parameter
count is at or above the threshold beta, and `train_and_score` never trains a
model at or above it (children included). Here an over-threshold child is
re-drawn (new mothers, new crossover and mutation) before it is asked, so no
arch at or above the threshold is ever evaluated.

The objectives are the objective's Pareto terms (`objective.pareto_terms()`,
e.g. `accuracy:max` and `params:min`; by default the main metric and
`macs:min`). Failed or infeasible results (the objective's constraints) rank
behind every feasible one, as in pymoo's constraint handling.

Generations in ask/tell: generation 0 is `population_size` random archs;
each later generation is `population_size` children. A generation closes
when at least `population_size` of its archs were asked and all of them were
told; then parents + children go through rank-and-crowding survival. If the
loop asks for more while results are outstanding (batched evaluation), more
children of the current parents join the current generation, so `ask` never
blocks.

Deviations from EEEA-Net's search loop (which keeps `retain = 0.1` of the
population as parents and counts only error and params, see METHODS.md): this
is plain NSGA-II over whichever Pareto terms the objective names. Children:
uniform crossover (`space.crossover`) with `crossover_prob`, then one-choice
mutation (`space.mutate`) with `mutation_prob`; repeats of any earlier arch
are rejected (as EEEA-Net does) while fresh ones are easy to find.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.engine.registry import STRATEGIES, ConfigError
from core.evaluation.result import Result
from core.objective import Objective
from core.api import Arch, SearchSpace
from core.strategies.base import Strategy


@dataclass
class Member:
    """One individual of the population: its arch, result, minimised objective vector, rank and crowding."""

    arch: Arch
    result: Result
    objectives: tuple[float, ...] | None  # None: failed or infeasible
    rank: float = math.inf
    crowding: float = 0.0


def _problem(n_obj: int):
    from pymoo.core.problem import Problem

    return Problem(n_var=1, n_obj=n_obj)


def rank_and_crowding(members: list[Member], n_survive: int, seed: int) -> list[Member]:
    """NSGA-II survival (pymoo `RankAndCrowding`): the best `n_survive` by front, then crowding distance.

    Sets `rank` and `crowding` on the survivors; infeasible members fill the
    remaining places (rank inf) in the order given.
    """
    from pymoo.core.population import Population
    from pymoo.operators.survival.rank_and_crowding import RankAndCrowding

    feasible = [m for m in members if m.objectives is not None]
    infeasible = [m for m in members if m.objectives is None]
    survivors: list[Member] = []
    if feasible:
        F = np.array([m.objectives for m in feasible], dtype=float)
        pop = Population.new("F", F, "index", np.arange(len(feasible)))
        kept = RankAndCrowding().do(_problem(F.shape[1]), pop, n_survive=min(n_survive, len(feasible)),
                                    random_state=np.random.default_rng(seed))
        for ind in kept:
            member = feasible[int(ind.get("index"))]
            member.rank, member.crowding = float(ind.get("rank")), float(ind.get("crowding"))
            survivors.append(member)
    for member in infeasible[: max(0, n_survive - len(survivors))]:
        member.rank, member.crowding = math.inf, 0.0
        survivors.append(member)
    return survivors


@STRATEGIES.register("nsga2")
class NSGA2(Strategy):
    """NSGA-II (Deb et al. 2002) over the objective's Pareto terms, with optional EEEA-Net EE-PI.

    Config keys: `population_size` (40, EEEA-Net), `crossover_prob` (0.9, Deb
    et al.), `mutation_prob` (0.1, EEEA-Net's per-child mutation
    probability), `tournament_size` (2: NSGA-II's binary tournament),
    `early_exit_params` (null: off; a parameter count, e.g. 3.0e6 for
    EEEA-Net's beta = 3.0 M: an arch with params >= it is never evaluated),
    `early_exit_build` (keyword arguments for `space.build` when counting
    params: EEEA-Net counts the evaluation-size network, e.g. `{C: 36,
    layers: 20}` on the DARTS space), `max_resample_tries` (1000).
    `params_fn` (Python only) replaces the build-and-count with any
    `arch -> params` function.
    """

    def __init__(self, space: SearchSpace, seed: int = 0, objective: Objective | None = None,
                 population_size: int = 40, crossover_prob: float = 0.9, mutation_prob: float = 0.1,
                 tournament_size: int = 2, early_exit_params: float | None = None,
                 early_exit_build: dict | None = None, max_resample_tries: int = 1000,
                 params_fn: Callable[[Arch], float] | None = None):
        super().__init__(space, seed, objective)
        if isinstance(population_size, bool) or not isinstance(population_size, int) or population_size < 2:
            raise ConfigError(f"strategy.population_size: expected an int >= 2, got {population_size!r}")
        for key, value in (("crossover_prob", crossover_prob), ("mutation_prob", mutation_prob)):
            if not 0 <= value <= 1:
                raise ConfigError(f"strategy.{key}: expected a probability in [0, 1], got {value!r}")
        if not 1 <= tournament_size <= population_size:
            raise ConfigError(f"strategy.tournament_size: expected an int in [1, population_size], "
                              f"got {tournament_size!r}")
        if early_exit_params is not None and early_exit_params <= 0:
            raise ConfigError(f"strategy.early_exit_params: expected a positive parameter count or null, "
                              f"got {early_exit_params!r}")
        if max_resample_tries < 1:
            raise ConfigError(f"strategy.max_resample_tries: expected an int >= 1, got {max_resample_tries!r}")
        self.population_size, self.tournament_size = population_size, tournament_size
        self.crossover_prob, self.mutation_prob = crossover_prob, mutation_prob
        self.early_exit_params = early_exit_params
        self.early_exit_build = dict(early_exit_build or {})
        self.max_resample_tries = max_resample_tries
        self.params_fn = params_fn
        self.parents: list[Member] = []       # the population after the last survival
        self.generation = 0
        self._asked_in_gen: list[Arch] = []
        self._told_in_gen: dict[Arch, Member] = {}
        self._params_cache: dict[Arch, float] = {}
        self.early_exits = 0                 # archs resampled because params >= early_exit_params

    # -- objectives --------------------------------------------------------------------------------
    def objectives(self, result: Result) -> tuple[float, ...] | None:
        """The result's Pareto terms as a minimised vector, or None when failed, infeasible or missing a term."""
        if not self.objective.feasible(result):
            return None
        values = []
        for metric, direction in self.objective.pareto_terms():
            value = result.metrics.get(metric, math.nan)
            if value is None or math.isnan(value) or math.isinf(value):
                return None
            values.append(value if direction == "min" else -value)
        return tuple(values)

    # -- EE-PI ---------------------------------------------------------------------------------------
    def params_of(self, arch: Arch) -> float:
        """Parameter count used by the early exit (cached): `params_fn(arch)` or the built network's."""
        if arch not in self._params_cache:
            if self.params_fn is not None:
                value = float(self.params_fn(arch))
            else:
                from core.cost import count_params

                value = float(count_params(self.space.build(arch, **self.early_exit_build)))
            self._params_cache[arch] = value
        return self._params_cache[arch]

    def too_large(self, arch: Arch) -> bool:
        return self.early_exit_params is not None and self.params_of(arch) >= self.early_exit_params

    def _draw(self, make: Callable[[], Arch], what: str) -> Arch:
        """A fresh arch from `make` under the early-exit threshold (resampled while at or above it)."""
        for _ in range(self.max_resample_tries):
            arch = make()
            if arch in self.seen and len(self.seen) < self.space.size():
                continue
            if self.too_large(arch):
                self.early_exits += 1
                continue
            self.seen.add(arch)
            return arch
        raise RuntimeError(f"nsga2: no new {what} below early_exit_params={self.early_exit_params:g} params after "
                           f"{self.max_resample_tries} tries; raise the threshold or check early_exit_build")

    # -- variation -----------------------------------------------------------------------------------
    def _tournament(self) -> Arch:
        """Crowded-comparison tournament: lower rank wins, then larger crowding distance, then chance."""
        contestants = self.rng.sample(self.parents, min(self.tournament_size, len(self.parents)))
        return min(contestants, key=lambda m: (m.rank, -m.crowding)).arch

    def _child(self) -> Arch:
        a = self._tournament()
        child = a
        if self.rng.random() < self.crossover_prob:
            child = self.space.crossover(a, self._tournament(), self.rng)
        if self.rng.random() < self.mutation_prob or child == a:
            child = self.space.mutate(child, self.rng)
        return child

    def propose(self) -> Arch:
        if not self.parents:
            arch = self._draw(lambda: self.space.sample(self.rng), "random arch")
        else:
            try:
                arch = self._draw(self._child, "child")
            except RuntimeError:  # variation keeps landing above the threshold or on repeats: EE-PI sample
                arch = self._draw(lambda: self.space.sample(self.rng), "random arch")
        self._asked_in_gen.append(arch)
        return arch

    # -- tell and survival ---------------------------------------------------------------------------
    def tell(self, arch: Arch, result: Result) -> None:
        super().tell(arch, result)
        self._told_in_gen[arch] = Member(arch, result, self.objectives(result))
        if len(self._asked_in_gen) >= self.population_size and all(a in self._told_in_gen for a in self._asked_in_gen):
            self._close_generation()

    def _close_generation(self) -> None:
        merged: dict[Arch, Member] = {m.arch: m for m in self.parents}
        for arch in self._asked_in_gen:
            merged.setdefault(arch, self._told_in_gen[arch])
        self.parents = rank_and_crowding(list(merged.values()), self.population_size,
                                         seed=self.rng.randrange(2 ** 32))
        self.generation += 1
        self._asked_in_gen, self._told_in_gen = [], {}

    # -- the front -----------------------------------------------------------------------------------
    def front(self) -> list[tuple[Arch, Result]]:
        """The non-dominated feasible archs among everything told so far (over the Pareto terms)."""
        return self.objective.pareto_front(self.history)

    def population_front(self) -> list[tuple[Arch, Result]]:
        """Rank-0 members of the current population (the last generation's first front)."""
        return [(m.arch, m.result) for m in self.parents if m.rank == 0]

    def state(self) -> Mapping[str, Any]:
        return {"generation": self.generation, "population": len(self.parents), "early_exits": self.early_exits}
