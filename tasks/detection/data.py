"""Detection data: COCO-format JSON, Pascal VOC XML, and a generated shapes set (embedded default).

Every split is a `CocoDetection`: images plus a pycocotools `COCO` index of the
ground truth, so COCO mAP is computed the same way for every source. Items are
`(image, target)` with `image` a float tensor in [0, 1] (C, H, W) and
`target = {"boxes": (N, 4) xyxy float, "labels": (N,) int64 in 1..K,
"image_id": int}`, torchvision's detection convention; labels are contiguous
(1..K) and `category_ids[label - 1]` maps them back to the file's ids.
"""

from __future__ import annotations

import copy
import json
import math
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from core.engine.data import DataError, DataSplits, cache_dir, image_error
from core.engine.registry import DATASETS, ConfigError
from core.engine.runs import atomic_write_text

SHAPE_CLASSES = ("circle", "square", "triangle", "cross")


def coco_index(dataset: dict[str, Any]):
    """A pycocotools `COCO` built from an in-memory dict (no file, no prints)."""
    import contextlib
    import io

    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = copy.deepcopy(dataset)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def clean_annotations(data: dict[str, Any], category_ids: Sequence[int], key: str, path: Path) -> dict[str, Any]:
    """`data` without the annotations no detector can learn from or be scored on: an unknown `category_id`
    (not among the training file's categories), a box that is not 4 finite numbers with positive width and
    height, or an `image_id` not in `images`. They are dropped from training and evaluation alike (the ground
    truth mAP is computed on is the same set the detector trains on), with one warning line per file that
    counts them and names an example id."""
    import sys

    known, images = set(category_ids), {img.get("id") for img in data["images"]}
    kept, dropped = [], {}
    for ann in data["annotations"]:
        box = ann.get("bbox")
        if ann.get("category_id") not in known:
            why = "an unknown category_id"
        elif not (isinstance(box, (list, tuple)) and len(box) == 4
                  and all(isinstance(v, (int, float)) and math.isfinite(v) for v in box)):
            why = "a malformed bbox"
        elif box[2] <= 0 or box[3] <= 0:
            why = "a box of zero or negative size"
        elif ann.get("image_id") not in images:
            why = "an image_id not in images"
        else:
            kept.append(ann)
            continue
        dropped.setdefault(why, []).append(ann.get("id"))
    if dropped:
        parts = ", ".join(f"{len(ids)} with {why} (e.g. id {ids[0]})" for why, ids in dropped.items())
        print(f"archforge: warning: {key}: {path}: dropped {sum(map(len, dropped.values()))} of "
              f"{len(data['annotations'])} annotations from training and evaluation: {parts}",
              file=sys.stderr, flush=True)
        data = {**data, "annotations": kept}
    return data


def _load_json(path: Path, key: str) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{key}: annotation file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{key}: {path} is not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{key}: {path} is not COCO-format JSON (a {type(data).__name__}, not an object)")
    for field in ("images", "annotations", "categories"):
        if not isinstance(data.get(field), list):
            raise ConfigError(f"{key}: {path} is not COCO-format JSON (no {field!r} list)")
    for field in ("images", "categories"):
        for entry in data[field]:
            if not isinstance(entry, dict) or "id" not in entry:
                raise ConfigError(f"{key}: {path}: an entry of {field!r} has no 'id': {str(entry)[:80]}")
    if not all(isinstance(a, dict) for a in data["annotations"]):
        raise ConfigError(f"{key}: {path}: 'annotations' holds something other than objects")
    return data


class CocoDetection(Dataset):
    """Images of a folder with COCO-format annotations (any number of categories)."""

    def __init__(self, image_dir: str | Path, annotations: dict[str, Any], flip: bool = False,
                 cache: bool = True, category_ids: Sequence[int] | None = None):
        self.image_dir = Path(image_dir)
        self.coco = coco_index(annotations)
        self.ids = sorted(self.coco.imgs)
        self.category_ids = list(category_ids) if category_ids else sorted(self.coco.cats)
        self.label_of = {cid: i + 1 for i, cid in enumerate(self.category_ids)}
        self.class_names = [self.coco.cats[c]["name"] if c in self.coco.cats else str(c) for c in self.category_ids]
        self.flip, self.cache = flip, cache
        self._images: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def image(self, image_id: int) -> torch.Tensor:
        if image_id in self._images:
            return self._images[image_id]
        from PIL import Image

        path = self.image_dir / self.coco.imgs[image_id]["file_name"]
        if not path.is_file():
            raise FileNotFoundError(f"data: image not found: {path}")
        try:
            with Image.open(path) as img:
                array = np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
        except (OSError, ValueError, SyntaxError) as err:
            raise DataError(f"{path}: not a readable image ({image_error(err)})") from None
        tensor = torch.from_numpy(array).permute(2, 0, 1).contiguous()
        if self.cache:
            self._images[image_id] = tensor
        return tensor

    def target(self, image_id: int) -> dict[str, torch.Tensor]:
        boxes, labels = [], []
        for ann in self.coco.imgToAnns.get(image_id, []):
            x, y, w, h = ann["bbox"]
            if ann.get("iscrowd", 0) or w <= 0 or h <= 0 or ann["category_id"] not in self.label_of:
                continue  # crowd regions are ignored in training; `coco()` already dropped invalid boxes
            boxes.append([x, y, x + w, y + h])
            labels.append(self.label_of[ann["category_id"]])
        return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                "labels": torch.tensor(labels, dtype=torch.int64), "image_id": int(image_id)}

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        image_id = self.ids[index]
        image = self.image(image_id).float() / 255.0
        target = self.target(image_id)
        if self.flip and float(torch.rand(())) < 0.5:  # torch RNG: seeded runs flip the same images
            image = image.flip(-1)
            w = image.shape[-1]
            boxes = target["boxes"].clone()
            boxes[:, [0, 2]] = w - target["boxes"][:, [2, 0]]
            target["boxes"] = boxes
        return image, target


def collate(batch):
    """Detection batches stay lists: images differ in size and targets in box count."""
    return tuple(zip(*batch))


def _splits(name: str, train: CocoDetection, val: CocoDetection, test: CocoDetection,
            nominal_size: int) -> DataSplits:
    return DataSplits(name, train, val, test, (3, nominal_size, nominal_size), num_classes=len(train.category_ids),
                      class_names=list(train.class_names))


@DATASETS.register("coco")
def coco(root: str, train_ann: str = "annotations/instances_train2017.json", train_images: str = "train2017",
         val_ann: str = "annotations/instances_val2017.json", val_images: str = "val2017",
         test_ann: str | None = None, test_images: str | None = None, flip: bool = True,
         image_size: int = 800, cache: bool = False) -> DataSplits:
    """COCO-format JSON for train and val (test defaults to val); any number of categories.

    `image_size` is only the nominal input size reported for cost counting
    (the detector's own `min_size`/`max_size` resize the images).
    """
    base = Path(root).expanduser()
    if not base.is_dir():
        raise FileNotFoundError(f"data.root: folder not found: {base}")
    tr = _load_json(base / train_ann, "data.train_ann")
    va = _load_json(base / val_ann, "data.val_ann")
    te = _load_json(base / test_ann, "data.test_ann") if test_ann else va
    cats = sorted(c["id"] for c in tr["categories"])
    tr = clean_annotations(tr, cats, "data.train_ann", base / train_ann)
    va = clean_annotations(va, cats, "data.val_ann", base / val_ann)
    te = clean_annotations(te, cats, "data.test_ann", base / test_ann) if test_ann else va
    train = CocoDetection(base / train_images, tr, flip=flip, cache=cache, category_ids=cats)
    val = CocoDetection(base / val_images, va, cache=cache, category_ids=cats)
    test = CocoDetection(base / (test_images or val_images), te, cache=cache, category_ids=cats)
    return _splits(base.name, train, val, test, image_size)


# -- Pascal VOC ---------------------------------------------------------------------------------
VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")


def voc_to_coco(root: Path, split: str, classes: Sequence[str], use_difficult: bool = False) -> dict[str, Any]:
    """Read `ImageSets/Main/<split>.txt` and `Annotations/<id>.xml` into a COCO dict (1-based category ids)."""
    listing = root / "ImageSets" / "Main" / f"{split}.txt"
    if not listing.is_file():
        raise FileNotFoundError(f"data.root: VOC split list not found: {listing}")
    cat_of = {name: i + 1 for i, name in enumerate(classes)}
    images, anns = [], []
    for image_id, stem in enumerate(line.split()[0] for line in listing.read_text().splitlines() if line.strip()):
        xml = root / "Annotations" / f"{stem}.xml"
        if not xml.is_file():
            raise FileNotFoundError(f"data.root: VOC annotation not found: {xml}")
        try:
            tree = ET.parse(xml).getroot()
        except ET.ParseError as err:
            raise DataError(f"{xml}: not valid XML ({err})") from None
        try:
            size = tree.find("size")
            width, height = int(size.findtext("width")), int(size.findtext("height"))
        except (AttributeError, TypeError, ValueError):
            raise DataError(f"{xml}: no <size> with integer <width> and <height>") from None
        filename = tree.findtext("filename") or f"{stem}.jpg"
        images.append({"id": image_id, "file_name": filename, "width": width, "height": height})
        for obj in tree.findall("object"):
            name = (obj.findtext("name") or "").strip()
            if name not in cat_of:
                raise ConfigError(f"data.classes: {xml} has class {name!r} not in {list(classes)}")
            difficult = int(obj.findtext("difficult") or 0)
            if difficult and not use_difficult:
                continue
            try:
                bb = obj.find("bndbox")
                x1, y1, x2, y2 = (float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
            except (AttributeError, TypeError, ValueError):
                raise DataError(f"{xml}: an object {name!r} without a numeric <bndbox>") from None
            x1, y1 = x1 - 1, y1 - 1  # VOC pixel indices are 1-based
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cat_of[name],
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    return {"images": images, "annotations": anns,
            "categories": [{"id": i + 1, "name": n} for i, n in enumerate(classes)]}


@DATASETS.register("voc")
def voc(root: str, train_split: str = "trainval", val_split: str = "val", test_split: str | None = "test",
        classes: list | None = None, flip: bool = True, image_size: int = 600, cache: bool = False) -> DataSplits:
    """Pascal VOC layout (`JPEGImages/`, `Annotations/*.xml`, `ImageSets/Main/*.txt`) read into COCO form."""
    base = Path(root).expanduser()
    if not base.is_dir():
        raise FileNotFoundError(f"data.root: folder not found: {base}")
    names = tuple(classes or VOC_CLASSES)
    images = base / "JPEGImages"
    train = CocoDetection(images, voc_to_coco(base, train_split, names), flip=flip, cache=cache)
    val = CocoDetection(images, voc_to_coco(base, val_split, names), cache=cache)
    test = CocoDetection(images, voc_to_coco(base, test_split, names), cache=cache) if test_split else val
    return _splits(base.name, train, val, test, image_size)


# -- generated shapes ----------------------------------------------------------------------------
def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A textured background: colour gradient + stripes or checks + noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    c0, c1 = rng.uniform(0.2, 0.8, 3), rng.uniform(0.2, 0.8, 3)
    t = (xx * math.cos(rng.uniform(0, math.pi)) + yy * math.sin(rng.uniform(0, math.pi)))[..., None]
    img = c0 * (1 - t) + c1 * t
    period = rng.uniform(6, 20)
    if rng.random() < 0.5:
        pattern = np.sin(2 * math.pi * (xx * size) / period + rng.uniform(0, 6))
    else:
        pattern = np.sign(np.sin(2 * math.pi * xx * size / period)) * np.sign(np.sin(2 * math.pi * yy * size / period))
    img = img + 0.08 * pattern[..., None] + rng.normal(0, 0.04, (size, size, 3))
    return np.clip(img, 0, 1)


def _draw(rng: np.random.Generator, size: int, max_objects: int) -> tuple[np.ndarray, list[tuple]]:
    from PIL import Image, ImageDraw

    img = Image.fromarray((_background(rng, size) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    boxes: list[tuple] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _try in range(20):
            s = int(rng.uniform(0.12, 0.45) * size)
            x, y = int(rng.integers(0, size - s)), int(rng.integers(0, size - s))
            box = (x, y, x + s, y + s)
            if all(_iou(box, b[:4]) < 0.1 for b in boxes):
                break
        else:
            continue
        cls = int(rng.integers(len(SHAPE_CLASSES)))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        x0, y0, x1, y1 = box
        if cls == 0:
            draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=colour)
        elif cls == 1:
            draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=colour)
        elif cls == 2:
            draw.polygon([((x0 + x1) / 2, y0), (x0, y1 - 1), (x1 - 1, y1 - 1)], fill=colour)
        else:
            t = max(2, s // 4)
            cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
            draw.rectangle([x0, cy - t // 2, x1 - 1, cy + t // 2], fill=colour)
            draw.rectangle([cx - t // 2, y0, cx + t // 2, y1 - 1], fill=colour)
        boxes.append((*box, cls))
    return np.asarray(img), boxes


def _iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def write_shapes_coco(root: str | Path, counts: dict[str, int], size: int = 128, max_objects: int = 4,
                      seed: int = 0) -> Path:
    """Generate the shapes set as PNG folders plus COCO JSON: `root/<split>/*.png`,
    `root/annotations/instances_<split>.json`. Deterministic for a seed."""
    from PIL import Image

    root = Path(root)
    cats = [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(SHAPE_CLASSES)]
    for split_index, (split, n) in enumerate(counts.items()):
        rng = np.random.default_rng([seed, split_index])
        (root / split).mkdir(parents=True, exist_ok=True)
        images, anns = [], []
        for i in range(n):
            array, boxes = _draw(rng, size, max_objects)
            name = f"{i:05d}.png"
            Image.fromarray(array).save(root / split / name)
            images.append({"id": i, "file_name": name, "width": size, "height": size})
            for x0, y0, x1, y1, cls in boxes:
                anns.append({"id": len(anns) + 1, "image_id": i, "category_id": cls + 1,
                             "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
        atomic_write_text(root / "annotations" / f"instances_{split}.json",
                          json.dumps({"images": images, "annotations": anns, "categories": cats}))
    atomic_write_text(root / "DONE", json.dumps({"counts": counts, "size": size, "seed": seed,
                                                 "max_objects": max_objects}))
    return root


def _default_cache() -> Path:
    return cache_dir("detection")


@DATASETS.register("shapes")
def shapes(root: str | None = None, image_size: int = 128, train: int = 512, val: int = 128, test: int = 128,
           max_objects: int = 4, seed: int = 0, flip: bool = True) -> DataSplits:
    """Generated shapes (circle, square, triangle, cross) on textured backgrounds, written once in COCO format.

    Written under `root` (default `$ARCHFORGE_DATA/detection/shapes-...` or
    `~/.cache/archforge/detection/...`) and read back through the COCO reader;
    nothing downloads.
    """
    counts = {"train": train, "val": val, "test": test}
    for key, n in counts.items():
        if n < 1:
            raise ConfigError(f"data.{key}: expected a positive number of images, got {n!r}")
    if image_size < 32:
        raise ConfigError(f"data.image_size: expected >= 32 pixels, got {image_size!r}")
    base = Path(root).expanduser() if root else \
        _default_cache() / f"shapes-{image_size}px-{train}-{val}-{test}-o{max_objects}-s{seed}"
    meta = {"counts": counts, "size": image_size, "seed": seed, "max_objects": max_objects}
    done = base / "DONE"
    if not done.is_file() or json.loads(done.read_text()) != meta:
        write_shapes_coco(base, counts, image_size, max_objects, seed)
    splits = {}
    for split in counts:
        ann = _load_json(base / "annotations" / f"instances_{split}.json", f"data.root ({split})")
        splits[split] = CocoDetection(base / split, ann, flip=flip and split == "train")
    return _splits("shapes", splits["train"], splits["val"], splits["test"], image_size)


__all__ = [
    "SHAPE_CLASSES",
    "CocoDetection",
    "coco",
    "coco_index",
    "collate",
    "shapes",
    "voc",
    "voc_to_coco",
    "write_shapes_coco",
]
