"""Hit-Detector ops, spaces and detectors: shapes, the released architecture's parameter count."""

import pytest
import torch

from core.cost import count_params
from tasks.detection import HitDetectorSpace, hit_detector, hit_detector_arch
from tasks.detection.ops import ALL_OPS, PAPER_SUBSPACES, make_op, parse_op


def test_32_candidate_ops_build_and_keep_shapes():
    assert len(ALL_OPS) == 32 and len(set(ALL_OPS)) == 32
    kinds = [parse_op(op)[0] for op in ALL_OPS]
    assert (kinds.count("ir"), kinds.count("sep"), kinds.count("conv")) == (20, 6, 6)
    x = torch.randn(2, 8, 12, 12)
    for op in ALL_OPS:
        same = make_op(op, 8, 8, 1).eval()
        assert same(x).shape == x.shape, op
        assert same.use_residual
        down = make_op(op, 8, 16, 2).eval()
        assert down(x).shape == (2, 16, 6, 6), op
        assert not down.use_residual
    with pytest.raises(ValueError, match="unknown Hit-Detector op"):
        make_op("ir_k9_d1_e6", 8, 8)


def test_released_hit_detector_has_27_123_916_parameters():
    # paper: 27.12M; counted over the official modules (fbnet_hit backbone, SearchPAFPN + HitNeck,
    # MBBlock head + SharedFCBBoxHead(num_fcs=1, fc 512), RPN) at 81 classes (80 + background)
    from core.engine.registry import MODELS

    model = MODELS.build({"name": "hit_detector"}, "model")  # by name; 80 classes + background by default
    assert count_params(model) == 27_123_916
    assert count_params(hit_detector(num_classes=80)) == 27_123_916
    assert model.backbone.body.out_channels == [48, 96, 256, 2048]
    assert model.roi_heads.box_predictor.cls_score.out_features == 81
    assert model.roi_heads.box_predictor.bbox_pred.out_features == 324


def test_space_holds_the_released_arch_and_the_paper_sub_spaces():
    space = HitDetectorSpace()
    assert len(space.choices) == 20 + 8 + 4
    assert space.size() == 8 ** 32
    assert space.default() == space.check(hit_detector_arch())
    for name in space.names:
        assert space.choice(name).options == PAPER_SUBSPACES[name.split(".")[0]]
    full = HitDetectorSpace(candidates="all")
    assert all(len(c) == 32 for c in full.choices)


def test_small_faster_rcnn_and_retinanet_train_and_detect():
    images = [torch.rand(3, 64, 64) for _ in range(2)]
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]]), "labels": torch.tensor([1])}] * 2
    for detector in ("faster_rcnn", "retinanet"):
        space = HitDetectorSpace(num_classes=3, detector=detector, width=0.125, stage_blocks=(1, 1, 2, 1),
                                 head_blocks=1, min_size=64, max_size=64)
        model = space.build(space.default())
        model.train()
        losses = model(images, targets)
        assert all(torch.isfinite(v) for v in losses.values())
        model.eval()
        out = model(torch.stack(images))
        assert len(out) == 2 and out[0]["boxes"].shape[1] == 4
    retina = HitDetectorSpace(detector="retinanet", stage_blocks=(1, 1, 2, 1), head_blocks=1)
    assert "neck.lateral0.op" not in retina and "neck.lateral1.op" in retina
