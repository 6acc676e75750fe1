"""Hit-Detector screening (group lasso) and end-to-end search on tiny shapes images."""

import math

import pytest
import torch
from torch import nn

from core.engine.registry import ConfigError
from core.api import Choice, ChoiceModule
from tasks.detection.data import collate, shapes
from tasks.detection.metrics import coco_map, predict
from tasks.detection.screening import GroupLassoScreen, removal_plan, run_screen
from tasks.detection.search import HitDetSearcher, candidate_costs
from tasks.detection.space import HitDetectorSpace
from tasks.detection.task import detection_loss

TINY = {"width": 0.125, "stage_blocks": (1, 1, 2, 1), "head_blocks": 1, "min_size": 64, "max_size": 64,
            "candidates": {"backbone": ["ir_k3_d1_e1", "ir_k5_d1_e6"], "neck": ["sep_k3_d1", "conv_k5_d1"],
                        "head": ["conv_k3_d1", "ir_k5_d1_e6"]},
            "detector_kwargs": {"rpn_pre_nms_top_n_train": 100, "rpn_post_nms_top_n_train": 50,
                                 "rpn_pre_nms_top_n_test": 50, "rpn_post_nms_top_n_test": 20,
                                 "box_batch_size_per_image": 16, "rpn_batch_size_per_image": 32}}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return shapes(root=str(tmp_path_factory.mktemp("shapes")), image_size=64, train=16, val=4, test=4, seed=3)


class _Noise(nn.Module):
    """A useless candidate: fresh noise, unrelated to the input."""

    def forward(self, x):
        return torch.randn_like(x) * 3.0


class _Square(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 6, bias=False)

    def forward(self, x):
        return self.lin(x * x)


def test_group_lasso_screening_removes_the_columns_it_drives_to_zero():
    # two layers act on the same input and add up; the target needs both a linear and a squared term,
    # the four noise candidates only hurt: the group lasso drives their columns to zero and they go
    torch.manual_seed(0)
    ops = ("noise_a", "linear", "noise_b", "square", "noise_c", "noise_d")
    layers = [ChoiceModule(Choice(f"toy.layer{i}.op", ops),
                           [_Noise(), nn.Linear(6, 6, bias=False), _Noise(), _Square(), _Noise(), _Noise()])
              for i in range(2)]
    screen = GroupLassoScreen(layers, mu=0.1, keep=2)
    a, b = torch.randn(6, 6), torch.randn(6, 6)

    def batches():
        while True:
            x = torch.randn(64, 6)
            yield x, x @ a.T + (x * x) @ b.T

    def loss(batch):
        x, y = batch
        return nn.functional.mse_loss(sum(layer(x) for layer in layers), y)

    weights = [p for m in layers for p in m.candidates.parameters()]
    out = run_screen(screen, weights, loss, batches(), steps=300, arch_start=0, lr=0.02, arch_lr=0.02, rounds=4,
                     grad_clip=None)
    assert sorted(out["kept"]) == ["linear", "square"]
    assert [len(r) for r in out["removed"]] == removal_plan(6, 2, 4) == [1, 1, 1, 1]
    norms = out["norms"]
    assert all(norms[op] == 0.0 for op in ops if op.startswith("noise"))
    assert norms["linear"] > 0.0 and norms["square"] > 0.0
    assert out["losses"][-1] < out["losses"][0]


def test_candidate_costs_match_a_hand_count():
    space = HitDetectorSpace(num_classes=2, **TINY)
    model = space.supernet()
    costs = candidate_costs(model, 64)
    # neck.post0 runs on P2 at 64/4 = 16x16 with 32 channels (256 * 0.125)
    c, hw = 32, 16 * 16
    sep_k3 = (9 * c + c * c) * hw
    conv_k5 = 25 * c * c * hw
    assert costs["neck.post0.op"].tolist() == [sep_k3, conv_k5]
    assert costs["head.block0.op"][0] == 20 * 9 * c * c * 49  # per RoI x the 20 test-time proposals


def test_flops_penalty_pushes_the_search_to_cheaper_ops(tiny_data):
    space = HitDetectorSpace(num_classes=tiny_data.num_classes, **TINY)
    searcher = HitDetSearcher(space, epochs=1, batch_size=4, steps_per_epoch=3, arch_lr=0.5, flops_lambda=50.0)
    arch = searcher.fit(None, tiny_data)
    cheap = {name: space.choice(name).options[int(costs.argmin())] for name, (_, costs) in searcher._costs.items()}
    assert all(arch[name] == op for name, op in cheap.items())
    assert searcher.history[0]["cost"] > 0


def test_arch_steps_wait_for_arch_start_epoch(tiny_data):
    """The paper's schedule: weight-only epochs first, then alternating steps; alpha must not move before."""
    space = HitDetectorSpace(num_classes=tiny_data.num_classes, **TINY)
    searcher = HitDetSearcher(space, epochs=2, batch_size=4, steps_per_epoch=2, arch_lr=0.5, flops_lambda=50.0,
                              arch_start_epoch=1)
    searcher.fit(None, tiny_data)
    warm, searched = searcher.history
    assert warm["arch_loss"] == 0.0 and warm["cost"] == 0.0  # no architecture step in the weight-only epoch
    assert searched["arch_loss"] > 0 and searched["cost"] > 0
    assert min(max(p) - min(p) for p in searcher.alphas().values()) > 0.1
    with pytest.raises(ConfigError, match="strategy.arch_start_epoch"):
        HitDetSearcher(space, epochs=2, arch_start_epoch=2)


@pytest.mark.slow
def test_end_to_end_search_derives_a_detector_that_trains_and_is_measured(tiny_data, tmp_path):
    space = HitDetectorSpace(num_classes=tiny_data.num_classes, **TINY)
    ckpt = tmp_path / "searcher.pt"
    first = HitDetSearcher(space, epochs=1, batch_size=4, steps_per_epoch=2, checkpoint=str(ckpt))
    first.fit(None, tiny_data)
    assert ckpt.is_file()
    resumed = HitDetSearcher(space, epochs=2, batch_size=4, steps_per_epoch=2, checkpoint=str(ckpt))
    arch = resumed.fit(None, tiny_data)
    assert [row["epoch"] for row in resumed.history] == [0, 1]  # epoch 0 came from the checkpoint
    assert space.check(arch) == arch
    assert set(resumed.alphas()) == set(space.names)

    torch.manual_seed(0)
    model = space.build(arch, num_classes=tiny_data.num_classes)
    images, targets = collate([tiny_data.train[i] for i in range(4)])
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    losses = []
    for _ in range(8):
        loss, _ = detection_loss(model, images, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-2:]) < sum(losses[:2])
    metrics = coco_map(tiny_data.test.coco, predict(model, tiny_data.test, batch_size=4))
    assert set(metrics) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert all(0.0 <= v <= 100.0 for v in metrics.values())
