import pickle

import numpy as np
import pytest
from PIL import Image

from tasks.classification.data import cifar, digits, imagefolder


def test_digits_splits_are_disjoint_stratified_and_standardised():
    d = digits()
    assert d.num_classes == 10 and d.input_shape == (1, 8, 8)
    sizes = len(d.train), len(d.val), len(d.test)
    assert sum(sizes) == 1797 and abs(sizes[1] - 0.2 * 1797) < 15
    x = d.train.tensors[0]
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 1e-2
    train_rows = {tuple(r.flatten().tolist()) for r in d.train.tensors[0]}
    overlap = sum(tuple(r.flatten().tolist()) in train_rows for r in d.test.tensors[0])
    assert overlap < 5  # only exact duplicate images that the dataset itself contains
    counts = np.bincount(d.val.tensors[1].numpy(), minlength=10)
    assert counts.min() >= 30


def _write_images(folder, classes, n, size=12):
    rng = np.random.default_rng(0)
    for c in classes:
        (folder / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / c / f"{i}.png")


def test_imagefolder_with_and_without_val(tmp_path):
    _write_images(tmp_path / "train", ["cat", "dog"], 10)
    d = imagefolder(str(tmp_path), image_size=8)
    assert d.num_classes == 2 and d.class_names == ["cat", "dog"] and len(d.val) == 2 and len(d.train) == 18
    x, y = d.train[0]
    assert x.shape == (3, 8, 8) and y in (0, 1)
    _write_images(tmp_path / "val", ["cat", "dog"], 3)
    d = imagefolder(str(tmp_path), image_size=8)
    assert len(d.val) == 6 and len(d.train) == 20 and d.test is d.val


def test_imagefolder_names_a_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.train_dir: folder not found: .*train"):
        imagefolder(str(tmp_path))


def _fake_cifar10(root, n=20):
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)

    def batch(path, count):
        data = {"data": rng.integers(0, 255, (count, 3072), dtype=np.uint8), "labels": list(rng.integers(0, 10, count))}
        with open(path, "wb") as f:
            pickle.dump(data, f)
        return data

    batches = [batch(folder / f"data_batch_{i}", n) for i in range(1, 6)]
    batch(folder / "test_batch", n)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    return batches


def test_cifar_reads_the_python_release(tmp_path):
    batches = _fake_cifar10(tmp_path)
    d = cifar(str(tmp_path), val_fraction=0.2)
    assert d.num_classes == 10 and len(d.test) == 20 and len(d.train) + len(d.val) == 100
    x, _ = d.test[0]
    assert x.shape == (3, 32, 32)
    # channel-major rows become HWC images: pixel (0, 0) of the first image is bytes 0, 1024 and 2048
    from tasks.classification.data import read_cifar

    xtr, ytr, _, _, names = read_cifar(tmp_path / "cifar-10-batches-py", "cifar10")
    first = batches[0]["data"][0]
    assert xtr.shape == (100, 32, 32, 3) and names[3] == "c3" and ytr[0] == batches[0]["labels"][0]
    assert xtr[0, 0, 0].tolist() == [first[0], first[1024], first[2048]]
    assert xtr[0, 0, 1].tolist() == [first[1], first[1025], first[2049]]
    with pytest.raises(FileNotFoundError, match="data.root: folder not found: .*nope"):
        cifar(str(tmp_path / "nope"))
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        cifar(str(tmp_path))
