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


def test_head_channels_and_head_blocks_set_the_box_head_width():
    kw = {"num_classes": 3, "width": 0.25, "stage_blocks": (1, 1, 2, 1), "fpn_channels": 128, "fc_channels": 256,
          "min_size": 64, "max_size": 64}
    full = HitDetectorSpace(**kw).build(HitDetectorSpace(**kw).default()).roi_heads.box_head
    narrow_space = HitDetectorSpace(head_channels=64, **kw)  # 64 x 0.25 = 16 channels
    narrow = narrow_space.build(narrow_space.default()).roi_heads.box_head
    none_space = HitDetectorSpace(head_blocks=0, **kw)
    none = none_space.build(none_space.default()).roi_heads.box_head
    assert full.fc.in_features == 32 * 49 and narrow.fc.in_features == 16 * 49 and none.fc.in_features == 32 * 49
    assert not any(n.startswith("head.") for n in none_space.names)
    first, rest = narrow.blocks[0], narrow.blocks[1]
    assert not first.use_residual and rest.use_residual
    rois = torch.randn(5, 32, 7, 7)
    for head in (full, narrow, none):
        assert head.eval()(rois).shape == (5, 64)
    from core.cost import count_macs

    assert count_macs(narrow, rois[:1]) < count_macs(full, rois[:1])
    with pytest.raises(Exception, match="head_channels"):
        HitDetectorSpace(head_channels=0)


def test_official_init_follows_the_released_code_and_torch_is_the_default():
    from torch import nn

    from tasks.detection.models import init_weights

    kw = {"num_classes": 3, "width": 0.25, "stage_blocks": (1, 1, 2, 1), "min_size": 64, "max_size": 64}
    space = HitDetectorSpace(init="official", **kw)
    torch.manual_seed(0)
    model = space.build(space.default())
    conv = next(m for m in model.backbone.body.modules() if isinstance(m, nn.Conv2d) and m.groups == 1
                and m.weight[0].numel() > 1 and m.weight.shape[0] >= 64)
    fan_out = conv.weight.shape[0] * conv.weight[0, 0].numel()
    assert abs(float(conv.weight.detach().std()) / (2 / fan_out) ** 0.5 - 1) < 0.25  # kaiming normal, fan_out, ReLU
    pa = model.backbone.neck.pa_convs[0]
    bound = (6 / (pa.weight[0].numel() + pa.weight.shape[0] * pa.weight[0, 0].numel())) ** 0.5
    assert float(pa.weight.detach().abs().max()) <= bound and float(pa.bias.detach().abs().max()) == 0  # xavier uniform, bias 0
    assert float(model.roi_heads.box_head.fc.bias.abs().max()) == 0
    default = HitDetectorSpace(**kw)
    assert default.init == "torch"
    torch.manual_seed(0)
    plain = default.build(default.default())
    assert float(plain.backbone.neck.pa_convs[0].bias.abs().max()) > 0  # PyTorch's default init keeps a bias
    init_weights(plain.backbone.body, plain.backbone.neck, plain.roi_heads.box_head)
    assert float(plain.backbone.neck.pa_convs[0].bias.abs().max()) == 0
    with pytest.raises(Exception, match="space.init"):
        HitDetectorSpace(init="xavier")


def test_residual_backbone_blocks_start_as_the_identity_by_default():
    # zero_init_residual (default): the last BN of every residual backbone op starts at weight 0, so each
    # residual block is the identity at init (trained from scratch with weight 1, the searched backbone's
    # gradient norm started at 50-200 and the clip at 35 cut the first steps; docs/benchmarks.md, Detection)
    from torch import nn

    from tasks.detection.baselines import mobilenetv2_fpn_faster_rcnn
    from tasks.detection.ops import _Residual

    kw = {"num_classes": 3, "width": 0.25, "head_blocks": 2, "min_size": 64, "max_size": 64}

    def ops(module):
        return [m for m in module.modules() if isinstance(m, _Residual)]

    def last_bn(op):
        return [b for b in op.body.modules() if isinstance(b, nn.BatchNorm2d)][-1]

    space = HitDetectorSpace(**kw)
    assert space.zero_init_residual
    model = space.build(space.default()).train()
    body = model.backbone.body
    residual = [op for op in ops(body) if op.use_residual]
    assert len(residual) == 15  # the stride-1 same-width blocks of stages 4+4+8+4
    for op in residual:
        cin = next(c for c in op.body.modules() if isinstance(c, nn.Conv2d)).in_channels
        x = torch.randn(2, cin, 8, 8)
        assert float(last_bn(op).weight.abs().max()) == 0 and torch.equal(op(x), x)
    # stride-2 / width-changing backbone ops, the neck and the head keep weight 1
    others = [op for op in ops(body) if not op.use_residual] + ops(model.backbone.neck) + ops(model.roi_heads)
    assert others and all(float(last_bn(op).weight.min()) == 1 for op in others)
    off = HitDetectorSpace(zero_init_residual=False, **kw)
    assert all(float(last_bn(op).weight.min()) == 1 for op in ops(off.build(off.default())))
    official = HitDetectorSpace(init="official", **kw)  # the zero init comes after the official init's BN = 1
    assert all(float(last_bn(op).weight.abs().max()) == 0
               for op in ops(official.build(official.default()).backbone.body) if op.use_residual)
    # the supernet too: every candidate at a residual position is the identity, and so is the mixture
    supernet = space.supernet().train()
    choice = next(m for m in supernet.modules() if getattr(m, "name", "") == "backbone.block1.op")
    cin = next(c for c in choice.modules() if isinstance(c, nn.Conv2d)).in_channels
    x = torch.randn(2, cin, 8, 8)
    assert torch.allclose(choice(x), x)
    # the baseline's option: torchvision's MobileNetV2 blocks with a residual start as the identity
    mbv2 = mobilenetv2_fpn_faster_rcnn(3, 0.5, fpn_channels=32, representation=64, min_size=64, max_size=64,
                                       zero_init_residual=True).backbone.body
    blocks = [m for m in mbv2.modules() if getattr(m, "use_res_connect", False)]
    assert len(blocks) == 10
    for block in blocks:
        x = torch.randn(2, block.conv[0][0].in_channels, 8, 8)
        assert torch.equal(block.train()(x), x)
