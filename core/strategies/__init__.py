"""Sample-based searchers: `ask(n) -> list[Arch]`, `tell(arch, result)`, registered by name in STRATEGIES."""

from core.strategies.base import QueuedStrategy, Strategy
from core.strategies.blockqnn import BlockQNN
from core.strategies.esnac import ESNAC
from core.strategies.evolution import RegularizedEvolution
from core.strategies.hierarchical import EcoNAS
from core.strategies.nsga2 import NSGA2
from core.strategies.pnas import PNAS
from core.strategies.predictor_guided import PredictorGuided
from core.strategies.random_search import RandomSearch
from core.strategies.tpe import TPE

__all__ = ["Strategy", "QueuedStrategy", "PNAS", "PredictorGuided", "TPE", "NSGA2", "EcoNAS", "BlockQNN", "ESNAC",
           "RandomSearch", "RegularizedEvolution"]
