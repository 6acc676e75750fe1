"""The restricted unpickler reads the real pickle formats (verification .bin, CIFAR batches) and refuses the rest."""

import os
import pickle

import numpy as np
import pytest

from core.engine.data import DataError
from core.engine.safe_pickle import BYTES_AND_BOOLS, NUMPY_ARRAYS, safe_load


def _py2_style(data: bytes) -> bytes:
    """numpy 1 / Python 2 pickles (the CIFAR release) name numpy.core.multiarray; ours name numpy._core."""
    return data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def test_verification_bin_and_cifar_batches_round_trip(tmp_path):
    pairs = ([b"\xff\xd8a", b"\x89PNGb"], [True])  # insightface's .bin: (encoded images, issame), protocol 2
    (tmp_path / "lfw.bin").write_bytes(pickle.dumps(pairs, protocol=2))
    assert tuple(safe_load(tmp_path / "lfw.bin", BYTES_AND_BOOLS, "verification .bin", encoding="bytes")) == pairs

    batch = {"batch_label": "training batch 1 of 5", "labels": [3, 1],
             "data": np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072), "filenames": ["a.png", "b.png"]}
    for i, blob in enumerate((pickle.dumps(batch, protocol=2), _py2_style(pickle.dumps(batch, protocol=2)))):
        (tmp_path / f"data_batch_{i}").write_bytes(blob)
        loaded = safe_load(tmp_path / f"data_batch_{i}", NUMPY_ARRAYS, "CIFAR python batch", encoding="latin1")
        assert loaded["labels"] == [3, 1] and np.array_equal(loaded["data"], batch["data"])


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("payload, allowed, refused", [
    (lambda m: ([_Payload(m)], [True]), BYTES_AND_BOOLS, "system"),
    (lambda m: {"data": _Payload(m)}, NUMPY_ARRAYS, "system"),
    (lambda m: {"data": np.array([_Payload(m)], dtype=object)}, NUMPY_ARRAYS, "objects"),
    (lambda m: {"data": np.array(["x"], dtype=object)}, NUMPY_ARRAYS, "objects"),
    (lambda m: ([np.zeros(2)], [True]), BYTES_AND_BOOLS, "numpy"),  # arrays are not in a .bin
])
def test_anything_else_is_refused_before_it_runs(tmp_path, payload, allowed, refused):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(payload(tmp_path / "pwned"), protocol=2))
    with pytest.raises(DataError, match=refused) as info:
        safe_load(path, allowed, "test file")
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "pwned").exists()


def test_garbage_and_truncated_files_name_the_path(tmp_path):
    (tmp_path / "garbage").write_bytes(os.urandom(200))
    good = pickle.dumps(([b"x"] * 50, [True] * 25), protocol=2)
    (tmp_path / "cut").write_bytes(good[: len(good) // 2])
    for name in ("garbage", "cut"):
        with pytest.raises(DataError, match=name):
            safe_load(tmp_path / name, BYTES_AND_BOOLS, "verification .bin")
    with pytest.raises(FileNotFoundError, match="missing"):
        safe_load(tmp_path / "missing", BYTES_AND_BOOLS, "verification .bin")
