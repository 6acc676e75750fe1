"""Predictor-guided search: evaluate the archs a surrogate ranks highest among random candidates.

The search loop of the semi-supervised assessor (Tang et al., "A
Semi-Supervised Assessor of Neural Architectures", CVPR 2020, arXiv
2005.06821: the assessor picks which architectures to evaluate) and of
"neural predictor" searches (Wen et al., "Neural Predictor for Neural
Architecture Search", ECCV 2020: fit on N evaluated archs, rank a large
random sample, evaluate the top). Here in rounds:

1. `warmup` uniform random archs are evaluated;
2. each round the predictor (`model`: "mlp" -> `MLPPredictor`, "assessor" ->
   `SemiSupervisedAssessor`, or any name in `core.predictors.PREDICTORS`) is
   fitted on every evaluated arch (targets: `objective.fitness`, failures at
   the worst finite value), `pool_size` fresh random archs not asked before
   are scored, and the `round_size` best are evaluated. The assessor's
   unlabelled archs are that same candidate pool (its graph then links every
   candidate to the labelled archs it resembles).

`predictor` passes settings to the model (e.g. `{epochs: 100, ensemble: 3}`);
its keys are checked against the model's arguments. The model is reseeded
each round from the strategy's seed and the round number, so the strategy is
deterministic for a seed and a sequence of tells.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from core.engine.registry import STRATEGIES, ConfigError, check_kwargs
from core.objective import Objective
from core.predictors.base import PREDICTORS
from core.api import Arch, SearchSpace
from core.strategies.base import QueuedStrategy


@STRATEGIES.register("predictor")
class PredictorGuided(QueuedStrategy):
    """Warm-up with random archs, then rounds of fit -> score a random pool -> evaluate the top.

    Args:
        model: "mlp" or "assessor" (or another registered predictor: "lstm", "block_mlp").
        warmup: random archs evaluated before the first fit.
        round_size: archs evaluated per round (the predictor is refitted between rounds).
        pool_size: fresh random candidates scored per round.
        predictor: keyword settings of the model.
    """

    def __init__(self, space: SearchSpace, seed: int = 0, objective: Objective | None = None, model: str = "mlp",
                 warmup: int = 10, round_size: int = 10, pool_size: int = 300,
                 predictor: dict[str, Any] | None = None):
        super().__init__(space, seed, objective)
        for name, value in (("warmup", warmup), ("round_size", round_size), ("pool_size", pool_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"strategy.{name}: expected an integer >= 1, got {value!r}")
        cls = PREDICTORS.get(model, "strategy.model")
        self.model = model
        self.predictor_settings = check_kwargs(cls, dict(predictor or {}), "strategy.predictor")
        if "space" in self.predictor_settings or "seed" in self.predictor_settings:
            raise ConfigError("strategy.predictor: 'space' and 'seed' are set by the strategy")
        self.warmup, self.round_size, self.pool_size = warmup, round_size, pool_size
        self.rounds = 0
        self.last_predictor = None

    def _pool(self) -> list[Arch]:
        """Up to `pool_size` distinct archs never asked, sampled uniformly."""
        pool: dict[Arch, None] = {}
        tries = 0
        while len(pool) < self.pool_size and tries < 5 * self.pool_size:
            arch = self.space.sample(self.rng)
            tries += 1
            if arch not in self.seen:
                pool[arch] = None
        return list(pool)

    def refill(self) -> None:
        self.rounds += 1
        pool = self._pool()
        if not pool:                                     # every arch was asked: the space is exhausted
            self.queue.append(self.space.sample(self.rng))
            return
        archs = [a for a, _ in self.history]
        targets = [self.fitness(r) for _, r in self.history]
        kwargs = dict(self.predictor_settings)
        if self.model == "assessor":
            kwargs.setdefault("max_unlabelled", max(self.pool_size, 1))
        predictor = PREDICTORS.get(self.model)(space=self.space, seed=self.seed * 100003 + self.rounds, **kwargs)
        predictor.fit(archs, targets, unlabelled=pool)
        scores = np.asarray(predictor.predict(pool), dtype=float)
        order = np.argsort(-scores, kind="stable")[:self.round_size]
        self.queue.extend(pool[i] for i in order)
        self.last_predictor = predictor
