"""Sample-based (ask/tell) and gradient-based searchers, registered by name in STRATEGIES."""

from core.strategies.base import Strategy
from core.strategies.blockqnn import BlockQNN
from core.strategies.darts_search import DartsSearcher
from core.strategies.dcnas import DCNASSearch
from core.strategies.dna import DNASearch
from core.strategies.esnac import ESNAC
from core.strategies.evolution import RegularizedEvolution
from core.strategies.hournas import HourNASSearch
from core.strategies.netadapt import NetAdaptV2Searcher
from core.strategies.random_search import RandomSearch

__all__ = ["Strategy", "BlockQNN", "ESNAC", "RandomSearch", "RegularizedEvolution", "DartsSearcher", "DCNASSearch", "HourNASSearch", "DNASearch", "NetAdaptV2Searcher"]
