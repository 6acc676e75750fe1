"""`Result`: what an evaluator says about one architecture."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Result:
    """Metrics of one evaluation.

    `status` is "ok" or "failed"; a failed result carries its `reason` (NaN
    loss, exception, out of memory, invalid arch) and never stops a search.
    `cost` is the evaluation's wall time in seconds.
    """

    metrics: dict[str, float] = field(default_factory=dict)
    status: str = "ok"
    reason: str | None = None
    cost: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @classmethod
    def failed(cls, reason: str, cost: float = 0.0, **metrics: float) -> "Result":
        return cls(metrics=dict(metrics), status="failed", reason=reason, cost=cost)

    def to_dict(self) -> dict[str, Any]:
        return {"metrics": self.metrics, "status": self.status, "reason": self.reason, "cost": self.cost}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Result":
        return cls(metrics=dict(data.get("metrics", {})), status=data.get("status", "ok"),
                   reason=data.get("reason"), cost=float(data.get("cost", 0.0)))

    def get(self, name: str, default: float = math.nan) -> float:
        return self.metrics.get(name, default)
