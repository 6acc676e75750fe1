"""tasks.image_translation models and space: published parameter counts, U-Net variants' shapes, the search
space's rules, and the hand U-Net scaled to a MACs budget."""

import random

import pytest
import torch

from core.cost import count_macs, count_params
from tasks.image_translation.models import BLOCKS, UPSAMPLERS, PatchDiscriminator, ResnetGenerator, UNet, pix2pix_unet
from tasks.image_translation.space import UNetTranslatorSpace, resnet_arch, unet_arch, unet_budget


def test_parameter_counts_match_the_official_networks():
    """pix2pix/CycleGAN print 54.414 M (unet_256), 11.378 M (resnet_9blocks) and 2.769 M (basic D, 6 channels)."""
    assert round(count_params(pix2pix_unet(3, 3, 64, 8)) / 1e6, 3) == 54.414
    assert round(count_params(ResnetGenerator(3, 3, 64, 9)) / 1e6, 3) == 11.378
    assert round(count_params(PatchDiscriminator(6, 64, 3)) / 1e6, 3) == 2.769
    # the 70x70 PatchGAN gives a 30x30 map of logits on a 256-px image
    assert PatchDiscriminator(6, 8, 3)(torch.zeros(1, 6, 256, 256)).shape == (1, 1, 30, 30)


@pytest.mark.parametrize("upsample", UPSAMPLERS)
def test_unet_variants_keep_the_image_shape(upsample):
    x = torch.randn(2, 1, 32, 32)
    for skips in (["concat", "add"], ["none", "concat"]):
        for block in BLOCKS:
            net = UNet(1, 3, [4, 8, 8], [block] * 3, skips, upsample)
            assert net(x).shape == (2, 3, 32, 32)
    # a concat skip doubles what the next up step reads, add and none do not
    net = UNet(1, 3, [4, 8, 8], skips=["concat", "add"])
    assert net.ups[1][1].in_channels == 8 and net.ups[0][1].in_channels == 8
    net = UNet(1, 3, [4, 8, 8], skips=["none", "concat"])
    assert net.ups[0][1].in_channels == 4 and net.ups[1][1].in_channels == 16


def test_search_space_rules_and_budget():
    space = UNetTranslatorSpace(1, 3, 64)
    rng = random.Random(0)
    for _ in range(20):
        arch = space.sample(rng)
        child = space.mutate(arch, rng)
        assert len(arch.diff(child)) >= 1 and space.is_valid(child)
        depth = arch["depth"]
        assert all(arch[f"level{i}.width"] == space.choice(f"level{i}.width").default for i in range(depth, 6))
        assert space.build(arch)(torch.zeros(1, 1, 64, 64)).shape == (1, 3, 64, 64)
    assert space.size() > 10 ** 9
    with pytest.raises(ValueError, match="depths"):
        UNetTranslatorSpace(1, 3, 40)
    # the hand designs build through the same space
    hand = unet_arch(8, 6)
    assert count_params(space.build(hand)) == count_params(pix2pix_unet(1, 3, 8, 6))
    assert space.build(resnet_arch(4, 2))(torch.zeros(1, 1, 64, 64)).shape == (1, 3, 64, 64)
    with pytest.raises(ValueError, match="num_downs=7"):
        space.check(unet_arch(8, 7))
    # unet_budget: the widest pix2pix U-Net within the MACs
    limit = space.macs(unet_arch(4, 6))
    assert unet_budget(space, limit, 6) == unet_arch(4, 6)
    assert unet_budget(space, limit - 1, 6) == unet_arch(3, 6)
    assert space.macs(hand) == count_macs(pix2pix_unet(1, 3, 8, 6), torch.zeros(1, 1, 64, 64))
