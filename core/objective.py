"""`Objective`: which metric to optimise, its direction, hard constraints and the Pareto front."""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from core.evaluation.result import Result

_OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt, "==": operator.eq}
_CONSTRAINT = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(<=|>=|==|<|>)\s*([-+0-9.eE_]+)\s*$")


@dataclass(frozen=True)
class Constraint:
    metric: str
    op: str
    bound: float

    @classmethod
    def parse(cls, text: str) -> "Constraint":
        """Parse `"macs <= 300e6"`; raise ValueError naming the text when malformed."""
        m = _CONSTRAINT.match(text)
        if not m:
            raise ValueError(f"constraint {text!r} is not of the form 'metric <= number' (ops: {', '.join(_OPS)})")
        try:
            bound = float(m.group(3).replace("_", ""))
        except ValueError:
            raise ValueError(f"constraint {text!r}: {m.group(3)!r} is not a number") from None
        return cls(m.group(1), m.group(2), bound)

    def satisfied(self, metrics: dict[str, float]) -> bool:
        value = metrics.get(self.metric)
        return value is not None and not math.isnan(value) and _OPS[self.op](value, self.bound)

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.bound:g}"


@dataclass
class Objective:
    """Maximise or minimise `metric` subject to `constraints`.

    `fitness(result)` is the number strategies maximise: the metric with its
    sign set by `direction`, or -inf for failed or infeasible results.
    `pareto` names the metrics of a multi-objective front, each as
    `"metric:max"` or `"metric:min"`.
    """

    metric: str = "accuracy"
    direction: str = "max"
    constraints: list[Constraint] = field(default_factory=list)
    pareto: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self):
        if self.direction not in ("max", "min"):
            raise ValueError(f"objective.direction: expected 'max' or 'min', got {self.direction!r}")
        self.constraints = [c if isinstance(c, Constraint) else Constraint.parse(c) for c in self.constraints]
        self.pareto = [_pareto_term(p) for p in self.pareto]

    @classmethod
    def from_config(cls, metric: str = "accuracy", direction: str = "max", constraints: Sequence[str] = (),
                    pareto: Sequence[str] = ()) -> "Objective":
        return cls(metric, direction, list(constraints), list(pareto))

    def feasible(self, result: Result) -> bool:
        return result.ok and all(c.satisfied(result.metrics) for c in self.constraints)

    def fitness(self, result: Result) -> float:
        if not self.feasible(result):
            return -math.inf
        value = result.metrics.get(self.metric, math.nan)
        if math.isnan(value):
            return -math.inf
        return value if self.direction == "max" else -value

    def better(self, a: Result, b: Result) -> bool:
        return self.fitness(a) > self.fitness(b)

    def pareto_terms(self) -> list[tuple[str, str]]:
        return self.pareto or [(self.metric, self.direction), ("macs", "min")]

    def pareto_front(self, results: Iterable[tuple[object, Result]]) -> list[tuple[object, Result]]:
        """Non-dominated feasible entries over `pareto_terms()`, sorted by the first term."""
        terms = self.pareto_terms()
        rows = []
        for item, result in results:
            if not self.feasible(result):
                continue
            values = [result.metrics.get(m, math.nan) for m, _ in terms]
            if any(math.isnan(v) for v in values):
                continue
            rows.append(((item, result), [v if d == "min" else -v for v, (_, d) in zip(values, terms)]))
        front_idx = non_dominated([v for _, v in rows])
        front = [rows[i] for i in front_idx]
        front.sort(key=lambda r: r[1][0])
        return [entry for entry, _ in front]


def _pareto_term(term: str | tuple[str, str]) -> tuple[str, str]:
    if isinstance(term, tuple):
        return term
    name, _, direction = term.partition(":")
    direction = direction or "max"
    if direction not in ("max", "min"):
        raise ValueError(f"objective.pareto: {term!r} must be 'metric:max' or 'metric:min'")
    return name, direction


def non_dominated(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of points no other point dominates (all coordinates minimised). Duplicates keep the first."""
    order = sorted(range(len(points)), key=lambda i: tuple(points[i]))
    front: list[int] = []
    for i in order:
        p = points[i]
        dominated = any(all(q_k <= p_k for q_k, p_k in zip(points[j], p)) for j in front)
        if not dominated:
            front.append(i)
    return sorted(front)
