"""`profile`: parameters, FLOPs, MACs and measured latency of a model in one call."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from core.cost.counting import count_flops, count_params
from core.cost.latency import measure_latency


def profile(model: nn.Module, input_shape: Sequence[int], latency: bool = True, **latency_kwargs: Any) -> dict:
    """`{"params", "flops", "macs", "latency_ms"}` of `model` on one sample of shape `input_shape` (C, H, W).

    FLOPs and MACs are per sample (batch 1); FLOPs = 2 x MACs as torch's
    counter counts them (see `core.cost.counting`). `latency_ms` is the median
    of `measure_latency(model, input_shape, **latency_kwargs)`, or None when
    `latency=False`.
    """
    flops = count_flops(model, (1, *input_shape))
    result = {"params": count_params(model), "flops": flops, "macs": flops // 2, "latency_ms": None}
    if latency:
        result["latency_ms"] = measure_latency(model, input_shape, **latency_kwargs).median_ms
    return result
