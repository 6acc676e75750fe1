"""Sample-based (ask/tell) and gradient-based searchers, registered by name in STRATEGIES."""

from core.strategies.base import Strategy
from core.strategies.blockqnn import BlockQNN
from core.strategies.darts_search import DartsSearcher
from core.strategies.dcnas import DCNASSearch
from core.strategies.dna import DNASearch
from core.strategies.esnac import ESNAC
from core.strategies.evolution import RegularizedEvolution
from core.strategies.hierarchical import EcoNAS
from core.strategies.hournas import HourNASSearch
from core.strategies.netadapt import NetAdaptV2Searcher
from core.strategies.nsga2 import NSGA2
from core.strategies.pnas import PNAS
from core.strategies.predictor_guided import PredictorGuided
from core.strategies.random_search import RandomSearch
from core.strategies.tpe import TPE

__all__ = ["Strategy", "PNAS", "PredictorGuided", "TPE", "NSGA2", "EcoNAS", "BlockQNN", "ESNAC", "RandomSearch", "RegularizedEvolution", "DartsSearcher", "DCNASSearch", "HourNASSearch", "DNASearch", "NetAdaptV2Searcher"]
