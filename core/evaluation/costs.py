"""Cost metrics every evaluator reports: params, MACs and, on request, latency.

Latency comes either from a measurement of the full network (`measure`) or
from a per-layer lookup table (`table`, `core.cost.LatencyTable`): the table
times each distinct layer once, so a search can constrain `latency_ms`
without timing every candidate. A table path is loaded when it exists and
saved back as new layers are timed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from core.cost import LatencyTable, count_macs, count_params, measure_latency
from core.api import Arch, SearchSpace

LATENCY_MODES = ("none", "measure", "table")


class CostMetrics:
    def __init__(self, space: SearchSpace, input_shape: tuple[int, ...], latency: str = "none",
                 latency_table: str | None = None, latency_threads: int = 1):
        if latency not in LATENCY_MODES:
            raise ValueError(f"evaluator.latency: expected one of {LATENCY_MODES}, got {latency!r}")
        if latency == "table" and not hasattr(space, "layer_specs"):
            raise ValueError(f"evaluator.latency: {type(space).__name__} has no layer_specs(), use 'measure'")
        self.space, self.input_shape = space, tuple(input_shape)
        self.latency, self.threads = latency, latency_threads
        self.table_path = Path(latency_table) if latency_table else None
        self._table: LatencyTable | None = None
        self._cache: dict[Arch, dict[str, float]] = {}  # the search checks constraints, then the evaluator reports

    def config(self) -> dict[str, Any]:
        return {"latency": self.latency, "latency_threads": self.threads}

    def table(self) -> LatencyTable:
        if self._table is None:
            if self.table_path and self.table_path.is_file():
                self._table = LatencyTable.load(self.table_path)
                problems = self._table.mismatch(threads=self.threads)
                if problems:
                    raise ValueError(f"evaluator.latency_table: {self.table_path} was measured elsewhere: "
                                     + "; ".join(problems))
            else:
                self._table = LatencyTable(threads=self.threads)
        return self._table

    def __call__(self, arch: Arch) -> dict[str, float]:
        if arch not in self._cache:
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[arch] = self._measure(arch)
        return dict(self._cache[arch])

    def _measure(self, arch: Arch) -> dict[str, float]:
        model = self.space.build(arch)
        x = torch.zeros(1, *self.input_shape)
        out = {"params": float(count_params(model)), "macs": float(count_macs(model, x))}
        if self.latency == "measure":
            out["latency_ms"] = measure_latency(model, self.input_shape, threads=self.threads, repeats=20).median_ms
        elif self.latency == "table":
            table = self.table()
            before = len(table)
            out["latency_ms"] = table.predict_arch(self.space, arch, input_size=self.input_shape[1:])
            if self.table_path and len(table) > before:
                table.save(self.table_path)
        return out
