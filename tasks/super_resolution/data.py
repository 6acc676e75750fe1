"""Super-resolution data: paired LR/HR images as basicsr prepares them.

Three sources, one dataset class:

- `sr_embedded`: the colour and grey photographs bundled inside scikit-image
  (`skimage.data`, nothing downloads); some train, others validate and test.
- `sr_folders`: real data by path. A split is `{hr: DIR}` (HR only: each image
  is cropped to a multiple of the scale, `basicsr.data.transforms.mod_crop`, and
  its LR made by MATLAB-compatible bicubic, `basicsr.utils.matlab_functions.imresize`,
  then rounded to 8 bits as the standard LR PNGs are) or `{hr: DIR, lr: DIR,
  filename_tmpl: '{}x2'}` (basicsr's paired layout, matched by
  `basicsr.data.data_util.paired_paths_from_folder`), e.g. DIV2K_train_HR with
  DIV2K_train_LR_bicubic/X2.
- Both take `test_sets: {Set5: DIR, Set14: {hr: DIR, lr: DIR}}` for extra
  named test sets; test metrics are reported per set.

Training items are random aligned crops (`paired_random_crop`, LR patch
`patch_size`) with flips and 90-degree rotations (`augment`), as in basicsr's
`PairedImageDataset`; validation and test items are whole images. Items are
`(lr, hr)` float tensors in [0, 1], RGB, CHW.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from core.engine.data import DataSplits
from core.engine.registry import DATASETS, ConfigError
from tasks.super_resolution._basicsr import augment, img2tensor, imresize, mod_crop, paired_paths_from_folder, \
    paired_random_crop

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

#: scikit-image's bundled photographs (no download). Test: the three colour photographs most like the
#: SR benchmarks' (Set5/Set14: a portrait, an animal, objects); train: scenes, a grey portrait, textures, text
EMBEDDED_TRAIN = ("rocket", "motorcycle_left", "immunohistochemistry", "camera", "moon", "brick", "grass", "gravel",
                  "page")
EMBEDDED_VAL = ("coins", "text")
EMBEDDED_TEST = ("astronaut", "chelsea", "coffee")


def _as_rgb_float(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    img = img[:, :, :3]
    if img.dtype == np.uint8:
        return img.astype(np.float32) / 255.0
    if img.dtype == np.uint16:
        return img.astype(np.float32) / 65535.0
    return np.clip(img.astype(np.float32), 0.0, 1.0)


def embedded_image(name: str) -> np.ndarray:
    """One of scikit-image's bundled photographs as an RGB float32 HWC array in [0, 1]."""
    import skimage.data

    if name == "motorcycle_left":
        return _as_rgb_float(skimage.data.stereo_motorcycle()[0])
    fn = getattr(skimage.data, name, None)
    if fn is None or not callable(fn):
        raise ConfigError(f"data: {name!r} is not a scikit-image sample image")
    return _as_rgb_float(fn())


def read_image(path: str | Path) -> np.ndarray:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise FileNotFoundError(f"cannot read image {path}")
    if img.ndim == 3:
        img = cv2.cvtColor(img[:, :, :3], cv2.COLOR_BGR2RGB)
    return _as_rgb_float(img)


def bicubic_lr(hr: np.ndarray, scale: int) -> np.ndarray:
    """LR by MATLAB-compatible bicubic (antialiased), rounded to 8 bits like the standard LR PNGs."""
    lr = imresize(hr, 1.0 / scale)
    lr = lr.numpy().transpose(1, 2, 0) if isinstance(lr, torch.Tensor) else lr
    return (np.clip(np.round(lr * 255.0), 0, 255) / 255.0).astype(np.float32)


def make_pair(hr: np.ndarray, scale: int, hr_crop: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """HR cropped (centre, to at most `hr_crop`) and to a multiple of the scale; LR by MATLAB bicubic."""
    if hr_crop:
        h, w = hr.shape[:2]
        top, left = max(0, (h - hr_crop) // 2), max(0, (w - hr_crop) // 2)
        hr = hr[top:top + hr_crop, left:left + hr_crop]
    hr = mod_crop(hr, scale)
    return bicubic_lr(hr, scale), np.ascontiguousarray(hr)


class SRImages(Dataset):
    """LR/HR image pairs; `patch_size` set: random training crops, else whole images."""

    def __init__(self, lrs: Sequence[np.ndarray], hrs: Sequence[np.ndarray], names: Sequence[str], scale: int,
                 patch_size: int | None = None, samples_per_epoch: int | None = None, use_augment: bool = True):
        if not hrs:
            raise ValueError("an SR split has no images")
        for lr, hr, name in zip(lrs, hrs, names):
            if hr.shape[0] != lr.shape[0] * scale or hr.shape[1] != lr.shape[1] * scale:
                raise ValueError(f"{name}: HR {hr.shape[:2]} is not {scale} x LR {lr.shape[:2]}")
            if patch_size and min(lr.shape[:2]) < patch_size:
                raise ValueError(f"{name}: LR {lr.shape[:2]} is smaller than data.patch_size={patch_size}")
        self.lrs, self.hrs, self.names = list(lrs), list(hrs), list(names)
        self.scale, self.patch_size, self.use_augment = scale, patch_size, use_augment
        self.samples_per_epoch = samples_per_epoch or len(self.hrs)

    def __len__(self) -> int:
        return self.samples_per_epoch if self.patch_size else len(self.hrs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        i = index % len(self.hrs)
        lr, hr = self.lrs[i], self.hrs[i]
        if self.patch_size:
            hr, lr = paired_random_crop(hr, lr, self.patch_size * self.scale, self.scale)
            hr, lr = hr.copy(), lr.copy()  # crops are views; basicsr's augment flips in place
            if self.use_augment:
                hr, lr = augment([hr, lr], hflip=True, rotation=True)
        lr_t, hr_t = img2tensor([np.ascontiguousarray(lr), np.ascontiguousarray(hr)], bgr2rgb=False, float32=True)
        return lr_t, hr_t

    def subset(self, indices: Sequence[int], samples_per_epoch: int | None = None) -> "SRImages":
        """The same kind of dataset over some of the images (the searcher's split by image)."""
        return SRImages([self.lrs[i] for i in indices], [self.hrs[i] for i in indices],
                        [self.names[i] for i in indices], self.scale, self.patch_size,
                        samples_per_epoch, self.use_augment)


def _images_in(folder: Path, key: str) -> list[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{key}: folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"{key}: no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return files


def read_split(spec: Any, scale: int, key: str, prefix: str = "") -> tuple[list, list, list]:
    """LR, HR arrays and names of one split given as a path (HR only) or `{hr:, lr:, filename_tmpl:}`."""
    if isinstance(spec, (str, Path)):
        spec = {"hr": str(spec)}
    if not isinstance(spec, Mapping) or "hr" not in spec:
        raise ConfigError(f"{key}: expected a folder path or {{hr: DIR, lr: DIR}}, got {spec!r}")
    unknown = set(spec) - {"hr", "lr", "filename_tmpl"}
    if unknown:
        raise ConfigError(f"{key}.{sorted(unknown)[0]}: unknown key; a split takes hr, lr, filename_tmpl")
    hr_dir = Path(spec["hr"]).expanduser()
    lrs, hrs, names = [], [], []
    if spec.get("lr"):
        lr_dir = Path(spec["lr"]).expanduser()
        _images_in(hr_dir, f"{key}.hr")
        _images_in(lr_dir, f"{key}.lr")
        try:
            pairs = paired_paths_from_folder([str(lr_dir), str(hr_dir)], ["lq", "gt"], spec.get("filename_tmpl", "{}"))
        except AssertionError as err:
            raise ConfigError(f"{key}: LR and HR folders do not pair up ({err})") from None
        for pair in pairs:
            hr, lr = read_image(pair["gt_path"]), read_image(pair["lq_path"])
            hr = mod_crop(hr, scale)[:lr.shape[0] * scale, :lr.shape[1] * scale]
            lrs.append(lr)
            hrs.append(hr)
            names.append(prefix + Path(pair["gt_path"]).stem)
    else:
        for path in _images_in(hr_dir, f"{key}.hr"):
            lr, hr = make_pair(read_image(path), scale)
            lrs.append(lr)
            hrs.append(hr)
            names.append(prefix + path.stem)
    return lrs, hrs, names


def _test_with_sets(base: tuple[list, list, list], test_sets: Mapping[str, Any] | None, scale: int,
                    base_name: str) -> SRImages:
    lrs, hrs, names = ([], [], []) if base is None else ([*base[0]], [*base[1]], [f"{base_name}/{n}" for n in base[2]])
    for set_name, spec in (test_sets or {}).items():
        more = read_split(spec, scale, f"data.test_sets.{set_name}", prefix=f"{set_name}/")
        lrs += more[0]
        hrs += more[1]
        names += more[2]
    return SRImages(lrs, hrs, names, scale)


def _check_common(scale: int, patch_size: int, samples_per_epoch: int) -> None:
    if scale not in (2, 3, 4):
        raise ConfigError(f"super_resolution.scale: expected 2, 3 or 4, got {scale!r}")
    if patch_size < 4:
        raise ConfigError(f"data.patch_size: expected an LR patch size >= 4, got {patch_size!r}")
    if samples_per_epoch < 1:
        raise ConfigError(f"data.samples_per_epoch: expected >= 1, got {samples_per_epoch!r}")


@DATASETS.register("sr_embedded")
def sr_embedded(scale: int = 2, patch_size: int = 24, samples_per_epoch: int = 512,
                train_images: list | None = None, val_images: list | None = None, test_images: list | None = None,
                hr_crop: int | None = None, test_sets: dict | None = None) -> DataSplits:
    """scikit-image's bundled photographs: train on some, validate and test on others (see EMBEDDED_*).

    `hr_crop` centre-crops every HR image to at most that size (tiny runs);
    `test_sets` adds named folders (e.g. the real Set5) to the test split.
    """
    _check_common(scale, patch_size, samples_per_epoch)
    split = {}
    for key, names in (("train", train_images or EMBEDDED_TRAIN), ("val", val_images or EMBEDDED_VAL),
                       ("test", test_images or EMBEDDED_TEST)):
        pairs = [make_pair(embedded_image(n), scale, hr_crop) for n in names]
        split[key] = ([p[0] for p in pairs], [p[1] for p in pairs], list(names))
    train = SRImages(*split["train"], scale, patch_size, samples_per_epoch)
    return DataSplits(name=f"skimage-photos-x{scale}", train=train, val=SRImages(*split["val"], scale),
                      test=_test_with_sets(split["test"], test_sets, scale, "skimage"),
                      input_shape=(3, patch_size, patch_size))


@DATASETS.register("sr_folders")
def sr_folders(train: Any, scale: int = 2, val: Any = None, test: Any = None, test_sets: dict | None = None,
               patch_size: int = 48, samples_per_epoch: int = 1000) -> DataSplits:
    """Real data by path: each split a folder (HR only) or `{hr:, lr:, filename_tmpl:}` (basicsr paired layout).

    `val` defaults to the test split, `test` to the first of `test_sets`.
    """
    _check_common(scale, patch_size, samples_per_epoch)
    train_split = read_split(train, scale, "data.train")
    test_base = read_split(test, scale, "data.test") if test else None
    if test_base is None and not test_sets:
        raise ConfigError("data.test: missing; give data.test or data.test_sets (e.g. {Set5: path/to/Set5})")
    test_ds = _test_with_sets(test_base, test_sets, scale, "test")
    val_ds = SRImages(*read_split(val, scale, "data.val"), scale) if val else test_ds
    return DataSplits(name=f"{Path(str(train.get('hr') if isinstance(train, Mapping) else train)).name}-x{scale}",
                      train=SRImages(*train_split, scale, patch_size, samples_per_epoch), val=val_ds, test=test_ds,
                      input_shape=(3, patch_size, patch_size))


__all__ = ["SRImages", "sr_embedded", "sr_folders", "embedded_image", "read_image", "bicubic_lr", "make_pair",
           "read_split", "EMBEDDED_TRAIN", "EMBEDDED_VAL", "EMBEDDED_TEST"]
