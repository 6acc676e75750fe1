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

from core.engine.data import DataError
from core.evaluation.result import Result
from core.api import Arch


class Evaluator:
    """Base class. `fingerprint()` identifies the evaluation recipe in the journal, so a resumed
    search never mixes results of two different recipes. `timeout_s`, when set, is the wall time
    after which the search's executor gives up on an evaluation and journals it as failed.

    `metrics` declares the names every result holds (with `scores_with_task`,
    plus the task's score names), so a search can check
    `objective.metric` and its constraints before it spends its budget
    (None: not declared, nothing is checked). `latency_ms` is added when the
    evaluator's config section asks for latency.
    """

    timeout_s: float | None = None
    metrics: tuple[str, ...] | None = None
    #: results also hold the task's scores (`Task.metrics`; a `loss` reported as `val_loss`)
    scores_with_task: bool = False

    @classmethod
    def metric_names(cls, settings: Mapping[str, Any], task: Any = None) -> set[str] | None:
        """The metric names results will hold, from the config section (and the task) alone, before the
        evaluator is built: building one may train a supernet."""
        if cls.metrics is None:
            return None
        names = set(cls.metrics)
        if cls.scores_with_task:
            if task is None or not task.metrics:
                return None
            names |= {"val_loss" if m == "loss" else m for m in task.metrics}
        if settings.get("latency", "none") not in (None, "none"):
            names.add("latency_ms")
        return names

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


def _as_float(value: Any) -> float:
    """A metric as a Python float: ints, floats, numpy scalars and one-element tensors/arrays; TypeError else."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise TypeError(f"a tensor of shape {tuple(value.shape)}")
        return float(value.detach().cpu().item())
    if isinstance(value, (int, float)):
        return float(value)
    item = getattr(value, "item", None)  # numpy scalars and 0-d / 1-element arrays
    if callable(item) and getattr(value, "size", 1) == 1:
        value = item()
        if isinstance(value, (int, float, bool)):
            return float(value)
    raise TypeError(f"a {type(value).__name__}")


def clean_metrics(result: Result) -> Result:
    """`result` with every metric a finite Python float, or a failed Result naming the first bad metric
    (NaN or infinite values, non-numbers). Failed and infeasible results keep what converts and drop the rest."""
    metrics: dict[str, float] = {}
    problem = None
    for name, value in dict(result.metrics).items():
        try:
            number = _as_float(value)
        except (TypeError, ValueError, RuntimeError) as err:
            problem = problem or f"metric {name!r} is {err}, not a number"
            continue
        if not math.isfinite(number):
            problem = problem or f"metric {name!r} is {'NaN' if math.isnan(number) else number}"
        metrics[str(name)] = number
    if problem and result.ok:
        return Result.failed(problem, float(result.cost), **{k: v for k, v in metrics.items() if math.isfinite(v)})
    return Result(metrics=metrics, status=result.status, reason=result.reason, cost=float(result.cost))


def safe_evaluate(evaluator: Evaluator, arch: Arch) -> Result:
    """Run `evaluator.evaluate(arch)`; turn any error, and any metric that is not a finite number, into a failed
    Result so the search goes on. A `DataError` (a corrupt data file) is not the candidate's fault and
    would fail every candidate the same way: it propagates and stops the search with the file's name."""
    start = time.perf_counter()
    try:
        result = evaluator.evaluate(arch)
        if not isinstance(result, Result):
            return Result.failed(f"evaluator returned {type(result).__name__}, not Result", time.perf_counter() - start)
        if not isinstance(result.metrics, Mapping):
            return Result.failed(f"evaluator returned metrics of type {type(result.metrics).__name__}",
                                 time.perf_counter() - start)
        return clean_metrics(result)
    except DataError:
        raise
    except torch.OutOfMemoryError as err:
        return Result.failed(f"out of memory: {str(err).splitlines()[0][:200]}", time.perf_counter() - start)
    except Exception as err:  # noqa: BLE001 - a candidate's failure must never stop the search
        where = traceback.extract_tb(err.__traceback__)[-1]
        return Result.failed(f"{type(err).__name__}: {err} (at {where.filename}:{where.lineno})",
                             time.perf_counter() - start)


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
