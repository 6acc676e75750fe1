"""Every registered task passes the same checks through the task contract, from a shipped config on tiny data:
data, space, build, one training step, score, export, profile, and a 3-evaluation sample-based search with the
core's train evaluator. A new task package adds its row to CASES (the first test fails until it does)."""

from __future__ import annotations

import importlib
import math
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

#: task -> (a shipped config, overrides that make it tiny); `{tmp}` is replaced by a scratch folder
CASES = {
    "classification": ("configs/classification/quickstart.yaml", [
        "evaluator.epochs=1", "evaluator.sample_ratio=0.1"]),
    "detection": ("configs/detection/random_hitdet.yaml", [
        "data.image_size=64", "data.train=8", "data.val=4", "data.test=4", "data.root={tmp}/shapes",
        "space.width=0.125", "space.stage_blocks=[1,1,2,1]", "space.head_blocks=1",
        "space.candidates.backbone=[ir_k3_d1_e1,ir_k5_d1_e3]", "space.candidates.neck=[sep_k3_d1,conv_k3_d1]",
        "space.candidates.head=[conv_k3_d1,ir_k3_d1_e1]", "space.detector_kwargs.box_batch_size_per_image=16",
        "space.detector_kwargs.rpn_post_nms_top_n_test=20", "space.detector_kwargs.rpn_pre_nms_top_n_test=50",
        "evaluator.epochs=1", "evaluator.batch_size=4", "evaluator.val_batch_size=4"]),
    "super_resolution": ("configs/super_resolution/evolution_psnr.yaml", [
        "data.hr_crop=48", "data.patch_size=12", "data.samples_per_epoch=16", "space.num_feat=8",
        "space.ops_per_cell=2", "super_resolution.cost_output=[24,32]", "evaluator.epochs=1",
        "evaluator.batch_size=8"]),
    "face_recognition": ("configs/face_recognition/tpe_pocketnet.yaml", [
        "data.identities=6", "data.images_per_identity=4", "data.pairs=20", "data.image_size=16",
        "data.cache_dir={tmp}/faces", "space.C=4", "space.layers=3", "evaluator.epochs=1", "evaluator.batch_size=8"]),
    "image_compression": ("configs/image_compression/search_hyperprior.yaml", [
        "data.patch_size=32", "data.samples_per_epoch=8", "data.train=[coins]", "data.val=[text]",
        "data.test=[text]", "data.downstream={size: 32, train: 12, val: 6, test: 6}",
        "image_compression.classifier={name: resnet18, kwargs: {num_classes: 6}}",
        "image_compression.cost_size=[64,64]", "space.channels=[8]", "space.latent_channels=[8,12]",
        "space.depth=[2]", "space.hyper_channels=[8]", "evaluator.lambdas=[0.005,0.05]", "evaluator.steps=3"]),
    "remote_sensing": ("configs/remote_sensing/search_evolution.yaml", [
        "data.size=[48,64]", "data.train_per_class=12", "data.val_per_class=4", "space.width=8",
        "evaluator.epochs=1", "evaluator.batch_size=16"]),
    "image_translation": ("configs/image_translation/unet_search.yaml", [
        "evaluator.steps=2", "evaluator.batch_size=4"]),
}


def registered_tasks() -> list[str]:
    from core.engine.registry import TASKS

    for package in sorted((ROOT / "tasks").iterdir()):
        if (package / "__init__.py").is_file():
            importlib.import_module(f"tasks.{package.name}")
    return TASKS.names()


def setup_of(task: str, tmp_path):
    from core.engine.config import load_config
    from core.pipeline import Setup

    config, overrides = CASES[task]
    cfg = load_config(ROOT / config, [o.replace("{tmp}", str(tmp_path)) for o in overrides]
                      + [f"run.dir={tmp_path}/runs"])
    return Setup.of(cfg)


def test_every_registered_task_has_a_conformance_case():
    assert sorted(CASES) == registered_tasks()


@pytest.mark.slow
@pytest.mark.parametrize("task", sorted(CASES))
def test_task_contract(task, tmp_path):
    from core.engine.export import export_model
    from core.pipeline import cost_row
    from core.search import Search
    from core.journal import Journal
    from core.objective import Objective
    from core.strategies import RandomSearch

    torch.manual_seed(0)
    setup = setup_of(task, tmp_path)
    contract, data, space = setup.task, setup.data, setup.space
    assert contract.name == task and len(data.train) > 0 and len(data.val) > 0 and len(data.test) > 0
    assert contract.primary_metric in contract.metrics or not contract.metrics

    # build, one training step through the contract
    arch = space.check(space.sample(__import__("random").Random(0)))
    model = setup.build(arch)
    trainable = contract.trainable(model, data)
    batch = next(iter(contract.loader(data.train, 4, shuffle=True)))
    trainable.train()
    loss, logs = contract.loss(trainable, batch)
    assert loss.dim() == 0 and math.isfinite(float(loss)) and isinstance(logs, dict)
    before = [p.detach().clone() for p in trainable.parameters() if p.requires_grad]
    loss.backward()
    torch.optim.SGD([p for p in trainable.parameters() if p.requires_grad], lr=1e-3).step()
    after = [p.detach() for p in trainable.parameters() if p.requires_grad]
    assert any(not torch.equal(a, b) for a, b in zip(before, after)), "one step changed no weight"

    # score on the validation split: the primary metric, finite
    model.eval()
    scores = contract.score(model, contract.loader(data.val, 4))
    assert math.isfinite(scores[contract.primary_metric])

    # profile and export
    example = contract.example_input(data)
    row = cost_row(model, example, latency=True, repeats=2)
    assert row["params"] > 0 and row["macs"] > 0 and row["latency_ms"] > 0
    if task != "detection":  # torchvision's two-stage detectors do not trace to ONNX here
        rows = export_model(model.eval(), example, tmp_path / "export", ["onnx"])
        assert rows[0]["check"] == "ok", rows

    # a 3-evaluation sample-based search with the config's evaluator
    objective = Objective.from_config(**setup.cfg["objective"])
    journal = Journal(tmp_path / "journal.sqlite")
    try:
        summary = Search(space, RandomSearch(space, seed=0), setup.evaluator(), objective, journal, budget=3,
                         progress=False).run()
    finally:
        journal.close()
    evaluated = [r for _, r in summary.trials if r.status != "infeasible"]
    assert len(evaluated) == 3
    assert all(r.ok for r in evaluated), [r.reason for r in evaluated]
    assert all(math.isfinite(r.metrics[objective.metric]) for r in evaluated)
    assert summary.best_arch is not None


@pytest.mark.slow
@pytest.mark.parametrize("task", sorted(CASES))
def test_shipped_sample_based_search_runs_from_the_cli(task, tmp_path):
    import json
    import sqlite3

    from core.cli import main

    config, overrides = CASES[task]
    args = [o.replace("{tmp}", str(tmp_path)) for o in overrides]
    assert main(["search", str(ROOT / config), *args, "search.budget=2", "retrain.enabled=false",
                 f"run.dir={tmp_path}/runs", "--no-progress"]) == 0
    run = next((tmp_path / "runs").glob("*/*-search"))
    summary = json.loads((run / "search.json").read_text())
    assert summary["evaluations"] == 2 and summary["failed"] == 0 and summary["best_arch_key"]
    with sqlite3.connect(run / "journal.sqlite") as db:
        statuses = [s for (s,) in db.execute("select status from trials")]
    assert statuses.count("ok") == 2
