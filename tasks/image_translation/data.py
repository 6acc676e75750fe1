"""Image translation data: pix2pix paired and CycleGAN unpaired folders, and an embedded default.

Datasets (all items are float tensors in [-1, 1], CHW, as pix2pix normalises):

- `translation_embedded` (no download): 64-px tiles of the colour photographs
  that scikit-image and scikit-learn ship (`skimage.data`: astronaut, coffee,
  chelsea, rocket, immunohistochemistry, retina, hubble_deep_field, the left
  stereo_motorcycle view; `sklearn.datasets.load_sample_images`: china, flower).
  Each photo is resized so its short side is 128, 192 and 256 px and cut into
  non-overlapping tiles; a seeded permutation sends 70% of the tiles to train,
  10% to val and 20% to test (tiles of one photo appear in every split, never
  overlapping). `pairs: colorize` makes A the grey image (ITU-R 601 luma,
  `skimage.color.rgb2gray`) and B the colour one; `pairs: edges` makes A the
  Canny edge map (`skimage.feature.canny`, sigma 1.5) of the grey image. Built
  once and cached as `.npz` under `core.engine.data.cache_dir("image_translation")`.
  `unpaired: true` is the CycleGAN variant: train A and train B come from
  disjoint halves of the train tiles (no pair shares a tile); val/test stay
  paired so PSNR/SSIM can still be measured.
- `translation_folders`: real data by path, `layout`:
  - `aligned` (pix2pix): `root/{train,val,test}/*.jpg`, each image A|B side by side;
  - `ab_folders`: `root/A/{train,val,test}` and `root/B/{train,val,test}` with matching
    file names (the input of pix2pix's `combine_A_and_B.py`);
  - `unaligned` (CycleGAN): `root/trainA`, `trainB`, `testA`, `testB` (`valA`/`valB` optional).
  A missing val split is taken from the test split. Images are resized to
  `load_size`; training crops `crop_size` at random and flips, val/test crop
  the centre.

`direction: AtoB` (default) or `BtoA` chooses what the generator reads and
writes. Bad input ends with one line naming it: an empty folder, an A|B image
of odd width, a file without its partner in an aligned pair of folders.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from core.engine.data import DataSplits, cache_dir
from core.engine.registry import DATASETS, ConfigError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
#: scikit-image's bundled colour photographs (no download) and scikit-learn's two sample images
SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "retina", "hubble_deep_field",
                  "motorcycle_left")
SKLEARN_PHOTOS = ("china", "flower")
EMBEDDED_VERSION = 1
DIRECTIONS = ("AtoB", "BtoA")


def embedded_photos() -> list[tuple[str, np.ndarray]]:
    """(name, uint8 RGB HWC array) of every bundled colour photograph, in a fixed order."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    out = []
    for name in SKIMAGE_PHOTOS:
        img = skimage.data.stereo_motorcycle()[0] if name == "motorcycle_left" else getattr(skimage.data, name)()
        out.append((name, np.asarray(img)[:, :, :3]))
    sample = load_sample_images()
    for name, img in zip(SKLEARN_PHOTOS, sample.images):
        out.append((name, np.asarray(img)[:, :, :3]))
    return out


def _to_u8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)


def make_embedded_tiles(pairs: str, tile: int = 64, short_sides: tuple[int, ...] = (128, 192, 256),
                        split_seed: int = 0) -> dict[str, np.ndarray]:
    """The embedded paired tiles: arrays `a` (N,1,T,T), `b` (N,3,T,T) uint8, `split` (0 train, 1 val, 2 test),
    `photo` (source photo index) and `names`; deterministic for the arguments."""
    from skimage.color import rgb2gray
    from skimage.feature import canny
    from skimage.transform import resize

    if pairs not in ("colorize", "edges"):
        raise ConfigError(f"data.pairs: expected 'colorize' or 'edges', got {pairs!r}")
    a_list, b_list, photo, names = [], [], [], []
    for index, (name, img) in enumerate(embedded_photos()):
        h, w = img.shape[:2]
        for short in short_sides:
            size = (short, int(round(w * short / h))) if h <= w else (int(round(h * short / w)), short)
            rgb = resize(img, size, order=1, anti_aliasing=True, preserve_range=False).astype(np.float32)
            grey = rgb2gray(rgb)
            a_full = grey if pairs == "colorize" else canny(grey, sigma=1.5).astype(np.float32)
            for top in range(0, size[0] - tile + 1, tile):
                for left in range(0, size[1] - tile + 1, tile):
                    crop = (slice(top, top + tile), slice(left, left + tile))
                    a_list.append(_to_u8(a_full[crop])[None])
                    b_list.append(_to_u8(rgb[crop]).transpose(2, 0, 1))
                    photo.append(index)
                    names.append(f"{name}_s{short}_y{top}_x{left}")
    n = len(names)
    order = np.random.default_rng(split_seed).permutation(n)
    split = np.zeros(n, np.int8)
    n_val, n_test = int(round(0.1 * n)), int(round(0.2 * n))
    split[order[:n_test]] = 2
    split[order[n_test:n_test + n_val]] = 1
    return {"a": np.stack(a_list), "b": np.stack(b_list), "split": split, "photo": np.asarray(photo, np.int16),
            "names": np.asarray(names)}


def load_embedded_tiles(pairs: str = "colorize", tile: int = 64, split_seed: int = 0) -> dict[str, np.ndarray]:
    """`make_embedded_tiles`, built once and cached (an `.npz` read without pickle)."""
    from core.engine.runs import atomic_write_bytes

    path = cache_dir("image_translation") / f"{pairs}_t{tile}_s{split_seed}_v{EMBEDDED_VERSION}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    tiles = make_embedded_tiles(pairs, tile, split_seed=split_seed)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **tiles)
    atomic_write_bytes(path, buffer.getvalue())
    return tiles


def _to_float(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).float().div(127.5).sub(1.0)


class PairedImages(Dataset):
    """Aligned (input, target) images as uint8 arrays (N, C, H, W); items are [-1, 1] float tensors.

    `crop`: random crops of that side (train) or centre crops (eval) when smaller
    than the stored images; `flip`: random horizontal flips of both.
    """

    paired = True

    def __init__(self, inputs: np.ndarray, targets: np.ndarray, names: list[str], crop: int | None = None,
                 flip: bool = False, train: bool = False, labels: np.ndarray | None = None):
        if len(inputs) == 0:
            raise ValueError("a paired split has no images")
        if len(inputs) != len(targets) or inputs.shape[2:] != targets.shape[2:]:
            raise ValueError(f"paired inputs {inputs.shape} and targets {targets.shape} do not align")
        self.inputs, self.targets, self.names = inputs, targets, list(names)
        self.crop, self.flip, self.train = crop, flip, train
        self.labels = labels
        self.in_channels, self.out_channels = int(inputs.shape[1]), int(targets.shape[1])
        self.size = int(crop or inputs.shape[2])

    def __len__(self) -> int:
        return len(self.inputs)

    def _window(self, h: int, w: int) -> tuple[slice, slice]:
        if not self.crop or (h == self.crop and w == self.crop):
            return slice(None), slice(None)
        if self.train:
            top, left = np.random.randint(0, h - self.crop + 1), np.random.randint(0, w - self.crop + 1)
        else:
            top, left = (h - self.crop) // 2, (w - self.crop) // 2
        return slice(top, top + self.crop), slice(left, left + self.crop)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = self.inputs[index], self.targets[index]
        ys, xs = self._window(a.shape[1], a.shape[2])
        a, b = a[:, ys, xs], b[:, ys, xs]
        if self.flip and self.train and np.random.random() < 0.5:
            a, b = a[:, :, ::-1], b[:, :, ::-1]
        return _to_float(a), _to_float(b)


class UnpairedImages(Dataset):
    """CycleGAN's unaligned data: item i is (A_i, a random B), each cropped and flipped on its own."""

    paired = False

    def __init__(self, a: np.ndarray, b: np.ndarray, crop: int | None = None, flip: bool = True):
        if len(a) == 0 or len(b) == 0:
            raise ValueError("an unpaired split needs images on both sides")
        self.a, self.b = PairedImages(a, a, [""] * len(a), crop, flip, True), \
            PairedImages(b, b, [""] * len(b), crop, flip, True)
        self.in_channels, self.out_channels = int(a.shape[1]), int(b.shape[1])
        self.size = self.a.size

    def __len__(self) -> int:
        return max(len(self.a), len(self.b))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.a[index % len(self.a)][0]
        b = self.b[int(np.random.randint(len(self.b)))][0]
        return a, b


class UnpairedEval(Dataset):
    """Unpaired test images (CycleGAN testA/testB): inputs with names, and target-domain images for FID/KID."""

    paired = False

    def __init__(self, inputs: np.ndarray, targets: np.ndarray, names: list[str], crop: int | None = None):
        self.inputs = PairedImages(inputs, inputs, names, crop)
        self.targets = PairedImages(targets, targets, [""] * len(targets), crop)
        self.names = list(names)
        self.in_channels, self.out_channels = int(inputs.shape[1]), int(targets.shape[1])
        self.size = self.inputs.size

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inputs[index][0], self.targets[index % len(self.targets)][0]


def _check_direction(direction: str) -> None:
    if direction not in DIRECTIONS:
        raise ConfigError(f"data.direction: expected AtoB or BtoA, got {direction!r}")


def _splits(name: str, train, val, test) -> DataSplits:
    return DataSplits(name=name, train=train, val=val, test=test, num_classes=0,
                      input_shape=(train.in_channels, train.size, train.size))


@DATASETS.register("translation_embedded")
def translation_embedded(pairs: str = "colorize", direction: str = "AtoB", unpaired: bool = False,
                         split_seed: int = 0, flip: bool = True) -> DataSplits:
    """The embedded default (see the module docstring): 64-px tiles of the bundled photographs."""
    _check_direction(direction)
    tiles = load_embedded_tiles(pairs, 64, split_seed)
    a, b = (tiles["a"], tiles["b"]) if direction == "AtoB" else (tiles["b"], tiles["a"])
    names, split, photo = [str(n) for n in tiles["names"]], tiles["split"], tiles["photo"]

    def part(k: int, train: bool = False) -> PairedImages:
        idx = np.flatnonzero(split == k)
        return PairedImages(a[idx], b[idx], [names[i] for i in idx], flip=flip, train=train, labels=photo[idx])

    val, test = part(1), part(2)
    if unpaired:
        idx = np.flatnonzero(split == 0)
        order = np.random.default_rng(split_seed + 1).permutation(idx)
        half = len(order) // 2
        train = UnpairedImages(a[np.sort(order[:half])], b[np.sort(order[half:])], flip=flip)
    else:
        train = part(0, train=True)
    return _splits(f"embedded-{pairs}-{direction}{'-unpaired' if unpaired else ''}", train, val, test)


# -- folders ----------------------------------------------------------------------------------------
def _images_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"data.root: folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ConfigError(f"data.root: {folder} has no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def _read(path: Path, size: tuple[int, int] | None = None, box: tuple[int, int, int, int] | None = None,
          grey: bool = False) -> np.ndarray:
    """An image as uint8 CHW (RGB, or one channel with `grey`), optionally cropped to `box` then resized."""
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("L" if grey else "RGB")
        if box is not None:
            img = img.crop(box)
        if size is not None and img.size != (size[1], size[0]):
            img = img.resize((size[1], size[0]), Image.BICUBIC)
        arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def read_aligned(folder: Path, load_size: int, grey_a: bool = False, grey_b: bool = False
                 ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """pix2pix's aligned layout: every image is A|B side by side; both halves resized to load_size."""
    from PIL import Image

    a, b, names = [], [], []
    for path in _images_in(folder):
        with Image.open(path) as img:
            w, h = img.size
        if w % 2:
            raise ConfigError(f"data.root: {path} is {w} px wide, an odd width; an aligned image is A|B side by side "
                              "with halves of equal width")
        half = w // 2
        a.append(_read(path, (load_size, load_size), (0, 0, half, h), grey_a))
        b.append(_read(path, (load_size, load_size), (half, 0, w, h), grey_b))
        names.append(path.stem)
    return np.stack(a), np.stack(b), names


def read_ab_folders(folder_a: Path, folder_b: Path, load_size: int, grey_a: bool = False, grey_b: bool = False
                    ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Aligned A/ and B/ folders: each A file has a B file of the same name (any image suffix)."""
    files_a, files_b = _images_in(folder_a), _images_in(folder_b)
    by_stem_b = {p.stem: p for p in files_b}
    by_stem_a = {p.stem: p for p in files_a}
    lonely = [p.name for p in files_a if p.stem not in by_stem_b]
    if lonely:
        raise ConfigError(f"data.root: {folder_a / lonely[0]} has no partner of the same name in {folder_b} "
                          f"({len(lonely)} unmatched)")
    lonely = [p.name for p in files_b if p.stem not in by_stem_a]
    if lonely:
        raise ConfigError(f"data.root: {folder_b / lonely[0]} has no partner of the same name in {folder_a} "
                          f"({len(lonely)} unmatched)")
    size = (load_size, load_size)
    a = np.stack([_read(p, size, grey=grey_a) for p in files_a])
    b = np.stack([_read(by_stem_b[p.stem], size, grey=grey_b) for p in files_a])
    return a, b, [p.stem for p in files_a]


LAYOUTS = ("aligned", "ab_folders", "unaligned")


@DATASETS.register("translation_folders")
def translation_folders(root: str, layout: str = "aligned", direction: str = "AtoB", load_size: int = 286,
                        crop_size: int = 256, grey_a: bool = False, grey_b: bool = False, flip: bool = True
                        ) -> DataSplits:
    """pix2pix / CycleGAN folders (see the module docstring)."""
    _check_direction(direction)
    if layout not in LAYOUTS:
        raise ConfigError(f"data.layout: expected one of {', '.join(LAYOUTS)}, got {layout!r}")
    if crop_size > load_size:
        raise ConfigError(f"data.crop_size: {crop_size} is larger than data.load_size={load_size}")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise FileNotFoundError(f"data.root: folder not found: {base}")
    swap = direction == "BtoA"

    def oriented(a, b):
        return (b, a) if swap else (a, b)

    if layout == "unaligned":
        def side(split: str, which: str) -> np.ndarray:
            files = _images_in(base / f"{split}{which}")
            grey = grey_a if which == "A" else grey_b
            return np.stack([_read(p, (load_size, load_size), grey=grey) for p in files]), [p.stem for p in files]

        (train_a, _), (train_b, _) = side("train", "A"), side("train", "B")
        (test_a, names_a), (test_b, names_b) = side("test", "A"), side("test", "B")
        if (base / "valA").is_dir():
            (val_a, vnames_a), (val_b, vnames_b) = side("val", "A"), side("val", "B")
        else:
            (val_a, vnames_a), (val_b, vnames_b) = (test_a, names_a), (test_b, names_b)
        tr_in, tr_out = oriented(train_a, train_b)
        te_in, te_out = oriented(test_a, test_b)
        va_in, va_out = oriented(val_a, val_b)
        te_names, va_names = (names_b, vnames_b) if swap else (names_a, vnames_a)
        train = UnpairedImages(tr_in, tr_out, crop_size, flip)
        return _splits(f"folders-{base.name}-{direction}", train, UnpairedEval(va_in, va_out, va_names, crop_size),
                       UnpairedEval(te_in, te_out, te_names, crop_size))

    def read(split: str):
        if layout == "aligned":
            return read_aligned(base / split, load_size, grey_a, grey_b)
        return read_ab_folders(base / "A" / split, base / "B" / split, load_size, grey_a, grey_b)

    splits: dict[str, Any] = {}
    for split in ("train", "val", "test"):
        folder = base / split if layout == "aligned" else base / "A" / split
        if split == "val" and not folder.exists():
            continue
        a, b, names = read(split)
        a, b = oriented(a, b)
        splits[split] = PairedImages(a, b, names, crop_size, flip, train=split == "train")
    splits.setdefault("val", splits["test"])
    return _splits(f"folders-{base.name}-{direction}", splits["train"], splits["val"], splits["test"])


__all__ = ["translation_embedded", "translation_folders", "PairedImages", "UnpairedImages", "UnpairedEval",
           "make_embedded_tiles", "load_embedded_tiles", "embedded_photos", "read_aligned", "read_ab_folders"]
