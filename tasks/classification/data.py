"""Classification datasets: scikit-learn's digits (embedded default), ImageFolder and CIFAR folders."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from core.engine.data import DataSplits
from core.data.digits import digits, stratified_split
from core.engine.registry import DATASETS


DATASETS.register("digits", digits)


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
    held, kept = stratified_split(np.asarray(targets), (fraction,), seed)
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
    return DataSplits(f"imagefolder:{base}", train, val, test, (3, image_size, image_size),
                      num_classes=len(train_full.classes), class_names=list(train_full.classes))


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
    val_idx, train_idx = stratified_split(ytr, (val_fraction,), seed)
    train = _ArrayImages(xtr[train_idx], ytr[train_idx], mean, std, augment=True)
    val = _ArrayImages(xtr[val_idx], ytr[val_idx], mean, std, augment=False)
    test = _ArrayImages(xte, yte, mean, std, augment=False)
    return DataSplits(variant, train, val, test, (3, 32, 32), num_classes=len(names), class_names=names)
