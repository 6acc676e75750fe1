"""The generated scene (its recipe's promise: classes need both sources) and the datasets built from files."""

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from scipy.ndimage import minimum_filter
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.metrics import balanced_accuracy_score

from core.engine.registry import ConfigError
from tasks.remote_sensing.data import TileDataset, rs_embedded, rs_files, tile_corners
from tasks.remote_sensing.rasters import write_geotiff
from tasks.remote_sensing.synthetic import embedded_scene, generate_scene

CRS = "EPSG:32616"


def test_generated_classes_need_both_sources():
    """Per pixel, a linear classifier on the spectra alone confuses each same-spectrum pair, one on elevation
    alone confuses the same-height classes, and one on both separates all eight."""
    scene = generate_scene(0)
    y = scene["labels"].ravel()
    first, last = scene["elevation"]
    spectra = scene["hsi"].reshape(64, -1).T
    elevation = np.stack([first, first - last, first - minimum_filter(first, 15)]).reshape(3, -1).T
    both = np.hstack([spectra, elevation])
    rng = np.random.default_rng(0)

    def accuracy(features, classes, n=500):
        train, test = [], []
        for c in classes:
            idx = rng.permutation(np.flatnonzero(y == c))
            train += list(idx[:n])
            test += list(idx[n:2 * n])
        clf = LinearDiscriminantAnalysis().fit(features[train], y[train])
        return balanced_accuracy_score(y[test], clf.predict(features[test]))

    for pair in [(1, 2), (3, 4), (5, 6), (7, 8)]:  # same spectral family, different height
        assert accuracy(spectra, pair) < 0.7 and accuracy(elevation, pair) > 0.85
    assert accuracy(elevation, (1, 3, 5, 7)) < 0.5 and accuracy(spectra, (1, 3, 5, 7)) > 0.9  # same height
    everything = tuple(range(1, 9))
    assert accuracy(spectra, everything) < 0.7 and accuracy(elevation, everything) < 0.55
    assert accuracy(both, everything) > 0.85


def test_embedded_scene_is_written_once_with_its_grid():
    folder = embedded_scene(0, (48, 64))
    stamp = (folder / "hsi.tif").stat().st_mtime_ns
    assert embedded_scene(0, (48, 64)) == folder and (folder / "hsi.tif").stat().st_mtime_ns == stamp
    with rasterio.open(folder / "hsi.tif") as hsi, rasterio.open(folder / "elevation.tif") as elev:
        assert hsi.count == 64 and elev.count == 2 and hsi.crs.to_epsg() == 32616 == elev.crs.to_epsg()
        assert (hsi.height, hsi.width) == (48, 64) and (elev.height, elev.width) == (24, 32)
        assert hsi.transform.a == 1.0 and elev.transform.a == 2.0
    data = rs_embedded(size=[48, 64], train_per_class=10, val_per_class=3, seed=1)
    assert data.input_shape == (66, 11, 11) and data.source_split == [64, 2]
    assert data.train_scene.crs.to_epsg() == 32616 and data.train_scene.shape == (48, 64)
    cube = data.train_scene.cube
    assert np.allclose(cube.min(axis=(1, 2)), 0) and np.allclose(cube.max(axis=(1, 2)), 1)  # per-band min-max
    with rasterio.open(folder / "labels.tif") as src:
        labels = src.read(1)
    assert data.num_classes == 8 and data.train_counts == [min(10, int((labels == c).sum())) for c in range(1, 9)]


def _scene(tmp_path, labels, train_mask=None):
    h, w = labels.shape
    transform = from_origin(500000.0, 4000000.0, 1.0, 1.0)
    cube = np.stack([np.arange(h * w, dtype=np.float32).reshape(h, w), np.ones((h, w), np.float32)])
    write_geotiff(tmp_path / "a.tif", cube, CRS, transform)
    write_geotiff(tmp_path / "b.tif", cube[:1] * 2, CRS, transform)
    write_geotiff(tmp_path / "labels.tif", labels.astype(np.int16), CRS, transform)
    if train_mask is not None:
        write_geotiff(tmp_path / "train.tif", train_mask.astype(np.uint8), CRS, transform)
    return cube


def test_files_with_masks_patches_and_redraws(tmp_path):
    labels = np.zeros((10, 12), np.int64)
    labels[0:5, 0:6] = 1
    labels[6:9, 2:10] = 2
    labels[0, 11] = -1  # MUUFL's unlabelled value
    mask = np.zeros_like(labels)
    mask[:5] = 1
    cube = _scene(tmp_path, labels, mask)
    kwargs = dict(sources=["a.tif", "b.tif"], labels="labels.tif", root=str(tmp_path), patch_size=3,
                  val_per_class=0)
    data = rs_files(train_mask="train.tif", **kwargs)
    assert data.source_split == [2, 1] and data.num_classes == 2
    # the training set is exactly the labelled pixels of the mask; class 2 lies outside it
    assert len(data.train) == 30 and data.train_counts == [30, 0] and len(data.test) == 24
    i = next(k for k in range(len(data.train)) if (data.train.rows[k], data.train.cols[k]) == (0, 5))
    x, y = data.train[i]
    assert x.shape == (3, 3, 3) and int(y) == 0
    assert float(x[0, 1, 1]) == pytest.approx(5 / cube[0].max())  # min-max normalised centre pixel
    assert float(x[2, 1, 1]) == pytest.approx(5 / cube[0].max())  # b.tif = 2 x band 0, normalised alike
    assert float(x[:, 0].abs().sum()) == 0  # the row above the scene is zero padding
    # MUUFL-style draws: the same seed draws the same pixels, another seed others
    a, b, c = (rs_files(**kwargs, train_per_class=5, seed=s) for s in (0, 0, 1))
    assert a.train_counts == [5, 5] and len(a.test) == 30 + 24 - 10
    key = lambda d: sorted(zip(d.train.rows.tolist(), d.train.cols.tolist()))  # noqa: E731
    assert key(a) == key(b) and key(a) != key(c)
    everything = rs_files(**kwargs, train_per_class=5, test_pixels="all")
    assert len(everything.test) == 54  # the official MUUFL test set includes the training pixels


def test_bad_inputs_name_the_file_and_the_mismatch(tmp_path):
    labels = np.zeros((10, 12), np.int64)
    labels[1:5, 1:6] = 1
    _scene(tmp_path, labels)
    base = dict(labels="labels.tif", root=str(tmp_path), train_per_class=3, val_per_class=0)
    with pytest.raises(ConfigError, match=r"data.source_split: \[64, 2\] sums to 66 bands but data.sources have "
                                          r"3 \(.*a.tif 2, .*b.tif 1\)"):
        rs_files(sources=["a.tif", "b.tif"], source_split=[64, 2], **base)
    write_geotiff(tmp_path / "small.tif", np.zeros((1, 9, 12), np.uint8), CRS, from_origin(500000.0, 4000000.0, 1, 1))
    with pytest.raises(ConfigError, match="small.tif has 9x12 pixels, the sources 10x12"):
        rs_files(sources=["a.tif"], **dict(base, labels="small.tif"))
    with pytest.raises(ConfigError, match="data.root: set it"):
        rs_files(sources=["a.tif"], **dict(base, root="???"))
    with pytest.raises(ConfigError, match="data.tile_size: 32 is larger than the scene"):
        rs_files(sources=["a.tif"], mode="tile", tile_size=32, **base)


def test_tiles_clamp_to_the_border_and_count_each_pixel_once():
    assert tile_corners(10, 7, 4, 4) == [(t, l) for t in (0, 4, 6) for l in (0, 3)]
    target = np.random.default_rng(0).integers(-1, 3, (10, 7))
    ds = TileDataset(np.zeros((1, 10, 7), np.float32), target, tile_corners(10, 7, 4, 4), 4)
    assert sum(int((t >= 0).sum()) for t in ds.targets) == int((target >= 0).sum())
    mostly_empty = np.full((10, 7), -1)
    mostly_empty[9, 6] = 1
    assert len(TileDataset(np.zeros((1, 10, 7), np.float32), mostly_empty, tile_corners(10, 7, 4, 4), 4)) == 1


def test_fixed_label_images_and_a_separate_test_scene(tmp_path):
    import scipy.io

    rng = np.random.default_rng(0)
    hs, sar = rng.uniform(size=(12, 10, 5)), rng.uniform(size=(12, 10, 2))  # MATLAB rows x cols x bands
    train, test = np.zeros((12, 10)), np.zeros((12, 10))
    train[:4, :4], train[:4, 6:] = 1, 2
    test[6:, :5], test[6:, 5:] = 1, 2
    for name, value in {"hs": hs, "sar": sar, "TrainImage": train, "TestImage": test}.items():
        scipy.io.savemat(tmp_path / f"{name}.mat", {name: value})
    berlin = rs_files(sources=[{"path": "hs.mat", "key": "hs"}, {"path": "sar.mat", "key": "sar"}],
                      train_labels={"path": "TrainImage.mat", "key": "TrainImage"},
                      test_labels={"path": "TestImage.mat", "key": "TestImage"}, root=str(tmp_path),
                      patch_size=5, val_per_class=2, normalize="minmax_zero")
    assert berlin.source_split == [5, 2] and berlin.train_counts == [16, 16]
    assert len(berlin.val) == 4 and len(berlin.test) == 60 - 4 and berlin.train_scene.crs is None
    assert berlin.train_scene.cube.max() <= 1 and berlin.train_scene.cube.min() >= 0
    # Houston: .npy cubes (bands x rows x cols) for a training and a test region, GeoTIFF labels
    np.save(tmp_path / "X_train.npy", rng.uniform(size=(6, 16, 16)).astype(np.float32))
    np.save(tmp_path / "X_test.npy", rng.uniform(size=(6, 16, 20)).astype(np.float32))
    grid = from_origin(271000.0, 3290000.0, 0.5, 0.5)
    write_geotiff(tmp_path / "train.tif", rng.integers(0, 4, (1, 16, 16)).astype(np.uint8), "EPSG:26915", grid)
    write_geotiff(tmp_path / "test.tif", rng.integers(0, 4, (1, 16, 20)).astype(np.uint8), "EPSG:26915", grid)
    houston = rs_files(sources=[{"path": "X_train.npy", "layout": "chw"}], labels="train.tif",
                       test_sources=[{"path": "X_test.npy", "layout": "chw"}], test_labels="test.tif",
                       root=str(tmp_path), source_split=[1, 2, 1, 2], mode="tile", tile_size=8, tile_stride=4,
                       val_per_class=1, num_classes=3)
    assert houston.source_split == [1, 2, 1, 2] and houston.input_shape == (6, 8, 8)
    assert len(houston.train) == 9 and houston.test_scene.shape == (16, 20)
    assert houston.test_scene.crs.to_epsg() == 26915  # the class map takes its grid from the label GeoTIFF
    x, y = houston.train[0]
    assert x.shape == (6, 8, 8) and y.shape == (8, 8) and int(y.min()) >= -1
