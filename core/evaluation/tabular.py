"""Tabular evaluator: answers from a table of fully trained architectures, at zero cost.

NAS-Bench-201 (Dong & Yang, "NAS-Bench-201: Extending the Scope of
Reproducible Neural Architecture Search", ICLR 2020) showed how to compare
search strategies fairly and cheaply: train every architecture of a small
cell space once with one recipe, record the per-epoch curves, and let
strategies query the table. The suite ships such a table for the `cell201`
space on the embedded digits data (`core/data/cell201_digits.json.gz`, built
by `tools/build_tabular_benchmark.py`; recipe and build time in its `meta`
and in docs/strategies.md, "The tabular benchmark").

The table holds every arch trained with four seeds; `evaluate(arch)` returns
the mean accuracy and validation loss over the seeds after `epoch` epochs (default: the last;
`seed=` picks one seed's run instead) and `cost` = the training CPU seconds the build spent on that arch up
to that epoch, so budgets in simulated seconds work as well as query counts.
Epochs are points on one full-length cosine run (NAS-Bench-201's convention),
which makes `evaluate_at(arch, epoch)` a multi-fidelity query.

Which number to search on. On this table the validation cross-entropy is the
reproducible signal: the mean loss of two seeds ranks the connected cells
like the mean loss of the other two at Kendall tau 0.74, and predicts the
other two seeds' *accuracy* better (0.59) than their own accuracy does (0.39)
(docs/strategies.md, "Which number to search on"). The benchmarks therefore search and score on `val_loss`
(objective `val_loss`, direction min); accuracy stays in every result.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from core.engine.registry import EVALUATORS
from core.evaluation.base import Evaluator
from core.evaluation.result import Result
from core.api import Arch, SearchSpace

TABLE_NAME = "cell201_digits.json.gz"
FORMAT = "archforge-tabular/1"
_CURVES = ("val_acc", "val_loss", "test_acc", "train_seconds")
_METRICS = {"val": "val_acc", "val_accuracy": "val_acc", "test": "test_acc", "test_accuracy": "test_acc",
            "val_loss": "val_loss"}
#: metrics where lower is better (ranks, thresholds and regrets flip for them)
_LOWER_IS_BETTER = {"val_loss"}


def default_table_path() -> str:
    """Where the shipped table lies (inside the installed `core.data` package)."""
    return str(resources.files("core.data").joinpath(TABLE_NAME))


class Table:
    """A loaded benchmark: NAS-Bench-201 arch strings, per-epoch curves as arrays [archs, epochs]."""

    def __init__(self, path: str, data: dict, digest: str):
        self.path, self.digest = path, digest
        self.meta: dict = data["meta"]
        self.archs: list[str] = list(data["archs"])
        self.index = {a: i for i, a in enumerate(self.archs)}
        self.params = np.asarray(data["params"], dtype=np.float64)
        self.macs = np.asarray(data["macs"], dtype=np.float64)
        # a diverged run's loss is stored as null: it reads as +inf (the worst loss), never as a best
        self.curves = {c: np.nan_to_num(np.asarray(data[c], dtype=np.float64), nan=np.inf) for c in _CURVES}
        self.epochs = self.curves["val_acc"].shape[1]
        recipe = self.meta.get("recipe", {})
        self.seeds: list[int] = list(recipe.get("seeds", [recipe.get("seed", 0)]))
        #: per-seed curves [archs, seeds, epochs] (the main curves are their mean)
        self.by_seed = {c: np.nan_to_num(np.asarray(data[f"{c}_by_seed"], dtype=np.float64), nan=np.inf)
                        for c in ("val_acc", "val_loss", "test_acc") if f"{c}_by_seed" in data}


def _malformed(path: str, why: str) -> ValueError:
    return ValueError(f"malformed tabular benchmark {path}: {why}; rebuild it with "
                      f"`python tools/build_tabular_benchmark.py --out {path}`")


def _check(path: str, data: Any) -> None:
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise _malformed(path, f"expected a JSON object with format {FORMAT!r}")
    missing = [k for k in ("meta", "archs", "params", "macs", *_CURVES) if k not in data]
    if missing:
        raise _malformed(path, f"missing columns {missing}")
    n = len(data["archs"])
    if n == 0 or len(set(data["archs"])) != n:
        raise _malformed(path, "no archs, or an arch listed twice")
    for col in ("params", "macs", *_CURVES):
        if len(data[col]) != n:
            raise _malformed(path, f"column {col!r} has {len(data[col])} rows for {n} archs")
    lengths = {len(row) for c in _CURVES for row in data[c]}
    if len(lengths) != 1 or 0 in lengths:
        raise _malformed(path, f"per-epoch curves of unequal or zero length {sorted(lengths)}")
    for col in ("val_acc_by_seed", "val_loss_by_seed", "test_acc_by_seed"):
        if col in data and (len(data[col]) != n or {len(c) for row in data[col] for c in row} != lengths):
            raise _malformed(path, f"column {col!r} does not hold one curve per arch and seed")


@lru_cache(maxsize=4)
def _load(path: str, mtime: float) -> Table:
    """Parse once per file version (many evaluators in one benchmark share it)."""
    try:
        raw = Path(path).read_bytes()
        data = json.loads(gzip.decompress(raw))
    except (OSError, EOFError, ValueError) as err:
        raise _malformed(path, f"cannot read gzipped JSON ({type(err).__name__}: {err})") from None
    _check(path, data)
    try:
        return Table(path, data, hashlib.sha1(raw).hexdigest()[:12])
    except (TypeError, ValueError) as err:
        raise _malformed(path, f"non-numeric values ({err})") from None


def load_table(path: str | None = None) -> Table:
    path = str(Path(path).expanduser()) if path else default_table_path()
    if not Path(path).is_file():
        raise FileNotFoundError(f"tabular benchmark not found: {path} (build it with "
                                f"`python tools/build_tabular_benchmark.py --out {path}`)")
    return _load(path, Path(path).stat().st_mtime)


@EVALUATORS.register("tabular")
class TabularEvaluator(Evaluator):
    """Look architectures up in a tabular benchmark (NAS-Bench-201 style, Dong & Yang, ICLR 2020).

    `space` must be the `cell201` space the table was built with (same ops, C,
    N); `None` builds it from the table. `data` is accepted for the CLI and
    unused. `epoch` (1-based, default: the last) is the fidelity `evaluate`
    answers at; `metric` ("val" or "test") is the split reported as
    `accuracy` (and the default of the ranking helpers, which also take
    "val_loss"); `seed` answers from one training seed's run instead of the
    mean over the table's seeds (for noise studies). Result metrics:
    accuracy, val_accuracy, test_accuracy, val_loss, params, macs, train_seconds, epoch.
    """

    metrics = ("accuracy", "val_accuracy", "test_accuracy", "val_loss", "params", "macs", "train_seconds", "epoch")

    def __init__(self, space: SearchSpace | None = None, data: Any = None, path: str | None = None,
                 epoch: int | None = None, metric: str = "val", seed: int | None = None):
        from core.zoo.cell201 import Cell201Space

        self.table = load_table(path)
        built_with = self.table.meta.get("recipe", {}).get("space_config", {})
        if space is None:
            space = Cell201Space(**built_with)
        if not isinstance(space, Cell201Space):
            raise ValueError(f"the tabular benchmark {self.table.path} covers the cell201 space, "
                             f"got {type(space).__name__}")
        if built_with and space.config() != built_with:
            raise ValueError(f"the tabular benchmark {self.table.path} was built for space settings {built_with}; "
                             f"the space has {space.config()} (use space: {{name: cell201, ...}} with those)")
        if metric not in ("val", "test"):
            raise ValueError(f"evaluator.metric: expected 'val' or 'test', got {metric!r}")
        self.space, self.metric, self.seed = space, metric, seed
        self.epoch = self._epoch(epoch)
        self.curves = {c: self.table.curves[c] for c in _CURVES}
        if seed is not None:
            if seed not in self.table.seeds or not self.table.by_seed:
                raise ValueError(f"evaluator.seed: the tabular benchmark {self.table.path} has per-seed runs for "
                                 f"seeds {self.table.seeds if self.table.by_seed else []}, not {seed!r}")
            k = self.table.seeds.index(seed)
            self.curves.update({c: curves[:, k, :] for c, curves in self.table.by_seed.items()})

    # -- evaluation --------------------------------------------------------------
    @property
    def epochs(self) -> int:
        """The number of epochs of the recipe (the highest fidelity)."""
        return self.table.epochs

    def _epoch(self, epoch: int | None) -> int:
        if epoch is None:
            return self.table.epochs
        if isinstance(epoch, bool) or not isinstance(epoch, int) or not 1 <= epoch <= self.table.epochs:
            raise ValueError(f"evaluator.epoch: expected an integer in 1..{self.table.epochs}, got {epoch!r}")
        return epoch

    def row(self, arch: Any) -> int:
        """The table row of an arch (Arch, mapping or NAS-Bench-201 string)."""
        from core.zoo.cell201 import from_str, to_str

        arch = from_str(arch) if isinstance(arch, str) else arch
        key = to_str(self.space.check(arch))
        try:
            return self.table.index[key]
        except KeyError:
            raise KeyError(f"arch {key} is not in the tabular benchmark {self.table.path}") from None

    def evaluate(self, arch: Arch) -> Result:
        return self.evaluate_at(arch, self.epoch)

    def evaluate_at(self, arch: Arch, epoch: int | None = None) -> Result:
        """The table's record of `arch` after `epoch` epochs (default: the evaluator's epoch)."""
        i, e = self.row(arch), self._epoch(epoch if epoch is not None else self.epoch) - 1
        val, test = float(self.curves["val_acc"][i, e]), float(self.curves["test_acc"][i, e])
        seconds = float(self.curves["train_seconds"][i, e])
        metrics = {"accuracy": val if self.metric == "val" else test, "val_accuracy": val, "test_accuracy": test,
                   "val_loss": float(self.curves["val_loss"][i, e]),
                   "params": float(self.table.params[i]), "macs": float(self.table.macs[i]),
                   "train_seconds": seconds, "epoch": float(e + 1)}
        return Result(metrics=metrics, cost=seconds)

    def config(self) -> dict[str, Any]:
        return {"type": "tabular", "table": self.table.digest, "epoch": self.epoch, "metric": self.metric,
                "seed": self.seed}

    # -- helpers for benchmarks ------------------------------------------------------
    def all_archs(self) -> list[Arch]:
        """Every arch of the table, in table order."""
        from core.zoo.cell201 import from_str

        return [from_str(a) for a in self.table.archs]

    def values(self, metric: str | None = None, epoch: int | None = None) -> np.ndarray:
        """One value per arch, in table order: `metric` "val" or "test" accuracy, or "val_loss" (the validation
        cross-entropy; default: the evaluator's metric)."""
        column = _METRICS.get(metric or self.metric)
        if column is None:
            raise ValueError(f"metric: expected one of {sorted(_METRICS)}, got {metric!r}")
        return self.curves[column][:, self._epoch(epoch if epoch is not None else self.epoch) - 1]

    def _sign(self, metric: str | None) -> float:
        return -1.0 if (metric or self.metric) in _LOWER_IS_BETTER else 1.0

    def goodness(self, metric: str | None = None, epoch: int | None = None) -> np.ndarray:
        """`values` signed so that higher is better (the loss negated): what ranks and thresholds use."""
        return self._sign(metric) * self.values(metric, epoch)

    def best(self, metric: str | None = None, epoch: int | None = None) -> Arch:
        """The best arch: highest accuracy or lowest loss (the first in table order on ties)."""
        from core.zoo.cell201 import from_str

        return from_str(self.table.archs[int(np.argmax(self.goodness(metric, epoch)))])

    def best_value(self, metric: str | None = None, epoch: int | None = None) -> float:
        return float(self._sign(metric) * self.goodness(metric, epoch).max())

    def value(self, arch: Any, metric: str | None = None, epoch: int | None = None) -> float:
        return float(self.values(metric, epoch)[self.row(arch)])

    def percentile_threshold(self, q: float = 0.01, metric: str | None = None, epoch: int | None = None) -> float:
        """The value of the ceil(q * n)-th best arch: an arch is in the top q (0.01 = top 1%) when it
        reaches it (ties at the threshold all count, so slightly more than q * n archs may)."""
        if not 0 < q <= 1:
            raise ValueError(f"q: expected a fraction in (0, 1] (0.01 for the top 1%), got {q!r}")
        ranked = np.sort(self.goodness(metric, epoch))[::-1]
        return float(self._sign(metric) * ranked[math.ceil(q * len(ranked)) - 1])

    def reaches(self, value: float, threshold: float, metric: str | None = None) -> bool:
        """Whether `value` is at least as good as `threshold` (<= for a loss, >= for an accuracy)."""
        return self._sign(metric) * value >= self._sign(metric) * threshold

    def in_top(self, arch: Any, q: float = 0.01, metric: str | None = None, epoch: int | None = None) -> bool:
        return self.reaches(self.value(arch, metric, epoch), self.percentile_threshold(q, metric, epoch), metric)

    def rank(self, arch: Any, metric: str | None = None, epoch: int | None = None) -> int:
        """1 for the best arch; 1 + the number of archs strictly better."""
        goodness = self.goodness(metric, epoch)
        return 1 + int((goodness > goodness[self.row(arch)]).sum())

    def regret(self, arch: Any, metric: str | None = None, epoch: int | None = None) -> float:
        """How much worse than the table's best this arch is (0 for the best arch; >= 0 for accuracy and loss)."""
        goodness = self.goodness(metric, epoch)
        return float(goodness.max() - goodness[self.row(arch)])


__all__ = ["TabularEvaluator", "Table", "load_table", "default_table_path", "TABLE_NAME"]
