"""Random search: the baseline every strategy is compared with (Li & Talwalkar, UAI 2019)."""

from __future__ import annotations

from core.engine.registry import STRATEGIES
from core.api import Arch
from core.strategies.base import Strategy


@STRATEGIES.register("random")
class RandomSearch(Strategy):
    """Uniform samples from the space, avoiding repeats while fresh archs are easy to find."""

    def propose(self) -> Arch:
        return self.fresh(lambda: self.space.sample(self.rng))
