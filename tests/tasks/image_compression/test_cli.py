"""The image compression task through `archforge train|test|export|profile|search` on tiny data."""

import csv
import json
from pathlib import Path

import pytest
import torch

from core.cli import main

ROOT = Path(__file__).resolve().parents[3]
SEARCH = str(ROOT / "configs/image_compression/search_hyperprior.yaml")
DISCERNIBLE = str(ROOT / "configs/image_compression/discernible.yaml")
TINY = ["data.patch_size=32", "data.samples_per_epoch=8", "data.train=[coins]", "data.val=[text]",
        "data.test=[text]", "data.downstream={size: 32, train: 12, val: 6, test: 6}",
        "image_compression.classifier={name: resnet18, kwargs: {num_classes: 6}}",
        "image_compression.perception.layers=[layer1]", "image_compression.cost_size=[64,64]",
        "image_compression.jpeg_qualities=[10,60]", "image_compression.webp_qualities=[10,60]",
        "image_compression.side_by_side=1", "space.channels=[8]", "space.latent_channels=[8,12]", "space.depth=[2]",
        "space.hyper_channels=[8]", "train.epochs=1", "train.batch_size=4", "train.log_every_n_steps=1",
        "profile.repeats=2"]


@pytest.fixture(autouse=True)
def _cache(monkeypatch, tmp_path):
    monkeypatch.setenv("ARCHFORGE_DATA", str(tmp_path / "cache"))


def _only(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    assert len(found) == 1, found
    return found[0]


@pytest.mark.slow
def test_train_test_export_profile_with_the_perception_term(tmp_path, capsys):
    run = [f"run.dir={tmp_path}"]
    assert main(["train", DISCERNIBLE, *TINY, *run, "--no-progress"]) == 0
    run_dir = _only(tmp_path / "discernible", "*-train")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["val_bpp"] > 0 and metrics["val_psnr"] > 5 and "val_rd_cost" in metrics
    assert (run_dir / "tb").is_dir()

    model_pt = run_dir / "model.pt"
    assert main(["test", DISCERNIBLE, *TINY, f"test.checkpoint={model_pt}", "--no-progress"]) == 0
    test = json.loads((run_dir / "test_metrics.json").read_text())
    with open(run_dir / "compression_metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["image"] for r in rows] == ["text"]
    assert test["bpp"] == pytest.approx(float(rows[0]["bpp"]))
    assert 0 <= test["accuracy"] <= 1 and 0 <= test["accuracy_original"] <= 1
    assert "jpeg_saving" in test and "webp_saving" in test
    for name in ("rd_psnr.png", "rd_ms_ssim.png", "rate_accuracy.png", "side_by_side/text.png", "curves.json"):
        assert (run_dir / name).is_file(), name
    curves = json.loads((run_dir / "curves.json").read_text())
    assert [p["quality"] for p in sorted(curves["JPEG"], key=lambda p: p["quality"])] == [10, 60]

    # the saved model decodes what it encodes, and the bpp of the table is the stream's
    payload = torch.load(model_pt, weights_only=True)
    from core.api import Arch
    from tasks.image_compression.space import CodecSpace

    codec = CodecSpace(channels=[8], latent_channels=[8, 12], depth=[2], hyper_channels=[8]).build(
        Arch(payload["arch"]))
    codec.load_state_dict(payload["state_dict"])
    from tasks.image_compression.data import embedded_photo, to_tensor

    image = to_tensor(embedded_photo("text"))
    data = codec.compress(image)
    assert 8 * len(data) / (image.shape[1] * image.shape[2]) == pytest.approx(test["bpp"])

    assert main(["export", DISCERNIBLE, *TINY, f"export.checkpoint={model_pt}", "--no-progress"]) == 0
    assert (run_dir / "model.onnx").is_file() and (run_dir / "model.ts").is_file()
    assert main(["profile", DISCERNIBLE, *TINY, "--no-progress"]) == 0
    assert "macs" in capsys.readouterr().out


SEARCH_YAML = """
_base_: {base}
space: {{name: codec, prior: hyperprior, channels: [8, 64], latent_channels: [8, 12], depth: [2],
        hyper_channels: [8]}}
objective: {{metric: psnr_at_bpp, direction: max, constraints: ["macs <= 5e6"]}}
strategy: {{name: random}}
evaluator: {{name: codec_rd, lambdas: [0.005, 0.05], steps: 3, target_bpp: 0.5}}
search: {{budget: 2}}
retrain: {{enabled: false}}
"""


@pytest.mark.slow
def test_search_under_a_macs_limit(tmp_path):
    config = tmp_path / "tiny_search.yaml"
    config.write_text(SEARCH_YAML.format(base=ROOT / "configs/image_compression/_base_.yaml"))
    overrides = [o for o in TINY if not o.startswith("space.")]
    assert main(["search", str(config), *overrides, f"run.dir={tmp_path}", "--no-progress"]) == 0
    run_dir = _only(tmp_path / "tiny_search", "*-search")
    best = json.loads((run_dir / "best_arch.json").read_text())
    assert best["channels"] == 8  # N = 64 breaks the MACs limit and is never trained
    report = json.loads((run_dir / "search.json").read_text())
    metrics = report["best_metrics"]
    assert metrics["macs"] <= 5e6 and "psnr@0.005" in metrics and "psnr_at_bpp" in metrics
    assert metrics["bpp@0.005"] > 0


@pytest.mark.slow
def test_the_shipped_search_config_builds_its_space_and_evaluator():
    from core.engine.config import load_config
    from core.engine.registry import EVALUATORS
    from core.pipeline import load_task

    cfg = load_config(SEARCH, ["data.train=[coins]", "data.val=[text]", "data.test=[text]", "data.downstream=null",
                               "image_compression.cost_size=[128,192]"])  # 1/16 of 512 x 768: MACs / 16
    task = load_task(cfg)
    data = task.data()
    space = task.space(data)
    evaluator = EVALUATORS.build(cfg["evaluator"], "evaluator", space=space, data=data)
    assert space.cost_size == (128, 192) and len(space.choices) == 4
    big = evaluator.cost_metrics(space.check({"channels": 128, "latent_channels": 192, "depth": 4,
                                              "hyper_channels": 128}))
    small = evaluator.cost_metrics(space.default())
    # the paper's widths break the config's limit at 512 x 768, the default fits
    assert big["macs"] * 16 > 12e9 > small["macs"] * 16
