"""The SR task through `archforge search|train|test`, and basicsr's own training script on the derived arch."""

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from core.cli import main

ROOT = Path(__file__).resolve().parents[3]
CONFIG = str(ROOT / "configs/super_resolution/trilevel_x2.yaml")
TINY = ["data.hr_crop=48", "data.patch_size=12", "data.samples_per_epoch=16", "space.num_feat=8",
        "space.path_cells=2", "space.ops_per_cell=2", "strategy.epochs=2", "strategy.steps_per_epoch=1",
        "strategy.warmup_epochs=0", "strategy.batch_size=4", "train.epochs=1", "train.batch_size=16",
        "super_resolution.cost_output=[24,32]", "retrain.baselines=[bicubic]", "super_resolution.side_by_side=2",
        "train.log_every_n_steps=1"]


def _only(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    assert len(found) == 1, found
    return found[0]


@pytest.mark.slow
def test_search_train_test(tmp_path, capsys):
    run = [f"run.dir={tmp_path}"]
    assert main(["search", CONFIG, *TINY, *run, "--no-progress"]) == 0
    run_dir = _only(tmp_path / "trilevel_x2", "*-search")
    for name in ("best_arch.json", "search.json", "searcher.pt", "metrics.json", "searched/model.pt",
                 "searched/sr_metrics.csv", "bicubic/sr_metrics.csv"):
        assert (run_dir / name).is_file(), name
    rows = {r["model"]: r for r in json.loads((run_dir / "metrics.json").read_text())}
    assert rows["bicubic"]["params"] == 0 and rows["searched"]["params"] > 0
    assert 20 < rows["bicubic"]["psnr"] < 60 and 0 < rows["bicubic"]["ssim"] <= 1
    report = json.loads((run_dir / "search.json").read_text())
    assert len(report["history"]) == 2 and report["report"]["out_hw"] == [24, 32]

    best = run_dir / "best_arch.json"
    assert main(["train", CONFIG, *TINY, f"train.arch={best}", *run, "--no-progress"]) == 0
    model_pt = _only(tmp_path / "trilevel_x2", "*-train") / "model.pt"
    test_data = [o for o in TINY if o.startswith(("data.", "super_resolution."))]  # the command line decides the data
    assert main(["test", CONFIG, f"test.checkpoint={model_pt}", *test_data, "--no-progress"]) == 0
    out_dir = model_pt.parent
    with open(out_dir / "sr_metrics.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["image"] for r in table] == ["astronaut", "chelsea", "coffee"]
    assert sorted(p.name for p in (out_dir / "side_by_side").iterdir()) == ["skimage_astronaut.png",
                                                                          "skimage_chelsea.png"]
    assert len(list((out_dir / "sr_images" / "skimage").glob("*.png"))) == 3
    metrics = json.loads((out_dir / "test_metrics.json").read_text())
    assert metrics["psnr"] == pytest.approx(np.mean([float(r["psnr"]) for r in table]))
    assert "psnr" in capsys.readouterr().out


def test_config_errors_name_the_key(tmp_path, capsys):
    assert main(["search", CONFIG, "super_resolution.scale=5", f"run.dir={tmp_path}"]) == 2
    assert "super_resolution.scale" in capsys.readouterr().err
    assert main(["search", CONFIG, "strategy.relaxation=gumbel", f"run.dir={tmp_path}", *TINY[:5]]) == 2
    assert "strategy.relaxation" in capsys.readouterr().err


def test_basicsr_training_script_trains_the_derived_arch(tmp_path, monkeypatch):
    import cv2
    import yaml

    from tasks.super_resolution._basicsr import imresize
    from tasks.super_resolution.basicsr_train import basicsr_options, main as basicsr_main
    from tasks.super_resolution.space import TrilevelSpace

    rng = np.random.default_rng(0)
    (tmp_path / "HR").mkdir(), (tmp_path / "LR").mkdir()
    for i in range(2):
        img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        cv2.imwrite(str(tmp_path / "HR" / f"im{i}.png"), img)
        lr = np.clip(np.round(imresize(img.astype(np.float32) / 255, 0.5) * 255), 0, 255).astype(np.uint8)
        cv2.imwrite(str(tmp_path / "LR" / f"im{i}.png"), lr)
    arch = TrilevelSpace(scale=2, num_feat=8, path_cells=2, ops_per_cell=2).default().to_dict()
    opts = basicsr_options(arch, 2, 8, "HR", "LR", "HR", "LR", name="tiny", gt_size=16, batch_size=2,
                           total_iter=2)
    (tmp_path / "opt.yml").write_text(yaml.safe_dump(opts))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["basicsr_train", "-opt", "opt.yml"])
    basicsr_main()
    state = torch.load(tmp_path / "experiments/tiny/models/net_g_latest.pth", weights_only=True)["params"]
    from tasks.super_resolution.models import TrilevelSRNet

    net = TrilevelSRNet(2, 8, arch)
    keys = net.load_state_dict(state)  # basicsr trained and saved our network
    assert not keys.missing_keys and not keys.unexpected_keys and set(state) == set(net.state_dict())
