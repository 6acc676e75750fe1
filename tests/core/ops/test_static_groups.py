"""The derived static network: grouped convolutions with the masked network's outputs, fewer params and MACs."""

import pytest
import torch
from torch import nn

from core.cost import count_macs, count_params
from core.ops.dgconv import DGConv2d, FGConv2d
from core.ops.static_groups import GroupedConv2d, group_report, mask_blocks, to_static

CASES = [  # in, out, sort, groups, bias
    (16, 16, True, 1, False), (16, 16, False, 1, True), (66, 64, True, 1, False), (58, 64, True, 1, True),
    (16, 64, True, 1, False), (64, 16, False, 1, True), (48, 64, True, 1, True), (16, 16, True, 2, False),
    (12, 40, False, 1, True),
]


@pytest.mark.parametrize("cin,cout,sort,groups,bias", CASES)
def test_static_layer_matches_the_masked_layer(cin, cout, sort, groups, bias):
    torch.manual_seed(cin + cout)
    for _ in range(4):
        m = DGConv2d(cin, cout, 3, stride=2, padding=1, bias=bias, sort=sort, groups=groups)
        m.gate.data = torch.randn(m.K)
        s = to_static(m)
        assert isinstance(s, GroupedConv2d)
        x = torch.randn(2, cin, 9, 9)
        torch.testing.assert_close(s(x), m(x), atol=1e-5, rtol=0)
        # the static layer stores exactly the weights the mask keeps (plus the bias)
        kept = int(m.mask().detach().sum()) * 9
        assert count_params(s) == kept + (cout if bias else 0)


def test_sorted_square_layer_becomes_one_grouped_conv():
    m = DGConv2d(32, 32, 3, padding=1, bias=False)
    m.gate.data = torch.tensor([1.0, 1.0, -1.0, -1.0, -1.0])  # blocks of 4 channels: 8 groups
    s = to_static(m)
    assert s.uniform and s.in_index is None and s.out_index is None
    assert s.convs[0].groups == 8 and count_params(s) == 32 * 32 * 9 // 8
    x = torch.randn(1, 32, 8, 8)
    assert count_macs(s, x) == count_macs(m, x) // 8


def test_to_static_replaces_every_masked_layer_in_a_network():
    torch.manual_seed(0)
    net = nn.Sequential(FGConv2d(6, 8, 3, padding=1, in_groups=[4, 2], out_groups=[4, 4]), nn.BatchNorm2d(8),
                        nn.ReLU(), DGConv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3))
    for m in net:
        if isinstance(m, DGConv2d):
            m.gate.data = torch.tensor([1.0, -1.0, -1.0])
    net.train()
    net(torch.randn(8, 6, 5, 5))  # move the BN statistics away from their defaults
    net.eval()
    static = to_static(net).eval()
    assert not any(isinstance(m, (DGConv2d, FGConv2d)) for m in static.modules())
    x = torch.randn(4, 6, 5, 5)
    torch.testing.assert_close(static(x), net(x), atol=1e-5, rtol=0)
    assert count_params(static) < count_params(net)
    report = group_report(net)
    assert [r["blocks"] for r in report] == [2, 4] and report[1]["groups"] == 4.0


def test_mask_blocks_rejects_incomplete_blocks():
    with pytest.raises(ValueError, match="complete blocks"):
        mask_blocks(torch.tensor([[1.0, 1.0], [0.0, 1.0]]))
    blocks, dead = mask_blocks(torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]))
    assert blocks == [([0], [0]), ([2], [1])] and dead == [1]


def test_static_network_exports_to_onnx(tmp_path):
    pytest.importorskip("onnxruntime")
    from core.engine.export import export_onnx

    torch.manual_seed(0)
    m = nn.Sequential(DGConv2d(58, 64, 3, padding=1), nn.ReLU(), DGConv2d(64, 64, 3, padding=1, sort=False))
    for layer in (m[0], m[2]):
        layer.gate.data = torch.randn(layer.K)
    static = to_static(m).eval()
    x = torch.randn(1, 58, 12, 12)
    assert export_onnx(static, x, tmp_path / "static.onnx") < 1e-5
    torch.testing.assert_close(static(x), m(x), atol=1e-5, rtol=0)
