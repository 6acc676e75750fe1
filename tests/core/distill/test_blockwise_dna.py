"""DNA as a ranking estimator on cell201 (core.oneshot.dna_ranking, Li et al., CVPR 2020): student blocks end in an
affine BN, as DNA's blocks do, so a candidate's score measures how well its features match the teacher's, not the
scale of its sum of paths."""

import pytest
import torch
from torch import nn

from core.api import activate
from core.oneshot.dna_ranking import dna_scores, student_blocks
from core.testing import TinyClassification, digits
from core.zoo.cell201 import EDGE_NAMES, Cell201Space, CellNetwork, SearchCell


def _arch(space, op):
    return space.check({name: op for name in EDGE_NAMES})


def test_student_blocks_end_in_an_affine_bn_recalibrated_per_candidate():
    space = Cell201Space()
    supernet = CellNetwork(lambda w: SearchCell(space.ops, w, affine=True), C=space.C, N=space.N)
    blocks = student_blocks(supernet, space.N, space.C)
    assert [b[-1].num_features for b in blocks] == [space.C, 2 * space.C]
    assert all(isinstance(b[-1], nn.BatchNorm2d) and b[-1].affine for b in blocks)
    old = student_blocks(supernet, space.N, space.C, output_bn=False)
    assert not any(isinstance(b[-1], nn.BatchNorm2d) for b in old)
    # every skip-only cell is the same function once the output is normalised: the scale of the identity sum
    # (1 to 6 identities) no longer changes the block's output
    x = torch.randn(16, 1, 8, 8)
    block = blocks[0]
    outs = []
    for arch in (_arch(space, "skip_connect"),
                 space.check({**{n: "none" for n in EDGE_NAMES}, "cell.e03": "skip_connect"})):
        activate(block, arch)
        block.train()
        with torch.no_grad():
            outs.append(block(x))
    assert torch.allclose(outs[0], outs[1], atol=1e-4)


@pytest.mark.slow
def test_dna_scores_rank_the_all_conv_cell_above_a_disconnected_one():
    """A disconnected cell outputs zeros; before the block-output BN its cl_loss (about 0.78 per block) beat
    most connected cells. With the BN, a trained all-conv cell must match the teacher better than a constant."""
    space = Cell201Space()
    data = digits()
    archs = [_arch(space, "nor_conv_3x3"), _arch(space, "none"), _arch(space, "skip_connect")]
    scores, info = dna_scores(space, data, archs, steps_per_block=60, teacher_epochs=3, seed=0,
                              task=TinyClassification())
    conv, disconnected, skip = scores  # higher is better (negated summed cl_loss)
    assert conv > disconnected
    assert conv > skip
    assert all(last < first for first, last in info["block_mse_first_last"])
