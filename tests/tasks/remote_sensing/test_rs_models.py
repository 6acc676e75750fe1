"""ResNet18 / UNet with DGConv, plain and FGConv: structure, parameter counts, multi-stream property, static
derivation, the search space."""

import random

import pytest
import torch
from torch import nn

from core.cost import count_params
from core.engine.registry import MODELS
from core.ops.dgconv import DGConv2d, FGConv2d
from core.ops.static_groups import to_static
from tasks.remote_sensing.models import ResNet18, UNet
from tasks.remote_sensing.space import RSNetSpace


def test_plain_resnet18_has_torchvision_resnet18_parameters_with_its_own_stem_and_classifier():
    import torchvision

    model = MODELS.get("resnet18_plain")(66, 11, [64, 2])
    tv = torchvision.models.resnet18()  # 3 input channels, 1000 classes
    trunk = count_params(tv) - tv.conv1.weight.numel() - sum(p.numel() for p in tv.fc.parameters())
    assert count_params(model) == trunk + 66 * 64 * 7 * 7 + 512 * 11 + 11 == 11_379_723


def test_dgconv_layers_where_the_paper_puts_them():
    resnet = ResNet18(66, 11, "dgconv", [64, 2], stem_width=16, widths=(16, 32, 64, 128))
    dg = [n for n, m in resnet.named_modules() if isinstance(m, DGConv2d)]
    assert dg[0] == "conv1" and len(dg) == 1 + 16  # the stem and both 3x3 of 8 basic blocks
    downsample = [m for n, m in resnet.named_modules() if "downsample.0" in n]
    assert len(downsample) == 3 and all(type(m) is nn.Conv2d and m.kernel_size == (1, 1) for m in downsample)
    unet = UNet(58, 20, "dgconv", [3, 48, 3, 4], widths=(8, 16, 32, 64, 128))
    assert sum(isinstance(m, DGConv2d) for m in unet.modules()) == 18  # 9 double convs
    assert sum(isinstance(m, nn.ConvTranspose2d) for m in unet.modules()) == 4
    assert type(unet.outc) is nn.Conv2d and unet.outc.kernel_size == (1, 1)
    assert unet(torch.randn(2, 58, 32, 32)).shape == (2, 20, 32, 32)


def test_fgconv_network_keeps_the_sources_in_separate_streams():
    """Changing the second source moves only the second stream's features, up to the classifier."""
    torch.manual_seed(0)
    model = ResNet18(66, 5, "fgconv", [64, 2], stem_width=16, widths=(16, 32, 64, 128)).eval()
    assert model.conv1.in_groups == [64, 2] and model.conv1.out_groups == [8, 8]
    features = {}
    model.layer4.register_forward_hook(lambda m, i, o: features.__setitem__("x", o))
    x = torch.randn(2, 66, 11, 11)
    model(x)
    before = features["x"].clone()
    x[:, 64:] += 3.0
    model(x)
    change = (features["x"] - before).abs().amax(dim=(0, 2, 3))
    assert change[:64].max() == 0 and change[64:].max() > 0


@pytest.mark.parametrize("family", ["resnet18", "unet"])
def test_derived_static_network_gives_the_same_outputs(family):
    torch.manual_seed(1)
    if family == "resnet18":
        model, x = ResNet18(66, 8, "dgconv", [64, 2], stem_width=16, widths=(16, 32, 64, 128)), torch.randn(4, 66, 11, 11)
    else:
        model, x = UNet(58, 6, "dgconv", [3, 48, 3, 4], widths=(8, 16, 32, 64, 128)), torch.randn(2, 58, 32, 32)
    for m in model.modules():
        if isinstance(m, DGConv2d):
            m.gate.data = torch.randn(m.K)
    model.train()
    model(x)  # BN statistics away from their initial values
    model.eval()
    static = to_static(model).eval()
    assert not any(isinstance(m, (DGConv2d, FGConv2d)) for m in static.modules())
    torch.testing.assert_close(static(x), model(x), atol=1e-5, rtol=0)
    assert count_params(static) < count_params(model)


def test_space_default_is_the_hand_set_network_and_samples_build():
    space = RSNetSpace(66, 8, [64, 2], model="resnet18", width=16)
    default = space.default()
    assert default["conv"] == "dgconv" and [default[f"stage{i}.width"] for i in range(1, 5)] == [16, 32, 64, 128]
    hand_set = ResNet18(66, 8, "dgconv", [64, 2], stem_width=16, widths=(16, 32, 64, 128))
    assert count_params(space.build(default)) == count_params(hand_set)
    assert space.with_conv("plain")["conv"] == "plain"
    rng = random.Random(0)
    for _ in range(5):
        arch = space.sample(rng)
        model = space.build(arch).eval()
        assert model(torch.randn(2, 66, 11, 11)).shape == (2, 8)
        if arch["conv"] != "plain":
            assert all(arch[f"stage{i}.groups"] == 1 for i in range(1, 5))  # inactive: canonical default
    grouped = space.check(default.replace(conv="plain", **{"stage2.groups": 4}))
    assert space.build(grouped).layer2[0].conv1.groups == 4
    with pytest.raises(ValueError, match="not divisible"):
        space.check(default.replace(conv="plain", **{"stage1.width": 12, "stage1.groups": 8}))
