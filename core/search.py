"""The search loop: space + strategy + evaluator + objective + journal + executor.

Asynchronous ask/tell. Up to `capacity` candidates are out at once (the
executor's workers, or `batch_size` when larger); as soon as a slot is free
the strategy is asked for the next candidate, and results are told one at a
time, so a strategy always proposes with some evaluations pending. Strategies
that need a whole round told first (PNAS levels, predictor-ranked batches)
return fewer archs than asked, or none, and the loop asks again after the
next result. `search.tell_order` decides which finished result is told next:

- `submission` (default): in the order the archs were asked. Which archs a
  strategy sees before each ask is then fixed by the seed and the capacity,
  so for a fixed seed and worker count the evaluated archs are the same on
  every run; a worker whose candidate finishes before an older one waits.
- `completion`: as they finish. No worker waits on a slow candidate; which
  archs are evaluated depends on timing.

The journal, written by this driver only, is the record of both: every ask
(`asks`: its call, and how many results had been told before it) and every
tell (`trials`, in tell order) is committed before the next step. A resumed
search replays that interleaving exactly: the strategy is asked at the same
points, must propose the same archs, and is told the journaled results in
the journaled order. Asks without a result were in flight when the search
stopped: they are evaluated again, and nothing else is. An arch seen before
in the same search is answered from the cache (or waits for its evaluation
in flight) and journaled as `cached`, so nothing is evaluated twice.
Journals written before asks were recorded (one ask call per `batch_size`
trials, each after the previous batch was told) are read as such.

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

A failed evaluation (an exception, NaN, a worker that died, `timeout_s`
exceeded) is journaled as `failed` with its reason; the search goes on.
`on_trial(i, arch, result)` is called after every tell; a callback that
returns True ends the search: nothing more is asked, and the evaluations
still out are told and journaled as usual.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from core.evaluation.base import Evaluator
from core.evaluation.result import Result
from core.executors import Executor, SerialExecutor
from core.journal import Ask, Journal, Trial
from core.objective import Objective
from core.api import Arch, SearchSpace
from core.strategies.base import Strategy


INFEASIBLE = "infeasible"
TELL_ORDERS = ("submission", "completion")


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
    stop_reason: str | None = None


@dataclass
class _Pending:
    """One ask not told yet. `kind`: fresh (evaluating), cached, infeasible, waits (an arch already in flight)."""

    index: int
    arch: Arch
    kind: str = ""
    result: Result | None = None


class Search:
    def __init__(self, space: SearchSpace, strategy: Strategy, evaluator: Evaluator, objective: Objective,
                 journal: Journal, budget: int, executor: Executor | None = None, batch_size: int = 1,
                 progress: bool = True, on_trial: Callable[[int, Arch, Result], bool | None] | None = None,
                 tell_order: str = "submission", timeout_s: float | None = None, max_rejected: int = 200):
        if budget < 1:
            raise ValueError(f"search.budget must be >= 1, got {budget}")
        if batch_size < 1:
            raise ValueError(f"search.batch_size must be >= 1, got {batch_size}")
        if tell_order not in TELL_ORDERS:
            raise ValueError(f"search.tell_order: expected one of {TELL_ORDERS}, got {tell_order!r}")
        self.space, self.strategy, self.evaluator = space, strategy, evaluator
        self.objective, self.journal, self.budget = objective, journal, budget
        self.executor = executor or SerialExecutor()
        self.batch_size, self.progress, self.on_trial = batch_size, progress, on_trial
        self.tell_order = tell_order
        self.timeout_s = timeout_s if timeout_s is not None else getattr(evaluator, "timeout_s", None)
        #: candidates out at once: the executor's workers, or a whole batch when that is larger
        self.capacity = max(self.executor.workers, batch_size)
        strategy.objective = objective
        self.fingerprint = evaluator.fingerprint()
        #: proposals rejected before training, at most this many (a strategy stuck outside the constraints)
        self.max_infeasible = max(1000, 50 * budget)
        #: this many rejected proposals in a row stop the search with a reason (a constraint nothing meets)
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

    def _legacy_asks(self, past: list[Trial]) -> list[Ask]:
        """The ask log of a journal written before asks were recorded: one call per batch of `batch_size`
        (fewer at the end of the budget), each made once the previous batch was told."""
        asks: list[Ask] = []
        counted = i = call = 0
        while i < len(past):
            requested = min(self.batch_size, self.budget - counted)
            if requested < 1:
                break
            for trial in past[i:i + requested]:
                asks.append(Ask(len(asks), call, requested, i, trial.arch))
                counted += trial.result.status != INFEASIBLE
            i += requested
            call += 1
        return asks

    # -- the loop ------------------------------------------------------------------------------------
    def run(self) -> SearchSummary:
        start = time.perf_counter()
        past = self._check_journal()
        log = self.journal.asks()
        legacy = not log and bool(past)
        if legacy:
            log = self._legacy_asks(past)
        self._cache: dict[Arch, Result] = {t.arch: t.result for t in past if not t.cached}
        self._open: dict[int, _Pending] = {}           # asked, not told yet, in ask order
        self._running: dict[Arch, int] = {}            # arch -> the ask evaluating it
        self._waiting: dict[Arch, list[int]] = {}      # arch -> asks of the same arch waiting for that result
        self._asks = self._calls = 0
        self._trials: list[tuple[Arch, Result]] = []
        self._evaluations = self._counted = self._infeasible = 0
        self._stopped = self._strategy_waits = self._exhausted = False
        self._in_a_row: list[Result] = []
        self._stop_reason: str | None = None
        self._best = -math.inf
        self._bar = tqdm(total=self.budget, desc="search", unit="arch", disable=not self.progress,
                         dynamic_ncols=True)
        self._started = False  # the executor starts at the first evaluation (a replayed search may need none)
        try:
            self._replay(log, past, legacy)
            if self._counted >= self.budget:   # a smaller budget than the journal's: nothing more to run
                self._open.clear()
            for pending in list(self._open.values()):   # in flight when the journal was written: again
                self._resolve(pending)
            while True:
                self._ask_while_room()
                if not self._open:
                    break
                pending = self._next_ready()
                if pending is None:
                    for key, result in self.executor.wait():
                        self._finish(key, result)
                    continue
                self._tell(pending, live=True)
        finally:
            if self._started:
                self.executor.close()
            self._bar.close()
        best_entry = self._best_trial(self._trials)
        return SearchSummary(
            best_arch=best_entry[0] if best_entry else None, best_result=best_entry[1] if best_entry else None,
            trials=self._trials, pareto=self.objective.pareto_front(self._trials), evaluations=self._evaluations,
            replayed=min(len(past), len(self._trials)), seconds=time.perf_counter() - start,
            infeasible=self._infeasible, stop_reason=self._stop_reason)

    def _replay(self, log: list[Ask], past: list[Trial], legacy: bool) -> None:
        """Ask and tell exactly as the journal says; leave the asks without a result open.

        A journal without an ask log (`legacy`) gets the log read from its trials written once the
        replay has matched it."""
        asked: list[tuple[int, int, int, Arch]] = []     # (call, requested, tells before, arch) as replayed
        a = t = 0
        while (a < len(log) or t < len(past)) and self._counted < self.budget:
            if a < len(log) and log[a].tells_before <= t:
                group = [x for x in log[a:] if x.call == log[a].call]
                archs = self.strategy.ask(group[0].requested)
                self._calls += 1
                if len(archs) < len(group) or (len(archs) > len(group) and not (legacy and a + len(group) == len(log))):
                    raise ResumeError(f"ask {a}: the strategy now proposes {len(archs)} archs in one call where the "
                                      f"journal has {len(group)}; the strategy changed since this journal was written")
                for k, arch in enumerate(archs):
                    if k < len(group) and arch != group[k].arch:
                        raise ResumeError(
                            f"ask {a + k}: the strategy now asks {arch.key} but the journal has {group[k].arch.key}; "
                            "the seed, strategy, space or worker count changed since this journal was written")
                    # past the recorded ones: the last batch of an old journal, cut short by a kill
                    asked.append((group[0].call, group[0].requested, t if k >= len(group) else group[k].tells_before,
                                  arch))
                    self._open[self._asks] = _Pending(self._asks, arch)
                    self._asks += 1
                a += len(group)
            elif t < len(past):
                trial = past[t]
                pending = next((p for p in self._open.values() if p.arch == trial.arch), None)
                if pending is None:
                    raise ResumeError(f"trial {t}: the journal has {trial.arch.key}, which the strategy has not "
                                      "asked at this point; the seed, strategy or space changed since this journal "
                                      "was written")
                pending.result, pending.kind = trial.result, "replayed"
                self._tell(pending, live=False)
                t += 1
            else:
                raise ResumeError(f"journal {self.journal.path}: ask {a} was made after {log[a].tells_before} "
                                  f"results, but only {len(past)} are recorded")
        if legacy:
            for call in dict.fromkeys(c for c, *_ in asked):
                group = [x for x in asked if x[0] == call]
                self.journal.record_asks(call, group[0][1], group[0][2], [x[3] for x in group])

    def _room(self) -> int:
        """How many archs to ask for now: a whole batch (or the rest of the budget) once there is room for it."""
        if self._stopped or self._strategy_waits or self._exhausted or self._infeasible >= self.max_infeasible:
            return 0
        out = sum(p.kind != INFEASIBLE for p in self._open.values())
        n = min(self.batch_size, self.budget - self._counted - out)
        return n if n > 0 and self.capacity - len(self._open) >= self.batch_size else 0

    def _ask_while_room(self) -> None:
        while (n := self._room()):
            archs = self.strategy.ask(n)
            if not archs:
                if not self._open:  # nothing pending that could change its mind
                    self._exhausted = True
                self._strategy_waits = True
                return
            self.journal.record_asks(self._calls, n, len(self._trials), archs)
            self._calls += 1
            if len(archs) < n:
                self._strategy_waits = True  # the rest of its round comes after the next result
            for arch in archs:
                pending = self._open[self._asks] = _Pending(self._asks, arch)
                self._asks += 1
                self._resolve(pending)

    def _resolve(self, pending: _Pending) -> None:
        """Answer from the cache, wait for the same arch in flight, reject before training, or submit."""
        arch = pending.arch
        if arch in self._cache:
            pending.kind, pending.result = "cached", self._cache[arch]
        elif arch in self._running:
            pending.kind = "waits"
            self._waiting.setdefault(arch, []).append(pending.index)
        elif (rejected := self._precheck(arch)) is not None:
            pending.kind, pending.result = INFEASIBLE, rejected
            self._cache[arch] = rejected
        else:
            pending.kind = "fresh"
            self._running[arch] = pending.index
            if not self._started:
                self.executor.start(self.evaluator, self.timeout_s)
                self._started = True
            self.executor.submit(pending.index, arch)

    def _finish(self, key: int, result: Result) -> None:
        pending = self._open[key]
        pending.result = result
        del self._running[pending.arch]
        self._cache[pending.arch] = result
        for index in self._waiting.pop(pending.arch, []):
            self._open[index].result = result

    def _next_ready(self) -> _Pending | None:
        if self.tell_order == "submission":
            first = next(iter(self._open.values()))
            return first if first.result is not None else None
        return next((p for p in self._open.values() if p.result is not None), None)

    def _tell(self, pending: _Pending, live: bool) -> None:
        arch, result = pending.arch, pending.result
        if live:
            self.journal.record(arch, result, self.fingerprint, cached=pending.kind in ("cached", "waits"))
        if pending.kind == "fresh":
            self._evaluations += 1
        del self._open[pending.index]
        self.strategy.tell(arch, result)
        self._strategy_waits = False
        self._trials.append((arch, result))
        if result.status == INFEASIBLE:
            self._infeasible += 1
            self._in_a_row.append(result)
            if len(self._in_a_row) >= self.max_rejected and self._stop_reason is None:
                self._stop_reason = self._unreachable(self._in_a_row)
                self._stopped = True
        else:
            self._counted += 1
            self._in_a_row = []
            self._bar.update(1)
        self._best = max(self._best, self.objective.fitness(result))
        if math.isfinite(self._best):
            self._bar.set_postfix({self.objective.metric: f"{abs(self._best):.4g}"}, refresh=False)
        if self.on_trial and self.on_trial(len(self._trials) - 1, arch, result):
            self._stopped = True  # nothing more is asked; the evaluations out are still told and journaled

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

    def _best_trial(self, trials: list[tuple[Arch, Result]]) -> tuple[Arch, Result] | None:
        best = None
        for arch, result in trials:
            if self.objective.fitness(result) > -math.inf and (best is None or self.objective.better(result, best[1])):
                best = (arch, result)
        return best
