"""Published face networks: parameter counts and FLOPs as the papers count them."""

import math

import pytest
import torch

from core.cost import count_macs, count_params
from tasks.face_recognition.flops import count_paper_flops
from tasks.face_recognition.iresnet import IResNet
from tasks.face_recognition.mobilefacenet import MobileFaceNet
from tasks.face_recognition.space import (
    POCKETNET,
    PUBLISHED,
    PocketNetSpace,
    pocketnet,
    to_face_genotype,
)

# fdbtrs/PocketNet README: parameters in millions, truncated to two decimals (S-128: 0.925)
README_MPARAMS = {"PocketNetS-256": 0.99, "PocketNetM-128": 1.68, "PocketNetM-256": 1.75}
# the official `count_model_flops` rules on our networks (paper values known only for S-128)
RECOUNT = {"PocketNetS-256": (991_424, 587_241_344), "PocketNetM-128": (1_686_656, 1_099_024_384),
           "PocketNetM-256": (1_752_448, 1_099_155_712)}


def test_pocketnet_s128_matches_the_paper():
    """Paper / README: PocketNetS-128 has 925,632 parameters and 587.11 MFLOPs at 112x112."""
    model = pocketnet("PocketNetS-128")
    assert count_params(model) == 925_632
    assert round(count_paper_flops(model, 112) / 1e6, 2) == 587.11


@pytest.mark.parametrize("name", list(README_MPARAMS))
def test_other_published_pocketnets(name):
    model = pocketnet(name)
    params = count_params(model)
    assert math.floor(params / 1e4) / 100 == README_MPARAMS[name]
    assert (params, count_paper_flops(model, 112)) == RECOUNT[name]
    assert model.head.tail[-1].num_features == PUBLISHED[name]["embedding_size"]


def test_paper_flops_are_not_macs():
    """The paper's 587.11 MFLOPs count multiply and add apart plus BN/PReLU/pool work; MACs are 283.5M."""
    model = pocketnet("PocketNetS-128")
    assert round(count_macs(model, (1, 3, 112, 112)) / 1e6, 1) == 283.5


def test_space_builds_the_published_cell_by_name_and_from_the_official_string():
    official = ("Genotype(normal=[[('dw_conv_3x3', 0), ('dw_conv_1x1', 1)], [('dw_conv_3x3', 2), ('dw_conv_5x5', 0)], "
                "[('dw_conv_3x3', 3), ('dw_conv_3x3', 0)], [('dw_conv_3x3', 4), ('skip_connect', 0)]], "
                "normal_concat=range(2, 6), reduce=[[('dw_conv_3x3', 1), ('dw_conv_7x7', 0)], [('skip_connect', 2), "
                "('dw_conv_5x5', 1)], [('max_pool_3x3', 0), ('skip_connect', 2)], [('max_pool_3x3', 0), "
                "('max_pool_3x3', 1)]], reduce_concat=range(2, 6))")
    assert to_face_genotype(official) == POCKETNET
    space = PocketNetSpace()
    arch = space.arch_of("PocketNet")
    assert count_params(space.build(arch)) == 925_632
    with pytest.raises(ValueError, match="inputs must differ"):
        space.check(arch.updated({"normal.node0.in1.input": 0}))


def test_iresnet_and_mobilefacenet_sizes():
    # ArcFace / PocketNet Table II: iResNet-100 65.2M, iResNet-50 43.6M parameters (512-d)
    assert round(count_params(IResNet(100, 512)) / 1e6, 1) == 65.2
    assert round(count_params(IResNet(50, 512)) / 1e6, 1) == 43.6
    # MobileFaceNet (Chen et al. 2018, Table 2): 221M MAdds, 0.99M parameters (ours counts PReLU slopes: 1.00M)
    mfn = MobileFaceNet()
    assert round(count_macs(mfn, (1, 3, 112, 112)) / 1e6) == 221
    assert abs(count_params(mfn) - 0.99e6) / 0.99e6 < 0.015


def test_small_inputs_shrink_the_gdc_kernel():
    model = PocketNetSpace(C=4, layers=4, input_size=16).build("PocketNet")
    assert model(torch.zeros(2, 3, 16, 16)).shape == (2, 128)
    assert model.head.tail[4].kernel_size == (1, 1)
