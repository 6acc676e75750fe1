"""Data: the embedded photographs and crops, the generated labelled set in ImageFolder layout, folders by path."""

import numpy as np
import pytest
import torch
from PIL import Image

from core.engine.registry import ConfigError
from tasks.image_compression.data import (SHAPE_CLASSES, Crops, compression_embedded, compression_folders,
                                          generate_shapes, image_folder, shapes)


def test_embedded_default_crops_and_whole_test_images(monkeypatch, tmp_path):
    monkeypatch.setenv("ARCHFORGE_DATA", str(tmp_path))
    data = compression_embedded(patch_size=32, samples_per_epoch=10, train=["coins", "camera"], val=["text"],
                                test=["astronaut"], downstream={"train": 6, "val": 6, "test": 6, "size": 32})
    torch.manual_seed(0)
    crop = data.train[0]
    assert len(data.train) == 10 and crop.shape == (3, 32, 32) and crop.dtype == torch.float32
    assert 0.0 <= float(crop.min()) and float(crop.max()) <= 1.0
    assert data.test[0].shape == (3, 512, 512) and data.test[0].dtype == torch.uint8
    assert data.test.names == ["astronaut"]
    assert data.downstream.classes == sorted(SHAPE_CLASSES) and len(data.downstream.train) == 6
    image, label = data.downstream.test[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.uint8 and 0 <= label < 6


def test_generated_shapes_are_deterministic_and_cached(tmp_path):
    a = generate_shapes(tmp_path / "a", {"train": 7}, size=32, seed=3)
    b = generate_shapes(tmp_path / "b", {"train": 7}, size=32, seed=3)
    files_a = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*.png")) and len(files_a) == 7
    assert sorted({p.parent.name for p in files_a}) == sorted(SHAPE_CLASSES)
    for rel in files_a:
        assert np.array_equal(np.asarray(Image.open(a / rel)), np.asarray(Image.open(b / rel)))
    first = shapes(tmp_path / "c", size=32, train=6, val=6, test=6)
    stamp = (tmp_path / "c" / "DONE").stat().st_mtime_ns
    shapes(tmp_path / "c", size=32, train=6, val=6, test=6)
    assert (tmp_path / "c" / "DONE").stat().st_mtime_ns == stamp and len(first.train) == 6
    with pytest.raises(ConfigError, match="one per class"):
        shapes(tmp_path / "d", size=32, train=3)


def test_folders_read_any_images_by_path(tmp_path):
    for split, n in (("train", 2), ("test", 1)):
        (tmp_path / split).mkdir()
        for i in range(n):
            Image.fromarray(np.full((40, 48, 3), 60 * i, np.uint8)).save(tmp_path / split / f"im{i}.png")
    for c in ("cat", "dog"):
        for split in ("train", "test"):
            (tmp_path / "labelled" / split / c).mkdir(parents=True)
            Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "labelled" / split / c / "x.jpg")
    data = compression_folders(str(tmp_path / "train"), str(tmp_path / "test"), patch_size=32,
                               downstream={"root": str(tmp_path / "labelled")})
    assert data.test.names == ["im0"] and data.val is data.test
    assert data.downstream.classes == ["cat", "dog"] and data.downstream.val is data.downstream.test


def test_bad_input_names_the_key_and_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.train"):
        compression_folders(str(tmp_path / "nope"), str(tmp_path))
    with pytest.raises(ConfigError, match="patch_size"):
        Crops([np.zeros((20, 20, 3), np.uint8)], patch_size=32, samples_per_epoch=4)
    with pytest.raises(ConfigError, match="not a bundled photograph"):
        compression_embedded(train=["no_such_photo"], downstream=None)
    with pytest.raises(FileNotFoundError, match="train"):
        image_folder(tmp_path)
