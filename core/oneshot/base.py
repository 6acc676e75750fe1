"""The searcher protocol: searches that are not ask/tell (weight sharing, hierarchical proxies).

A sample-based strategy (`core.strategies.Strategy`) only proposes
architectures; the search loop (`core.search`) evaluates and journals them. A
`Searcher` runs its whole search itself: it trains a supernet (DARTS,
DNA, DC-NAS, HourNAS, NetAdaptV2, Hit-Detector, trilevel SR, PocketNet) or
drives an evaluator at several fidelities (EcoNAS), and derives one
architecture. Every searcher speaks the same protocol:

- `search(context) -> Arch`: the pipeline's entry point. The default reads
  the task, checkpoint path and progress switch from the context and calls
  `fit(None, context.data)`.
- `fit(module, data) -> Arch`: train (from `module`, or a fresh supernet) and
  derive; checkpoint to `self.checkpoint` after every epoch and resume from
  it when it exists.
- `report() -> dict`: what the run found beyond its per-epoch `history`
  (scores, derived weights), written to `search.json` with the history.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.api import Arch, SearchSpace
from core.engine.data import DataSplits
from core.evaluation.base import Evaluator
from core.evaluation.result import Result
from core.objective import Objective
from core.task import Task


@dataclass
class SearchContext:
    """What the pipeline hands a searcher."""

    task: Task
    data: DataSplits
    space: SearchSpace
    objective: Objective
    checkpoint: Path | None = None
    progress: bool = True
    #: builds the configured evaluator (for searchers that score candidates with one)
    make_evaluator: Callable[[], Evaluator] | None = None
    #: journals one evaluation (arch, result); the pipeline writes it to journal.sqlite
    record: Callable[[Arch, Result], None] | None = None
    #: `search.budget` (its unit is the searcher's: evaluations, or training epochs for EcoNAS)
    budget: int | None = None


class Searcher:
    """Base class of the searchers that run a whole search themselves (see the module docstring)."""

    task: Task | None = None
    checkpoint: Path | None = None
    progress: bool = False
    #: scores candidates with the configured evaluator (`context.make_evaluator`), so the objective's metric
    #: is checked against what that evaluator reports before the search starts
    uses_evaluator: bool = False

    def search(self, context: SearchContext) -> Arch:
        if self.task is None:
            self.task = context.task
        self.checkpoint = context.checkpoint
        self.progress = context.progress
        return self.fit(None, context.data)

    def fit(self, module: Any, data: DataSplits) -> Arch:
        raise NotImplementedError(f"{type(self).__name__} must implement fit(module, data)")

    def report(self) -> dict[str, Any]:
        """What this searcher found beyond its per-epoch `history` (scores, derived weights, ...)."""
        return {}

    def record(self) -> dict[str, Any]:
        """`search.json`'s body: the searcher's `history`, `result` and `training` logs where it has them, and
        its `report()`."""
        out: dict[str, Any] = {}
        for name in ("history", "result", "training"):
            value = getattr(self, name, None)
            if value:
                out[name] = value
        report = self.report()
        if report:
            out["report"] = report
        return out


__all__ = ["Searcher", "SearchContext"]
