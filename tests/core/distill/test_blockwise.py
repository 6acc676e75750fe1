"""DNA's blockwise distillation pieces (core.distill.blockwise, Li et al., CVPR 2020): scores, epochs, recalibration."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from core.api import Choice, ChoiceModule, activate
from core.distill.blockwise import block_losses, recalibrate, score_archs, teacher_features, train_block
from core.distill.teachers import StagedTeacher

torch.set_num_threads(1)


def test_block_losses_match_a_hand_computation():
    out = torch.tensor([[1.0, 2.0], [3.0, 5.0]])
    target = torch.tensor([[1.0, 1.0], [4.0, 2.0]])
    cl, mse, rela = block_losses(out, target)
    std = torch.tensor([1.0, 1.0, 4.0, 2.0]).std()  # unbiased, as torch's default
    assert float(cl) == pytest.approx((0 + 1 + 1 + 3) / 4 / float(std), rel=1e-6)
    assert float(mse) == pytest.approx((0 + 1 + 1 + 9) / 4, rel=1e-6)
    assert float(rela) == pytest.approx(float(mse) / float(std) ** 2, rel=1e-6)


def _teacher():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    return StagedTeacher(net, ["0", "1"])


def _block():
    choice = Choice("op", ("linear", "scaled"))
    return ChoiceModule(choice, [nn.Linear(4, 4), nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))])


def test_train_block_runs_epochs_decays_the_lr_and_lowers_the_mse():
    teacher = _teacher()
    loader = DataLoader(TensorDataset(torch.randn(48, 4)), batch_size=16, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    block = _block()
    opt = torch.optim.Adam(block.parameters(), lr=0.05)
    epochs = train_block(block, 1, teacher, loader, lambda: {"op": "linear"}, opt, steps=40, steps_per_epoch=2,
                         lr_decay=0.95)
    assert [len(e) for e in epochs] == [2] * 20  # epochs capped at 2 of the loader's 3 batches
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05 * 0.95 ** 20)
    assert epochs[-1][-1][0] < 0.1 * epochs[0][0][0]  # teacher stage 1 is linear in stage 0: the MSE falls
    opt = torch.optim.Adam(block.parameters(), lr=0.05)
    epochs = train_block(block, 1, teacher, loader, lambda: {"op": "linear"}, opt, steps=7, steps_per_epoch=3)
    assert [len(e) for e in epochs] == [3, 3, 1]
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05 * 0.9 ** 2)  # the partial epoch does not decay


def test_recalibration_averages_the_active_path_and_resets_the_rest():
    block = _block()
    bn = block.candidates[1][1]
    x = torch.randn(32, 4) * 3 + 1
    inputs = [x[:16], x[16:]]
    activate(block, {"op": "scaled"})
    recalibrate(block, inputs)
    with torch.no_grad():
        means = [block.candidates[1][0](b).mean(0) for b in inputs]
    assert torch.allclose(bn.running_mean, (means[0] + means[1]) / 2, atol=1e-6)  # a plain average, not an EMA
    assert not block.training and bn.momentum == 0.1  # eval mode, momentum restored
    activate(block, {"op": "linear"})
    recalibrate(block, inputs)
    assert int(bn.num_batches_tracked) == 0 and torch.equal(bn.running_mean, torch.zeros(4))  # reset, not run


def test_score_archs_sums_cl_loss_over_blocks():
    teacher = _teacher()
    x = torch.randn(16, 4)
    feats = teacher_features(teacher, [(x,)])
    blocks = [_block(), _block()]
    scores = score_archs(blocks, [{"op": "linear"}], feats, feats)
    by_hand = 0.0
    for i, block in enumerate(blocks):
        guide = x if i == 0 else feats[0][1][0]
        with torch.no_grad():
            by_hand += float(block_losses(block(guide), feats[0][1][i])[0])
    assert scores == [pytest.approx(by_hand, rel=1e-6)]
