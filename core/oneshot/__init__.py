"""Weight-sharing (one-shot) searchers: `fit(...) -> Arch`, registered by name in STRATEGIES."""

from core.oneshot.bilevel import BilevelSearcher
from core.oneshot.darts import DartsSearcher
from core.oneshot.dcnas import DCNASSearch
from core.oneshot.dna import DNASearch
from core.oneshot.hournas import HourNASSearch
from core.oneshot.netadapt import NetAdaptV2Searcher

__all__ = ["BilevelSearcher", "DartsSearcher", "DCNASSearch", "DNASearch", "HourNASSearch", "NetAdaptV2Searcher"]
