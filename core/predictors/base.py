"""Common ground of the surrogate models: the `Predictor` interface, target scaling, seeding, Kendall tau.

Every predictor speaks `fit(archs, targets, unlabelled=()) -> self` and
`predict(archs) -> np.ndarray` (one float per arch, in the units of the
targets). Targets are "higher is better" numbers (strategies pass
`objective.fitness`); non-finite targets (failed or infeasible candidates)
are replaced by the worst finite target before fitting, so a surrogate learns
to avoid them instead of never seeing them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from core.engine.registry import Registry

#: surrogate models by name ("mlp", "lstm", "block_mlp", "assessor"); strategies build them from config
PREDICTORS = Registry("predictor")


@contextmanager
def torch_seed(seed: int) -> Iterator[None]:
    """Run a block under a fixed torch CPU seed without disturbing the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed) % (2**63 - 1))
        yield


def clean_targets(targets: Sequence[float]) -> np.ndarray:
    """Targets as float64; -inf/NaN (failed candidates) become the worst finite value (0 if none is finite)."""
    y = np.asarray(list(targets), dtype=np.float64).reshape(-1)
    finite = np.isfinite(y)
    fill = float(y[finite].min()) if finite.any() else 0.0
    y[~finite] = fill
    return y


class Scaler:
    """Map of targets to the training scale and back.

    - `standard`: zero mean, unit variance (affine);
    - `unit`: min..max onto lo..hi (affine; for sigmoid heads);
    - `rank`: each target's mid-rank among the fitted ones, spread uniformly with unit variance (monotone,
      piecewise linear between the fitted values; `inverse` interpolates back and clamps at the ends).
      Only the order of the targets then matters, which is what a ranking surrogate needs when a few
      outliers (dead networks at chance accuracy) would otherwise dominate a squared loss.
    """

    def __init__(self, kind: str = "standard", lo: float = 0.1, hi: float = 0.9):
        if kind not in ("standard", "unit", "rank"):
            raise ValueError(f"target scaling must be 'standard', 'unit' or 'rank', got {kind!r}")
        self.kind, self.lo, self.hi = kind, lo, hi
        self.shift, self.scale = 0.0, 1.0
        self.values = self.scores = np.zeros(0)

    def fit(self, y: np.ndarray) -> "Scaler":
        y = np.asarray(y, dtype=np.float64)
        if self.kind == "standard":
            self.shift = float(y.mean())
            self.scale = float(y.std()) or 1.0
        elif self.kind == "unit":
            low, high = float(y.min()), float(y.max())
            span = (high - low) or 1.0
            self.scale = span / (self.hi - self.lo)
            self.shift = low - self.lo * self.scale
        else:
            from scipy.stats import rankdata

            n = len(y)
            scores = (rankdata(y) - 0.5) / n - 0.5           # mid-ranks in (-0.5, 0.5)
            scores = scores * np.sqrt(12.0)                  # unit variance for a uniform spread
            self.values, first = np.unique(y, return_index=True)
            self.scores = np.array([scores[y == v].mean() for v in self.values])
        return self

    def transform(self, y: np.ndarray) -> np.ndarray:
        if self.kind == "rank":
            return np.interp(y, self.values, self.scores) if len(self.values) > 1 else np.zeros_like(y)
        return (y - self.shift) / self.scale

    def inverse(self, y: np.ndarray) -> np.ndarray:
        if self.kind == "rank":
            if len(self.values) < 2:
                return np.full_like(y, self.values[0] if len(self.values) else 0.0)
            return np.interp(y, self.scores, self.values)
        return y * self.scale + self.shift


def check_loss(loss: str) -> str:
    if loss not in ("mse", "l1"):
        raise ValueError(f"predictor loss must be 'mse' or 'l1', got {loss!r}")
    return loss


def regression_loss(pred: torch.Tensor, target: torch.Tensor, loss: str) -> torch.Tensor:
    if loss == "l1":
        return (pred - target).abs().mean()
    return ((pred - target) ** 2).mean()


class Predictor:
    """Base class of the surrogates; subclasses implement `fit` and `predict`."""

    def fit(self, archs: Sequence[Any], targets: Sequence[float], unlabelled: Sequence[Any] = ()) -> "Predictor":
        raise NotImplementedError

    def predict(self, archs: Sequence[Any]) -> np.ndarray:
        raise NotImplementedError

    @staticmethod
    def _check_fit_args(archs: Sequence[Any], targets: Sequence[float]) -> tuple[list[Any], np.ndarray]:
        archs = list(archs)
        y = clean_targets(targets)
        if len(archs) != len(y):
            raise ValueError(f"fit: {len(archs)} archs but {len(y)} targets")
        if not archs:
            raise ValueError("fit: needs at least one labelled arch")
        return archs, y


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-b between two score lists (scipy's, NaN-safe: NaN when undefined)."""
    from scipy.stats import kendalltau

    tau = kendalltau(np.asarray(a, dtype=float), np.asarray(b, dtype=float)).statistic
    return float(tau) if tau is not None and not math.isnan(tau) else math.nan


def minibatches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Shuffled index batches covering 0..n-1 once."""
    order = torch.randperm(n, generator=generator)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]
