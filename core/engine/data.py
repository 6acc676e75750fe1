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


def tensor_source(dataset: Dataset):
    """(tensors, indices) when `dataset` is a TensorDataset or a (nested) Subset of one, else None."""
    import torch
    from torch.utils.data import Subset, TensorDataset

    indices = None
    while isinstance(dataset, Subset):
        sub = torch.as_tensor(list(dataset.indices), dtype=torch.long)
        indices = sub if indices is None else sub[indices]
        dataset = dataset.dataset
    if not isinstance(dataset, TensorDataset):
        return None
    return dataset.tensors, indices


#: a tensor dataset up to this size is copied to the GPU once; larger ones travel batch by batch
DEVICE_DATA_BYTES = 2 << 30
_DEVICE_COPIES: dict = {}   # (id of a host tensor, device) -> (weak reference to it, its copy on the device)


def _on_device(tensor, device):
    """`tensor.to(device)`, made once while `tensor` lives (every epoch of a search reuses the copy)."""
    import weakref

    key = (id(tensor), str(device))
    hit = _DEVICE_COPIES.get(key)
    if hit is not None and hit[0]() is tensor:
        return hit[1]
    for k in [k for k, (ref, _) in _DEVICE_COPIES.items() if ref() is None]:
        del _DEVICE_COPIES[k]  # copies of tensors that are gone
    copy = tensor.to(device)
    _DEVICE_COPIES[key] = (weakref.ref(tensor), copy)
    return copy


class DeviceBatches:
    """The batches of `DataLoader(dataset, batch_size, shuffle, generator=generator, drop_last=drop_last)`,
    the same samples in the same order, delivered on `device`.

    A `TensorDataset` (or a Subset of one, such as a search's train half) is
    batched with one index op per tensor instead of a `__getitem__` per sample
    and a collate: on CUDA the tensors go to the GPU once (up to
    `DEVICE_DATA_BYTES`) and batches are gathered there, so no step waits for
    the host. Other datasets go through a DataLoader with pinned memory and
    non-blocking copies. The order comes from a DataLoader over the sample
    indices, so it consumes `generator` exactly as the DataLoader would.
    """

    def __init__(self, dataset: Dataset, batch_size: int, shuffle: bool = False, generator=None,
                 drop_last: bool = False, device=None, num_workers: int = 0):
        import torch
        from torch.utils.data import DataLoader

        self.device = torch.device(device) if device is not None else torch.device("cpu")
        cuda = self.device.type == "cuda"
        source = tensor_source(dataset)
        self.loader = None
        if source is None:
            self.loader = DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                                     drop_last=drop_last, num_workers=num_workers, pin_memory=cuda)
            return
        self.order = DataLoader(range(len(dataset)), batch_size=batch_size, shuffle=shuffle, generator=generator,
                                drop_last=drop_last)
        tensors, self.indices = source
        if cuda and sum(t.numel() * t.element_size() for t in tensors) <= DEVICE_DATA_BYTES:
            tensors = tuple(_on_device(t, self.device) for t in tensors)
            self.indices = self.indices.to(self.device) if self.indices is not None else None
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.loader if self.loader is not None else self.order)

    def __iter__(self):
        if self.loader is not None:
            for batch in self.loader:
                yield tuple(t.to(self.device, non_blocking=True) for t in batch)
            return
        cuda = self.device.type == "cuda"
        for positions in self.order:
            on = self.tensors[0].device
            idx = positions.to(on, non_blocking=True)
            if self.indices is not None:
                idx = self.indices[idx]
            batch = tuple(t[idx] for t in self.tensors)
            if on != self.device:
                batch = tuple((t.pin_memory() if cuda else t).to(self.device, non_blocking=cuda) for t in batch)
            yield batch

