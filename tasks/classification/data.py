"""Classification datasets: scikit-learn's digits (embedded default), generated shapes at 32x32, ImageFolder and
CIFAR folders."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from core.engine.data import DataSplits, cache_dir
from core.engine.registry import DATASETS, ConfigError


def _split_indices(labels: np.ndarray, fractions: tuple[float, ...], seed: int) -> list[np.ndarray]:
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


@DATASETS.register("digits")
def digits(val_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 0) -> DataSplits:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes); nothing downloads.

    Pixels 0..16 are scaled to [0, 1] and standardised with the training mean/std.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.astype(np.float32) / 16.0
    labels = bunch.target.astype(np.int64)
    val_idx, test_idx, train_idx = _split_indices(labels, (val_fraction, test_fraction), seed)
    mean, std = images[train_idx].mean(), images[train_idx].std()
    x = torch.from_numpy((images - mean) / std).unsqueeze(1)
    y = torch.from_numpy(labels)

    def part(idx: np.ndarray) -> TensorDataset:
        return TensorDataset(x[idx], y[idx])

    return DataSplits("digits", part(train_idx), part(val_idx), part(test_idx), 10, (1, 8, 8),
                      [str(i) for i in range(10)])


def _require_dir(path: Path, key: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{key}: folder not found: {path}")
    return path


def _image_transforms(image_size: int, train: bool, mean, std):
    from torchvision import transforms as T

    ops = [T.Resize(image_size), T.CenterCrop(image_size)]
    if train:
        ops = [T.RandomResizedCrop(image_size, scale=(0.5, 1.0)), T.RandomHorizontalFlip()]
    return T.Compose(ops + [T.ToTensor(), T.Normalize(mean, std)])


def _holdout(dataset: Dataset, eval_dataset: Dataset, targets: list[int], fraction: float, seed: int):
    """Split a folder that has no validation set: train part keeps augmentation, val part does not."""
    held, kept = _split_indices(np.asarray(targets), (fraction,), seed)
    return Subset(dataset, kept.tolist()), Subset(eval_dataset, held.tolist())


@DATASETS.register("imagefolder")
def imagefolder(root: str, train_dir: str = "train", val_dir: str | None = "val", test_dir: str | None = None,
                image_size: int = 32, val_fraction: float = 0.1, seed: int = 0,
                mean: list = (0.485, 0.456, 0.406), std: list = (0.229, 0.224, 0.225)) -> DataSplits:
    """torchvision ImageFolder layout: `root/train/<class>/*.jpg`, optional `root/val`, `root/test`.

    Without a `val` folder, `val_fraction` of train is held out (stratified).
    Without a `test` folder, the validation set doubles as the test set.
    """
    from torchvision.datasets import ImageFolder

    base = _require_dir(Path(root).expanduser(), "data.root")
    train_path = _require_dir(base / train_dir, "data.train_dir")
    train_tf, eval_tf = (_image_transforms(image_size, t, mean, std) for t in (True, False))
    train_full = ImageFolder(train_path, transform=train_tf)
    if val_dir and (base / val_dir).is_dir():
        train, val = train_full, ImageFolder(base / val_dir, transform=eval_tf)
    else:
        train, val = _holdout(train_full, ImageFolder(train_path, transform=eval_tf), train_full.targets,
                              val_fraction, seed)
    test = ImageFolder(_require_dir(base / test_dir, "data.test_dir"), transform=eval_tf) if test_dir else val
    return DataSplits(f"imagefolder:{base}", train, val, test, len(train_full.classes),
                      (3, image_size, image_size), list(train_full.classes))


class _ArrayImages(Dataset):
    """uint8 NHWC images with labels, optional augmentation (random crop with padding 4 + flip)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, mean, std, augment: bool, seed: int = 0):
        self.images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        self.labels = torch.from_numpy(labels.astype(np.int64))
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        x = self.images[i].float() / 255.0
        if self.augment:
            x = torch.nn.functional.pad(x, (4, 4, 4, 4))
            top, left = torch.randint(0, 9, (2,)).tolist()
            x = x[:, top:top + 32, left:left + 32]
            if torch.rand(()) < 0.5:
                x = x.flip(-1)
        return (x - self.mean) / self.std, self.labels[i]


def _unpickle(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"data.root: CIFAR file not found: {path}")
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


def read_cifar(folder: Path, variant: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Read the python-pickle CIFAR release (`cifar-10-batches-py` or `cifar-100-python`) into NHWC uint8."""
    if variant == "cifar10":
        train = [_unpickle(folder / f"data_batch_{i}") for i in range(1, 6)]
        test, meta, label_key, names_key = _unpickle(folder / "test_batch"), _unpickle(folder / "batches.meta"), "labels", "label_names"
    else:
        train = [_unpickle(folder / "train")]
        test, meta, label_key, names_key = _unpickle(folder / "test"), _unpickle(folder / "meta"), "fine_labels", "fine_label_names"

    def arrays(batches):
        x = np.concatenate([np.asarray(b["data"], dtype=np.uint8) for b in batches]).reshape(-1, 3, 32, 32)
        y = np.concatenate([np.asarray(b[label_key]) for b in batches])
        return x.transpose(0, 2, 3, 1), y

    (xtr, ytr), (xte, yte) = arrays(train), arrays([test])
    return xtr, ytr, xte, yte, list(meta[names_key])


@DATASETS.register("cifar")
def cifar(root: str, variant: str = "cifar10", val_fraction: float = 0.1, seed: int = 0) -> DataSplits:
    """CIFAR-10/100 from the folders a user already has (`root/cifar-10-batches-py` or `root/cifar-100-python`).

    `val_fraction` of the training set is held out for search; the official test set is the test split.
    """
    folders = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
    if variant not in folders:
        raise ValueError(f"data.variant: expected one of {sorted(folders)}, got {variant!r}")
    base = _require_dir(Path(root).expanduser(), "data.root")
    folder = base / folders[variant] if (base / folders[variant]).is_dir() else base
    xtr, ytr, xte, yte, names = read_cifar(folder, variant)
    mean = (xtr / 255.0).mean(axis=(0, 1, 2)).tolist()
    std = (xtr / 255.0).std(axis=(0, 1, 2)).tolist()
    val_idx, train_idx = _split_indices(ytr, (val_fraction,), seed)
    train = _ArrayImages(xtr[train_idx], ytr[train_idx], mean, std, augment=True)
    val = _ArrayImages(xtr[val_idx], ytr[val_idx], mean, std, augment=False)
    test = _ArrayImages(xte, yte, mean, std, augment=False)
    return DataSplits(variant, train, val, test, len(names), (3, 32, 32), names)


def _load_or_generate_shapes(path: Path, counts: dict[str, int], seed: int) -> dict[str, np.ndarray]:
    from core.engine.runs import atomic_write_bytes
    from tasks.classification import shapes as gen

    if path.is_file():
        with np.load(path, allow_pickle=False) as cached:
            return {k: cached[k] for k in cached.files}
    arrays = {}
    for split, (images, labels) in gen.generate(counts, seed).items():
        arrays[f"{split}_x"], arrays[f"{split}_y"] = images, labels
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())
    return arrays


@DATASETS.register("shapes32")
def shapes32(train: int = 5000, val: int = 1000, test: int = 2000, seed: int = 0, augment: bool = True,
             root: str | None = None) -> DataSplits:
    """Ten shapes on textured backgrounds at 32x32 RGB (`tasks.classification.shapes`), generated once.

    Harder than digits: small CIFAR-style networks stay well below 100% and
    larger ones do better. Class-balanced train/val/test splits of the given
    sizes; written as one `.npz` under `root` (default
    `$ARCHFORGE_DATA/classification`, else `~/.cache/archforge/classification`)
    and reused; nothing downloads. Training images get CIFAR augmentation
    (4-pixel padded random crop, horizontal flip) when `augment`; pixels are
    standardised with the training split's per-channel mean and std.
    """
    from tasks.classification.shapes import SHAPE_CLASSES

    counts = {"train": train, "val": val, "test": test}
    for key, n in counts.items():
        if not isinstance(n, int) or isinstance(n, bool) or n < len(SHAPE_CLASSES):
            raise ConfigError(f"data.{key}: expected at least {len(SHAPE_CLASSES)} images (one per class), got {n!r}")
    folder = Path(root).expanduser() if root else cache_dir("classification")
    path = folder / f"shapes32-v1-s{seed}-{train}-{val}-{test}.npz"
    arrays = _load_or_generate_shapes(path, counts, seed)
    pixels = arrays["train_x"].astype(np.float32) / 255.0
    mean, std = pixels.mean(axis=(0, 1, 2)).tolist(), pixels.std(axis=(0, 1, 2)).tolist()

    def part(split: str, aug: bool) -> _ArrayImages:
        return _ArrayImages(arrays[f"{split}_x"], arrays[f"{split}_y"], mean, std, augment=aug)

    return DataSplits("shapes32", part("train", augment), part("val", False), part("test", False),
                      len(SHAPE_CLASSES), (3, 32, 32), list(SHAPE_CLASSES))
