"""Readers and writers: GeoTIFF round trips and warps (rasterio), .mat v5/v7.3, .npy, one-line errors."""

import numpy as np
import pytest
import scipy.io
from rasterio.transform import from_origin

from core.engine.registry import ConfigError
from tasks.remote_sensing.rasters import align, parse_spec, read_labels, read_raster, write_geotiff

CRS = "EPSG:32616"


def _tif(path, data, res=1.0, crs=CRS, origin=(1000.0, 5000.0)):
    write_geotiff(path, data, crs, from_origin(origin[0], origin[1], res, res) if crs else None)
    return str(path)


def test_geotiff_round_trip_keeps_values_and_georeferencing(tmp_path):
    data = np.random.default_rng(0).normal(size=(3, 7, 9)).astype(np.float32)
    raster = read_raster(parse_spec(_tif(tmp_path / "a.tif", data), "src"), "src")
    np.testing.assert_array_equal(raster.data, data)
    assert raster.crs.to_epsg() == 32616 and raster.transform.c == 1000.0 and raster.transform.a == 1.0
    two = read_raster(parse_spec({"path": str(tmp_path / "a.tif"), "bands": [3, 1]}, "src"), "src")
    np.testing.assert_array_equal(two.data, data[[2, 0]])


def test_coarser_source_is_warped_onto_the_reference_grid(tmp_path):
    ref = read_raster(parse_spec(_tif(tmp_path / "ref.tif", np.zeros((1, 8, 8), np.float32)), "r"), "r")
    coarse = np.arange(16, dtype=np.float32).reshape(1, 4, 4)  # 2 m pixels over the same 8 m x 8 m
    src = read_raster(parse_spec(_tif(tmp_path / "c.tif", coarse, res=2.0), "s"), "s")
    nearest = align(src, ref, "s", "nearest")
    np.testing.assert_array_equal(nearest, np.kron(coarse[0], np.ones((2, 2)))[None])  # each 2 m pixel -> 2x2
    ramp = np.tile(np.arange(4, dtype=np.float32) * 2.0, (4, 1))[None]  # value = 2 * column (centre at 2c+1 m)
    bilinear = align(read_raster(parse_spec(_tif(tmp_path / "r.tif", ramp, res=2.0), "s"), "s"), ref, "s",
                     "bilinear")
    x = np.arange(8) + 0.5  # 1 m pixel centres; the 2 m ramp is v(x) = x - 1 between its pixel centres
    np.testing.assert_allclose(bilinear[0, 3, 1:7], x[1:7] - 1, atol=1e-5)


def test_source_in_another_crs_is_reprojected(tmp_path):
    ref = read_raster(parse_spec(_tif(tmp_path / "ref.tif", np.zeros((1, 10, 10), np.float32),
                                      origin=(300000.0, 3358000.0)), "r"), "r")
    # the same area in geographic coordinates, a constant field: reprojection must keep the constant
    wide = np.full((1, 40, 40), 7.0, np.float32)
    write_geotiff(tmp_path / "geo.tif", wide, "EPSG:4326", from_origin(-89.09, 30.345, 0.0005, 0.0005))
    src = read_raster(parse_spec(str(tmp_path / "geo.tif"), "s"), "s")
    out = align(src, ref, "s", "bilinear")
    assert out.shape == (1, 10, 10) and np.allclose(out, 7.0)


def test_misaligned_inputs_fail_with_one_line_naming_the_file(tmp_path):
    ref = read_raster(parse_spec(_tif(tmp_path / "ref.tif", np.zeros((1, 8, 8), np.float32)), "r"), "r")
    far = read_raster(parse_spec(_tif(tmp_path / "far.tif", np.zeros((1, 8, 8), np.float32),
                                      origin=(9000.0, 5000.0)), "s"), "s")
    with pytest.raises(ConfigError, match="far.tif covers .* does not contain the reference extent") as err:
        align(far, ref, "data.sources[1]", "bilinear")
    assert "\n" not in str(err.value) and str(err.value).startswith("data.sources[1]")
    np.save(tmp_path / "cube.npy", np.zeros((2, 5, 5), np.float32))
    cube = read_raster(parse_spec(str(tmp_path / "cube.npy"), "s"), "s", default_layout="chw")
    with pytest.raises(ConfigError, match="cube.npy has 5x5 pixels and no georeferencing"):
        align(cube, ref, "data.sources[1]")
    _tif(tmp_path / "labels.tif", np.zeros((1, 6, 8), np.uint8))
    with pytest.raises(ConfigError, match="labels.tif has 6x8 pixels, the sources 8x8"):
        read_labels(parse_spec(str(tmp_path / "labels.tif"), "data.labels"), "data.labels", ref)
    (tmp_path / "broken.tif").write_bytes(b"not a tiff at all")
    with pytest.raises(ConfigError, match="cannot read .*broken.tif"):
        read_raster(parse_spec(str(tmp_path / "broken.tif"), "data.sources[0]"), "data.sources[0]")
    with pytest.raises(FileNotFoundError, match="data.sources\\[0\\].path: file not found: .*missing.tif"):
        parse_spec(str(tmp_path / "missing.tif"), "data.sources[0]")
    with pytest.raises(ConfigError, match="resampling: unknown method 'fancy'"):
        parse_spec({"path": str(tmp_path / "ref.tif"), "resampling": "fancy"}, "data.sources[0]")


def test_mat_v5_and_v73_and_npy_cubes(tmp_path):
    h5py = pytest.importorskip("h5py")
    cube = np.random.default_rng(1).normal(size=(6, 5, 4)).astype(np.float32)  # MATLAB rows x cols x bands
    scipy.io.savemat(tmp_path / "v5.mat", {"hsi_data": cube, "other": np.zeros(3)})
    got = read_raster(parse_spec({"path": str(tmp_path / "v5.mat"), "key": "hsi_data"}, "s"), "s")
    np.testing.assert_array_equal(got.data, cube.transpose(2, 0, 1))
    with pytest.raises(ConfigError, match="holds hsi_data, other; name one with key"):
        read_raster(parse_spec(str(tmp_path / "v5.mat"), "s"), "s")
    with h5py.File(tmp_path / "v73.mat", "w", userblock_size=512) as f:  # as MATLAB -v7.3: axes reversed
        f.create_dataset("hsi_data", data=cube.T)
    with open(tmp_path / "v73.mat", "r+b") as f:  # MATLAB's 128-byte header in the user block
        f.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 .".ljust(116)
                + b"\x00" * 8 + b"\x00\x02" + b"IM")
    got = read_raster(parse_spec({"path": str(tmp_path / "v73.mat"), "key": "hsi_data"}, "s"), "s")
    np.testing.assert_array_equal(got.data, cube.transpose(2, 0, 1))
    with pytest.raises(ConfigError, match="has no variable 'hsi'"):
        read_raster(parse_spec({"path": str(tmp_path / "v73.mat"), "key": "hsi"}, "s"), "s")
    np.save(tmp_path / "x.npy", cube.transpose(2, 0, 1))
    got = read_raster(parse_spec({"path": str(tmp_path / "x.npy"), "layout": "chw"}, "s"), "s")
    np.testing.assert_array_equal(got.data, cube.transpose(2, 0, 1))
