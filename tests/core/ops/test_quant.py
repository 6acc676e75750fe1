import pytest
import torch
from torch import nn

from core.cost import count_params
from core.engine.registry import OPS, ConfigError
from core.ops.quant import BinaryConv2d, QuantConv2d, bit_operations, sign_ste, weight_bits
from core.ops.squeeze import redundancy, select_channels, squeeze_blocks, squeeze_order
from core.zoo.resnet import ResNetSpace


def test_sign_and_its_straight_through_gradient():
    x = torch.tensor([-2.0, -0.5, 0.0, 0.5, 2.0], requires_grad=True)
    y = sign_ste(x)
    assert y.tolist() == [-1, -1, 1, 1, 1]
    y.sum().backward()
    assert x.grad.tolist() == [0, 1, 1, 1, 0]


def test_binary_conv_by_hand():
    conv = BinaryConv2d(2, 2, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[0.5, -1.5], [2.0, 1.0]]).view(2, 2, 1, 1))
    x = torch.tensor([0.3, -0.7]).view(1, 2, 1, 1)
    # alpha = mean|W| = (1.0, 1.5); sign(x) = (1, -1); sign(W) = ((1, -1), (1, 1))
    assert conv(x).flatten().tolist() == pytest.approx([1.0 * 2, 1.5 * 0])
    conv.scaling = False
    assert conv(x).flatten().tolist() == pytest.approx([2.0, 0.0])


def test_kbit_conv_is_dorefa_by_hand():
    conv = QuantConv2d(1, 1, 1, bias=False, bits=2)
    with torch.no_grad():
        conv.weight.fill_(0.4)
    # tanh(.4)/(2 tanh(.4)) + .5 = 1 -> 3 of 3 levels -> 2*1-1 = 1; input .4 -> round(1.2)/3 = 1/3
    x = torch.full((1, 1, 1, 1), 0.4)
    conv.requires_grad_(False)
    assert float(conv(x)) == pytest.approx(1 / 3)
    x = torch.full((1, 1, 1, 1), 0.9)  # round(2.7)/3 = 1
    assert float(conv(x)) == pytest.approx(1.0)


def test_bit_operations_and_storage_by_hand():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), BinaryConv2d(4, 4, 3, padding=1, bias=False),
                          QuantConv2d(4, 4, 1, bias=False, bits=2), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
    count = bit_operations(model, torch.zeros(1, 3, 8, 8))
    fp = 64 * 4 * 27 + 256 * 10
    assert count.fp_macs == fp
    assert count.bops == 64 * 4 * 36 * 1 * 1 + 64 * 4 * 4 * 2 * 2
    assert count.ops == pytest.approx(fp + count.bops / 64)
    assert weight_bits(model) == 108 * 32 + 144 * 1 + 16 * 2 + (2560 + 10) * 32


def test_kbit_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="bits"):
        OPS.build({"name": "kbit_conv", "bits": 1}, "space.conv", in_channels=2, out_channels=2)
    with pytest.raises(ConfigError, match="widen"):
        ResNetSpace(conv={"name": "binary_conv"}, widen=0.5)


def test_redundancy_criterion_removes_constant_then_duplicate_channels():
    g = torch.Generator().manual_seed(0)
    a = torch.where(torch.rand(64, generator=g) < 0.5, -1.0, 1.0)
    b = torch.where(torch.rand(64, generator=g) < 0.5, -1.0, 1.0)
    features = torch.stack([a, -a, b, torch.ones(64)], 1)  # channel 1 is channel 0 negated, 3 is constant
    r = redundancy(features)
    assert r[3] == 1 and r[0] == pytest.approx(1) and r[1] == pytest.approx(1) and r[2] < 0.5
    order = squeeze_order(features)
    assert order[0] in (0, 1, 3) and set(order[:2]) in ({0, 3}, {1, 3})
    kept = select_channels(features, 2)
    assert 2 in kept and len(set(kept) & {0, 1}) == 1


def _binary_space(widen=1.0):
    return ResNetSpace(depth=8, widths=[8, 16, 16], conv={"name": "binary_conv"}, widen=widen)


def test_widened_binary_resnet_counts():
    plain, wide = _binary_space(), _binary_space(4)
    m1, m4 = plain.build(plain.default()), wide.build(wide.default())
    x = torch.zeros(1, 3, 16, 16)
    b1, b4 = bit_operations(m1, x), bit_operations(m4, x)
    assert b4.bops == pytest.approx(4 * b1.bops) and b4.fp_macs == b1.fp_macs
    assert isinstance(m4.stages[0][0].conv1, BinaryConv2d) and m4.stages[0][0].conv1.out_channels == 32
    assert isinstance(m4.stem, nn.Conv2d) and not isinstance(m4.stem, BinaryConv2d)


def test_squeeze_drops_a_duplicated_channel_and_keeps_the_function_shape():
    torch.manual_seed(0)
    space = _binary_space(widen=2)
    model = space.build(space.default(), num_classes=4)
    block = model.stages[0][0]
    with torch.no_grad():
        block.conv1.weight[1] = -block.conv1.weight[0]  # channel 1 = - channel 0 before and after binarization
    x = torch.randn(16, 3, 16, 16)
    kept = squeeze_blocks(model, [x], keep_ratio=15 / 16)
    assert len(kept["stages.0.0"]) == 15 and len({0, 1} & set(kept["stages.0.0"])) == 1
    assert block is model.stages[0][0] and model.stages[0][0].conv2.in_channels == 15
    assert model(x).shape == (16, 4)
    before = count_params(space.build(space.default(), num_classes=4))
    assert count_params(model) < before


def test_widened_and_squeezed_binary_net_trains():
    torch.manual_seed(0)
    space = _binary_space(widen=2)
    model = space.build(space.default(), num_classes=2)
    x = torch.randn(32, 3, 16, 16)
    y = (x[:, 0].mean((1, 2)) > 0).long()

    def fit(steps):
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        losses = []
        for _ in range(steps):
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses

    losses = fit(30)
    assert sum(losses[-5:]) < 0.7 * sum(losses[:5])
    squeeze_blocks(model, [x], keep_ratio=0.5)
    assert all(b.conv1.out_channels == b.conv2.out_channels for stage in model.stages for b in stage)  # 2 x 0.5
    after = fit(10)
    assert after[-1] < losses[0]
