"""Image compression data: training crops, Kodak-style test images, and a labelled set for the downstream model.

Two dataset components (config `data: {name: ...}`):

- `compression_embedded` (the default, nothing downloads): the photographs bundled with scikit-image
  (`skimage.data`) and scikit-learn (`load_sample_images`). Random crops of the training photographs
  train the codec; whole photographs validate and test it (astronaut, chelsea and coffee test, as a
  3-image "Kodak"). The labelled set is generated (`generate_shapes`): six shape classes drawn, with
  antialiasing, over crops of the training photographs, written once as PNG in torchvision's
  ImageFolder layout under `core.engine.data.cache_dir("image_compression")`.
- `compression_folders`: your images by path: `train`, `val`, `test` folders of PNG/JPEG/BMP/TIFF
  (e.g. CLIC or DIV2K for training, the 24 Kodak images for testing), and optionally
  `downstream: {root: DIR}` with `DIR/train/<class>/*`, `DIR/test/<class>/*` (and `DIR/val`) for
  the classifier whose accuracy on decoded images is reported.

Items: training crops are (3, p, p) float tensors in [0, 1]; validation and test items are whole
images as (3, H, W) uint8 tensors (the codec and the metrics see the original 8-bit values).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from core.engine.data import DataSplits, cache_dir
from core.engine.registry import DATASETS, ConfigError
from core.engine.runs import atomic_write_text

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

#: the bundled photographs: train on scenes, micrographs, textures and grey photographs; validate on a
#: rocket; test on three colour photographs (a portrait, an animal, objects)
EMBEDDED_TRAIN = ("immunohistochemistry", "retina", "hubble_deep_field", "motorcycle", "china", "flower",
                  "camera", "brick", "grass", "gravel", "coins", "moon")
EMBEDDED_VAL = ("rocket",)
EMBEDDED_TEST = ("astronaut", "chelsea", "coffee")

SHAPE_CLASSES = ("circle", "square", "triangle", "cross", "ring", "star")
SHAPES_VERSION = 2  #: bumped whenever the drawing changes, so cached sets are redrawn


def _to_uint8_rgb(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    if img.dtype != np.uint8:
        img = np.clip(np.round(img.astype(np.float64) * (255.0 if img.max() <= 1.0 else 1.0)), 0, 255).astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return np.ascontiguousarray(img[:, :, :3])


@functools.lru_cache(maxsize=32)
def embedded_photo(name: str) -> np.ndarray:
    """A bundled photograph as (H, W, 3) uint8: scikit-image's `skimage.data.<name>`, scikit-learn's
    `china` / `flower`, or `motorcycle` (the left view of `skimage.data.stereo_motorcycle`). Cached per
    process; treat the array as read-only."""
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        return _to_uint8_rgb(load_sample_image(f"{name}.jpg"))
    import skimage.data

    if name == "motorcycle":
        return _to_uint8_rgb(skimage.data.stereo_motorcycle()[0])
    fn = getattr(skimage.data, name, None)
    if fn is None or not callable(fn):
        raise ConfigError(f"data: {name!r} is not a bundled photograph (scikit-image's skimage.data, or china, "
                          "flower, motorcycle)")
    return _to_uint8_rgb(fn())


def read_image(path: str | Path) -> np.ndarray:
    """Any image file Pillow reads -> (H, W, 3) uint8 RGB."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def images_in(folder: str | Path, key: str) -> list[Path]:
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"{key}: folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"{key}: no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return files


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) uint8 tensor."""
    return torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).permute(2, 0, 1).contiguous()


class Crops(Dataset):
    """Random `patch_size` crops (with horizontal / vertical flips) of a list of images; `samples_per_epoch`
    items per epoch, each a fresh crop drawn from torch's global generator (seeded runs repeat)."""

    def __init__(self, images: Sequence[np.ndarray], patch_size: int, samples_per_epoch: int):
        if patch_size < 16:
            raise ConfigError(f"data.patch_size: expected >= 16 pixels, got {patch_size!r}")
        if samples_per_epoch < 1:
            raise ConfigError(f"data.samples_per_epoch: expected >= 1, got {samples_per_epoch!r}")
        small = [i for i, im in enumerate(images) if min(im.shape[:2]) < patch_size]
        if small:
            raise ConfigError(f"data.patch_size: {patch_size} is larger than training image {small[0]} "
                              f"({images[small[0]].shape[1]}x{images[small[0]].shape[0]})")
        self.images = [to_tensor(im) for im in images]
        self.patch_size, self.samples_per_epoch = patch_size, samples_per_epoch
        # area-weighted choice of the image, so big photographs give more crops
        areas = np.array([im.shape[1] * im.shape[2] for im in self.images], dtype=np.float64)
        self.weights = torch.from_numpy(areas / areas.sum())

    def __len__(self) -> int:
        return self.samples_per_epoch

    def __getitem__(self, index: int) -> torch.Tensor:
        img = self.images[int(torch.multinomial(self.weights, 1))]
        p = self.patch_size
        top = int(torch.randint(0, img.shape[1] - p + 1, (1,)))
        left = int(torch.randint(0, img.shape[2] - p + 1, (1,)))
        crop = img[:, top:top + p, left:left + p]
        flips = torch.rand(2)
        if flips[0] < 0.5:
            crop = crop.flip(-1)
        if flips[1] < 0.5:
            crop = crop.flip(-2)
        return crop.float().div(255.0)


class Images(Dataset):
    """Whole images as (3, H, W) uint8 tensors, with names."""

    def __init__(self, images: Sequence[np.ndarray], names: Sequence[str]):
        if not images:
            raise ValueError("an image split is empty")
        self.images = [to_tensor(im) for im in images]
        self.names = list(names)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index]


@dataclass
class Labelled:
    """ImageFolder splits for the downstream classifier; items are (uint8 (3, H, W) tensor, label)."""

    root: Path
    train: Dataset
    val: Dataset
    test: Dataset
    classes: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass
class CompressionData(DataSplits):
    downstream: Labelled | None = None


def _pil_to_uint8_tensor(img) -> torch.Tensor:
    return to_tensor(np.asarray(img.convert("RGB")))


def image_folder(root: str | Path, key: str = "data.downstream.root") -> Labelled:
    """`root/train/<class>/*`, `root/test/<class>/*` and optionally `root/val/<class>/*` (torchvision's
    ImageFolder); without val, the test split validates too."""
    from torchvision.datasets import ImageFolder

    root = Path(root).expanduser()
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise FileNotFoundError(f"{key}: folder not found: {root / split} (expected {root}/train/<class>/ "
                                    "and {root}/test/<class>/)")
    splits = {s: ImageFolder(str(root / s), transform=_pil_to_uint8_tensor) for s in ("train", "val", "test")
              if (root / s).is_dir()}
    classes = splits["train"].classes
    for s, ds in splits.items():
        if ds.classes != classes:
            raise ConfigError(f"{key}: {root / s} has classes {ds.classes}, train has {classes}")
    return Labelled(root, splits["train"], splits.get("val", splits["test"]), splits["test"], list(classes))


# -- the generated labelled set ---------------------------------------------------------------------------
def _shape_polygon(cls: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    def ring(points: int, radii: Sequence[float], phase: float) -> list[tuple[float, float]]:
        out = []
        for k in range(points):
            a = phase + 2 * math.pi * k / points
            rr = radii[k % len(radii)]
            out.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
        return out

    if cls == "square":
        return ring(4, [r * 1.15], angle + math.pi / 4)
    if cls == "triangle":
        return ring(3, [r * 1.2], angle - math.pi / 2)
    if cls == "star":
        return ring(10, [r * 1.2, r * 0.5], angle - math.pi / 2)
    if cls == "cross":
        t = r * 0.38
        arm = [(-r, -t), (-t, -t), (-t, -r), (t, -r), (t, -t), (r, -t), (r, t), (t, t), (t, r), (-t, r), (-t, t),
               (-r, t)]
        c, s = math.cos(angle), math.sin(angle)
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in arm]
    raise ValueError(cls)


def draw_shape_image(rng: np.random.Generator, photos: Sequence[np.ndarray], label: int, size: int = 64,
                     supersample: int = 4) -> np.ndarray:
    """One image of class `label`: a softened crop of a photograph (resized to `size`) with one antialiased
    shape of random size, position, angle and colour on it."""
    from PIL import Image, ImageDraw, ImageFilter

    photo = photos[int(rng.integers(len(photos)))]
    h, w = photo.shape[:2]
    side = int(rng.integers(size, max(size + 1, min(h, w, 3 * size)) + 1))
    top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    background = Image.fromarray(photo[top:top + side, left:left + side]).resize((size, size), Image.BICUBIC)
    # softened, so the shape stands out from the photograph's texture (the shape's edges carry the class)
    background = background.filter(ImageFilter.GaussianBlur(float(rng.uniform(1.0, 2.5))))
    cls = SHAPE_CLASSES[label]
    big = size * supersample
    r = rng.uniform(0.12, 0.24) * big
    cx, cy = rng.uniform(r * 1.25, big - r * 1.25, 2)
    angle = rng.uniform(0, 2 * math.pi)
    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask)
    if cls == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif cls == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        inner = r * rng.uniform(0.45, 0.65)
        draw.ellipse([cx - inner, cy - inner, cx + inner, cy + inner], fill=0)
    else:
        draw.polygon(_shape_polygon(cls, cx, cy, r, angle), fill=255)
    alpha = np.asarray(mask.resize((size, size), Image.LANCZOS), dtype=np.float32)[..., None] / 255.0
    base = np.asarray(background, dtype=np.float32)
    mean = base.reshape(-1, 3).mean(0)
    colour = rng.uniform(0, 255, 3)
    if np.abs(colour - mean).max() < 70:  # keep the shape visible against the background
        colour = np.where(mean > 127, mean - 110, mean + 110)
    out = base * (1 - alpha) + colour * alpha + rng.normal(0, 3.0, base.shape)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def generate_shapes(root: str | Path, counts: dict[str, int], size: int = 64, seed: int = 0,
                    photos: Sequence[str] = EMBEDDED_TRAIN) -> Path:
    """Write the shapes set as `root/<split>/<class>/<index>.png` (deterministic for a seed; classes in turn,
    so they are balanced), then `root/DONE`."""
    from PIL import Image

    root = Path(root)
    images = [embedded_photo(n) for n in photos]
    for split_index, (split, n) in enumerate(counts.items()):
        rng = np.random.default_rng([seed, split_index])
        for c in SHAPE_CLASSES:
            (root / split / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            label = i % len(SHAPE_CLASSES)
            array = draw_shape_image(rng, images, label, size)
            Image.fromarray(array).save(root / split / SHAPE_CLASSES[label] / f"{i:05d}.png")
    atomic_write_text(root / "DONE", json.dumps(_shapes_meta(counts, size, seed)))
    return root


def _shapes_meta(counts: dict[str, int], size: int, seed: int) -> dict:
    return {"counts": counts, "size": size, "seed": seed, "version": SHAPES_VERSION}


def shapes(root: str | Path | None = None, size: int = 64, train: int = 3000, val: int = 300, test: int = 300,
           seed: int = 0) -> Labelled:
    """The generated labelled set (written on first use, then read back as an ImageFolder)."""
    counts = {"train": train, "val": val, "test": test}
    for key, n in counts.items():
        if not isinstance(n, int) or n < len(SHAPE_CLASSES):
            raise ConfigError(f"data.downstream.{key}: expected at least {len(SHAPE_CLASSES)} images (one per class), "
                              f"got {n!r}")
    if size < 32:
        raise ConfigError(f"data.downstream.size: expected >= 32 pixels, got {size!r}")
    base = Path(root).expanduser() if root else \
        cache_dir("image_compression") / f"shapes-v{SHAPES_VERSION}-{size}px-{train}-{val}-{test}-s{seed}"
    meta = _shapes_meta(counts, size, seed)
    done = base / "DONE"
    if not done.is_file() or json.loads(done.read_text()) != meta:
        generate_shapes(base, counts, size, seed)
    return image_folder(base, "data.downstream")


def _downstream(spec: dict | None, embedded: bool) -> Labelled | None:
    if spec is None or spec is False:
        return None
    if not isinstance(spec, dict):
        raise ConfigError(f"data.downstream: expected a mapping ({{root: DIR}} or the shapes' sizes), got {spec!r}")
    if "root" in spec and set(spec) != {"root"}:
        raise ConfigError(f"data.downstream: with root, no other key; got {sorted(spec)}")
    if "root" in spec:
        return image_folder(spec["root"])
    if not embedded:
        raise ConfigError("data.downstream: give {root: DIR} (an ImageFolder with train/ and test/)")
    unknown = set(spec) - {"size", "train", "val", "test", "seed"}
    if unknown:
        raise ConfigError(f"data.downstream.{sorted(unknown)[0]}: unknown key; takes root, or size, train, val, "
                          "test, seed")
    return shapes(**spec)


@DATASETS.register("compression_embedded")
def compression_embedded(patch_size: int = 64, samples_per_epoch: int = 2048, train: Sequence[str] = EMBEDDED_TRAIN,
                         val: Sequence[str] = EMBEDDED_VAL, test: Sequence[str] = EMBEDDED_TEST,
                         downstream: dict | None = None) -> CompressionData:
    """Bundled photographs (see the module docstring); `downstream` sizes the generated shapes set
    ({} for the defaults, null for none, {root: DIR} for your ImageFolder)."""
    splits = {}
    for key, names in (("train", train), ("val", val), ("test", test)):
        if not names:
            raise ConfigError(f"data.{key}: expected at least one photograph name")
        splits[key] = ([embedded_photo(n) for n in names], list(names))
    return CompressionData(
        name="compression_embedded", train=Crops(splits["train"][0], patch_size, samples_per_epoch),
        val=Images(*splits["val"]), test=Images(*splits["test"]), num_classes=0,
        input_shape=(3, patch_size, patch_size),
        downstream=_downstream({} if downstream is None else downstream, embedded=True))


@DATASETS.register("compression_folders")
def compression_folders(train: str, test: str, val: str | None = None, patch_size: int = 256,
                        samples_per_epoch: int = 8192, downstream: dict | None = None) -> CompressionData:
    """Your images: `train`, `test` (and `val`, default: test) folders; `downstream: {root: DIR}` optional."""
    def load(folder: str, key: str) -> tuple[list[np.ndarray], list[str]]:
        paths = images_in(folder, key)
        return [read_image(p) for p in paths], [p.stem for p in paths]

    train_images, _ = load(train, "data.train")
    test_images = Images(*load(test, "data.test"))
    val_images = Images(*load(val, "data.val")) if val else test_images
    return CompressionData(
        name=Path(train).expanduser().name, train=Crops(train_images, patch_size, samples_per_epoch),
        val=val_images, test=test_images, num_classes=0, input_shape=(3, patch_size, patch_size),
        downstream=_downstream(downstream, embedded=False))


__all__ = ["CompressionData", "Crops", "Images", "Labelled", "SHAPE_CLASSES", "EMBEDDED_TRAIN", "EMBEDDED_VAL",
           "EMBEDDED_TEST", "embedded_photo", "read_image", "images_in", "image_folder", "shapes",
           "generate_shapes", "draw_shape_image", "compression_embedded", "compression_folders", "to_tensor"]
