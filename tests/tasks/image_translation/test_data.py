"""tasks.image_translation.data: the embedded tiles (deterministic, disjoint splits, A is B's grey image), the
pix2pix aligned and A/B-folder readers, CycleGAN's unaligned folders, direction, and one-line errors."""

import numpy as np
import pytest
import torch
from PIL import Image

from core.engine.registry import ConfigError
from tasks.image_translation.data import make_embedded_tiles, translation_embedded, translation_folders


@pytest.mark.slow
def test_embedded_tiles_are_deterministic_disjoint_and_grey_of_colour():
    first = make_embedded_tiles("colorize", short_sides=(128,))
    second = make_embedded_tiles("colorize", short_sides=(128,))
    for key in ("a", "b", "split", "photo"):
        np.testing.assert_array_equal(first[key], second[key])
    n = len(first["names"])
    assert len(set(first["names"].tolist())) == n  # one tile per (photo, scale, position)
    counts = np.bincount(first["split"], minlength=3)
    assert counts[1] == round(0.1 * n) and counts[2] == round(0.2 * n) and counts[0] == n - counts[1] - counts[2]
    assert len(set(first["photo"].tolist())) == 10
    # A is the ITU-R 601 luma of B (to 8-bit rounding twice)
    rgb = first["b"].astype(np.float64) / 255.0
    luma = 0.2125 * rgb[:, 0] + 0.7154 * rgb[:, 1] + 0.0721 * rgb[:, 2]
    assert np.abs(first["a"][:, 0] / 255.0 - luma).max() < 3 / 255
    edges = make_embedded_tiles("edges", short_sides=(128,))
    assert set(np.unique(edges["a"]).tolist()) == {0, 255}
    np.testing.assert_array_equal(edges["b"], first["b"])


def test_embedded_splits_directions_and_unpaired_variant():
    data = translation_embedded()
    assert data.input_shape == (1, 64, 64) and data.train.out_channels == 3
    x, y = data.test[0]
    assert x.shape == (1, 64, 64) and y.shape == (3, 64, 64) and -1 <= float(x.min()) and float(y.max()) <= 1
    names = [set(d.names) for d in (data.train, data.val, data.test)]
    assert not (names[0] & names[1]) and not (names[0] & names[2]) and not (names[1] & names[2])
    back = translation_embedded(direction="BtoA")
    xb, yb = back.test[0]
    torch.testing.assert_close(xb, y)
    torch.testing.assert_close(yb, x)
    unpaired = translation_embedded(unpaired=True)
    assert unpaired.train.paired is False and unpaired.test.paired is True
    assert len(unpaired.train.a) + len(unpaired.train.b) == len(data.train)
    # no train B tile is the colour version of a train A tile: the two halves are disjoint
    a = torch.from_numpy(unpaired.train.a.inputs[:, 0]).float().flatten(1)
    rgb = torch.from_numpy(unpaired.train.b.inputs).float()
    luma = (0.2125 * rgb[:, 0] + 0.7154 * rgb[:, 1] + 0.0721 * rgb[:, 2]).flatten(1)
    assert torch.cdist(a, luma, p=float("inf")).min() > 3  # a true pair differs by at most ~2 grey levels
    with pytest.raises(ConfigError, match="data.direction"):
        translation_embedded(direction="AB")


def save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_aligned_folders_split_each_image_into_a_and_b(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for i in range(3):
            a = np.full((32, 32, 3), 40 * i, np.uint8)
            b = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
            save(tmp_path / split / f"{i}.png", np.concatenate([a, b], 1))
    data = translation_folders(str(tmp_path), "aligned", load_size=32, crop_size=32)
    assert len(data.train) == 3 and data.val is data.test  # no val folder: test serves
    x, y = data.test[1]
    assert torch.allclose(x, torch.full_like(x, 40 / 127.5 - 1))
    back = translation_folders(str(tmp_path), "aligned", direction="BtoA", load_size=32, crop_size=32)
    torch.testing.assert_close(back.test[1][1], x)
    crops = translation_folders(str(tmp_path), "aligned", load_size=32, crop_size=16)
    assert crops.train[0][0].shape == (3, 16, 16) and crops.input_shape == (3, 16, 16)
    save(tmp_path / "train" / "odd.png", np.zeros((32, 65, 3), np.uint8))
    with pytest.raises(ConfigError, match=r"odd\.png is 65 px wide"):
        translation_folders(str(tmp_path), "aligned", load_size=32, crop_size=32)


def test_ab_folders_match_names_and_name_the_unmatched_file(tmp_path):
    for split in ("train", "test"):
        for name in ("x", "y"):
            save(tmp_path / "A" / split / f"{name}.png", np.zeros((16, 16, 3), np.uint8))
            save(tmp_path / "B" / split / f"{name}.jpg", np.full((16, 16, 3), 255, np.uint8))
    data = translation_folders(str(tmp_path), "ab_folders", load_size=16, crop_size=16)
    assert data.train.names == ["x", "y"] and float(data.train[0][1].min()) > 0.9
    save(tmp_path / "A" / "train" / "z.png", np.zeros((16, 16, 3), np.uint8))
    with pytest.raises(ConfigError, match=r"z\.png has no partner"):
        translation_folders(str(tmp_path), "ab_folders", load_size=16, crop_size=16)
    (tmp_path / "A" / "train" / "z.png").unlink()
    (tmp_path / "A" / "val").mkdir()  # an empty val folder
    with pytest.raises(ConfigError, match=r"A/val has no images"):
        translation_folders(str(tmp_path), "ab_folders", load_size=16, crop_size=16)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        translation_folders(str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="data.layout"):
        translation_folders(str(tmp_path), "side_by_side")


def test_unaligned_folders_give_cyclegan_data(tmp_path):
    for split, n in (("train", 4), ("test", 2)):
        for side, value in (("A", 0), ("B", 200)):
            for i in range(n + (side == "B")):
                save(tmp_path / f"{split}{side}" / f"{side}{i}.png", np.full((16, 16, 3), value, np.uint8))
    data = translation_folders(str(tmp_path), "unaligned", load_size=16, crop_size=16)
    assert data.train.paired is False and len(data.train) == 5 and data.test.names == ["A0", "A1"]
    a, b = data.train[0]
    assert float(a.max()) == -1.0 and float(b.min()) > 0.5
    back = translation_folders(str(tmp_path), "unaligned", direction="BtoA", load_size=16, crop_size=16)
    assert back.test.names == ["B0", "B1", "B2"] and float(back.train[0][0].min()) > 0.5
