"""The operator configs through the CLI on a tiny shapes32, and the generated set itself."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from core.cli import main
from core.engine.registry import ConfigError
from core.ops.quant import BinaryConv2d
from core.zoo.resnet import ResNetSpace
from tasks.classification.data import shapes32
from tasks.classification.shapes import SHAPE_CLASSES, draw_image
from tasks.classification.task import ClassificationTask

ROOT = Path(__file__).resolve().parents[3]
TINY = ["data.train=40", "data.val=20", "data.test=20", "train.epochs=2", "train.batch_size=16"]


@pytest.fixture(autouse=True)
def data_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHFORGE_DATA", str(tmp_path / "data"))


def test_shapes32_is_deterministic_balanced_and_cached(tmp_path):
    assert np.array_equal(draw_image(0, 1, 7, 3), draw_image(0, 1, 7, 3))
    assert not np.array_equal(draw_image(0, 1, 7, 3), draw_image(1, 1, 7, 3))
    d = shapes32(train=30, val=20, test=20)
    assert d.num_classes == len(SHAPE_CLASSES) == 10 and d.input_shape == (3, 32, 32)
    assert np.bincount(d.train.labels.numpy()).tolist() == [3] * 10
    cached = list((tmp_path / "data" / "classification").glob("shapes32-*.npz"))
    assert len(cached) == 1
    again = shapes32(train=30, val=20, test=20)
    assert torch.equal(again.test.images, d.test.images)
    x, y = d.test[0]
    assert x.shape == (3, 32, 32) and abs(float(d.train.images.float().mean() / 255 - d.train.mean.mean())) < 1e-3
    with pytest.raises(ConfigError, match="data.train: expected at least 10 images"):
        shapes32(train=5)


def _train(tmp_path, config: str, *extra: str) -> Path:
    assert main(["train", str(ROOT / "configs/classification" / config), *TINY, *extra,
                 f"run.dir={tmp_path}", "--no-progress"]) == 0
    found = sorted(tmp_path.glob("*/*-train/model.pt"))
    assert len(found) == 1
    return found[0]


@pytest.mark.slow
def test_widened_binary_resnet_is_squeezed_during_training_and_reloads(tmp_path):
    model_pt = _train(tmp_path, "qnn_widen_squeeze.yaml", "space.depth=8", "train.epochs=4")
    assert (model_pt.parent / "widened").is_dir()
    assert main(["test", str(ROOT / "configs/classification/qnn_widen_squeeze.yaml"), f"test.checkpoint={model_pt}",
                 "space.depth=8", *TINY[:3], "--no-progress"]) == 0
    metrics = json.loads((model_pt.parent / "test_metrics.json").read_text())
    assert 0 <= metrics["accuracy"] <= 1
    space = ResNetSpace(depth=8, conv={"name": "binary_conv"}, widen=4, squeeze=0.5)
    block = space.build(space.default()).stages[1][0]
    assert isinstance(block.conv1, BinaryConv2d) and block.conv1.out_channels == 64  # 32 x 4 x 0.5


@pytest.mark.slow
@pytest.mark.parametrize("config,extra", [
    ("disout_resnet.yaml", ["space.depth=8"]),
    ("epitome_mobilenet.yaml", []),
    ("pnasnet5.yaml", ["space.num_cells=1", "space.filters=4"]),
])
def test_operator_configs_train(tmp_path, config, extra):
    model_pt = _train(tmp_path, config, *extra)
    assert model_pt.is_file()


def test_published_archs_resolve_by_name():
    from core.zoo.hournas import hournas_space
    from core.zoo.pnasnet import PNASSpace

    task = ClassificationTask({"objective": {"constraints": []}})
    space = hournas_space("cifar10")
    assert task.baseline("hournas_f", space, None) == space.named_archs["hournas_f"]
    pnas = PNASSpace("small")
    assert task.baseline("pnasnet5", pnas, None) == pnas.named_archs["pnasnet5"]
    with pytest.raises(ConfigError, match="pnasnet5"):
        task.baseline("nope", pnas, None)
