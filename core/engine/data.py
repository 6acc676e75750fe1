"""`DataSplits`: what a dataset component gives the rest of the suite."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from collections.abc import Iterable, Iterator
from typing import Any
from pathlib import Path

import torch
from torch.utils.data import Dataset

from core.engine.registry import ConfigError


class DataError(ValueError):
    """A data file that cannot be read as what it should be (a corrupt image, a truncated record, a refused
    pickle). The message names the file (and the record or entry); a search stops on it rather than failing
    every candidate the same way."""


def image_error(err: Exception) -> str:
    """A short reason from PIL's error (its own messages repeat the file object's repr)."""
    if type(err).__name__ == "UnidentifiedImageError":
        return "not in an image format PIL reads"
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return text[:160]


@dataclass
class DataSplits:
    """Train / validation / test sets of one dataset plus what models need to know about it.

    `val` is what a search scores candidates on; `test` is touched only by
    `archforge test` and final tables. `input_shape` is one sample's input (C, H, W); `num_classes` is set by
    datasets with class labels and None otherwise.
    """

    name: str
    train: Dataset
    val: Dataset
    test: Dataset
    input_shape: tuple[int, ...]
    num_classes: int | None = None
    class_names: list[str] = field(default_factory=list)


def cache_dir(name: str) -> Path:
    """Where generated default data is written once and reused: `$ARCHFORGE_DATA/<name>`
    (default `~/.cache/archforge/<name>`)."""
    return Path(os.environ.get("ARCHFORGE_DATA", Path.home() / ".cache" / "archforge")) / name


def cycle(loader: Iterable) -> Iterator:
    """Batches of `loader` without end, a new pass (and shuffle) each time round (DARTS-style search
    draws validation batches this way)."""
    while True:
        yield from loader


def split_indices(n: int, portion: float, seed: int, what: str = "samples") -> tuple[list[int], list[int]]:
    """A seeded random split of range(n) into `portion` and the rest: the weight and architecture halves of a
    DARTS-style search. Raises ValueError naming `strategy.train_portion` when either side would be empty."""
    import math

    import torch

    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    split = int(math.floor(portion * n))
    if split < 1 or split >= n:
        raise ValueError(f"strategy.train_portion={portion} leaves an empty half of {n} {what}")
    return order[:split], order[split:]


def to_device(batch: Any, device: torch.device | str) -> Any:
    """`batch` with every tensor in it (nested in tuples, lists and dicts) moved to `device`."""
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        moved = [to_device(b, device) for b in batch]
        return type(batch)(moved) if not hasattr(batch, "_fields") else type(batch)(*moved)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def check_fraction(value: float, key: str, low_open: bool = True) -> None:
    """Raise ConfigError naming `key` unless `value` is a fraction in (0, 1) (or [0, 1) when not `low_open`)."""
    if not isinstance(value, (int, float)) or not (0 < value < 1 if low_open else 0 <= value < 1):
        raise ConfigError(f"{key}: expected a fraction in {'(0, 1)' if low_open else '[0, 1)'}, got {value!r}")
