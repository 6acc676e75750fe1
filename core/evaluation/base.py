"""Evaluators: `evaluate(arch) -> Result`, with failures isolated."""

from __future__ import annotations

import hashlib
import json
import math
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any

import torch

from core.evaluation.result import Result
from core.space import Arch


class Evaluator:
    """Base class. `fingerprint()` identifies the evaluation recipe in the journal, so a resumed
    search never mixes results of two different recipes. `timeout_s`, when set, is the wall time
    after which the search's executor gives up on an evaluation and journals it as failed."""

    timeout_s: float | None = None

    def evaluate(self, arch: Arch) -> Result:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """JSON-serialisable settings that change results (hashed into the fingerprint)."""
        return {"type": type(self).__name__}

    def cost_metrics(self, arch: Arch) -> dict[str, float] | None:
        """Metrics known without training (params, MACs, table latency), or None when the evaluator has none.

        The search loop checks the objective's constraints on these before it
        pays for an evaluation: an arch over a MACs budget is never trained.
        """
        return None

    def fingerprint(self) -> str:
        text = json.dumps(self.config(), sort_keys=True, default=str)
        return hashlib.sha1(text.encode()).hexdigest()[:12]


def safe_evaluate(evaluator: Evaluator, arch: Arch) -> Result:
    """Run `evaluator.evaluate(arch)`; turn any error into a failed Result so the search goes on."""
    start = time.perf_counter()
    try:
        result = evaluator.evaluate(arch)
    except torch.OutOfMemoryError as err:
        return Result.failed(f"out of memory: {str(err).splitlines()[0][:200]}", time.perf_counter() - start)
    except Exception as err:  # noqa: BLE001 - a candidate's failure must never stop the search
        where = traceback.extract_tb(err.__traceback__)[-1]
        return Result.failed(f"{type(err).__name__}: {err} (at {where.filename}:{where.lineno})",
                             time.perf_counter() - start)
    if not isinstance(result, Result):
        return Result.failed(f"evaluator returned {type(result).__name__}, not Result", time.perf_counter() - start)
    for name, value in result.metrics.items():
        if isinstance(value, float) and math.isnan(value) and result.ok:
            return Result.failed(f"metric {name!r} is NaN", result.cost, **result.metrics)
    return result


class FunctionEvaluator(Evaluator):
    """Wrap a function `arch -> metrics dict` (cheap synthetic objectives, benchmarks, tests)."""

    def __init__(self, fn: Callable[[Arch], Mapping[str, float]], name: str | None = None):
        self.fn = fn
        self.name = name or getattr(fn, "__qualname__", "function")

    def evaluate(self, arch: Arch) -> Result:
        start = time.perf_counter()
        metrics = dict(self.fn(arch))
        return Result(metrics=metrics, cost=time.perf_counter() - start)

    def config(self) -> dict[str, Any]:
        return {"type": "function", "name": self.name}
