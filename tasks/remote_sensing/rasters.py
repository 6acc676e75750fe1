"""Reading and writing the rasters of a multi-source scene: GeoTIFF (rasterio), MATLAB `.mat`, NumPy `.npy`.

A source or label file is named in a config by a path or a mapping:

    {path: hsi.tif}                                   # GeoTIFF: all bands
    {path: lidar.tif, bands: [1, 2], resampling: cubic}
    {path: hsi_data.mat, key: hsi_data}               # MATLAB v5 (scipy) or v7.3 (h5py), rows x cols x bands
    {path: X_train.npy, layout: chw}                  # NumPy cube, bands x rows x cols

The first source fixes the reference grid. A GeoTIFF on another grid (other
resolution, extent or CRS) is resampled onto it with rasterio's warp
(`resampling`: any `rasterio.enums.Resampling` name, `bilinear` by default) when
it covers the reference extent; arrays without georeferencing must have the
reference grid's rows and columns. Every mismatch is a one-line error naming
the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.engine.registry import ConfigError

SPEC_KEYS = ("path", "key", "layout", "bands", "resampling")
GEOTIFF = (".tif", ".tiff")


@dataclass
class Raster:
    """Bands x rows x cols values with their georeferencing (None for `.mat` / `.npy` arrays)."""

    data: np.ndarray
    path: str
    crs: Any = None
    transform: Any = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.data.shape[1], self.data.shape[2]

    @property
    def georeferenced(self) -> bool:
        return self.crs is not None and self.transform is not None


def parse_spec(spec: Any, key: str, root: str | None = None) -> dict[str, Any]:
    """A file spec as a dict with a resolved `path`; unknown keys and missing files fail naming `key`."""
    if isinstance(spec, str):
        spec = {"path": spec}
    if not isinstance(spec, dict) or "path" not in spec:
        raise ConfigError(f"{key}: expected a path or a mapping with 'path', got {spec!r}")
    unknown = [k for k in spec if k not in SPEC_KEYS]
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}: unknown key; a file entry takes {', '.join(SPEC_KEYS)}")
    path = Path(str(spec["path"])).expanduser()
    if root is not None and not path.is_absolute():
        path = Path(root).expanduser() / path
    if not path.is_file():
        raise FileNotFoundError(f"{key}.path: file not found: {path}")
    layout = spec.get("layout")
    if layout not in (None, "hwc", "chw"):
        raise ConfigError(f"{key}.layout: expected hwc or chw, got {layout!r}")
    out = dict(spec, path=str(path))
    out.setdefault("resampling", "bilinear")
    from rasterio.enums import Resampling

    if out["resampling"] not in Resampling.__members__:
        raise ConfigError(f"{key}.resampling: unknown method {out['resampling']!r}; rasterio has "
                          f"{', '.join(Resampling.__members__)}")
    return out


def _read_mat(path: str, var: str | None, key: str) -> np.ndarray:
    import scipy.io

    import h5py

    try:
        content = scipy.io.loadmat(path)
    except NotImplementedError:  # MATLAB v7.3 files are HDF5
        content = None
    except (ValueError, TypeError, OSError) as err:
        if not h5py.is_hdf5(path):
            raise ConfigError(f"{key}: cannot read {path} as a MATLAB file ({err})") from None
        content = None
    if content is not None:
        return np.asarray(content[_pick([k for k in content if not k.startswith("__")], var, path, key)])
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise ConfigError(f"{key}: cannot read {path} as a MATLAB v7.3 file ({err})") from None
    with f:
        pick = _pick([k for k in f.keys() if not k.startswith("#")], var, path, key)
        # HDF5 holds MATLAB's column-major arrays with the axes reversed
        return np.asarray(f[pick][()]).T


def _pick(names: list[str], var: str | None, path: str, key: str) -> str:
    if var is not None:
        if var not in names:
            raise ConfigError(f"{key}.key: {path} has no variable {var!r}; it has {', '.join(names) or 'none'}")
        return var
    if len(names) != 1:
        raise ConfigError(f"{key}.key: {path} holds {', '.join(names) or 'no variables'}; name one with key")
    return names[0]


def _read_geotiff(path: str, bands: list[int] | None, key: str) -> Raster:
    import rasterio
    from rasterio.errors import RasterioIOError

    try:
        with rasterio.open(path) as src:
            indexes = list(bands) if bands else list(range(1, src.count + 1))
            bad = [b for b in indexes if not 1 <= int(b) <= src.count]
            if bad:
                raise ConfigError(f"{key}.bands: {path} has bands 1..{src.count}, asked for {bad}")
            data = src.read(indexes).astype(np.float32)
            if src.nodata is not None:
                data[np.isnan(data) if np.isnan(src.nodata) else data == src.nodata] = 0.0
            crs = src.crs if src.crs else None
            transform = src.transform if not src.transform.is_identity else None
    except RasterioIOError as err:
        raise ConfigError(f"{key}: cannot read {path} ({str(err).splitlines()[0]})") from None
    return Raster(data, path, crs, transform)


def read_raster(spec: dict[str, Any], key: str, default_layout: str = "hwc") -> Raster:
    """Read one parsed spec (see `parse_spec`) as bands x rows x cols."""
    path = spec["path"]
    suffix = Path(path).suffix.lower()
    if suffix in GEOTIFF:
        return _read_geotiff(path, spec.get("bands"), key)
    if suffix == ".mat":
        array = _read_mat(path, spec.get("key"), key)
        layout = spec.get("layout") or "hwc"
    elif suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as err:
            raise ConfigError(f"{key}: cannot read {path} as a NumPy array ({err})") from None
        layout = spec.get("layout") or default_layout
    else:
        raise ConfigError(f"{key}.path: {path}: unsupported format {suffix!r}; use .tif, .mat or .npy")
    if array.ndim == 2:
        array = array[None]
    elif array.ndim == 3:
        array = np.transpose(array, (2, 0, 1)) if layout == "hwc" else array
    else:
        raise ConfigError(f"{key}: {path} holds a {array.ndim}-D array; expected rows x cols [x bands]")
    if not np.issubdtype(array.dtype, np.number):
        raise ConfigError(f"{key}: {path} holds {array.dtype} values, not numbers")
    if spec.get("bands"):
        bad = [b for b in spec["bands"] if not 1 <= int(b) <= array.shape[0]]
        if bad:
            raise ConfigError(f"{key}.bands: {path} has bands 1..{array.shape[0]}, asked for {bad}")
        array = array[[int(b) - 1 for b in spec["bands"]]]
    return Raster(np.ascontiguousarray(array, dtype=np.float32), path)


def _bounds(transform, shape: tuple[int, int]) -> tuple[float, float, float, float]:
    from rasterio.transform import array_bounds

    return array_bounds(shape[0], shape[1], transform)  # west, south, east, north


def same_grid(a: Raster, b: Raster) -> bool:
    return (a.shape == b.shape and a.georeferenced and b.georeferenced and a.crs == b.crs
            and a.transform.almost_equals(b.transform))


def align(raster: Raster, ref: Raster, key: str, resampling: str = "bilinear") -> np.ndarray:
    """`raster`'s bands on `ref`'s grid: as they are when the grids agree, else warped by rasterio."""
    if not raster.georeferenced or not ref.georeferenced:
        if raster.shape != ref.shape:
            raise ConfigError(f"{key}: {raster.path} has {raster.shape[0]}x{raster.shape[1]} pixels and no "
                              f"georeferencing to align it to the reference grid of {ref.shape[0]}x{ref.shape[1]}")
        return raster.data
    if same_grid(raster, ref):
        return raster.data
    from rasterio.enums import Resampling
    from rasterio.warp import reproject, transform_bounds

    try:
        src_bounds = transform_bounds(raster.crs, ref.crs, *_bounds(raster.transform, raster.shape))
    except Exception as err:  # noqa: BLE001 - any projection failure is the user's mismatch
        raise ConfigError(f"{key}: {raster.path}: CRS {raster.crs} cannot be transformed to the reference CRS "
                          f"{ref.crs} ({err})") from None
    ref_bounds = _bounds(ref.transform, ref.shape)
    tol = abs(ref.transform.a)
    covers = (src_bounds[0] <= ref_bounds[0] + tol and src_bounds[1] <= ref_bounds[1] + tol
              and src_bounds[2] >= ref_bounds[2] - tol and src_bounds[3] >= ref_bounds[3] - tol)
    if not covers:
        fmt = ", ".join(f"{v:.1f}" for v in src_bounds)
        ref_fmt = ", ".join(f"{v:.1f}" for v in ref_bounds)
        raise ConfigError(f"{key}: {raster.path} covers ({fmt}) in the reference CRS, which does not contain the "
                          f"reference extent ({ref_fmt})")
    out = np.zeros((raster.data.shape[0], *ref.shape), dtype=np.float32)
    reproject(source=raster.data, destination=out, src_transform=raster.transform, src_crs=raster.crs,
              dst_transform=ref.transform, dst_crs=ref.crs, resampling=Resampling[resampling])
    return out


def read_labels(spec: dict[str, Any], key: str, ref: Raster) -> tuple[np.ndarray, Raster]:
    """A single-band label (or mask) raster on the reference grid, as int64 rows x cols, and the raster read
    (its georeferencing serves sources that have none, such as `.npy` cubes)."""
    raster = read_raster(spec, key)
    if raster.data.shape[0] != 1:
        raise ConfigError(f"{key}: {raster.path} has {raster.data.shape[0]} bands; a label raster has one")
    if raster.shape != ref.shape:
        raise ConfigError(f"{key}: {raster.path} has {raster.shape[0]}x{raster.shape[1]} pixels, the sources "
                          f"{ref.shape[0]}x{ref.shape[1]}")
    if raster.georeferenced and ref.georeferenced and not same_grid(raster, ref):
        raise ConfigError(f"{key}: {raster.path} is on another grid (CRS or transform) than the reference source "
                          f"{ref.path}")
    values = raster.data[0]
    if not np.all(np.isfinite(values)) or not np.allclose(values, np.round(values)):
        raise ConfigError(f"{key}: {raster.path} holds non-integer values; labels are class numbers (0 = none)")
    return np.round(values).astype(np.int64), raster


def write_geotiff(path: str | Path, data: np.ndarray, crs: Any = None, transform: Any = None,
                  descriptions: list[str] | None = None, nodata: float | None = None, compress: bool = True) -> None:
    """Write bands x rows x cols (or rows x cols) as a GeoTIFF, atomically (in memory, then renamed into place)."""
    from rasterio.io import MemoryFile

    from core.engine.runs import atomic_write_bytes

    array = data[None] if data.ndim == 2 else data
    profile = {"driver": "GTiff", "height": array.shape[1], "width": array.shape[2], "count": array.shape[0],
               "dtype": array.dtype.name}
    if crs is not None:
        profile["crs"] = crs
    if transform is not None:
        profile["transform"] = transform
    if nodata is not None:
        profile["nodata"] = nodata
    if compress:
        profile["compress"] = "deflate"
    with MemoryFile() as memory:
        with memory.open(**profile) as dst:
            dst.write(array)
            for i, text in enumerate(descriptions or [], start=1):
                dst.set_band_description(i, text)
        payload = memory.read()
    atomic_write_bytes(path, payload)


__all__ = ["Raster", "align", "parse_spec", "read_labels", "read_raster", "same_grid", "write_geotiff"]
