"""`Task`: what a task package tells the generic tools (search, train, test, export, profile).

A task registers a subclass in `TASKS`; `core.cli` drives it. The base class
implements the parts every task shares (data and space from the registries,
evaluator, checkpoint payloads); a task supplies training and testing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.engine.data import DataSplits
from core.engine.registry import DATASETS, EVALUATORS, SPACES, ConfigError, check_kwargs
from core.evaluation.base import Evaluator
from core.space import Arch, SearchSpace


class Task:
    name = "task"
    #: metric names a final table shows, in order
    table_metrics: tuple[str, ...] = ()
    #: a dataclass of the task's own options, read from the config section named after the task
    #: (e.g. `super_resolution: {scale: 2}`); unknown keys and wrong types fail with the key's name
    Options: type | None = None
    #: keys of the task's section that define the network (a saved model keeps them; see `checkpoint_config`)
    model_options: tuple[str, ...] = ()

    def __init__(self, cfg: dict[str, Any]):
        self.cfg = cfg
        self.options = self._read_options(cfg.get(self.name) or {})

    def _read_options(self, section: dict[str, Any]):
        if self.Options is None:
            if section:
                raise ConfigError(f"{self.name}: task {self.name!r} takes no options section")
            return None
        return self.Options(**check_kwargs(self.Options, section, self.name))

    def check_config(self) -> None:
        """Check the data and space sections against their components' signatures before any data is read
        (the space's required arguments may come from the data, so only its keys and types are checked)."""
        if self.cfg.get("data"):
            DATASETS.check(self.cfg["data"], "data", provided=("scale",))
        if self.cfg.get("space"):
            SPACES.check(self.cfg["space"], "space", provided=None)

    # -- building blocks from the config ------------------------------------------------
    def data(self) -> DataSplits:
        if not self.cfg.get("data"):
            raise ConfigError("data: missing section; name a dataset, e.g. data: {name: digits}")
        return DATASETS.build(self.cfg["data"], "data")

    def space_overrides(self, data: DataSplits) -> dict[str, Any]:
        """Space arguments the data decides (input channels, classes) unless the config sets them."""
        return {}

    def space(self, data: DataSplits) -> SearchSpace:
        section = self.cfg.get("space")
        if not section:
            raise ConfigError("space: missing section; name a search space, e.g. space: {name: mobile}")
        extra = {k: v for k, v in self.space_overrides(data).items() if k not in section}
        return SPACES.build(section, "space", **extra)

    def evaluator_section(self) -> dict[str, Any]:
        return dict(self.cfg.get("evaluator") or {"name": "train"})

    def check_evaluator(self) -> set[str] | None:
        """Check the evaluator section without building the evaluator (building one may train a supernet);
        return the metric names its results will hold (None: not declared)."""
        section = self.evaluator_section()
        target = EVALUATORS.check(section, "evaluator", provided=("space", "data"))
        names = getattr(target, "metric_names", None)
        return names(section) if callable(names) else None

    def evaluator(self, space: SearchSpace, data: DataSplits) -> Evaluator:
        return EVALUATORS.build(self.evaluator_section(), "evaluator", space=space, data=data)

    def baseline(self, name: str, space: SearchSpace, data: DataSplits, searched: Arch | None = None) -> Arch:
        """A named baseline arch of `space`; `searched` is the searched arch when a baseline is sized to it."""
        raise ConfigError(f"retrain.baselines: task {self.name!r} has no baseline {name!r}")

    def example_input(self, data: DataSplits) -> torch.Tensor:
        return torch.randn(1, *data.input_shape)

    def describe_test(self, data: DataSplits) -> str:
        """What `archforge test` tests on, in words (printed before it starts)."""
        return f"{data.name} ({len(data.test)} test samples)"

    def table_columns(self, rows: list[dict[str, Any]]) -> list[str]:
        """The metric columns of a final table: each of `table_metrics`, or, when the rows hold one value per
        test set (`<set>_<metric>`), one column per set instead of the pooled value."""
        keys = list(dict.fromkeys(k for row in rows for k in row))
        columns = []
        for metric in self.table_metrics:
            per_set = [k for k in keys if k.endswith(f"_{metric}") and k != metric]
            columns += per_set or [metric]
        return columns

    # -- what each task implements --------------------------------------------------------
    def train(self, model: nn.Module, data: DataSplits, run_dir: Path, progress: bool = True) -> dict[str, float]:
        raise NotImplementedError(f"task {self.name!r} does not implement training")

    def test(self, model: nn.Module, data: DataSplits, run_dir: Path | None = None) -> dict[str, float]:
        raise NotImplementedError(f"task {self.name!r} does not implement testing")
