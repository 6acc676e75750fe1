"""Cost models: parameters, FLOPs/MACs, measured latency and per-layer latency lookup tables.

FLOPs follow torch's `FlopCounterMode` (2 per multiply-accumulate); MACs are
FLOPs // 2 and are what mobile-network papers usually call "FLOPs".
"""

from core.cost.counting import count_flops, count_macs, count_params
from core.cost.latency import LatencyResult, measure_latency
from core.cost.lut import LatencyTable, LayerSpec
from core.cost.profile import profile

__all__ = ["count_params", "count_flops", "count_macs", "measure_latency", "LatencyResult",
           "LatencyTable", "LayerSpec", "profile"]
