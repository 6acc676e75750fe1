import pytest
import torch
from torch import nn

from core.cost import count_params
from core.engine.registry import OPS, ConfigError
from core.ops.disout import (Disout, LinearSchedule, bind_weight_behind, disout_mask, set_total_steps,
                             weight_behind_factor)
from core.zoo.resnet import ResNetSpace


def _hand_mask(rand: torch.Tensor, dist_prob: float, b: int) -> torch.Tensor:
    """Seeds at valid centres where rand < gamma; each seed zeroes the b x b block the min-pool spreads it to."""
    n, c, h, w = rand.shape
    gamma = dist_prob * h * w / b ** 2 / ((h - b + 1) * (w - b + 1))
    mask = torch.ones_like(rand)
    for i in range(n):
        for j in range(c):
            for y in range(b // 2, h - (b - 1) // 2):
                for x in range(b // 2, w - (b - 1) // 2):
                    if rand[i, j, y, x] < gamma:
                        # output row i covers input rows i - b//2 .. i - b//2 + b - 1: odd b gives the block
                        # y-b//2 .. y+b//2, even b (last row cropped) y-b//2+1 .. y+b//2; likewise columns
                        rows = range(max(0, y - (b - 1) + b // 2), min(h, y + b // 2 + 1))
                        cols = range(max(0, x - (b - 1) + b // 2), min(w, x + b // 2 + 1))
                        for r in rows:
                            for q in cols:
                                mask[i, j, r, q] = 0
    return mask


@pytest.mark.parametrize("b", [3, 2, 6])
def test_mask_matches_a_hand_computation(b):
    shape, p = (2, 3, 8, 8), 0.3
    g = torch.Generator().manual_seed(5)
    rand = torch.rand(shape, generator=torch.Generator().manual_seed(5))
    assert torch.equal(disout_mask(shape, p, b, generator=g), _hand_mask(rand, p, b))


def test_mask_drops_about_dist_prob_of_the_units():
    mask = disout_mask((8, 16, 64, 64), 0.09, 3, generator=torch.Generator().manual_seed(0))
    assert 0.075 < float(1 - mask.mean()) < 0.095  # block overlaps make it a little less than dist_prob


def test_block_as_large_as_the_map_drops_whole_channels():
    mask = disout_mask((4, 64, 4, 4), 0.5, 4, generator=torch.Generator().manual_seed(1))
    per_channel = mask.flatten(2)
    assert torch.all(per_channel.min(2)[0] == per_channel.max(2)[0])
    assert 0.3 < float(1 - mask.mean()) < 0.7


def test_weight_behind_factor_by_hand():
    g = torch.Generator().manual_seed(3)
    weight = torch.tensor([[[[1.0, -2.0], [0.5, 4.0]]], [[[3.0, -1.0], [2.0, 0.0]]]])  # [2 out, 1 in, 2, 2]
    signs = torch.where(torch.rand((1, 1, 2, 2), generator=torch.Generator().manual_seed(3)) < 0.5, -1.0, 1.0)
    expected = (torch.tensor([[3.0, -1.0], [2.0, 4.0]]) * signs[0, 0]).mean()
    assert torch.allclose(weight_behind_factor(weight, g), expected.view(1, 1, 1, 1))
    one_by_one = torch.tensor([[[[1.0]], [[-2.0]]], [[[3.0]], [[-5.0]]]])  # [2 out, 2 in, 1, 1]
    w = weight_behind_factor(one_by_one)
    assert torch.allclose(w.abs().flatten(), torch.tensor([0.3, 0.2]))


def test_forward_is_the_paper_formula_and_identity_in_eval():
    conv = nn.Conv2d(3, 5, 3, bias=False)
    layer = Disout(dist_prob=0.2, block_size=3, alpha=5.0)
    layer.bind(conv)
    x = torch.randn(2, 3, 6, 6)
    torch.manual_seed(11)
    out = layer(x)
    torch.manual_seed(11)  # replay the layer's draws: mask, signs, noise
    mask = disout_mask(tuple(x.shape), 0.2, 3)
    w = weight_behind_factor(conv.weight.detach())
    noise = torch.randn_like(x)
    std = x.var().sqrt()
    expected = (x * mask + 5.0 * w * std * noise * (1 - mask)) / mask.mean()
    assert torch.allclose(out, expected, atol=1e-6)
    assert (mask == 0).any() and not torch.allclose(out, x)
    layer.bind(None)
    torch.manual_seed(11)
    out = layer(x)
    torch.manual_seed(11)
    mask = disout_mask(tuple(x.shape), 0.2, 3)
    assert torch.allclose(out, (x * mask + 5.0 * 0.01 * std * torch.randn_like(x) * (1 - mask)) / mask.mean())
    layer.eval()
    assert layer(x) is x


def test_linear_schedule_ramps_over_training_forwards_only():
    layer = OPS.build({"name": "disout", "dist_prob": 0.08, "steps": 5}, "op")
    x = torch.randn(1, 2, 8, 8)
    seen = []
    for _ in range(7):
        layer(x)
        seen.append(layer.module.dist_prob)
    assert seen == pytest.approx([0.0, 0.02, 0.04, 0.06, 0.08, 0.08, 0.08])
    layer.eval()
    layer(x)
    assert layer.i == 7
    unset = OPS.build({"name": "dropblock", "p": 0.1}, "op")
    set_total_steps(nn.Sequential(unset), 3)
    assert unset.steps == 3 and unset.value(1) == pytest.approx(0.05)


def test_registry_names_the_bad_key():
    with pytest.raises(ConfigError, match="space.regularizer.dist_rate: unknown key"):
        ResNetSpace(regularizer={"name": "disout", "dist_rate": 0.1})
    with pytest.raises(ConfigError, match="dist_prob"):
        OPS.build({"name": "disout", "dist_prob": 1.5}, "op")


def test_cifar_placement_and_official_pairing():
    space = ResNetSpace(depth=56, regularizer={"name": "disout", "dist_prob": 0.09, "block_size": 6, "alpha": 5})
    model = space.build(space.default())
    assert count_params(model) == 855_578  # the Disout repo's pre-activation ResNet-56
    pairs = bind_weight_behind(model)
    assert len(pairs) == 18  # both convs of the 9 blocks of the last stage only
    assert all(name.startswith("stages.2.") for name, _ in pairs)
    assert pairs[0] == ("stages.2.0.reg1.module", "stages.2.0.conv2")
    assert pairs[1] == ("stages.2.0.reg2.module", "stages.2.1.conv1")
    assert pairs[-1] == ("stages.2.8.reg2.module", "")


def test_imagenet_placement_rates_and_resnet50_size():
    space = ResNetSpace(style="imagenet", num_classes=1000,
                        regularizer={"name": "disout", "dist_prob": 0.07, "block_size": 7, "alpha": 1.0})
    model = space.build(space.default())
    assert count_params(model) == 25_557_032  # torchvision's ResNet-50
    scheduled = {n: m.target for n, m in model.named_modules() if isinstance(m, LinearSchedule)}
    assert len(scheduled) == 4 * (6 + 3)
    assert all(v == pytest.approx(0.0175) for n, v in scheduled.items() if n.startswith("stages.2."))
    assert all(v == pytest.approx(0.07) for n, v in scheduled.items() if n.startswith("stages.3."))
    pairs = dict(bind_weight_behind(model))
    assert pairs["stages.2.0.reg3.module"] == "stages.2.1.conv1"  # the downsample conv is passed over
    assert pairs["stages.2.0.reg4.module"] == "stages.2.1.conv1"
    assert all(float(m.weight.detach().abs().sum()) == 0 for n, m in model.named_modules() if n.endswith("bn3"))


@pytest.mark.parametrize("name", ["disout", "dropout", "dropblock"])
def test_a_regularized_resnet_trains(name):
    torch.manual_seed(0)
    space = ResNetSpace(depth=8, widths=[4, 8, 8], regularizer={"name": name, **({"block_size": 3}
                                                                                   if name != "dropout" else {})})
    model = space.build(space.default(), num_classes=3)
    set_total_steps(model, 40)
    x = torch.randn(24, 3, 16, 16)
    y = (x[:, 0].mean((1, 2)) > 0).long() + (x[:, 1].mean((1, 2)) > 0).long()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(40):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) < 0.7 * sum(losses[:5])
    model.eval()
    assert torch.equal(model(x), model(x))


def test_lightning_training_sets_the_schedule_length(tmp_path):
    from dataclasses import asdict

    from torch.utils.data import DataLoader, TensorDataset

    from core.engine.config import TrainConfig
    from core.engine.lightning import SupervisedModule, make_trainer

    space = ResNetSpace(depth=8, widths=[4, 4, 4], regularizer={"name": "disout", "block_size": 3})
    model = space.build(space.default(), num_classes=2)
    cfg = {**asdict(TrainConfig()), "epochs": 2, "accelerator": "cpu"}
    loader = DataLoader(TensorDataset(torch.randn(12, 3, 8, 8), torch.randint(0, 2, (12,))), batch_size=4)
    module = SupervisedModule(model, nn.functional.cross_entropy, lambda out, y: {}, cfg)
    make_trainer(cfg, tmp_path, progress=False).fit(module, loader)
    scheduled = [m for m in model.modules() if isinstance(m, LinearSchedule)]
    assert scheduled and all(m.steps == 6 and m.i == 6 for m in scheduled)  # 3 batches x 2 epochs
    assert scheduled[0].module.dist_prob == pytest.approx(0.09)
