"""Sample-based strategies speak ask/tell and are deterministic for a seed and a sequence of tells."""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable

from core.evaluation.result import Result
from core.objective import Objective
from core.api import Arch, SearchSpace


class Strategy:
    """Base class: `ask(n) -> list[Arch]`, `tell(arch, result)`.

    Strategies rank results through `self.objective.fitness` (higher is
    better, -inf for failed or infeasible ones). The search loop sets the
    objective when the strategy was built without one.

    The loop asks while earlier archs are still being evaluated (parallel
    executors). A strategy that cannot propose before some of those results
    arrive returns fewer archs than asked, or none, without changing its
    state; the loop asks again after the next tell.
    """

    max_fresh_tries = 100

    def __init__(self, space: SearchSpace, seed: int = 0, objective: Objective | None = None):
        self.space = space
        self.seed = seed
        self.rng = random.Random(seed)
        self.objective = objective or Objective()
        self.seen: set[Arch] = set()
        self.history: list[tuple[Arch, Result]] = []
        self.asked = 0

    def ask(self, n: int = 1) -> list[Arch]:
        archs = []
        for _ in range(n):  # `asked` counts as we go: a proposal may depend on how many came before it
            archs.append(self.propose())
            self.asked += 1
        return archs

    def propose(self) -> Arch:
        raise NotImplementedError(f"{type(self).__name__} must implement propose() or ask()")

    def tell(self, arch: Arch, result: Result) -> None:
        self.history.append((arch, result))

    def fitness(self, result: Result) -> float:
        return self.objective.fitness(result)

    def fresh(self, make: Callable[[], Arch]) -> Arch:
        """An arch not proposed before, when one can be found in a few tries (else the last made)."""
        arch = make()
        for _ in range(self.max_fresh_tries):
            if arch not in self.seen:
                break
            arch = make()
        self.seen.add(arch)
        return arch

    def best(self) -> tuple[Arch, Result] | None:
        if not self.history:
            return None
        arch, result = max(self.history, key=lambda item: self.fitness(item[1]))
        return (arch, result) if self.fitness(result) > -math.inf else None


class QueuedStrategy(Strategy):
    """A strategy that plans archs in rounds (PNAS levels, predictor-ranked batches): `refill()` fills
    `self.queue` once every arch of the previous round has been told; `ask` hands the queue out.

    Asked again before the round's tells arrive, it waits: it returns the archs it has (possibly
    none) and the search loop asks again after the next result, so a round is planned from every
    result of the one before, as the papers do. The first `warmup` asks are random.
    """

    warmup = 0

    def __init__(self, space: SearchSpace, seed: int = 0, objective: Objective | None = None):
        super().__init__(space, seed, objective)
        self.queue: deque[Arch] = deque()
        self.pending: set[Arch] = set()

    def refill(self) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement refill()")

    def ask(self, n: int = 1) -> list[Arch]:
        archs: list[Arch] = []
        while len(archs) < n:
            if self.asked + len(archs) < self.warmup:
                arch = self.fresh(lambda: self.space.sample(self.rng))
            else:
                if not self.queue and not self.pending:
                    self.refill()
                if self.queue:
                    arch = self.queue.popleft()
                    self.seen.add(arch)
                elif self.pending:
                    break                                # the round's last archs are out; wait for their tells
                else:                                    # refill planned nothing new: a random arch
                    arch = self.fresh(lambda: self.space.sample(self.rng))
            self.pending.add(arch)
            archs.append(arch)
        self.asked += len(archs)
        return archs

    def tell(self, arch: Arch, result: Result) -> None:
        super().tell(arch, result)
        self.pending.discard(arch)
