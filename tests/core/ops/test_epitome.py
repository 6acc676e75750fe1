import pytest
import torch
import torch.nn.functional as F
from torch import nn

from core.cost import count_macs, count_params
from core.engine.registry import ConfigError
from core.ops.epitome import EpitomeConv2d, inference_parameters, shift_channels
from core.zoo.mobile import InvertedResidual, MobileSpace

torch.set_num_threads(1)


def test_shift_channels_interpolates_cyclically_by_hand():
    t = torch.arange(4.0).view(1, 4, 1, 1)
    out = shift_channels(t, 1.25).flatten().tolist()
    # channel c = 0.75 t[c + 1] + 0.25 t[c + 2], indices mod 4
    assert out == pytest.approx([1.25, 2.25, 0.75 * 3 + 0.25 * 0, 0.75 * 0 + 0.25 * 1])
    assert shift_channels(t, -1.0).flatten().tolist() == [3, 0, 1, 2]


@pytest.mark.parametrize("dim,cin,cout", [("out", 4, 6), ("in", 5, 3)])
def test_tile_is_the_repeated_epitome_at_half_the_macs(dim, cin, cout):
    conv = EpitomeConv2d(cin, cout, 1, dim=dim, multiplier=2, sampling="tile")
    e = conv.weight.detach()
    expected = e.repeat(2, 1, 1, 1)[:cout] if dim == "out" else e.repeat(1, 2, 1, 1)[:, :cin]
    assert torch.equal(conv.full_weight(), expected)
    x = torch.randn(2, cin, 5, 5)
    assert torch.allclose(conv(x), F.conv2d(x, expected), atol=1e-6)
    full = count_macs(nn.Conv2d(cin, cout, 1, bias=False), x[:1])
    compact = count_macs(conv, x[:1])
    assert compact == full * conv.compact // (cout if dim == "out" else cin)
    assert count_params(conv) == conv.compact * (cin if dim == "out" else cout) == 3 * (cin if dim == "out" else cout)


def test_fixed_sampling_rolls_each_copy_by_its_stride():
    conv = EpitomeConv2d(3, 8, 1, dim="out", multiplier=4, sampling="fixed", stride_channels=1)
    e = conv.weight.detach()  # 2 filters, 4 copies starting at 0, 1, 2, 3 (mod 2)
    w = conv.full_weight()
    assert torch.equal(w[:2], e) and torch.equal(w[2:4], e.flip(0)) and torch.equal(w[4:6], e)
    x = torch.randn(1, 3, 4, 4)
    assert torch.allclose(conv(x), F.conv2d(x, w), atol=1e-6)


@pytest.mark.parametrize("dim", ["out", "in"])
def test_learned_sampling_is_a_convolution_with_the_interpolated_weight(dim):
    torch.manual_seed(0)
    conv = EpitomeConv2d(6, 6, 3, dim=dim, multiplier=2, sampling="learned")
    x = torch.randn(3, 6, 7, 7)
    conv.eval()
    conv.routing.copy_(torch.tensor([0.4, 2.3]))
    w = conv.full_weight()
    e = conv.weight.detach()
    sampled = 0.6 * e + 0.4 * e.roll(-1, 0 if dim == "out" else 1)  # copy 0 starts at 0.4
    assert torch.allclose((w[:3] if dim == "out" else w[:, :3]), sampled, atol=1e-6)
    assert torch.allclose(conv(x), F.conv2d(x, w, padding=1), atol=1e-5)
    conv.train()
    out = conv(x)
    out.square().mean().backward()
    assert conv.learner[0].weight.grad.abs().sum() > 0 and conv.weight.grad.abs().sum() > 0
    assert not torch.allclose(conv.routing, torch.tensor([0.4, 2.3]))  # the routing map follows the learner
    assert inference_parameters(conv) == conv.weight.numel() < count_params(conv)


def test_learned_starts_reach_one_channel_by_default_as_released():
    # the released NES copy is c * E + (1 - c) * E shifted by one channel: starts move within neighbours
    torch.manual_seed(0)
    conv = EpitomeConv2d(16, 64, dim="out", multiplier=2, sampling="learned").train()
    assert conv.index_range == 1.0
    for _ in range(5):
        starts = conv.starts(torch.randn(4, 16, 6, 6))
        assert starts.abs().max() <= 1.0 + 1e-6 and starts.abs().max() > 0.1
    wide = EpitomeConv2d(16, 64, dim="out", multiplier=2, sampling="learned", index_range=32).train()
    assert wide.starts(torch.randn(4, 16, 6, 6)).abs().max() > 1.0


def test_bad_keys_name_themselves():
    with pytest.raises(ConfigError, match="sampling"):
        EpitomeConv2d(2, 2, sampling="random")
    with pytest.raises(ConfigError, match="index_range"):
        EpitomeConv2d(2, 2, sampling="learned", index_range=0)
    with pytest.raises(ConfigError, match="space.pointwise.multiplyer: unknown key"):
        MobileSpace(pointwise={"name": "epitome_conv", "multiplyer": 2})


def test_mobile_space_names_the_epitome_operator_for_both_1x1_convs():
    plain = InvertedResidual(8, 8, 1, 3, 6)
    tiled = InvertedResidual(8, 8, 1, 3, 6, pointwise=(("multiplier", 2), ("name", "epitome_conv")))
    assert isinstance(tiled.expand[0], EpitomeConv2d) and tiled.expand[0].dim == "out"
    assert isinstance(tiled.project[0], EpitomeConv2d) and tiled.project[0].dim == "in"
    x = torch.zeros(1, 8, 6, 6)
    pointwise = 2 * 36 * 8 * 48
    assert count_macs(plain, x) - count_macs(tiled, x) == pointwise // 2
    assert count_params(plain) - count_params(tiled) == 2 * 8 * 48 // 2


def test_a_learned_epitome_mobile_net_trains():
    torch.manual_seed(0)
    space = MobileSpace(in_channels=3, stem_channels=8, stem_stride=1, first_block=None, head_channels=0,
                        stages=[{"channels": 8, "stride": 2, "depths": [1]},
                                {"channels": 16, "stride": 2, "depths": [1]}],
                        kernels=[3], expansions=[4], se_ratio=0, num_classes=2, dropout=0.0,
                        pointwise={"name": "epitome_conv", "multiplier": 2, "sampling": "learned"})
    model = space.build(space.default())
    x = torch.randn(32, 3, 12, 12)
    y = (x[:, 0].mean((1, 2)) > 0).long()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    for _ in range(60):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) < 0.7 * sum(losses[:5])


def test_learned_sampling_keeps_the_network_gradients_of_tile_sampling():
    # the learners predict start indices from the layer inputs; their gradient must not flow back into the
    # network, where it compounded layer by layer (epitome gradients ~1e5 times the tile net's at initialisation)
    def stack(sampling):
        torch.manual_seed(0)
        spec = (("multiplier", 2), ("name", "epitome_conv"), ("sampling", sampling))
        return nn.Sequential(*[InvertedResidual(16, 16, 1, 3, 6, pointwise=spec) for _ in range(4)])

    x = torch.randn(8, 16, 8, 8)
    norms = {}
    for sampling in ("tile", "learned"):
        net = stack(sampling).train()
        net(x).square().mean().backward()
        first = net[0].expand[0]
        assert first.learner is None or first.learner[0].weight.grad.abs().sum() > 0
        norms[sampling] = float(first.weight.grad.norm())
    assert norms["learned"] < 10 * norms["tile"]
