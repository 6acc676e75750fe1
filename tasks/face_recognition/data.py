"""Face datasets: insightface RecordIO, ImageFolder of aligned crops, and the synthetic default.

Every dataset component returns `FaceDataSplits`: `train` yields
`(image, identity)` with images normalised as insightface does
(`(x / 255 - 0.5) / 0.5`, random horizontal flip when training); `val` is
the verification pair set the training loop reports on; `verification`
maps each test benchmark name (lfw, agedb_30, cfp_fp, calfw, cplfw, ...) to
its `VerificationSet`, and `test` is the first of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from core.engine.data import DataError, DataSplits
from core.engine.registry import DATASETS, ConfigError
from tasks.face_recognition.recordio import IndexedRecordReader, decode_image, unpack
from tasks.face_recognition.verification import VerificationSet

_MEAN, _STD = 0.5, 0.5


@dataclass
class FaceDataSplits(DataSplits):
    verification: dict[str, VerificationSet] = field(default_factory=dict)


def _to_tensor(image: np.ndarray, size: int, flip: bool) -> torch.Tensor:
    if image.shape[0] != size or image.shape[1] != size:
        from PIL import Image

        image = np.array(Image.fromarray(image).resize((size, size), Image.BILINEAR))
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div(255.0)
    if flip:
        x = x.flip(-1)
    return (x - _MEAN) / _STD


class RecordFaceDataset(Dataset):
    """insightface `train.rec`/`train.idx` (see `recordio`), read without MXNet (their `MXFaceDataset`)."""

    def __init__(self, root: str | Path, image_size: int = 112, augment: bool = True):
        root = Path(root).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"data.root: folder not found: {root}")
        self.reader = IndexedRecordReader(root / "train.rec", root / "train.idx")
        self.image_size, self.augment = image_size, augment
        header, _ = self._unpack(0)
        if header.flag > 0:
            self.keys = list(range(1, int(header.label[0])))
        else:
            self.keys = sorted(self.reader.keys())
        self._labels: list[int] | None = None

    def __len__(self) -> int:
        return len(self.keys)

    @staticmethod
    def _label(header) -> int:
        label = header.label
        return int(label if np.isscalar(label) else label[0])

    @property
    def labels(self) -> list[int]:
        """Every image's identity (reads the headers once)."""
        if self._labels is None:
            self._labels = [self._label(self._unpack(k)[0]) for k in self.keys]
        return self._labels

    def _unpack(self, key: int):
        try:
            return unpack(self.reader.read(key))
        except ValueError as err:
            if isinstance(err, DataError):
                raise
            raise DataError(f"{self.reader.rec}: record {key}: {err}") from None

    def __getitem__(self, i: int):
        key = self.keys[i]
        header, data = self._unpack(key)
        flip = self.augment and bool(torch.rand(()) < 0.5)
        image = decode_image(data, f"{self.reader.rec}: record {key}")
        return _to_tensor(image, self.image_size, flip), self._label(header)


class FolderFaceDataset(Dataset):
    """`root/<identity>/*.jpg|png` of aligned crops (torchvision ImageFolder layout)."""

    def __init__(self, root: str | Path, image_size: int = 112, augment: bool = True):
        root = Path(root).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"data.root: folder not found: {root}")
        classes = sorted(d.name for d in root.iterdir() if d.is_dir())
        self.samples = [(p, k) for k, c in enumerate(classes) for p in sorted((root / c).iterdir())
                        if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp")]
        if not self.samples:
            raise FileNotFoundError(f"data.root: no images in identity folders under {root}")
        self.classes, self.image_size, self.augment = classes, image_size, augment
        self.labels = [k for _, k in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        flip = self.augment and bool(torch.rand(()) < 0.5)
        return _to_tensor(decode_image(path.read_bytes(), str(path)), self.image_size, flip), label


def _num_classes(root: Path, dataset) -> int:
    prop = root / "property"
    if prop.is_file():
        try:
            return int(prop.read_text().split(",")[0])
        except ValueError:
            raise ValueError(f"{prop}: expected 'num_classes,height,width'") from None
    return max(dataset.labels) + 1


def _bins(root: Path, names: list | None, key: str) -> list[Path]:
    if names is None:
        found = sorted(root.glob("*.bin"))
        if not found:
            raise FileNotFoundError(f"{key}: no verification .bin files in {root}; name them, "
                                    f"e.g. {key}: [lfw, agedb_30]")
        return found
    if isinstance(names, str) or not names:
        raise ConfigError(f"{key}: expected a list of .bin names or paths, got {names!r}")
    paths = []
    for name in names:
        p = Path(str(name)).expanduser()
        p = p if p.suffix == ".bin" and p.is_file() else root / (p.name if p.suffix == ".bin" else f"{name}.bin")
        if not p.is_file():
            raise FileNotFoundError(f"{key}: verification file not found: {p}")
        paths.append(p)
    return paths


def _root(root: str) -> Path:
    if root in ("???", ""):
        raise ConfigError("data.root: not set; pass data.root=PATH (the folder with train.rec or train/)")
    return Path(root).expanduser()


def _splits(name: str, train, root: Path, image_size: int, verification, val_target) -> FaceDataSplits:
    tests = {p.stem: VerificationSet(p, image_size) for p in _bins(root, verification, "data.verification")}
    val = VerificationSet(_bins(root, [val_target], "data.val_target")[0], image_size) if val_target else \
        next(iter(tests.values()))
    num_classes = _num_classes(root, train)
    return FaceDataSplits(name, train, val, next(iter(tests.values())), (3, image_size, image_size),
                          num_classes=num_classes, verification=tests)


@DATASETS.register("face_recordio")
def face_recordio(root: str, image_size: int = 112, verification: list | None = None,
                  val_target: str | None = None) -> FaceDataSplits:
    """An insightface training folder: `root/train.rec`, `train.idx`, `property` and `*.bin` pair files.

    `verification` names the test benchmarks (`[lfw, agedb_30, cfp_fp, calfw, cplfw]`; default every
    `.bin` in root); `val_target` the one reported during training (default the first).
    """
    base = _root(root)
    train = RecordFaceDataset(base, image_size)
    return _splits(f"recordio:{base}", train, base, image_size, verification, val_target)


@DATASETS.register("face_imagefolder")
def face_imagefolder(root: str, train_dir: str = "train", image_size: int = 112, verification: list | None = None,
                     val_target: str | None = None) -> FaceDataSplits:
    """Aligned 112x112 crops in `root/train/<identity>/*.jpg` plus `.bin` pair files in `root`
    (see `python -m tasks.face_recognition.align` to make the crops from raw photos)."""
    base = _root(root)
    train = FolderFaceDataset(base / train_dir, image_size)
    return _splits(f"imagefolder:{base}", train, base, image_size, verification, val_target)


@DATASETS.register("face_synthetic")
def face_synthetic(identities: int = 64, images_per_identity: int = 16, pairs: int = 300, image_size: int = 32,
                   pose: float = 15.0, noise: float = 0.06, seed: int = 0,
                   cache_dir: str | None = None) -> FaceDataSplits:
    """The embedded default: synthetic identities written once as RecordIO + `.bin` pairs, then read back
    through the same readers as real data (see `synthetic`)."""
    from tasks.face_recognition.synthetic import make_synthetic

    folder = make_synthetic(identities, images_per_identity, pairs, image_size, pose, noise, seed, cache_dir)
    return face_recordio(str(folder), image_size, verification=["synthetic_test"], val_target="synthetic_val")


__all__ = [
    "FaceDataSplits",
    "FolderFaceDataset",
    "RecordFaceDataset",
    "face_imagefolder",
    "face_recordio",
    "face_synthetic",
]
