"""The search loop: space + strategy + evaluator + objective + journal + executor.

Resuming replays the strategy against the journal: trial i of the new run
must ask the same arch as trial i of the journal (strategies are
deterministic for a seed and a sequence of tells), and its recorded result is
told instead of evaluating again. An arch seen before in the same search is
answered from the cache and journaled as `cached`, so nothing is evaluated
twice and nothing is lost after a kill.

Before it pays for an evaluation, the loop checks the objective's hard
constraints on the metrics the evaluator knows without training
(`Evaluator.cost_metrics`: params, MACs, table latency). An arch that breaks
one is journaled as `infeasible` with those metrics and told to the strategy
(fitness -inf) but not trained, and it does not count towards the budget:
`search.budget` is the number of architectures actually evaluated. This is
EEEA-Net's early exit (Termritthikun et al., 2021, Sec. 3.2) applied to every
strategy: the MACs of a candidate are known before a second of training.
When the last `max_rejected` proposals in a row all broke a constraint, the
search stops and says so (`SearchSummary.stop_reason`, with the closest value
seen): a constraint no arch of the space meets must not sample for ever.

`on_trial(i, arch, result)` is called after every trial; a callback that
returns True ends the search after the current batch (e.g. once a target
accuracy is reached), with everything so far journaled as usual.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from core.evaluation.base import Evaluator
from core.evaluation.result import Result
from core.executors import SerialExecutor
from core.journal import Journal, Trial
from core.objective import Objective
from core.api import Arch, SearchSpace
from core.strategies.base import Strategy


INFEASIBLE = "infeasible"


class ResumeError(RuntimeError):
    """The journal was written by a different search (seed, strategy, space or evaluator changed)."""


@dataclass
class SearchSummary:
    best_arch: Arch | None
    best_result: Result | None
    trials: list[tuple[Arch, Result]]
    pareto: list[tuple[Arch, Result]]
    evaluations: int
    replayed: int
    seconds: float
    infeasible: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    #: why the search ended before its budget (e.g. every recent proposal broke a constraint), else None
    stop_reason: str | None = None


class Search:
    def __init__(self, space: SearchSpace, strategy: Strategy, evaluator: Evaluator, objective: Objective,
                 journal: Journal, budget: int, executor: SerialExecutor | None = None, batch_size: int = 1,
                 progress: bool = True, on_trial: Callable[[int, Arch, Result], bool | None] | None = None,
                 max_rejected: int = 200):
        if budget < 1:
            raise ValueError(f"search.budget must be >= 1, got {budget}")
        if batch_size < 1:
            raise ValueError(f"search.batch_size must be >= 1, got {batch_size}")
        self.space, self.strategy, self.evaluator = space, strategy, evaluator
        self.objective, self.journal, self.budget = objective, journal, budget
        self.executor = executor or SerialExecutor()
        self.batch_size, self.progress, self.on_trial = batch_size, progress, on_trial
        strategy.objective = objective
        self.fingerprint = evaluator.fingerprint()
        #: proposals rejected before training, at most this many (a strategy stuck outside the constraints)
        self.max_infeasible = max(1000, 50 * budget)
        #: ... and at most this many in a row: a constraint no arch of the space meets stops the search early
        self.max_rejected = max_rejected

    def _precheck(self, arch: Arch) -> Result | None:
        """An `infeasible` result when a constraint fails on the metrics known before training, else None."""
        if not self.objective.constraints:
            return None
        metrics = self.evaluator.cost_metrics(arch)
        if not metrics:
            return None
        broken = [c for c in self.objective.constraints if c.metric in metrics and not c.satisfied(metrics)]
        if not broken:
            return None
        why = "; ".join(f"{c.metric} = {metrics[c.metric]:g} breaks {c}" for c in broken)
        return Result(metrics=dict(metrics), status=INFEASIBLE, reason=f"{why} (checked before training)")

    def _check_journal(self) -> list[Trial]:
        stored = self.journal.get_meta("fingerprint")
        if stored is None:
            self.journal.set_meta("fingerprint", self.fingerprint)
        elif stored != self.fingerprint:
            raise ResumeError(f"journal {self.journal.path} was written by another evaluator recipe "
                              f"(fingerprint {stored}, now {self.fingerprint}); start a new run folder")
        return self.journal.trials()

    def run(self) -> SearchSummary:
        start = time.perf_counter()
        past = self._check_journal()
        cache: dict[Arch, Result] = {t.arch: t.result for t in past if not t.cached}
        trials: list[tuple[Arch, Result]] = []
        evaluations = counted = infeasible = 0
        bar = tqdm(total=self.budget, desc="search", unit="arch", disable=not self.progress, dynamic_ncols=True)
        best = -math.inf
        stopped = False
        in_a_row: list[Result] = []
        stop_reason = None
        while counted < self.budget and infeasible < self.max_infeasible and not stopped:
            archs = self.strategy.ask(min(self.batch_size, self.budget - counted))
            results: list[Result | None] = [None] * len(archs)
            fresh: list[int] = []
            rejected_now: set[int] = set()
            for i, arch in enumerate(archs):
                index = len(trials) + i
                if index < len(past):
                    if past[index].arch != arch:
                        raise ResumeError(
                            f"trial {index}: the strategy now asks {arch.key} but the journal has {past[index].arch.key}; "
                            "the seed, strategy or space changed since this journal was written")
                    results[i] = past[index].result
                elif arch in cache:
                    results[i] = cache[arch]
                elif (rejected := self._precheck(arch)) is not None:
                    results[i] = cache[arch] = rejected
                    rejected_now.add(i)
                else:
                    fresh.append(i)
            new = self.executor.map(self.evaluator, [archs[i] for i in fresh])
            for i, result in zip(fresh, new):
                results[i] = result
            fresh_set = set(fresh)
            step = 0
            for i, (arch, result) in enumerate(zip(archs, results)):
                if len(trials) >= len(past):
                    self.journal.record(arch, result, self.fingerprint, cached=i not in fresh_set and i not in rejected_now)
                if i in fresh_set:
                    cache[arch] = result
                    evaluations += 1
                self.strategy.tell(arch, result)
                trials.append((arch, result))
                if result.status == INFEASIBLE:
                    infeasible += 1
                    in_a_row.append(result)
                else:
                    counted += 1
                    step += 1
                    in_a_row = []
                if self.on_trial and self.on_trial(len(trials) - 1, arch, result):
                    stopped = True  # the callback asked to stop; the rest of this batch is still recorded
                best = max(best, self.objective.fitness(result))
            bar.update(step)
            if math.isfinite(best):
                bar.set_postfix({self.objective.metric: f"{abs(best):.4g}"}, refresh=False)
            if len(in_a_row) >= self.max_rejected:
                stop_reason = self._unreachable(in_a_row)
                break
        bar.close()
        best_entry = self._best(trials)
        return SearchSummary(
            best_arch=best_entry[0] if best_entry else None, best_result=best_entry[1] if best_entry else None,
            trials=trials, pareto=self.objective.pareto_front(trials), evaluations=evaluations,
            replayed=min(len(past), len(trials)), seconds=time.perf_counter() - start, infeasible=infeasible,
            stop_reason=stop_reason)

    def _unreachable(self, rejected: list[Result]) -> str:
        """Why the search stopped: the constraints the last proposals broke, with the best value seen for each."""
        parts = []
        for c in self.objective.constraints:
            values = [r.metrics[c.metric] for r in rejected if c.metric in r.metrics and not c.satisfied(r.metrics)]
            if values:
                best = min(values) if c.op in ("<=", "<") else max(values)
                parts.append(f"{c} (closest: {best:.4g})")
        return (f"the last {len(rejected)} proposals all broke {' / '.join(parts) or 'the constraints'} before "
                f"training; this space may have no arch within the constraint: loosen it, or raise "
                f"search.max_rejected if the strategy only needs longer to find one")

    def _best(self, trials: list[tuple[Arch, Result]]) -> tuple[Arch, Result] | None:
        best = None
        for arch, result in trials:
            if self.objective.fitness(result) > -math.inf and (best is None or self.objective.better(result, best[1])):
                best = (arch, result)
        return best
