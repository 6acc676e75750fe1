"""Classification datasets: scikit-learn's digits (embedded default), generated shapes at 32x32, ImageFolder and
CIFAR folders."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from core.data.digits import digits, stratified_split
from core.engine.data import DataError, DataSplits, cache_dir, check_fraction, image_error
from core.engine.registry import DATASETS, ConfigError


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


def load_image(path: str):
    """torchvision's ImageFolder loader, with a file that is not a readable image reported by its path."""
    from PIL import Image, UnidentifiedImageError

    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise DataError(f"{path}: not a readable image ({image_error(err)})") from None



def _holdout(dataset: Dataset, eval_dataset: Dataset, targets: list[int], fraction: float, seed: int):
    """Split a folder that has no validation set: train part keeps augmentation, val part does not."""
    held, kept = stratified_split(np.asarray(targets), (fraction,), seed)
    if len(held) == 0 or len(kept) == 0:
        raise ConfigError(f"data.val_fraction: {fraction} of {len(targets)} training images leaves "
                          f"{'no validation' if len(held) == 0 else 'no training'} image; change it, or add a "
                          "val folder")
    return Subset(dataset, kept.tolist()), Subset(eval_dataset, held.tolist())


def _image_folder(cls, path: Path, transform, key: str):
    try:
        return cls(path, transform=transform)
    except FileNotFoundError as err:  # torchvision: "Couldn't find any class folder" / "Found no valid file"
        raise FileNotFoundError(f"{key}: {str(err).splitlines()[0]}") from None


@DATASETS.register("imagefolder")
def imagefolder(root: str, train_dir: str = "train", val_dir: str | None = "val", test_dir: str | None = None,
                image_size: int = 32, val_fraction: float = 0.1, seed: int = 0,
                mean: list = (0.485, 0.456, 0.406), std: list = (0.229, 0.224, 0.225)) -> DataSplits:
    """torchvision ImageFolder layout: `root/train/<class>/*.jpg`, optional `root/val`, `root/test`.

    Without a `val` folder, `val_fraction` of train is held out (stratified).
    Without a `test` folder, the validation set doubles as the test set.
    """
    from functools import partial

    from torchvision.datasets import ImageFolder as TorchImageFolder

    check_fraction(val_fraction, "data.val_fraction")
    if image_size < 1:
        raise ConfigError(f"data.image_size: expected an integer >= 1, got {image_size!r}")
    ImageFolder = partial(TorchImageFolder, loader=load_image)
    base = _require_dir(Path(root).expanduser(), "data.root")
    train_path = _require_dir(base / train_dir, "data.train_dir")
    train_tf, eval_tf = (_image_transforms(image_size, t, mean, std) for t in (True, False))
    train_full = _image_folder(ImageFolder, train_path, train_tf, "data.train_dir")
    if val_dir and (base / val_dir).is_dir():
        train, val = train_full, _image_folder(ImageFolder, base / val_dir, eval_tf, "data.val_dir")
    else:
        train, val = _holdout(train_full, ImageFolder(train_path, transform=eval_tf), train_full.targets,
                              val_fraction, seed)
    test = _image_folder(ImageFolder, _require_dir(base / test_dir, "data.test_dir"), eval_tf, "data.test_dir") \
        if test_dir else val
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


def _unpickle(path: Path, keys: tuple[str, ...]) -> dict:
    """One CIFAR python batch, read with a restricted unpickler (dicts, lists, str, ints and numpy arrays only:
    a file naming any other global is refused, never run)."""
    from core.engine.safe_pickle import NUMPY_ARRAYS, safe_load

    if not path.is_file():
        raise FileNotFoundError(f"data.root: CIFAR file not found: {path}")
    batch = safe_load(path, NUMPY_ARRAYS, "CIFAR python batch", encoding="latin1")
    if not isinstance(batch, dict) or any(k not in batch for k in keys):
        found = sorted(batch)[:6] if isinstance(batch, dict) else type(batch).__name__
        raise DataError(f"{path}: not a CIFAR python batch (expected keys {list(keys)}, found {found})")
    return batch


def read_cifar(folder: Path, variant: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Read the python-pickle CIFAR release (`cifar-10-batches-py` or `cifar-100-python`) into NHWC uint8."""
    label_key, names_key = ("labels", "label_names") if variant == "cifar10" else ("fine_labels", "fine_label_names")
    batch_keys = ("data", label_key)
    if variant == "cifar10":
        train = [_unpickle(folder / f"data_batch_{i}", batch_keys) for i in range(1, 6)]
        test, meta = _unpickle(folder / "test_batch", batch_keys), _unpickle(folder / "batches.meta", (names_key,))
    else:
        train = [_unpickle(folder / "train", batch_keys)]
        test, meta = _unpickle(folder / "test", batch_keys), _unpickle(folder / "meta", (names_key,))

    def arrays(batches):
        xs = []
        for b in batches:
            x = np.asarray(b["data"])
            if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or len(b[label_key]) != len(x):
                raise DataError(f"{folder}: a CIFAR batch holds data of shape {x.shape} and dtype {x.dtype} with "
                                f"{len(b[label_key])} labels (expected N x 3072 uint8 and N labels)")
            xs.append(x)
        x = np.concatenate(xs).reshape(-1, 3, 32, 32)
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
    check_fraction(val_fraction, "data.val_fraction")
    if variant not in folders:
        raise ConfigError(f"data.variant: expected one of {sorted(folders)}, got {variant!r}")
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

    return DataSplits("shapes32", part("train", augment), part("val", False), part("test", False), (3, 32, 32),
                      num_classes=len(SHAPE_CLASSES), class_names=list(SHAPE_CLASSES))
