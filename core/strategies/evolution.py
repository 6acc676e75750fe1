"""Regularized (aging) evolution, Real et al., "Regularized Evolution for Image Classifier
Architecture Search", AAAI 2019, Algorithm 1.

Population of size P filled with random archs; then each child is a mutation
of the best of S archs sampled uniformly (without replacement) from the
population, and the oldest member dies when a child joins.
Paper defaults on CIFAR: P=100, S=25; our defaults are smaller for short searches.
"""

from __future__ import annotations

from collections import deque

from core.engine.registry import STRATEGIES
from core.evaluation.result import Result
from core.api import Arch, SearchSpace
from core.strategies.base import Strategy
from core.objective import Objective


@STRATEGIES.register("evolution")
class RegularizedEvolution(Strategy):
    def __init__(self, space: SearchSpace, seed: int = 0, objective: Objective | None = None,
                 population_size: int = 20, sample_size: int = 5):
        super().__init__(space, seed, objective)
        if population_size < 2:
            raise ValueError(f"strategy.population_size must be >= 2, got {population_size}")
        if not 1 <= sample_size <= population_size:
            raise ValueError(f"strategy.sample_size must be in [1, population_size={population_size}], got {sample_size}")
        self.population_size = population_size
        self.sample_size = sample_size
        self.population: deque[tuple[Arch, float]] = deque()

    def propose(self) -> Arch:
        if self.asked < self.population_size or not self.population:
            return self.fresh(lambda: self.space.sample(self.rng))
        k = min(self.sample_size, len(self.population))
        parent = max(self.rng.sample(list(self.population), k), key=lambda m: m[1])[0]
        return self.fresh(lambda: self.space.mutate(parent, self.rng))

    def tell(self, arch: Arch, result: Result) -> None:
        super().tell(arch, result)
        self.population.append((arch, self.fitness(result)))
        if len(self.population) > self.population_size:
            self.population.popleft()
