"""The task contract: what a task tells the core, so that every evaluator and every searcher works on it.

A task package subclasses `Task` and registers it in `TASKS`. The core never
assumes classification: it asks the task how a batch becomes a loss
(`loss`), how a model is scored on a loader (`score`, with the task's
`primary_metric` among the keys), how samples are batched (`collate`), what a
space needs to build a network for this data (`build_context`), what one input
looks like (`example_input`), and which other modules its final training
involves (`companions`: a teacher, a discriminator).

The shape follows torchdistill's forward procedures and mmrazor's per-task
loss calculators: one object per task answers these questions, and the
evaluators (`core.evaluation`), the supernet trainer (`core.supernet`) and
the one-shot searchers (`core.oneshot`) only ever call them.

    class MyTask(Task):
        name = "my_task"
        primary_metric = "psnr"
        metrics = ("psnr", "ssim")

        def loss(self, model, batch):
            x, y = batch
            loss = F.l1_loss(model(x), y)
            return loss, {"l1": loss.detach()}

        def score(self, model, loader):
            ...
            return {"psnr": ..., "ssim": ...}
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from core.api import Arch, SearchSpace
from core.engine.data import DataSplits, DeviceBatches, tensor_source, to_device
from core.engine.registry import DATASETS, EVALUATORS, SPACES, ConfigError, check_kwargs


class Task:
    """Base class of every task (see the module docstring)."""

    name = "task"
    #: the metric `score` must return and an objective optimises by default
    primary_metric: str = "accuracy"
    #: whether a larger primary metric is better
    higher_is_better: bool = True
    #: every metric name `score` returns (the evaluators report these; objectives are checked against them)
    metrics: tuple[str, ...] = ()
    #: metric names a final table shows, in order
    table_metrics: tuple[str, ...] = ()
    #: a dataclass of the task's own options, read from the config section named after the task
    #: (e.g. `super_resolution: {scale: 2}`); unknown keys and wrong types fail with the key's name
    Options: type | None = None
    #: the DataLoader collate function of this task's datasets (None: torch's default)
    collate: Callable | None = None
    #: keys of the task's section that define the network (a saved model keeps them; `archforge test` takes
    #: everything else from the command line)
    model_options: tuple[str, ...] = ()

    def __init__(self, cfg: dict[str, Any] | None = None):
        self.cfg = dict(cfg or {})
        self.options = self._read_options(self.cfg.get(self.name) or {})

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

    def evaluator_section(self) -> dict[str, Any]:
        """The config's `evaluator` section (default: the train-from-scratch evaluator), without `timeout_s`,
        which the search's executor enforces (`evaluator_timeout`)."""
        section = dict(self.cfg.get("evaluator") or {"name": "train"})
        section.pop("timeout_s", None)
        return section

    def evaluator_timeout(self) -> float | None:
        """`evaluator.timeout_s`: seconds per evaluation, after which the executor journals it as failed."""
        timeout = (self.cfg.get("evaluator") or {}).get("timeout_s")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
            raise ConfigError(f"evaluator.timeout_s: expected a number of seconds > 0 or null, got {timeout!r}")
        return timeout

    def check_evaluator(self) -> set[str] | None:
        """Check the evaluator section without building the evaluator (building one may train a supernet);
        return the metric names its results will hold (None: not declared)."""
        section = self.evaluator_section()
        target = EVALUATORS.check(section, "evaluator", provided=("space", "data", "task"))
        names = getattr(target, "metric_names", None)
        return names(section, self) if callable(names) else None

    # -- components from the config ---------------------------------------------------------------------
    def data(self) -> DataSplits:
        if not self.cfg.get("data"):
            raise ConfigError(f"data: missing section; name a dataset of task {self.name!r}")
        return DATASETS.build(self.cfg["data"], "data")

    def build_context(self, data: DataSplits) -> dict[str, Any]:
        """Space arguments the data decides (input channels, classes, scale) unless the config sets them."""
        return {}

    def space(self, data: DataSplits) -> SearchSpace:
        section = self.cfg.get("space")
        if not section:
            raise ConfigError("space: missing section; name a search space, e.g. space: {name: mobile}")
        extra = {k: v for k, v in self.build_context(data).items() if k not in section}
        return SPACES.build(section, "space", **extra)

    def example_input(self, data: DataSplits) -> torch.Tensor:
        """One input batch of size 1, as the model sees it (for MACs, latency and export)."""
        return torch.randn(1, *data.input_shape)

    def baseline(self, name: str, space: SearchSpace, data: DataSplits, searched: Arch | None = None) -> Arch:
        """The arch of a named hand-designed baseline in `space` (config `retrain.baselines`); `searched` is the
        searched arch when a baseline is sized to it."""
        raise ConfigError(f"retrain.baselines: task {self.name!r} has no baseline {name!r}")

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

    # -- batches, losses and scores -----------------------------------------------------------------------
    def loader(self, dataset: Dataset, batch_size: int, shuffle: bool = False, seed: int = 0,
               num_workers: int = 0, drop_last: bool = False) -> DataLoader:
        """A DataLoader over `dataset` with this task's collate; a seeded shuffle when `shuffle`."""
        generator = torch.Generator().manual_seed(seed) if shuffle else None
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                          num_workers=num_workers, drop_last=drop_last, collate_fn=self.collate)

    def trainable(self, model: nn.Module, data: DataSplits) -> nn.Module:
        """What an optimiser trains for `model`: the model itself, or the model with task heads that train with
        it (a face task's margin head). `loss` receives this module."""
        return model

    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        """How one batch becomes a scalar loss; the dict holds detached values to log (tensors or floats)."""
        raise NotImplementedError(f"task {self.name!r} does not define a training loss")

    def score(self, model: nn.Module, loader: Iterable) -> dict[str, float]:
        """The task's metrics of `model` over `loader` (the primary metric among them); batches are moved to
        the model's device here."""
        raise NotImplementedError(f"task {self.name!r} does not define a score")

    def resize(self, batch: Any, size: int) -> Any:
        """`batch` with its images resized to `size` pixels a side (EcoNAS's resolution proxy)."""
        x, *rest = batch
        if not (torch.is_tensor(x) and x.dim() == 4):
            raise ConfigError(f"evaluator.resolution_divisor: task {self.name!r} does not support resized inputs")
        return (F.interpolate(x, size=size, mode="bilinear", align_corners=False), *rest)

    # -- final training --------------------------------------------------------------------------------------
    def companions(self, model: nn.Module, data: DataSplits) -> dict[str, nn.Module]:
        """Other modules the final training of `model` involves, by role ("teacher", "discriminator", ...)."""
        return {}

    def train(self, model: nn.Module, data: DataSplits, run_dir: Path, progress: bool = True) -> dict[str, float]:
        """Train `model` with the `train` config section (Lightning); returns the last validation scores."""
        from core.engine.lightning import ContractModule, make_trainer

        cfg = self.cfg["train"]
        module = ContractModule(self, self.trainable(model, data), model, cfg,
                                self.loader(data.val, self.cfg.get("test", {}).get("batch_size", 64)))
        trainer = make_trainer(cfg, Path(run_dir), progress=progress)
        trainer.fit(module, self.loader(data.train, cfg["batch_size"], shuffle=True, seed=self.cfg.get("seed", 0),
                                        num_workers=cfg.get("num_workers", 0)))
        return dict(module.last_scores)

    def test(self, model: nn.Module, data: DataSplits, run_dir: Path | None = None) -> dict[str, float]:
        """The task's metrics on the test split."""
        return self.score(model, self.loader(data.test, self.cfg.get("test", {}).get("batch_size", 64)))


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's first parameter or buffer (CPU for a module with neither)."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def batches_on(loader: Iterable, model: nn.Module) -> Iterable:
    """The batches of `loader`, moved to `model`'s device."""
    device = model_device(model)
    for batch in loader:
        yield to_device(batch, device)


def task_batches(task: Task | None, dataset: Dataset, batch_size: int, shuffle: bool = False, seed: int = 0,
                 device: torch.device | str | None = None, collate: Callable | None = None) -> Iterable:
    """The batches of `task.loader(dataset, batch_size, shuffle, seed)` (with `task` None: of a DataLoader with
    `collate`, shuffled by a generator seeded with `seed`), the same samples in the same order.

    An in-memory tensor dataset that the task batches with torch's default collate and its own `loader` comes
    through `DeviceBatches` (gathered on `device`, no collate); any other comes from the loader as it is, on
    the host (move its batches with `to_device`).
    """
    plain = (collate is None) if task is None else (task.collate is None and type(task).loader is Task.loader)
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    if plain and tensor_source(dataset) is not None:
        return DeviceBatches(dataset, batch_size, shuffle=shuffle, generator=generator, device=device)
    if task is not None:
        return task.loader(dataset, batch_size, shuffle=shuffle, seed=seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collate, generator=generator)


def check_finite(loss: torch.Tensor, where: str) -> None:
    """Raise FloatingPointError naming `where` when the loss is NaN or infinite (one sync with the device)."""
    value = float(loss.detach())
    if not math.isfinite(value):
        raise FloatingPointError(f"loss is {value} at {where}")


__all__ = ["Task", "DataSplits", "model_device", "batches_on", "task_batches", "check_finite"]
