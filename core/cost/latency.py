"""Measured latency: the median wall-clock time of a forward pass.

Latency depends on the machine, the number of threads and the batch size, so
every result records them. We report the median of `repeats` timed runs after
`warmup` untimed ones (the median is robust to the occasional scheduler hiccup
that inflates a mean), plus the 90th percentile and the mean.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class LatencyResult:
    """Timing of one model at one setting; times in milliseconds per forward pass (whole batch)."""

    median_ms: float
    p90_ms: float
    mean_ms: float
    batch: int
    threads: int
    repeats: int
    device: str

    def to_dict(self) -> dict:
        return asdict(self)


@contextlib.contextmanager
def num_threads(threads: int | None) -> Iterator[int]:
    """Temporarily set torch's intra-op thread count (None keeps the current one); yields the count in use."""
    previous = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile of already sorted values (q in [0, 100])."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = (len(sorted_values) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (pos - low)


def _time_runs(model: nn.Module, x: torch.Tensor, warmup: int, repeats: int) -> list[float]:
    """Milliseconds of each of `repeats` forward passes, after `warmup` untimed ones."""
    device = x.device
    times = []
    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        _synchronize(device)
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            _synchronize(device)
            times.append((time.perf_counter() - start) * 1e3)
    return times


def _model_state(model: nn.Module) -> tuple[bool, torch.device | None]:
    first = next(iter(list(model.parameters()) + list(model.buffers())), None)
    return model.training, (first.device if first is not None else None)


def measure_latency(model: nn.Module, input_shape: Sequence[int], batch: int = 1, threads: int | None = None,
                    warmup: int = 10, repeats: int = 50, device: str = "cpu") -> LatencyResult:
    """Median latency of `model` on a random input of shape `(batch, *input_shape)`.

    `input_shape` is one sample's shape, e.g. `(3, 224, 224)`. The model runs
    in eval mode under `torch.inference_mode` on `device`; `threads` sets
    torch's intra-op threads for the measurement only (None: leave as is).
    CUDA work is synchronised around every timed run. The model's training
    flag and device are restored afterwards.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    dev = torch.device(device)
    was_training, old_device = _model_state(model)
    model.eval()
    model.to(dev)
    try:
        with num_threads(threads) as used_threads:
            x = torch.randn(batch, *input_shape, device=dev)
            times = sorted(_time_runs(model, x, warmup, repeats))
    finally:
        model.train(was_training)
        if old_device is not None:
            model.to(old_device)
    return LatencyResult(median_ms=statistics.median(times), p90_ms=_percentile(times, 90.0),
                         mean_ms=statistics.fmean(times), batch=batch, threads=used_threads,
                         repeats=repeats, device=str(dev))
