"""Multi-source scenes as patch-classification or tile-segmentation datasets.

`rs_files` reads the user's files (GeoTIFF per source, `.mat`, `.npy`; see
`tasks.remote_sensing.rasters`), `rs_embedded` the generated default scene
(`tasks.remote_sensing.synthetic`). Both follow the protocols of Yang et al.
(TGRS 2022, arXiv 2109.06094) and their code:

- per-band min-max normalisation with statistics from the training scene
  (`normalize: minmax`; `minmax_zero` also counts 0 in the range, as the
  official code's zero padding does; `none`);
- `mode: patch`: one sample per labelled pixel, the `patch_size` x
  `patch_size` window around it (the cube zero-padded at the borders), the
  class of the centre pixel as target (MUUFL 11 x 11, Berlin 17 x 17);
- `mode: tile`: `tile_size` tiles every `tile_stride` pixels (the last row
  and column clamped to the border, as the official code; repeated corners
  dropped) with per-pixel targets, unlabelled pixels ignored (Houston2018:
  128 / 64); validation and test tiles do not overlap and every pixel is
  counted once.

Labels are class numbers 1..N; 0 or below means unlabelled (MUUFL's -1 too).
Which pixels train and which test:

- `labels` alone: `train_per_class` random labelled pixels per class (drawn
  with `seed`, so a new seed redraws them as MUUFL's protocol does);
- `labels` with `train_mask` / `test_mask` (non-zero = in the set), or
  `train_labels` and `test_labels` (Berlin's `TrainImage` / `TestImage`):
  fixed sets (`train_per_class` may still subsample the training set);
- `test_sources` (+ `test_labels`): a separate test scene (Houston2018's
  `X_test.npy`), normalised with the training scene's statistics.

`val_per_class` pixels per class are drawn from the test side for validation
(scoring candidates in a search) and left out of the test set unless
`test_pixels: all`, which tests on every labelled pixel, training pixels
included, as the official MUUFL evaluation does. `val_per_class: 0` validates
on the test pixels: fine to monitor a fixed network, not to search with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from core.engine.data import DataSplits
from core.engine.registry import DATASETS, ConfigError
from tasks.remote_sensing.rasters import align, parse_spec, read_labels, read_raster

MODES = ("patch", "tile")
NORMALIZE = ("minmax", "minmax_zero", "none")


@dataclass
class Scene:
    """One co-registered scene: the stacked, normalised cube and its grid (for writing maps)."""

    cube: np.ndarray  # bands x rows x cols, float32
    crs: Any = None
    transform: Any = None
    reference: str = ""

    @property
    def shape(self) -> tuple[int, int]:
        return self.cube.shape[1], self.cube.shape[2]


@dataclass
class RSDataSplits(DataSplits):
    """DataSplits plus what the remote-sensing task needs: sources, scenes, label maps and pixel sets."""

    source_split: list[int] = field(default_factory=list)
    source_names: list[str] = field(default_factory=list)
    mode: str = "patch"
    window: int = 11
    train_scene: Scene | None = None
    test_scene: Scene | None = None
    test_labels: np.ndarray | None = None  # the test scene's labels, 0 where not a test pixel
    train_counts: list[int] = field(default_factory=list)

    def class_weights(self) -> torch.Tensor:
        """1 - n_c / N over the training targets, the official code's class weights."""
        counts = torch.tensor(self.train_counts, dtype=torch.float32)
        return 1.0 - counts / counts.sum().clamp(min=1)


def pad_cube(cube: np.ndarray, size: int) -> torch.Tensor:
    """The cube zero-padded by size // 2 on each side (shared by the datasets of one scene)."""
    pad = size // 2
    return F.pad(torch.from_numpy(np.ascontiguousarray(cube)), (pad, pad, pad, pad))


class PatchDataset(Dataset):
    """The `size` x `size` window around each pixel of a padded cube (`pad_cube`), with the pixel's class
    (0-based)."""

    def __init__(self, padded: torch.Tensor, rows: np.ndarray, cols: np.ndarray, targets: np.ndarray, size: int):
        self.size, self.padded = size, padded
        self.rows, self.cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
        self.targets = torch.as_tensor(np.asarray(targets, np.int64))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        r, c = int(self.rows[i]), int(self.cols[i])
        return self.padded[:, r:r + self.size, c:c + self.size], self.targets[i]


class TileDataset(Dataset):
    """`size` x `size` tiles at the given corners with per-pixel targets (-1 = ignored). Each pixel's target
    stays in the first tile that covers it (clamped border tiles overlap their neighbours), and tiles
    without any target are dropped."""

    def __init__(self, cube: np.ndarray, target: np.ndarray, corners: list[tuple[int, int]], size: int):
        self.cube = torch.from_numpy(np.ascontiguousarray(cube))
        self.size, self.corners, self.targets = size, [], []
        owned = np.zeros(target.shape, bool)
        for top, left in corners:
            window = (slice(top, top + size), slice(left, left + size))
            t = np.where(owned[window], -1, target[window])
            owned[window] = True
            if (t >= 0).any():
                self.corners.append((top, left))
                self.targets.append(torch.as_tensor(t.astype(np.int64)))

    def __len__(self) -> int:
        return len(self.corners)

    def __getitem__(self, i: int):
        top, left = self.corners[i]
        return self.cube[:, top:top + self.size, left:left + self.size], self.targets[i]


def tile_corners(height: int, width: int, size: int, stride: int) -> list[tuple[int, int]]:
    """Tile corners every `stride` pixels, the last ones clamped to the border; repeats dropped."""
    tops = sorted({min(r, height - size) for r in range(0, height, stride)})
    lefts = sorted({min(c, width - size) for c in range(0, width, stride)})
    return [(t, l) for t in tops for l in lefts]


def _read_scene(entries: list, key: str, root: str | None) -> tuple[Scene, list[int], list]:
    if not entries:
        raise ConfigError(f"{key}: expected a list of source files, got {entries!r}")
    specs = [parse_spec(e, f"{key}[{i}]", root) for i, e in enumerate(entries)]
    rasters = [read_raster(s, f"{key}[{i}]") for i, s in enumerate(specs)]
    ref = rasters[0]
    cubes = [ref.data] + [align(r, ref, f"{key}[{i}]", specs[i]["resampling"])
                          for i, r in enumerate(rasters) if i > 0]
    scene = Scene(np.concatenate(cubes).astype(np.float32), ref.crs, ref.transform, ref.path)
    return scene, [c.shape[0] for c in cubes], rasters


def _normalise(train: np.ndarray, others: list[np.ndarray], how: str) -> None:
    """Per-band min-max in place, with the training cube's statistics."""
    if how == "none":
        return
    low = train.min(axis=(1, 2), keepdims=True)
    high = train.max(axis=(1, 2), keepdims=True)
    if how == "minmax_zero":
        low, high = np.minimum(low, 0), np.maximum(high, 0)
    span = np.where(high > low, high - low, 1.0)
    for cube in [train, *others]:
        cube -= low
        cube /= span


def _labels(spec, key: str, root: str | None, ref, scene: Scene) -> np.ndarray:
    values, raster = read_labels(parse_spec(spec, key, root), key, ref)
    if scene.crs is None and raster.georeferenced:  # e.g. .npy cubes with GeoTIFF labels: maps get their grid
        scene.crs, scene.transform = raster.crs, raster.transform
    return np.where(values > 0, values, 0)


def _mask(spec, key: str, root: str | None, ref) -> np.ndarray:
    return read_labels(parse_spec(spec, key, root), key, ref)[0] != 0


def _draw(labels: np.ndarray, where: np.ndarray, per_class: int | None, num_classes: int,
          rng: np.random.Generator) -> np.ndarray:
    """A boolean map of `per_class` random pixels of each class among `where` (all of them when None)."""
    chosen = np.zeros(labels.shape, bool)
    flat_labels, flat_where = labels.ravel(), where.ravel()
    for c in range(1, num_classes + 1):
        idx = np.flatnonzero(flat_where & (flat_labels == c))
        if per_class is not None and len(idx) > per_class:
            idx = rng.choice(idx, per_class, replace=False)
        chosen.ravel()[idx] = True
    return chosen


def _check_split(split: list | None, bands: list[int], rasters, key: str) -> list[int]:
    total = sum(bands)
    if split is None:
        return list(bands)
    split = [int(v) for v in split]
    if sum(split) != total or any(v <= 0 for v in split):
        files = ", ".join(f"{r.path} {b}" for r, b in zip(rasters, bands))
        raise ConfigError(f"data.source_split: {split} sums to {sum(split)} bands but {key} have {total} ({files})")
    return split


@DATASETS.register("rs_files")
def rs_files(sources: list, labels: Any = None, train_labels: Any = None, test_labels: Any = None,
             train_mask: Any = None, test_mask: Any = None, test_sources: list | None = None,
             root: str | None = None, source_split: list | None = None, source_names: list | None = None,
             class_names: list | None = None, num_classes: int | None = None, mode: str = "patch",
             patch_size: int = 11, tile_size: int = 128, tile_stride: int = 64, train_per_class: int | None = None,
             val_per_class: int = 20, test_pixels: str = "rest", normalize: str = "minmax",
             seed: int = 0, title: str = "rs_files") -> RSDataSplits:
    """A multi-source scene from files (module docstring)."""
    if root == "???":
        raise ConfigError("data.root: set it to the folder that holds the files, e.g. data.root=/data/muufl")
    if mode not in MODES:
        raise ConfigError(f"data.mode: expected one of {', '.join(MODES)}, got {mode!r}")
    if normalize not in NORMALIZE:
        raise ConfigError(f"data.normalize: expected one of {', '.join(NORMALIZE)}, got {normalize!r}")
    if test_pixels not in ("rest", "all"):
        raise ConfigError(f"data.test_pixels: expected rest or all, got {test_pixels!r}")
    if mode == "patch" and (patch_size < 1 or patch_size % 2 == 0):
        raise ConfigError(f"data.patch_size: expected an odd number >= 1, got {patch_size}")
    if (labels is None) == (train_labels is None):
        raise ConfigError("data.labels: give labels (one raster, with optional masks) or train_labels and "
                          "test_labels, not both or neither")
    if train_labels is not None and test_labels is None:
        raise ConfigError("data.test_labels: missing; train_labels needs test_labels")
    if test_sources is not None and test_labels is None:
        raise ConfigError("data.test_labels: missing; test_sources needs the test scene's labels")
    scene, bands, rasters = _read_scene(sources, "data.sources", root)
    split = _check_split(source_split, bands, rasters, "data.sources")
    ref = rasters[0]
    test_scene, test_ref = scene, ref
    if test_sources is not None:
        test_scene, test_bands, test_rasters = _read_scene(test_sources, "data.test_sources", root)
        if sum(test_bands) != sum(bands):
            raise ConfigError(f"data.test_sources: {sum(test_bands)} bands, the training sources {sum(bands)}")
        test_ref = test_rasters[0]
    _normalise(scene.cube, [test_scene.cube] if test_scene is not scene else [], normalize)

    train_map = _labels(labels if labels is not None else train_labels, "data.labels" if labels is not None
                        else "data.train_labels", root, ref, scene)
    test_map = (_labels(test_labels, "data.test_labels", root, test_ref, test_scene) if test_labels is not None
                else train_map)
    n_classes = int(num_classes or max(train_map.max(), test_map.max()))
    if max(train_map.max(), test_map.max()) > n_classes:
        raise ConfigError(f"data.num_classes: {n_classes}, but the labels go up to {max(train_map.max(), test_map.max())}")
    train_where = train_map > 0
    if train_mask is not None:
        train_where &= _mask(train_mask, "data.train_mask", root, ref)
    test_where = test_map > 0
    if test_mask is not None:
        test_where &= _mask(test_mask, "data.test_mask", root, test_ref)
    rng = np.random.default_rng(seed)
    train_px = _draw(train_map, train_where, train_per_class, n_classes, rng)
    same_scene = test_scene is scene
    candidates = test_where & ~train_px if same_scene else test_where
    val_px = _draw(test_map, candidates, val_per_class, n_classes, rng) if val_per_class > 0 else None
    test_px, test_values = candidates, test_map
    if test_pixels == "all" and same_scene:
        test_px = test_where | train_px
        test_values = np.where(train_px, train_map, test_map)
    elif test_pixels == "all":
        test_px = test_where
    elif val_px is not None:
        test_px = candidates & ~val_px
    if not train_px.any():
        raise ConfigError("data: no labelled training pixels (check the labels, masks and train_per_class)")
    if not test_px.any():
        raise ConfigError("data: no labelled test pixels (check test_labels, test_mask and test_pixels)")
    test_final = np.where(test_px, test_values, 0)
    train_final = np.where(train_px, train_map, 0)
    val_final = np.where(val_px, test_map, 0) if val_px is not None else test_final
    counts = [int((train_final == c).sum()) for c in range(1, n_classes + 1)]
    names = list(class_names) if class_names else [f"class {c}" for c in range(1, n_classes + 1)]
    if len(names) != n_classes:
        raise ConfigError(f"data.class_names: {len(names)} names for {n_classes} classes")
    src_names = list(source_names) if source_names else [f"source {i + 1}" for i in range(len(split))]
    if len(src_names) != len(split):
        raise ConfigError(f"data.source_names: {len(src_names)} names for {len(split)} sources")

    if mode == "patch":
        padded = pad_cube(scene.cube, patch_size)
        padded_test = padded if test_scene is scene else pad_cube(test_scene.cube, patch_size)

        def patches(cube, values):
            rows, cols = np.nonzero(values)
            return PatchDataset(cube, rows, cols, values[rows, cols] - 1, patch_size)

        train_ds, val_ds, test_ds = (patches(padded, train_final), patches(padded_test, val_final),
                                     patches(padded_test, test_final))
        window = patch_size
    else:
        for s, k in ((scene, "data.sources"), (test_scene, "data.test_sources")):
            if min(s.shape) < tile_size:
                raise ConfigError(f"data.tile_size: {tile_size} is larger than the scene of {k} "
                                  f"({s.shape[0]}x{s.shape[1]})")
        train_ds = TileDataset(scene.cube, train_final - 1, tile_corners(*scene.shape, tile_size, tile_stride),
                               tile_size)
        eval_corners = tile_corners(*test_scene.shape, tile_size, tile_size)
        val_ds = TileDataset(test_scene.cube, val_final - 1, eval_corners, tile_size)
        test_ds = TileDataset(test_scene.cube, test_final - 1, eval_corners, tile_size)
        window = tile_size
    return RSDataSplits(
        name=title, train=train_ds, val=val_ds, test=test_ds, num_classes=n_classes,
        input_shape=(int(scene.cube.shape[0]), window, window), class_names=names, source_split=split,
        source_names=src_names, mode=mode, window=window, train_scene=scene, test_scene=test_scene,
        test_labels=test_final, train_counts=counts)


@DATASETS.register("rs_embedded")
def rs_embedded(scene_seed: int = 0, size: list | None = None, mode: str = "patch", patch_size: int = 11, tile_size: int = 32,
                tile_stride: int = 16, train_per_class: int | None = 100, val_per_class: int = 20,
                test_pixels: str = "rest", normalize: str = "minmax", resampling: str = "bilinear",
                seed: int = 0) -> RSDataSplits:
    """The generated 64 + 2-band scene (`tasks.remote_sensing.synthetic`; `size` [rows, cols], 220 x 320 by
    default), 100 training pixels per class redrawn per seed as in MUUFL's protocol; the elevation GeoTIFF
    (2 m) is warped onto the 1 m grid."""
    from tasks.remote_sensing.synthetic import CLASS_NAMES, embedded_scene

    from tasks.remote_sensing.synthetic import SHAPE

    shape = tuple(int(v) for v in size) if size else SHAPE
    if len(shape) != 2:
        raise ConfigError(f"data.size: expected [rows, cols], got {size!r}")
    try:
        folder = embedded_scene(scene_seed, shape)
    except ValueError as err:
        raise ConfigError(f"data.size: {err}") from None
    return rs_files(sources=[str(folder / "hsi.tif"), {"path": str(folder / "elevation.tif"),
                                                       "resampling": resampling}],
                    labels=str(folder / "labels.tif"), source_names=["hyperspectral", "elevation"],
                    class_names=CLASS_NAMES, num_classes=len(CLASS_NAMES), mode=mode, patch_size=patch_size, tile_size=tile_size,
                    tile_stride=tile_stride, train_per_class=train_per_class, val_per_class=val_per_class,
                    test_pixels=test_pixels, normalize=normalize, seed=seed, title="rs_embedded")


__all__ = ["PatchDataset", "pad_cube", "RSDataSplits", "Scene", "TileDataset", "rs_embedded", "rs_files", "tile_corners"]
