"""The embedded default: a generated multi-source scene written as GeoTIFFs (nothing downloads).

About MUUFL's size (220 x 320 pixels at 1 m), a 64-band "hyperspectral"
source and a 2-band elevation source (first and last LiDAR return heights),
eight classes built in pairs so that neither source alone tells them apart:

    spectral family    ground (low)    elevated
    vegetation         grass           trees       (same spectrum, different height)
    asphalt            road            dark roof
    soil / clay        bare soil       clay roof
    concrete           sidewalk        concrete roof

Within a height level the four families differ by spectrum (same height,
different spectrum); within a family the two classes differ only by height.
Trees and roofs differ in the last return (it reaches the ground under most
of a canopy).

Recipe (`generate_scene(seed)`, NumPy's PCG64 seeded with `seed`, default 0;
object counts for 220 x 320 pixels, scaled with the area for other sizes):

1. Ground: a Voronoi partition of 60 random sites, each region grass, road,
   bare soil or sidewalk (equal odds).
2. 70 buildings: axis-aligned rectangles of 7-24 px a side, roof dark, clay
   or concrete (equal odds), 2-10 m above the terrain, each casting a shadow
   (x 0.45 brightness) of height / 2 px to the south-east.
3. 60 small ground patches (5-15 px rectangles of a random ground class), so
   that object size does not give the height away.
4. 160 trees: discs of radius 2.5-7 px, canopy 3-14 m, not over buildings.
5. Terrain: smooth hills (Gaussian-filtered noise, sigma 30 px) spanning
   0-8 m, so absolute height alone does not separate ground from roofs.
6. Spectra over 400-1000 nm: the class's family mean mixed (0-35 %) with a
   smoothly varying blend of the four families, reshaped (+-15 %, seven
   Gaussian basis bands), scaled by a brightness field (0.5-1.5); all fields
   are smooth in space and ignore object borders, so the two classes of a
   family share one distribution of spectra; Gaussian noise (sigma 0.03)
   per band, then a Gaussian PSF (sigma 0.8 px) that mixes borders.
7. Elevation: first return = terrain + object height (+ canopy roughness,
   sigma 1 m), last return = terrain (+ 0-1.5 m) under 60 % of a canopy,
   else the first; noise sigma 0.3 m; generated at 1 m and written at 2 m
   (2 x 2 means), so reading it exercises the warp onto the 1 m grid.
8. Labels: class numbers 1-8; 0 (unlabelled) within 1 px of a class border
   and on 10 % of the regions and objects, as ground truth leaves mixed and
   unsurveyed pixels out.

Files (`embedded_scene()`): `hsi.tif` (64 bands, float32, 1 m), `elevation.tif`
(2 bands, float32, 2 m), `labels.tif` (uint8, 1 m), all in WGS 84 / UTM 16N
(EPSG:32616), written once under `core.engine.data.cache_dir` and reused.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from core.engine.data import cache_dir

VERSION = 1
CLASS_NAMES = ["grass", "trees", "road", "dark roof", "bare soil", "clay roof", "sidewalk", "concrete roof"]
#: class number -> (spectral family, height level)
CLASS_KIND = {1: ("vegetation", "ground"), 2: ("vegetation", "canopy"), 3: ("asphalt", "ground"),
              4: ("asphalt", "building"), 5: ("soil", "ground"), 6: ("soil", "building"),
              7: ("concrete", "ground"), 8: ("concrete", "building")}
CRS = "EPSG:32616"
ORIGIN = (298000.0, 3358000.0)  # upper-left corner, metres
SHAPE = (220, 320)
BANDS = 64
WAVELENGTHS = np.linspace(400.0, 1000.0, BANDS)
N_REGIONS, N_BUILDINGS, N_PATCHES, N_TREES = 60, 70, 60, 160


def family_spectra(wl: np.ndarray = WAVELENGTHS) -> dict[str, np.ndarray]:
    """Mean reflectance per spectral family: a red edge for vegetation, flat dark asphalt, a reddish rise for
    soil and clay, flat bright concrete."""
    t = (wl - 400.0) / 600.0
    return {
        "vegetation": 0.05 + 0.07 * np.exp(-(((wl - 550) / 35) ** 2)) + 0.38 / (1 + np.exp(-(wl - 715) / 12)),
        "asphalt": 0.07 + 0.05 * t,
        "soil": 0.09 + 0.24 / (1 + np.exp(-(wl - 580) / 70)),
        "concrete": 0.24 + 0.06 * t - 0.03 * np.exp(-(((wl - 940) / 45) ** 2)),
    }


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-range smooth noise."""
    from scipy.ndimage import gaussian_filter

    field = gaussian_filter(rng.standard_normal(shape), sigma, mode="reflect")
    field -= field.mean()
    return field / max(np.abs(field).max(), 1e-12)


def generate_scene(seed: int = 0, shape: tuple[int, int] = SHAPE) -> dict[str, np.ndarray]:
    """The scene's arrays at 1 m: `hsi` (64, H, W), `elevation` (2, H, W), `labels` (H, W) (module docstring)."""
    from scipy.ndimage import binary_dilation, gaussian_filter

    rng = np.random.default_rng(seed)
    h, w = shape
    if h < 32 or w < 32:
        raise ValueError(f"the generated scene needs at least 32 x 32 pixels, got {h} x {w}")
    area = h * w / (SHAPE[0] * SHAPE[1])  # object counts scale with the area
    n_regions, n_buildings, n_patches, n_trees = (max(4, round(n * area)) for n in (N_REGIONS, N_BUILDINGS,
                                                                                   N_PATCHES, N_TREES))
    rows, cols = np.mgrid[0:h, 0:w]
    cls = np.zeros(shape, np.int64)
    obj = np.zeros(shape, np.int64)
    height = np.zeros(shape)  # object height above the terrain
    # 1. ground regions
    sites = rng.uniform([0, 0], [h, w], size=(n_regions, 2))
    dist = (rows[None] - sites[:, 0, None, None]) ** 2 + (cols[None] - sites[:, 1, None, None]) ** 2
    region = dist.argmin(axis=0)
    cls[:] = rng.choice([1, 3, 5, 7], size=len(sites))[region]
    obj[:] = region
    next_id = len(sites)
    # 2. buildings
    building = np.zeros(shape, bool)
    shadow = np.zeros(shape, bool)
    for _ in range(n_buildings):
        bh, bw = rng.integers(7, 25, size=2)
        r0, c0 = rng.integers(0, h - bh), rng.integers(0, w - bw)
        sl = (slice(r0, r0 + bh), slice(c0, c0 + bw))
        roof = rng.uniform(2.0, 10.0)
        reach = int(round(roof / 2))  # the sun in the north-west: a shadow to the south-east
        shadow[r0 + bh: r0 + bh + reach, c0 + reach: c0 + bw + reach] = True
        shadow[r0 + reach: r0 + bh + reach, c0 + bw: c0 + bw + reach] = True
        cls[sl] = rng.choice([4, 6, 8])
        obj[sl] = next_id
        height[sl] = roof
        building[sl] = True
        next_id += 1
    shadow &= ~building
    # small ground patches (lawns, parking lots, yards), so that object size does not give the height away
    for _ in range(n_patches):
        ph, pw = rng.integers(5, 16, size=2)
        r0, c0 = rng.integers(0, h - ph), rng.integers(0, w - pw)
        sl = (slice(r0, r0 + ph), slice(c0, c0 + pw))
        free = ~building[sl]
        cls[sl] = np.where(free, rng.choice([1, 3, 5, 7]), cls[sl])
        obj[sl] = np.where(free, next_id, obj[sl])
        next_id += 1
    # 3. trees, never over buildings
    canopy = np.zeros(shape, bool)
    for _ in range(n_trees):
        radius = rng.uniform(2.5, 7.0)
        r0, c0 = rng.uniform(0, h), rng.uniform(0, w)
        d2 = (rows - r0) ** 2 + (cols - c0) ** 2
        disc = (d2 <= radius ** 2) & ~building
        top = rng.uniform(3.0, 14.0)
        dome = np.sqrt(np.clip(1 - d2 / radius ** 2, 0, 1))
        cls[disc] = 2
        obj[disc] = next_id
        height[disc] = top * (0.6 + 0.4 * dome[disc])
        canopy |= disc
        next_id += 1
    # 4. terrain
    terrain = 4.0 * (_smooth_field(rng, shape, 30.0) + 1.0)
    # 5. spectra: the class's family mean, mixed with the others, reshaped and scaled by smooth fields that
    #    ignore object borders, so paired classes share one distribution of spectra
    means = family_spectra()
    stack = np.stack(list(means.values()))  # (4, bands)
    own = np.array([list(means).index(CLASS_KIND[c][0]) for c in range(1, 9)])[cls - 1]
    mix = 0.175 * (_smooth_field(rng, shape, 3.0) + 1.0)  # 0 .. 0.35
    partner = np.stack([_smooth_field(rng, shape, 4.0) for _ in range(len(stack))])
    partner = np.exp(3.0 * partner) / np.exp(3.0 * partner).sum(axis=0)
    basis = np.stack([np.exp(-(((WAVELENGTHS - c) / 80.0) ** 2)) for c in np.linspace(400, 1000, 7)])
    reshape = np.einsum("kb,khw->bhw", basis, np.stack([_smooth_field(rng, shape, 3.0) for _ in basis]))
    brightness = 1.0 + 0.5 * _smooth_field(rng, shape, 2.0)  # 0.5 .. 1.5
    hsi = (1 - mix)[None] * stack[own].transpose(2, 0, 1) + mix[None] * np.einsum("fb,fhw->bhw", stack, partner)
    hsi = hsi * (1.0 + 0.15 * np.tanh(reshape)) * (brightness * np.where(shadow, 0.45, 1.0))[None]
    hsi = hsi + rng.normal(0.0, 0.03, hsi.shape)
    hsi = np.stack([gaussian_filter(band, 0.8, mode="reflect") for band in hsi])
    # 6. elevation: first and last return
    roughness = np.where(canopy, rng.normal(0, 1.0, shape), 0.0)
    first = terrain + height + roughness
    reaches_ground = canopy & (rng.uniform(size=shape) < 0.6)
    last = np.where(reaches_ground, terrain + rng.uniform(0, 1.5, shape), first)
    elevation = np.stack([first, last]) + rng.normal(0.0, 0.3, (2, h, w))
    # 7. labels: unlabelled borders and unsurveyed objects
    border = np.zeros(shape, bool)
    border[:-1] |= cls[:-1] != cls[1:]
    border[1:] |= cls[:-1] != cls[1:]
    border[:, :-1] |= cls[:, :-1] != cls[:, 1:]
    border[:, 1:] |= cls[:, :-1] != cls[:, 1:]
    border = binary_dilation(border, iterations=1)
    unsurveyed = rng.uniform(size=next_id) < 0.1
    labels = np.where(border | unsurveyed[obj], 0, cls)
    return {"hsi": hsi.astype(np.float32), "elevation": elevation.astype(np.float32),
            "labels": labels.astype(np.uint8), "classes": cls.astype(np.uint8)}


def _downsample(array: np.ndarray, factor: int) -> np.ndarray:
    c, h, w = array.shape
    h2, w2 = h // factor, w // factor
    return array[:, : h2 * factor, : w2 * factor].reshape(c, h2, factor, w2, factor).mean(axis=(2, 4))


def write_scene(folder: Path, seed: int = 0, shape: tuple[int, int] = SHAPE) -> None:
    """Generate the scene and write its three GeoTIFFs into `folder`."""
    from rasterio.transform import from_origin

    from tasks.remote_sensing.rasters import write_geotiff

    arrays = generate_scene(seed, shape)
    fine = from_origin(ORIGIN[0], ORIGIN[1], 1.0, 1.0)
    coarse = from_origin(ORIGIN[0], ORIGIN[1], 2.0, 2.0)
    write_geotiff(folder / "hsi.tif", arrays["hsi"], CRS, fine, [f"{wl:.0f} nm" for wl in WAVELENGTHS])
    write_geotiff(folder / "elevation.tif", _downsample(arrays["elevation"], 2).astype(np.float32), CRS, coarse,
                  ["first return height (m)", "last return height (m)"])
    write_geotiff(folder / "labels.tif", arrays["labels"], CRS, fine, ["class (0 = unlabelled)"])


def embedded_scene(seed: int = 0, shape: tuple[int, int] = SHAPE) -> Path:
    """The folder holding the generated scene for `seed` (and `shape`), generated on first use and cached."""
    suffix = "" if tuple(shape) == SHAPE else f"_{shape[0]}x{shape[1]}"
    folder = cache_dir("remote_sensing") / f"embedded_v{VERSION}_seed{seed}{suffix}"
    if all((folder / name).is_file() for name in ("hsi.tif", "elevation.tif", "labels.tif")):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        write_scene(tmp, seed, tuple(shape))
        if all((folder / name).is_file() for name in ("hsi.tif", "elevation.tif", "labels.tif")):
            shutil.rmtree(tmp)  # another process finished first
        else:
            shutil.rmtree(folder, ignore_errors=True)  # a partial folder of an interrupted older writer
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


__all__ = ["CLASS_KIND", "CLASS_NAMES", "embedded_scene", "family_spectra", "generate_scene", "write_scene"]
