"""EcoNAS's hierarchical proxy: evolution whose candidates climb through proxies of growing cost.

Zhou, Zhou, Zhang, Loy, Yi, Zhang, Ouyang. "EcoNAS: Finding Proxies for
Economical Neural Architecture Search", CVPR 2020 (arXiv 2001.01233), Sec. 4
(hierarchical proxy strategy); official code `DongzhanZhou/EcoNAS`,
`search/main.py` and `search/train.py` (METHODS.md 1.2).

One training schedule (paper: a 60-epoch cosine schedule) is cut into `S`
segments (paper: 3 of 20 epochs; `segment_epochs`, or by default the
evaluator's whole schedule cut as evenly as whole epochs allow). Pool e_k
holds the networks that have completed k segments. The search:

1. trains `population_size` (16) random archs for one segment (pool e1);
2. each of `iterations` (100) iterations, on the networks still alive:
   a. continues the top `continue_top[k]` of pool e_{k+1} by accuracy for one
      more segment (top-8 of e1, top-4 of e2), which moves them up a pool;
   b. makes `children` (6 / 5 / 5) children from e1 / e2 / e3: each mother is
      the best of floor(n/4)+1 networks drawn at random (with replacement,
      as `sample()` in the official code) from the pool's n ranked networks,
      and the child is one mutation of her (`space.mutate`: one op or one
      input on the DARTS space), trained for one segment into e1;
   c. a network not trained for `max_age` (10) iterations drops out of the
      pools (finished e3 networks thus age out too).
   A child that repeats an arch already trained (every neighbour of its
   mother was tried) is skipped rather than trained twice.
   Mothers and continued networks are chosen from the pools as they stand at
   the start of the iteration, as in `search/main.py`.

Networks are ranked by their best accuracy over the segments done (the
official `best_acc`), through the objective's fitness. The result of the
search is the best network that completed all segments (`best()`).

Multi-fidelity evaluation. The hierarchical search runs through
`EcoNAS.run(evaluator, budget_epochs)`, which drives a `MultiFidelityEvaluator`:
anything with `evaluate_at(arch, epochs) -> Result` giving the result after
`epochs` epochs of the full schedule (the tabular benchmark answers from its
per-epoch table; the train evaluator keeps each network's model, optimizer,
scheduler and data order in memory and resumes them, so segment k continues
segment k-1 of one cosine schedule).
The cost is counted in training epochs: a segment costs its length in
epochs, whatever the backend, and `budget_epochs` stops the search before
the training that would exceed it.

`archforge search` runs the hierarchical search through the searcher
protocol (`search(context)`: the configured evaluator, `search.budget` in
training epochs, every segment evaluation journaled). The plain ask/tell
interface (one fixed fidelity, for programmatic use) runs the single-proxy
variant of the official code,
`search/main_single.py`: 16 random archs, then rounds of 16 children whose
mothers are tournament winners of the one pool, with the same aging.

Proxy reliability decides whether this pays: on the shipped tabular
benchmark the 3-epoch accuracy says little about the 10-epoch one (Spearman
about 0.3), so the paper's 3 segments do worse than random search there at
the same epoch budget, while 2 segments (5/10 epochs, Spearman about 0.7)
do as well or better; on a landscape whose proxy is reliable it wins
clearly (numbers in docs/strategies.md).

Deviations: the official `train.py` keeps only the weights between segments
(a fresh SGD optimizer whose learning rate follows the cosine schedule);
the train evaluator keeps the optimizer's momentum too. Networks that fail
(NaN loss, error) leave the pools at once.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from core.engine.registry import STRATEGIES, ConfigError
from core.evaluation.result import Result
from core.objective import Objective
from core.api import Arch, SearchSpace
from core.oneshot.base import SearchContext, Searcher
from core.strategies.base import Strategy


@runtime_checkable
class MultiFidelityEvaluator(Protocol):
    """An evaluator that can answer for an arch after `epochs` epochs of its full training schedule."""

    def evaluate_at(self, arch: Arch, epochs: int) -> Result: ...


def as_multi_fidelity(evaluator: Any) -> MultiFidelityEvaluator:
    """`evaluator` when it can evaluate at a chosen number of epochs, else a one-line error."""
    if isinstance(evaluator, MultiFidelityEvaluator):
        return evaluator
    raise TypeError(f"{type(evaluator).__name__} cannot evaluate at a chosen number of epochs; EcoNAS needs "
                    "evaluate_at(arch, epochs) (the train or tabular evaluator)")


def schedule_epochs(evaluator: Any) -> int | None:
    """The length of the evaluator's full schedule, when it says (max_epochs, epochs)."""
    for name in ("max_epochs", "epochs", "max_epoch"):
        value = getattr(evaluator, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


# ---------------------------------------------------------------------------------------------
# the strategy
# ---------------------------------------------------------------------------------------------
@dataclass
class Net:
    """One network of the hierarchical search."""

    arch: Arch
    born: int                 # iteration it was created (0: the initial population)
    level: int = 0            # segments completed
    last_updated: int = 0     # iteration of its last training
    scores: list[float] = field(default_factory=list)   # fitness after each segment
    results: list[Result] = field(default_factory=list)
    failed: bool = False
    dropped: bool = False

    @property
    def best_score(self) -> float:
        return max(self.scores) if self.scores else -math.inf


@dataclass
class EcoNASSummary:
    best_arch: Arch | None
    best_result: Result | None
    epochs_used: int
    segment_evaluations: int
    iterations: int
    records: list[tuple[Arch, int, Result]]   # every segment evaluation: (arch, cumulative epochs, result)
    seconds: float


class BudgetExhausted(Exception):
    pass


@STRATEGIES.register("econas")
class EcoNAS(Strategy, Searcher):
    """EcoNAS hierarchical proxy (Zhou et al., CVPR 2020, Sec. 4); see the module docstring.

    Config keys (paper values in brackets): `population_size` (16),
    `iterations` (100), `segments` (3), `segment_epochs` (null: the
    evaluator's schedule divided by `segments`; paper 20), `continue_top`
    ([8, 4]: how many of e1, e2, ... train on each iteration),
    `children` ([6, 5, 5]: children whose mothers come from e1, e2, e3),
    `max_age` (10 iterations), `budget_epochs` (null: no limit; the training
    epochs `run` may spend).
    """

    uses_evaluator = True

    def __init__(self, space: SearchSpace, seed: int = 0, objective: Objective | None = None,
                 population_size: int = 16, iterations: int = 100, segments: int = 3,
                 segment_epochs: int | None = None, continue_top: list | None = None, children: list | None = None,
                 max_age: int = 10, budget_epochs: int | None = None):
        super().__init__(space, seed, objective)
        continue_top = [8, 4] if continue_top is None else list(continue_top)
        children = [6, 5, 5] if children is None else list(children)
        for key, value, low in (("population_size", population_size, 1), ("iterations", iterations, 0),
                                ("segments", segments, 1), ("max_age", max_age, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"strategy.{key}: expected an int >= {low}, got {value!r}")
        if segment_epochs is not None and (not isinstance(segment_epochs, int) or segment_epochs < 1):
            raise ConfigError(f"strategy.segment_epochs: expected an int >= 1 or null, got {segment_epochs!r}")
        if len(continue_top) != segments - 1 or any(not isinstance(k, int) or k < 0 for k in continue_top):
            raise ConfigError(f"strategy.continue_top: expected {segments - 1} ints >= 0 (one per pool e1.."
                              f"e{segments - 1}), got {continue_top!r}")
        if len(children) != segments or any(not isinstance(k, int) or k < 0 for k in children) or not sum(children):
            raise ConfigError(f"strategy.children: expected {segments} ints >= 0 (one per pool e1..e{segments}) "
                              f"with a positive sum, got {children!r}")
        if budget_epochs is not None and budget_epochs < 1:
            raise ConfigError(f"strategy.budget_epochs: expected a positive int or null, got {budget_epochs!r}")
        self.population_size, self.iterations, self.segments = population_size, iterations, segments
        self.segment_epochs, self.continue_top, self.children = segment_epochs, continue_top, children
        self.max_age, self.budget_epochs = max_age, budget_epochs
        self.nets: dict[Arch, Net] = {}
        self.records: list[tuple[Arch, int, Result]] = []
        self.epochs_used = 0
        # ask/tell (single proxy) state
        self._pool: list[tuple[Arch, float, int]] = []   # (arch, fitness, iteration born)
        self._born: dict[Arch, int] = {}

    # -- shared pieces -----------------------------------------------------------------------------
    def _tournament(self, ranked: Sequence[Any]) -> Any:
        """Official `sample(N, S, 1)`: the best-ranked of floor(n/4)+1 indices drawn with replacement."""
        n = len(ranked)
        return ranked[min(self.rng.randrange(n) for _ in range(n // 4 + 1))]

    # -- ask/tell: the single-proxy variant (search/main_single.py) -------------------------------------
    def _iteration_of(self, index: int) -> int:
        return 0 if index < self.population_size else 1 + (index - self.population_size) // sum(self.children)

    def propose(self) -> Arch:
        iteration = self._iteration_of(self.asked)
        alive = [(a, f) for a, f, born in self._pool if iteration - born < self.max_age and f > -math.inf]
        if iteration == 0 or not alive:
            return self.fresh(lambda: self.space.sample(self.rng))
        ranked = [a for a, _ in sorted(alive, key=lambda m: -m[1])]
        mother = self._tournament(ranked)
        return self.fresh(lambda: self.space.mutate(mother, self.rng))

    def ask(self, n: int = 1) -> list[Arch]:
        archs = []
        for _ in range(n):
            arch = self.propose()
            self._born.setdefault(arch, self._iteration_of(self.asked))
            archs.append(arch)
            self.asked += 1
        return archs

    def tell(self, arch: Arch, result: Result) -> None:
        super().tell(arch, result)
        born = self._born.get(arch, self._iteration_of(max(0, self.asked - 1)))
        self._pool.append((arch, self.fitness(result), born))

    # -- the hierarchical search ---------------------------------------------------------------------
    def search(self, context: SearchContext) -> Arch:
        """The searcher protocol: the hierarchical search with the configured evaluator; `context.budget`
        counts training epochs; every segment evaluation is journaled with its cumulative `epoch`."""
        def record(arch: Arch, epochs: int, result: Result) -> None:
            result.metrics.setdefault("epoch", float(epochs))
            if context.record:
                context.record(arch, result)

        self.summary = self.run(context.make_evaluator(), budget_epochs=context.budget, on_result=record)
        if self.summary.best_arch is None:
            raise RuntimeError("EcoNAS found no network that trained without failing; see journal.sqlite")
        return self.summary.best_arch

    def report(self) -> dict[str, Any]:
        s = getattr(self, "summary", None)
        if s is None:
            return {}
        return {"best_metrics": s.best_result.metrics if s.best_result else None, "epochs_used": s.epochs_used,
                "segment_evaluations": s.segment_evaluations, "iterations": s.iterations}

    def run(self, evaluator: Any, budget_epochs: int | None = None,
            on_result: Callable[[Arch, int, Result], None] | None = None) -> EcoNASSummary:
        """Run the hierarchical proxy search against a multi-fidelity evaluator (see the module docstring)."""
        start = time.perf_counter()
        backend = as_multi_fidelity(evaluator)
        ends = self.segment_ends(backend)
        budget = budget_epochs if budget_epochs is not None else self.budget_epochs
        iteration_count = 0

        def train(net: Net, iteration: int) -> None:
            epochs = ends[net.level]
            cost = epochs - (ends[net.level - 1] if net.level else 0)
            if budget is not None and self.epochs_used + cost > budget:
                raise BudgetExhausted
            try:
                result = backend.evaluate_at(net.arch, epochs)
            except Exception as err:  # noqa: BLE001 - a candidate's failure never stops the search
                result = Result.failed(f"{type(err).__name__}: {err}")
            self.epochs_used += cost
            self.records.append((net.arch, epochs, result))
            if on_result:
                on_result(net.arch, epochs, result)
            net.level += 1
            net.last_updated = iteration
            net.results.append(result)
            net.scores.append(self.fitness(result))
            if not result.ok or not math.isfinite(net.scores[-1]):
                net.failed = True
                self._release(backend, net)
            elif net.level >= self.segments:
                self._release(backend, net)

        def new_net(arch: Arch, iteration: int) -> Net:
            net = Net(arch, born=iteration)
            self.nets[arch] = net
            return net

        try:
            for _ in range(self.population_size):
                arch = self.fresh(lambda: self.space.sample(self.rng))
                if arch not in self.nets:
                    train(new_net(arch, 0), 0)
            for iteration in range(self.iterations):
                pools = self._pools(iteration, backend)
                continued = [net for k in range(self.segments - 1) for net in pools[k][: self.continue_top[k]]]
                mothers = [self._tournament(pools[k]) for k in range(self.segments) if pools[k]
                           for _ in range(self.children[k])]
                kids = []
                for mother in mothers:
                    child = self.fresh(lambda m=mother: self.space.mutate(m.arch, self.rng))
                    if child not in self.nets:  # every neighbour tried already: no child from this mother
                        kids.append(new_net(child, iteration))
                for net in continued:
                    train(net, iteration)
                for net in kids:
                    train(net, iteration)
                iteration_count = iteration + 1
        except BudgetExhausted:
            pass
        best = self._best_net()
        return EcoNASSummary(best_arch=best.arch if best else None, best_result=best.results[-1] if best else None,
                             epochs_used=self.epochs_used, segment_evaluations=len(self.records),
                             iterations=iteration_count, records=list(self.records),
                             seconds=time.perf_counter() - start)

    def segment_ends(self, evaluator: Any = None) -> list[int]:
        """Cumulative epochs at the end of each segment: `k * segment_epochs`, or, when that is null, the
        evaluator's schedule cut as evenly as whole epochs allow (10 epochs, 3 segments: 3, 7, 10)."""
        if self.segment_epochs is not None:
            return [k * self.segment_epochs for k in range(1, self.segments + 1)]
        total = schedule_epochs(evaluator)
        if total is None:
            raise ConfigError("strategy.segment_epochs: the evaluator does not say how long its schedule is; "
                              "set segment_epochs")
        if total < self.segments:
            raise ConfigError(f"strategy.segments: {self.segments} segments do not fit the evaluator's "
                              f"{total}-epoch schedule")
        return [round(k * total / self.segments) for k in range(1, self.segments + 1)]

    def _release(self, backend: Any, net: Net) -> None:
        release = getattr(backend, "release", None)
        if release is not None:
            release(net.arch)

    def _pools(self, iteration: int, backend: Any = None) -> list[list[Net]]:
        """Pools e1..eS of live networks, each ranked by best accuracy (drops the stale ones first)."""
        pools: list[list[Net]] = [[] for _ in range(self.segments)]
        for net in self.nets.values():
            if net.dropped or net.failed or net.level == 0:
                continue
            if iteration - net.last_updated >= self.max_age:
                net.dropped = True
                self._release(backend, net)
                continue
            pools[net.level - 1].append(net)
        for pool in pools:
            pool.sort(key=lambda n: -n.best_score)  # stable: ties keep creation order
        return pools

    def pools(self) -> list[list[Arch]]:
        """The archs of pools e1..eS as they stand (live networks, ranked), for inspection."""
        live = [[n.arch for n in pool] for pool in self._pools(max((n.last_updated for n in self.nets.values()),
                                                                    default=0))]
        return live

    def _best_net(self) -> Net | None:
        """The best network at the deepest level any network reached (all segments, once any finished)."""
        done = [n for n in self.nets.values() if not n.failed and n.level > 0]
        if not done:
            return None
        top = max(n.level for n in done)
        return max((n for n in done if n.level == top), key=lambda n: n.scores[-1])

    def best(self) -> tuple[Arch, Result] | None:
        if self.nets:
            net = self._best_net()
            return (net.arch, net.results[-1]) if net else None
        return super().best()
