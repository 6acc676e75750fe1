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

    def __init__(self, cfg: dict[str, Any]):
        self.cfg = cfg
        self.options = self._read_options(cfg.get(self.name) or {})

    def _read_options(self, section: dict[str, Any]):
        if self.Options is None:
            if section:
                raise ConfigError(f"{self.name}: task {self.name!r} takes no options section")
            return None
        return self.Options(**check_kwargs(self.Options, section, self.name))

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

    def evaluator(self, space: SearchSpace, data: DataSplits) -> Evaluator:
        """The `evaluator` section's evaluator; its `timeout_s` (seconds per evaluation, enforced by the
        search's executor) is read here and set on the evaluator."""
        section = dict(self.cfg.get("evaluator") or {"name": "train"})
        timeout = section.pop("timeout_s", None)
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
            raise ConfigError(f"evaluator.timeout_s: expected a number of seconds > 0 or null, got {timeout!r}")
        evaluator = EVALUATORS.build(section, "evaluator", space=space, data=data)
        evaluator.timeout_s = timeout
        return evaluator

    def baseline(self, name: str, space: SearchSpace, data: DataSplits) -> Arch:
        raise ConfigError(f"retrain.baselines: task {self.name!r} has no baseline {name!r}")

    def example_input(self, data: DataSplits) -> torch.Tensor:
        return torch.randn(1, *data.input_shape)

    # -- what each task implements --------------------------------------------------------
    def train(self, model: nn.Module, data: DataSplits, run_dir: Path, progress: bool = True) -> dict[str, float]:
        raise NotImplementedError(f"task {self.name!r} does not implement training")

    def test(self, model: nn.Module, data: DataSplits, run_dir: Path | None = None) -> dict[str, float]:
        raise NotImplementedError(f"task {self.name!r} does not implement testing")
