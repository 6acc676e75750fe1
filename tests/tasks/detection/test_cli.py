"""`archforge search|test` on the detection task, and the mmdetection registry bridge."""

import json

import pytest
import torch

from core.cli import main

TINY = ["data.image_size=64", "data.train=12", "data.val=4", "data.test=4", "space.width=0.125",
        "space.stage_blocks=[1,1,2,1]", "space.head_blocks=1", "space.candidates.backbone=[ir_k3_d1_e1,ir_k5_d1_e3]",
        "space.candidates.neck=[sep_k3_d1,conv_k3_d1]", "space.candidates.head=[conv_k3_d1,ir_k3_d1_e1]",
        "space.detector_kwargs.box_batch_size_per_image=16", "space.detector_kwargs.rpn_post_nms_top_n_test=20",
        "space.detector_kwargs.rpn_pre_nms_top_n_test=50", "strategy.epochs=1", "strategy.arch_start_epoch=0",
        "strategy.steps_per_epoch=1",
        "strategy.batch_size=4", "train.epochs=1", "train.batch_size=4", "detection.warmup_steps=1",
        "detection.draw=2", "retrain.baselines=[]"]


@pytest.mark.slow
def test_search_retrain_and_test_write_detections_map_table_and_grid(tmp_path):
    args = TINY + [f"run.dir={tmp_path}", f"data.root={tmp_path / 'shapes'}"]
    assert main(["search", "configs/detection/hitdet_shapes.yaml", *args, "--no-progress"]) == 0
    run = next((tmp_path / "hitdet_shapes").iterdir())
    assert (run / "best_arch.json").is_file() and (run / "searcher.pt").is_file()
    ckpt = run / "searched" / "model.pt"
    assert main(["test", "configs/detection/hitdet_shapes.yaml", f"test.checkpoint={ckpt}", "--no-progress"]) == 0
    records = json.loads((run / "searched" / "detections_test.json").read_text())
    assert all(set(r) == {"image_id", "category_id", "bbox", "score"} for r in records)
    assert "AP50" in (run / "searched" / "map_table.md").read_text()
    assert (run / "searched" / "detections.png").stat().st_size > 1000
    metrics = json.loads((run / "searched" / "test_metrics.json").read_text())
    assert {"AP", "AP50", "params", "macs"} <= set(metrics)


def test_config_mistakes_are_one_line_errors(tmp_path, capsys):
    args = TINY[:4] + [f"run.dir={tmp_path}", f"data.root={tmp_path / 'shapes'}"]
    assert main(["search", "configs/detection/hitdet_shapes.yaml", *args, "space.detector=yolo"]) == 2
    assert "space.detector" in capsys.readouterr().err
    assert main(["search", "configs/detection/hitdet_shapes.yaml", *args, "space.candidates.neck=[sep_k9_d1]"]) == 2
    assert "space.candidates.neck" in capsys.readouterr().err


def test_mmdet_registry_bridge_builds_from_an_mmdet_config_dict():
    pytest.importorskip("mmdet.registry", reason="mmdetection is not installed")
    from mmdet.registry import MODELS

    from tasks.detection.bridges.mmdet import (
        HitDetBackbone,
        HitDetPAFPN,
        build_from_cfg,
        released_in_channels,
    )

    assert MODELS.module_dict["HitDetBackbone"] is HitDetBackbone
    assert MODELS.module_dict["HitDetPAFPN"] is HitDetPAFPN
    cfg = {"backbone": {"type": "HitDetBackbone", "arch": "hit_detector", "width": 0.125},
               "neck": {"type": "HitDetPAFPN", "in_channels": released_in_channels(0.125), "out_channels": 32}}
    try:  # a working mmdetection (mmcv with compiled ops): the registry's own build by name
        import mmdet.models  # noqa: F401

        build = MODELS.build
    except ImportError:  # mmcv-lite: the same lookup without importing mmdet.models
        build = build_from_cfg
    backbone, neck = build(cfg["backbone"]), build(cfg["neck"])
    feats = backbone(torch.zeros(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == released_in_channels(0.125)
    outs = neck(feats)
    assert [o.shape[-1] for o in outs] == [16, 8, 4, 2, 1] and all(o.shape[1] == 32 for o in outs)
    full = HitDetBackbone()  # the released backbone: C2..C5 = 48, 96, 256, 2048
    assert full.out_channels == [48, 96, 256, 2048]
