"""HourNAS-F and PNASNet-5 built by name in their spaces, with parameter and MAC counts next to the papers'."""

import random

import torch

from core.cost import count_macs, count_params
from core.evaluation.result import Result
from core.zoo.hournas import hournas_f_space_and_arch, hournas_space
from core.zoo.pnasnet import PNASNET5, PNASSpace, reduction_cells
from core.oneshot.hournas import vital_choices
from core.strategies.pnas import PNAS

torch.set_num_threads(1)


def test_hournas_f_imagenet_matches_the_readme():
    space, arch = hournas_f_space_and_arch("imagenet")
    model = space.build(arch)
    params, macs = count_params(model), count_macs(model, torch.zeros(1, 3, 224, 224))
    assert params == 5_343_112 and macs == 382_964_976  # README: 5.3M params, 383M FLOPs (multiply-adds)


def test_hournas_f_cifar_is_the_released_network():
    space, arch = hournas_f_space_and_arch("cifar10")
    model = space.build(arch)
    assert count_params(model) == 4_074_922
    assert count_macs(model, torch.zeros(1, 3, 32, 32)) == 393_409_872
    first = model.stages[0][0]
    # the released blocks: an expand conv even at expansion 1 (first block), SE on the expanded width, no SE bias
    assert isinstance(model.first_block.expand, torch.nn.Sequential)
    assert first.se.reduce.out_channels == int(16 * 6 * 0.05) and first.se.reduce.bias is None
    assert [s[0].depthwise[0].stride[0] for s in model.stages] == [1, 1, 2, 1, 2, 1]
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_hournas_space_keeps_the_vital_blocks_searchable():
    space = hournas_space("cifar10")
    assert vital_choices(space) == [f"stage{i}.layer0.op" for i in range(6)]
    arch = space.sample(random.Random(0))
    assert space.build(arch)(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def test_pnasnet5_mobile_and_large_match_the_paper():
    mobile = PNASSpace("mobile", num_classes=1000)
    model = mobile.build(mobile.named_archs["pnasnet5"]).eval()
    assert count_params(model) == 5_065_121  # paper: 5.1M
    assert count_macs(model, torch.zeros(1, 3, 224, 224)) == 587_674_224  # paper: 588M mult-adds
    large = PNASSpace("large", num_classes=1000)
    assert count_params(large.build(large.named_archs["pnasnet5"])) == 86_057_668  # paper 86.1M; timm's port too


def test_pnasnet_structure_follows_tf_slim():
    assert reduction_cells(9) == [3, 6] and reduction_cells(12) == [4, 8]
    space = PNASSpace("mobile", num_classes=1000)
    model = space.build(space.named_archs["pnasnet5"])
    assert len(model.cells) == 2 + 9
    # stem cells at F/4 = 13 and F/2 = 27 filters (int of 13.5); the second one's H_{c-2} is factorized to 2*13
    assert model.cells[0].out_channels == 5 * 13 and model.cells[1].out_channels == 5 * 27
    assert model.cells[1].prev[1].out_channels == 26
    assert [c.out_channels for c in model.cells[2:]] == [270] * 3 + [540] * 3 + [1080] * 3
    assert space.blocks(space.named_archs["pnasnet5"]) == list(PNASNET5)


def test_pnas_strategy_runs_block_by_block_on_the_cell_space():
    space = PNASSpace("small", num_cells=1, filters=4)
    assert len(space.pnas_blocks) == 5 and space.pnas_blocks[0][0] == "block0.left.input"
    strategy = PNAS(space, seed=0, beam_size=2, initial=4, folds=1, epochs=5, hidden=8, embedding_dim=8,
                    max_candidates=50)
    seen = []
    for _ in range(8):
        arch = strategy.ask(1)[0]
        seen.append(arch)
        score = sum(arch[f"block{b}.left.op"] == "sep_conv_3x3" for b in range(5)) / 5
        strategy.tell(arch, Result(metrics={"accuracy": score}))
    assert strategy.depth >= 2 and len(set(seen)) == len(seen)
    assert space.build(seen[-1])(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
