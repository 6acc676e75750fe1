"""Distributed data-parallel training through Lightning: two CPU processes (gloo), end to end through the CLI."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core.engine.lightning import relaunches_command

ROOT = Path(__file__).resolve().parents[3]
QUICK = str(ROOT / "configs/classification/quickstart.yaml")
TRAIN_IMAGES = 1079  # the digits training split


def _train(tmp_path, *overrides):
    env = {k: v for k, v in os.environ.items() if k not in ("ARCHFORGE_RUN_DIR", "LOCAL_RANK", "RANK", "NODE_RANK")}
    env.update(PYTHONPATH=str(ROOT), ARCHFORGE_NO_PROGRESS="1", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "core.cli", "train", QUICK, f"run.dir={tmp_path}",
                           "train.arch=mobilenetv2", "train.epochs=2", "train.batch_size=16", "train.accelerator=cpu",
                           *overrides], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_trains_the_classifier_end_to_end(tmp_path):
    proc = _train(tmp_path, "train.strategy=ddp", "train.devices=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted((tmp_path / "quickstart").glob("*-train"))
    assert len(runs) == 1, runs  # the second process wrote into its parent's run folder
    run_dir = runs[0]
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    # each of the two processes saw half of the images per epoch (DistributedSampler): half the optimizer steps
    assert ckpt["global_step"] == 2 * math.ceil(math.ceil(TRAIN_IMAGES / 2) / 16)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["val_accuracy"] > 0.3  # two short epochs on digits, well above chance (0.1)
    assert (run_dir / "model.pt").is_file()


def test_which_strategies_re_run_the_command():
    assert relaunches_command({"strategy": "ddp", "devices": 2, "num_nodes": 1})
    assert relaunches_command({"strategy": "ddp", "devices": 1, "num_nodes": 2})
    assert not relaunches_command({"strategy": "ddp_spawn", "devices": 2, "num_nodes": 1})
    assert not relaunches_command({"strategy": "ddp", "devices": 1, "num_nodes": 1})
    assert not relaunches_command({"strategy": "auto", "devices": 4, "num_nodes": 1})


@pytest.mark.slow
def test_a_search_that_retrains_with_relaunching_ddp_is_refused_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "core.cli", "search", QUICK, f"run.dir={tmp_path}",
                           "train.strategy=ddp", "train.devices=2"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "train.strategy: 'ddp' re-runs the command" in lines[0]
