"""The CLI end to end on the embedded tiles: train a teacher, distil a student from it (grid, per-image CSV,
costs), export it to ONNX checked in onnxruntime, search U-Nets under a MACs limit; config mistakes end in
one line."""

import csv
import json

import pytest

from core.cli import main

CONFIGS = "configs/image_translation"
FAST = ["image_translation.max_steps=6", "train.epochs=1", "image_translation.grid=3", "image_translation.latency=false"]


def latest(root, name):
    runs = sorted((root / name).iterdir())
    return runs[-1]


@pytest.mark.slow
def test_teacher_distillation_test_export_and_search(tmp_path, capsys):
    out = [f"run.dir={tmp_path}"]
    assert main(["train", f"{CONFIGS}/pix2pix_teacher.yaml", *out, *FAST]) == 0
    teacher = latest(tmp_path, "pix2pix_teacher")
    assert (teacher / "checkpoints" / "epoch_001.pt").is_file() and (teacher / "model.pt").is_file()
    assert main(["train", f"{CONFIGS}/distill_pu.yaml", *out, *FAST,
                 f"image_translation.distill.teacher={teacher / 'model.pt'}"]) == 0
    student = latest(tmp_path, "distill_pu")
    history = json.loads((student / "train_history.json").read_text())["history"][0]
    assert {"kd_0:l1", "kd_2:gram", "d_loss", "g_adv", "l1_target"} <= set(history)
    assert main(["test", f"{CONFIGS}/distill_pu.yaml", f"test.checkpoint={student / 'model.pt'}",
                 f"image_translation.distill.teacher={teacher / 'model.pt'}"]) == 0  # the command line's options
    rows = list(csv.DictReader((student / "metrics_per_image.csv").open()))
    assert len(rows) == 72 and set(rows[0]) == {"image", "psnr", "ssim"}
    costs = json.loads((student / "costs.json").read_text())
    assert [c["model"] for c in costs] == ["teacher", "student"] and costs[0]["macs"] > 10 * costs[1]["macs"]
    metrics = json.loads((student / "test_metrics.json").read_text())
    assert {"psnr", "ssim", "fd_photo_classifier", "kd_photo_classifier"} <= set(metrics) and "fid" not in metrics
    assert (student / "grid.png").is_file()
    assert main(["export", f"{CONFIGS}/distill_pu.yaml", f"export.checkpoint={student / 'model.pt'}"]) == 0
    assert "ok" in capsys.readouterr().out and (student / "model.onnx").is_file()
    assert main(["search", f"{CONFIGS}/unet_search.yaml", *out, *FAST, "search.budget=2", "evaluator.steps=3",
                 "image_translation.metrics.feature_extractor=null"]) == 0
    search = latest(tmp_path, "unet_search")
    best = json.loads((search / "best_arch.json").read_text())
    assert "depth" in best and (search / "searched" / "model.pt").is_file()
    assert json.loads((search / "metrics.json").read_text())[0]["macs"] <= 1.9e6


@pytest.mark.parametrize("override, message", [
    ("image_translation.gan_loss=wgan", "image_translation.gan_loss: expected one of vanilla, lsgan, pu, pu_lsgan"),
    ("image_translation.prior.mode=linear", "image_translation.prior: prior.mode"),
    ("image_translation.distill.teacher=/nowhere/model.pt", "checkpoint not found: /nowhere/model.pt"),
    ("data.direction=sideways", "data.direction: expected AtoB or BtoA"),
])
def test_config_mistakes_end_in_one_line(tmp_path, capsys, override, message):
    config = "distill.yaml" if "distill" in override else "pix2pix_student.yaml"
    assert main(["train", f"{CONFIGS}/{config}", f"run.dir={tmp_path}", *FAST, override]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
