"""scikit-learn's bundled 8x8 digits as train/val/test splits: the embedded classification data (nothing
downloads), used by the classification task, the tabular benchmark and the core's tests."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import TensorDataset

from core.engine.data import DataSplits, check_fraction
from core.engine.registry import ConfigError


def stratified_split(labels: np.ndarray, fractions: tuple[float, ...], seed: int) -> list[np.ndarray]:
    """Stratified split of indices into len(fractions)+1 parts (the last takes the rest)."""
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in range(len(fractions) + 1)]
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        start = 0
        for i, frac in enumerate(fractions):
            n = int(round(len(idx) * frac))
            parts[i].extend(idx[start:start + n])
            start += n
        parts[-1].extend(idx[start:])
    return [np.sort(np.array(p, dtype=np.int64)) for p in parts]



def digits(val_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 0) -> DataSplits:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes); nothing downloads.

    Pixels 0..16 are scaled to [0, 1] and standardised with the training mean/std.
    """
    from sklearn.datasets import load_digits

    check_fraction(val_fraction, "data.val_fraction")
    check_fraction(test_fraction, "data.test_fraction")
    if val_fraction + test_fraction >= 0.9:
        raise ConfigError(f"data.val_fraction + data.test_fraction: expected < 0.9 (a training split must remain), "
                          f"got {val_fraction} + {test_fraction}")
    bunch = load_digits()
    images = bunch.images.astype(np.float32) / 16.0
    labels = bunch.target.astype(np.int64)
    val_idx, test_idx, train_idx = stratified_split(labels, (val_fraction, test_fraction), seed)
    mean, std = images[train_idx].mean(), images[train_idx].std()
    x = torch.from_numpy((images - mean) / std).unsqueeze(1)
    y = torch.from_numpy(labels)

    def part(idx: np.ndarray) -> TensorDataset:
        return TensorDataset(x[idx], y[idx])

    return DataSplits("digits", part(train_idx), part(val_idx), part(test_idx), (1, 8, 8), num_classes=10,
                      class_names=[str(i) for i in range(10)])
