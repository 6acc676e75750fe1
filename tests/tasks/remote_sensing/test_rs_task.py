"""The remote-sensing task end to end: CLI train/test/search, outputs, loss, replicates, config errors."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import torch.nn.functional as F

from core.cli import main
from core.pipeline import load_task
from core.engine.config import load_config
from core.ops.dgconv import DGConv2d

ROOT = Path(__file__).resolve().parents[3]
RESNET = str(ROOT / "configs/remote_sensing/embedded_resnet18.yaml")
UNET = str(ROOT / "configs/remote_sensing/embedded_unet.yaml")
SEARCH = str(ROOT / "configs/remote_sensing/search_evolution.yaml")
TINY = ["data.size=[48,64]", "data.train_per_class=12", "data.val_per_class=4", "space.width=8", "train.epochs=2",
        "remote_sensing.lr_milestones=[1]", "train.log_every_n_steps=1"]


def _only(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    assert len(found) == 1, found
    return found[0]


@pytest.mark.slow
def test_train_then_test_writes_maps_plots_and_the_static_network(tmp_path, capsys):
    assert main(["train", RESNET, *TINY, f"run.dir={tmp_path}", "--no-progress"]) == 0
    run = _only(tmp_path / "embedded_resnet18", "*-train")
    # test and export take the data from the command line (the tiny scene), the network from the checkpoint
    assert main(["test", RESNET, *TINY, f"test.checkpoint={run / 'model.pt'}", "--no-progress"]) == 0
    assert main(["export", RESNET, *TINY, f"export.checkpoint={run / 'model.pt'}", "--no-progress"]) == 0
    metrics = json.loads((run / "test_metrics.json").read_text())
    assert 0 <= metrics["oa"] <= 1 and 0 <= metrics["aa"] <= 1 and -1 <= metrics["kappa"] <= 1
    assert metrics["static_max_diff"] < 1e-5 and metrics["static_onnx_diff"] < 1e-5
    assert metrics["static_params"] < metrics["params"]
    for name in ("class_map.png", "confusion_matrix.png", "groups_per_layer.png", "static_model.onnx", "model.onnx"):
        assert (run / name).stat().st_size > 0, name
    with rasterio.open(run / "class_map.tif") as out:
        classes = out.read(1)
        assert out.crs.to_epsg() == 32616 and out.transform.c == 298000.0 and out.transform.a == 1.0
        assert classes.shape == (48, 64) and 1 <= classes.min() and classes.max() <= 8 and out.colormap(1)[1][3] == 255
    groups = list(csv.DictReader((run / "groups.csv").open()))
    assert len(groups) == 17 and all(int(g["blocks"]) >= 1 for g in groups)
    per_class = list(csv.DictReader((run / "per_class.csv").open()))
    assert [r["name"] for r in per_class][:2] == ["grass", "trees"]


def test_loss_is_class_weighted_cross_entropy_plus_the_weighted_regulariser_and_falls():
    cfg = load_config(RESNET, TINY + ["remote_sensing.regularizer_weight=1e-6"])
    task = load_task(cfg)
    data = task.data()
    counts = torch.tensor(data.train_counts, dtype=torch.float32)
    assert torch.allclose(data.class_weights(), 1 - counts / counts.sum())
    torch.manual_seed(0)
    model = task.space(data).build(task.space(data).default())
    x, y = next(iter(task.loader(data.train, 32, shuffle=True)))
    loss, parts = task.loss(model, (x, y))
    reg = sum(2.0 ** (m.K + float(((torch.sign(m.gate) + 1) / 2).sum())) for m in model.modules()
              if isinstance(m, DGConv2d))
    model_out = model(x)
    ce = F.cross_entropy(model_out, y, weight=data.class_weights())
    assert parts["regularizer"] == pytest.approx(reg) and float(loss) == pytest.approx(float(ce) + 1e-6 * reg, rel=1e-4)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    first = float(loss)
    for _ in range(25):
        loss, _ = task.loss(model, (x, y))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 0.5 * first


@pytest.mark.slow
def test_unet_on_tiles_trains_and_writes_the_map(tmp_path):
    tiny = ["data.size=[48,64]", "data.tile_size=16", "data.tile_stride=8", "data.train_per_class=40",
            "space.width=4", "train.epochs=1", "train.log_every_n_steps=1"]
    assert main(["train", UNET, *tiny, f"run.dir={tmp_path}", "--no-progress"]) == 0
    run = _only(tmp_path / "embedded_unet", "*-train")
    assert main(["test", UNET, *tiny, f"test.checkpoint={run / 'model.pt'}", "--no-progress"]) == 0
    metrics = json.loads((run / "test_metrics.json").read_text())
    assert 0 <= metrics["oa"] <= 1 and metrics["static_max_diff"] < 1e-5
    with rasterio.open(run / "class_map.tif") as out:
        assert out.read(1).shape == (48, 64) and out.crs.to_epsg() == 32616


@pytest.mark.slow
def test_evolution_search_then_retrain_against_the_hand_set_network(tmp_path):
    args = [*TINY, "search.budget=3", "evaluator.epochs=1", "train.epochs=1", "objective.constraints=[macs<=1e6]",
            "retrain.baselines=[dgconv]", f"run.dir={tmp_path}", "--no-progress"]
    assert main(["search", SEARCH, *args]) == 0
    run = _only(tmp_path / "search_evolution", "*-search")
    best = json.loads((run / "best_arch.json").read_text())
    rows = {r["model"]: r for r in json.loads((run / "metrics.json").read_text())}
    assert set(rows) == {"searched", "dgconv"} and rows["searched"]["macs"] <= 1e6 < rows["dgconv"]["macs"]
    assert best["conv"] in ("dgconv", "plain", "fgconv")


def test_replicates_table_gives_mean_and_std(tmp_path):
    from tasks.remote_sensing.replicates import run_replicates

    cfg = load_config(RESNET, TINY + ["train.epochs=1", f"run.dir={tmp_path}"])
    rows, summary = run_replicates(cfg, ["fgconv"], [3, 4], tmp_path, outputs=False, log=lambda s: None)
    assert [r["seed"] for r in rows] == [3, 4] and summary[0]["runs"] == 2
    oa = [r["oa"] for r in rows]
    assert summary[0]["oa_mean"] == pytest.approx(np.mean(oa)) and summary[0]["oa_std"] == pytest.approx(np.std(oa, ddof=1))
    assert "±" in summary[0]["oa"] and (tmp_path / "per_replicate.csv").is_file()


def test_config_mistakes_end_with_one_line(tmp_path, capsys):
    muufl = str(ROOT / "configs/remote_sensing/muufl.yaml")
    assert main(["train", muufl, f"run.dir={tmp_path}", "--no-progress"]) == 2
    assert capsys.readouterr().err.strip() == ("archforge train: error: data.root: set it to the folder that holds "
                                               "the files, e.g. data.root=/data/muufl")
    assert main(["train", muufl, f"data.root={tmp_path}", f"run.dir={tmp_path}", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "data.sources[0].path: file not found" in err and "hsi_data.mat" in err
    assert main(["train", RESNET, *TINY, "train.scheduler=steps", f"run.dir={tmp_path}", "--no-progress"]) == 2
    assert "train.scheduler: expected one of cosine, none, multistep, got 'steps'" in capsys.readouterr().err
