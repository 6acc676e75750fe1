"""Tree-structured Parzen Estimator (TPE) through optuna's `TPESampler`.

Bergstra, Bardenet, Bengio, Kegl. "Algorithms for Hyper-Parameter
Optimization", NeurIPS 2011, Sec. 4 (TPE). Used for NAS by CSNAS (Nguyen &
Chang, arXiv 2102.10557, Sec. 3.3: SMBO-TPE with `hyperopt.fmin(tpe.suggest,
max_evals=120)`, one `hp.choice` per DARTS edge); see METHODS.md 1.4.

Every `Choice` of the space becomes one optuna categorical over the option
*indices* (option values may be tuples, which optuna's categoricals cannot
hold; TPE's categorical kernel ignores the order of the indices). Trials go
through optuna's in-memory ask/tell interface (`study.ask()` / `study.tell()`),
so the strategy is deterministic for a seed and a sequence of tells.

Defaults are hyperopt's, which CSNAS actually ran (its tuned `partial(tpe.suggest,
n_startup_jobs=20, gamma=0.2, ...)` is defined but never passed): 20 random
startup trials, 24 expected-improvement candidates, and hyperopt's split
`n_below = min(ceil(gamma * sqrt(n)), 25)` with gamma = 0.25
(`TPESampler.hyperopt_parameters()`). `gamma: null` keeps optuna's own split
`min(ceil(0.1 * n), 25)` instead; optuna 5 marks the gamma argument deprecated
(to be removed in 6.0), and this file then falls back to optuna's split.

Decisions and deviations:
- Failed or infeasible results (fitness -inf: NaN, exception, violated
  constraint) are told to optuna as COMPLETE trials with value -inf, not as
  FAIL: optuna's TPE ignores FAIL trials, so it would keep sampling the region
  that fails; -inf puts them in the "bad" density, and TPE uses only the rank
  of values, so the infinite magnitude distorts nothing.
- An arch the space rejects (`constraint_error`) is told -inf at once and a
  new one is asked.
- TPE may propose an arch it has proposed before (hyperopt does too, and in a
  small space it does so often once its densities peak). Instead of spending
  a query on the repeat, the known fitness is told to that optuna trial at
  once (the observation hyperopt would get by evaluating it again), or, while
  the first copy is still being evaluated, the trial waits for that result;
  then a new arch is asked, up to `max_duplicate_tries` times, and after that
  a fresh random arch is taken and told to optuna as an ordinary trial
  (`enqueue_trial`). Measured on an earlier build of the tabular benchmark
  (cell201, train fraction 0.5; 15 seeds, budget 100, queries to reach the
  top 1%): closing repeats as FAIL instead (TPE ignores FAIL trials) left
  TPE close to random search (median 79 vs 94 queries) and ran 4x slower;
  telling the known value gave 42; 20 retries instead of 5 gave the same 42
  at 4x the run time.
- Inactive choices (`space.canonical`) keep the values TPE sampled in the
  optuna trial; the arch proposed is the canonical one.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

from core.engine.registry import STRATEGIES, ConfigError
from core.evaluation.result import Result
from core.objective import Objective
from core.api import Arch, SearchSpace
from core.strategies.base import Strategy


def hyperopt_gamma(gamma: float):
    """hyperopt's split: the best `min(ceil(gamma * sqrt(n)), 25)` of n trials form the 'good' density."""

    def split(n: int) -> int:
        return min(int(math.ceil(gamma * math.sqrt(n))), 25)

    split.__qualname__ = f"hyperopt_gamma({gamma:g})"
    return split


@STRATEGIES.register("tpe")
class TPE(Strategy):
    """TPE over one categorical per choice (optuna `TPESampler`, hyperopt's split and candidates).

    Config keys: `n_startup_trials` (10: optuna's default; hyperopt's, which
    CSNAS ran, is 20, and on the tabular benchmark 20 random start-up trials
    cost a third of random search's whole median: 42.5 queries to the top 1 %
    against 21.5 with 10, 20 seeds, docs/strategies.md), `n_ei_candidates` (24), `gamma` (0.25,
    hyperopt's rule; null for optuna's), `multivariate` (false: independent
    per-choice densities as in hyperopt; true: optuna's multivariate TPE),
    `group` (false), `constant_liar` (true: archs asked but not yet told count
    as bad, which spreads the archs of one batch), `max_duplicate_tries` (5).
    """

    def __init__(self, space: SearchSpace, seed: int = 0, objective: Objective | None = None,
                 n_startup_trials: int = 10, n_ei_candidates: int = 24, gamma: float | None = 0.25,
                 multivariate: bool = False, group: bool = False, constant_liar: bool = True,
                 max_duplicate_tries: int = 5):
        super().__init__(space, seed, objective)
        if n_startup_trials < 1:
            raise ConfigError(f"strategy.n_startup_trials: expected an int >= 1, got {n_startup_trials!r}")
        if n_ei_candidates < 1:
            raise ConfigError(f"strategy.n_ei_candidates: expected an int >= 1, got {n_ei_candidates!r}")
        if gamma is not None and not 0 < gamma <= 1:
            raise ConfigError(f"strategy.gamma: expected a number in (0, 1] or null, got {gamma!r}")
        if group and not multivariate:
            raise ConfigError("strategy.group: true needs strategy.multivariate: true (optuna's rule)")
        if max_duplicate_tries < 0:
            raise ConfigError(f"strategy.max_duplicate_tries: expected an int >= 0, got {max_duplicate_tries!r}")
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.n_startup_trials, self.n_ei_candidates, self.gamma = n_startup_trials, n_ei_candidates, gamma
        self.multivariate, self.group, self.constant_liar = multivariate, group, constant_liar
        self.max_duplicate_tries = max_duplicate_tries
        kwargs: dict[str, Any] = dict(n_startup_trials=n_startup_trials, n_ei_candidates=n_ei_candidates, seed=seed,
                                      multivariate=multivariate, group=group, constant_liar=constant_liar,
                                      warn_independent_sampling=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ExperimentalWarning (multivariate/group), FutureWarning (gamma)
            try:
                sampler = optuna.samplers.TPESampler(
                    **kwargs, **({"gamma": hyperopt_gamma(gamma)} if gamma is not None else {}))
            except TypeError:  # an optuna without the deprecated `gamma` argument: use its own split
                sampler = optuna.samplers.TPESampler(**kwargs)
            self.study = optuna.create_study(direction="maximize", sampler=sampler)
        self._distributions = {c.name: optuna.distributions.CategoricalDistribution(list(range(len(c))))
                               for c in space.choices}
        self._pending: dict[Arch, list[Any]] = {}   # arch -> optuna trials waiting for its result
        self._known: dict[Arch, float] = {}        # arch -> fitness told

    # -- optuna plumbing -------------------------------------------------------------------------
    def _tell_optuna(self, trial, value: float) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.study.tell(trial, value)

    def _ask_optuna(self):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trial = self.study.ask(self._distributions)
        return trial, Arch({c.name: c.options[trial.params[c.name]] for c in self.space.choices})

    def propose(self) -> Arch:
        for _ in range(self.max_duplicate_tries + 1):
            trial, arch = self._ask_optuna()
            if self.space.constraint_error(arch) is not None:
                self._tell_optuna(trial, -math.inf)
                continue
            arch = self.space.canonical(arch)
            if arch in self._known:  # a repeat: tell optuna what it is (no query spent) and ask again
                self._tell_optuna(trial, self._known[arch])
                continue
            if arch in self._pending:  # a repeat of an arch being evaluated: the trial waits for its result
                self._pending[arch].append(trial)
                continue
            self.seen.add(arch)
            self._pending[arch] = [trial]
            return arch
        # TPE keeps proposing known archs: take a fresh random one and tell optuna its params
        arch = self.fresh(lambda: self.space.sample(self.rng))
        if arch in self._pending:
            return arch
        params = {c.name: c.index(arch[c.name]) for c in self.space.choices}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.study.enqueue_trial(params)
        trial, _ = self._ask_optuna()
        if arch in self._known:
            self._tell_optuna(trial, self._known[arch])
        else:
            self._pending[arch] = [trial]
        return arch

    def tell(self, arch: Arch, result: Result) -> None:
        super().tell(arch, result)
        value = self.fitness(result)
        self._known[arch] = value
        for trial in self._pending.pop(arch, []):
            self._tell_optuna(trial, value)
