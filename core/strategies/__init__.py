"""Sample-based (ask/tell) and gradient-based searchers, registered by name in STRATEGIES."""

from core.strategies.base import Strategy
from core.strategies.dna import DNASearch
from core.strategies.evolution import RegularizedEvolution
from core.strategies.netadapt import NetAdaptV2Searcher
from core.strategies.random_search import RandomSearch

__all__ = ["Strategy", "RandomSearch", "RegularizedEvolution", "DNASearch", "NetAdaptV2Searcher"]
