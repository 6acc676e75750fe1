"""NetAdaptV2: ordered-dropout ops, channel-level bypass, the width space, super-network training and MCD."""

import random
import statistics

import pytest
import torch
import torch.nn.functional as F

from core.cost import LatencyTable, count_macs
from core.engine.registry import SPACES, STRATEGIES, ConfigError
from core.objective import Objective
from core.ops.ordered_dropout import (OrderedBatchNorm2d, OrderedConv2d, OrderedLinear, channel_bypass,
                                      ordered_dropout)
from core.api import Arch
from core.zoo.netadapt import Bypass, ConvLayer, MBLayer, NetAdaptSpace
from core.oneshot.netadapt import NetAdaptV2Searcher, OrderedDropoutTrainer
from core.testing import TinyClassification
from core.testing import digits
from core.oneshot.base import Searcher

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data():
    return digits()


@pytest.fixture(scope="module")
def space():
    return NetAdaptSpace()


@pytest.fixture(scope="module")
def trained(space, data):
    """A super-network trained 3 epochs with per-image ordered dropout (about 5 s on one thread)."""
    trainer = OrderedDropoutTrainer(space, data, TinyClassification(), epochs=3, batch_size=32, lr=0.2, seed=0)
    supernet = trainer.fit()
    return supernet, trainer.history


def _archs(space, n, seed=0):
    rng = random.Random(seed)
    smallest = Arch({c.name: c.options[0] for c in space.choices})
    return [space.default(), smallest] + [space.sample(rng) for _ in range(n)]


# -- ops ----------------------------------------------------------------------------------------------
def test_ordered_ops_mask_equals_truncation():
    torch.manual_seed(0)
    conv, bn, fc = OrderedConv2d(6, 8, 3, padding=1), OrderedBatchNorm2d(8), OrderedLinear(8, 5)
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2)
    bn.eval()
    x = torch.randn(3, 6, 5, 5)
    x[:, 4:] = 0  # an upstream layer of width 4, mask form
    for k in (0, 3, 8):
        widths = torch.full((3,), k)
        truncated = bn(conv(x[:, :4], k), k)
        masked = bn(conv(x, widths), widths)
        assert truncated.shape[1] == k
        assert torch.allclose(masked[:, :k], truncated, atol=1e-6)
        assert (masked[:, k:] == 0).all()
        assert torch.allclose(fc(truncated.mean((2, 3)), 2), fc(masked.mean((2, 3)), torch.full((3,), 2))[:, :2],
                              atol=1e-6)
    assert ordered_dropout(x, 2).shape[1] == 2


def test_masked_batchnorm_statistics_use_only_images_that_keep_the_channel():
    torch.manual_seed(0)
    bn = OrderedBatchNorm2d(4, momentum=1.0).train()
    x = torch.randn(6, 4, 3, 3) * 3 + 1
    widths = torch.tensor([4, 4, 2, 1, 4, 0])
    y = bn(x, widths)
    keep = widths > 2  # channel 3 is kept by images 0, 1, 4 only
    ref = F.batch_norm(x[keep], None, None, training=True)
    assert torch.allclose(y[keep, 3], ref[:, 3], atol=1e-5)
    assert (y[~keep, 3] == 0).all()
    assert torch.allclose(bn.running_mean[3], x[keep, 3].mean(), atol=1e-5)
    assert torch.allclose(bn.running_var[3], x[keep, 3].var(), atol=1e-4)


def test_channel_bypass_keeps_input_channels_beyond_the_width():
    x, y = torch.randn(2, 8, 4, 4), torch.randn(2, 8, 4, 4)
    out = channel_bypass(y, x, 3)
    assert torch.equal(out[:, :3], y[:, :3]) and torch.equal(out[:, 3:], x[:, 3:])
    assert torch.equal(channel_bypass(y, x, 0), x)
    masked = channel_bypass(y, x, torch.tensor([3, 0]))
    assert torch.equal(masked[0], out[0]) and torch.equal(masked[1], x[1])


# -- channel-level bypass: width 0 is the bypass --------------------------------------------------------
@pytest.mark.slow
def test_width_zero_layer_equals_its_bypass(space, trained):
    supernet, _ = trained
    torch.manual_seed(1)
    x = torch.randn(4, 16, 8, 8)
    cbc = supernet.layers[1]
    assert isinstance(cbc, ConvLayer) and cbc.bypass
    assert torch.equal(cbc(x, 0), x)
    y = cbc(x, torch.tensor([0, 16, 0, 4]))
    assert torch.equal(y[0], x[0]) and torch.equal(y[2], x[2]) and not torch.equal(y[1], x[1])
    assert torch.equal(y[3, 4:], x[3, 4:])  # the removed channels are the bypassed input channels
    block = supernet.layers[3]
    assert isinstance(block, MBLayer)
    h = torch.randn(3, 32, 4, 4)
    out = block(h, torch.tensor([0, 96, 0]), torch.full((3,), 32))
    assert torch.equal(out[0], h[0]) and torch.equal(out[2], h[2]) and not torch.equal(out[1], h[1])
    # a whole network: bypassed layers are Bypass modules, and dropping them keeps the rest of the network
    arch = space.default().updated({"layer1.width": 0, "layer3.width": 0, "layer6.width": 0})
    model = space.extract(supernet, arch).eval()
    assert isinstance(model.layers[1], Bypass) and isinstance(model.layers[3], Bypass)
    assert space.depth(arch) == space.depth(space.default()) - 3
    img = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        chained = img
        for i in (0, 2, 4, 5):
            chained = model.layers[i](chained)
        assert torch.equal(model.forward_features(img), chained)


# -- ordered dropout: the sub-network is the standalone slice -----------------------------------------
def test_subnetwork_equals_standalone_slice(space, trained):
    supernet, _ = trained
    supernet.eval()
    x = torch.randn(16, 1, 8, 8)
    with torch.no_grad():
        for arch in _archs(space, 10):
            supernet.activate(arch)
            truncated, features = supernet(x), supernet.forward_features(x)
            standalone = space.extract(supernet, arch).eval()
            assert torch.allclose(standalone(x), truncated, atol=1e-5, rtol=0)
            assert torch.allclose(standalone.forward_features(x), features[:, :standalone.forward_features(x).shape[1]],
                                  atol=1e-5, rtol=0)
            # the training (mask) form computes the same sub-network
            supernet.widths = [torch.full((len(x),), w) for w in space.widths(arch)]
            assert torch.allclose(supernet(x), truncated, atol=1e-5, rtol=0)
    supernet.activate(None)


def test_per_image_widths_train_several_subnetworks_in_one_pass(space, trained):
    supernet, _ = trained
    supernet.eval()
    archs = _archs(space, 2, seed=3)
    x = torch.randn(len(archs), 1, 8, 8)
    with torch.no_grad():
        supernet.widths = [torch.tensor([space.widths(a)[i] for a in archs]) for i in range(len(space.names))]
        mixed = supernet(x)
        for b, arch in enumerate(archs):
            alone = space.extract(supernet, arch).eval()(x[b:b + 1])
            assert torch.allclose(mixed[b:b + 1], alone, atol=1e-5, rtol=0)
    supernet.activate(None)


# -- the space --------------------------------------------------------------------------------------------
def test_space_choices_costs_and_registry(space, data):
    assert SPACES.get("netadapt") is NetAdaptSpace and STRATEGIES.get("netadapt") is NetAdaptV2Searcher
    assert space.choice("layer1.width").options == (0, 4, 8, 12, 16)   # cbc: width 0 = bypass
    assert space.choice("layer0.width").options == (4, 8, 12, 16)      # the stem cannot be bypassed
    assert space.choice("layer3.width").options == (0, 24, 48, 72, 96)  # expanded widths of an MB block
    assert space.default()["layer3.width"] == 96
    for arch in _archs(space, 4, seed=2):
        model = space.build(arch)
        assert space.macs(arch) == count_macs(model, (1, 1, 8, 8))
        specs = space.layer_specs(arch, input_size=(8, 8))
        assert len(specs) == space.depth(arch) + 1
        assert specs[0].input_shape == (1, 8, 8)
    with pytest.raises(ConfigError, match=r"layers\[1\]\.type|layers\[1\]"):
        NetAdaptSpace(layers=[{"type": "conv", "channels": 8}, {"type": "pool"}])
    with pytest.raises(ConfigError, match=r"layers\[0\]"):
        NetAdaptSpace(layers=[{"type": "cbc"}])


# -- super-network training ----------------------------------------------------------------------------
def test_supernet_training_loss_falls(trained):
    _, history = trained
    assert len(history) == 3
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]


# -- multi-layer coordinate descent ----------------------------------------------------------------------
def _mcd(space, supernet, data, seed, **kwargs):
    kwargs = {"budget_ratio": 0.3, "samples": 6, "layers_per_sample": 2, "bn_batches": 2, **kwargs}
    searcher = NetAdaptV2Searcher(space, seed=seed, task=TinyClassification(), **kwargs)
    arch = searcher.run(supernet, data)
    return searcher, arch


def _check_iterations(searcher, min_iterations=1):
    rows = searcher.history
    assert len(rows) >= 1 + min_iterations
    for before, row in zip(rows, rows[1:]):
        assert row["resource"] <= row["target"] + 1e-9     # every chosen candidate meets its iteration's target
        assert row["target"] < before["resource"]           # and each iteration asks for a reduction
    assert searcher.result["met_budget"] and rows[-1]["resource"] <= searcher.result["budget"]


def test_mcd_meets_macs_budget(space, trained, data):
    supernet, _ = trained
    searcher, arch = _mcd(space, supernet, data, seed=0)
    _check_iterations(searcher, min_iterations=3)  # 10% of the largest network's MACs per iteration, down to 30%
    assert space.macs(arch) <= 0.3 * space.macs(space.default())
    assert searcher.result["accuracy"] > 0.5


def test_mcd_meets_latency_budget_from_a_lookup_table(space, trained, data, tmp_path):
    supernet, _ = trained
    path = tmp_path / "lut.json"
    searcher, arch = _mcd(space, supernet, data, seed=0, resource="latency_ms", budget_ratio=0.5,
                          decrement_ratio=0.2, samples=3, latency_table=str(path), latency_repeats=4)
    _check_iterations(searcher)
    table = LatencyTable.load(path)
    assert table.predict_arch(space, arch, measure_missing=False, input_size=(8, 8)) <= searcher.result["budget"]


def test_budget_from_the_objective_constraint(space, trained, data):
    supernet, _ = trained
    objective = Objective.from_config(constraints=["macs <= 200000"])
    searcher = STRATEGIES.build({"name": "netadapt", "samples": 2, "bn_batches": 1, "decrement_ratio": 0.3},
                                "strategy", space=space, seed=0, objective=objective, task=TinyClassification())
    assert isinstance(searcher, Searcher)
    arch = searcher.run(supernet, data)
    assert space.macs(arch) <= 200000


@pytest.mark.slow
def test_mcd_beats_random_architectures_at_equal_budget(space, trained, data):
    """Median accuracy of MCD over 3 seeds vs. of 9 random archs within the same MACs budget (same scoring)."""
    supernet, _ = trained
    mcd, rand = [], []
    for seed in range(3):
        searcher, _ = _mcd(space, supernet, data, seed=seed)
        mcd.append(searcher.result["accuracy"])
        rng, budget = random.Random(100 + seed), searcher.result["budget"]
        for _ in range(3):  # uniform samples of the space, rejected until within the same budget
            arch = space.sample(rng)
            while searcher.resource(arch) > budget:
                arch = space.sample(rng)
            rand.append(searcher.evaluate(arch))
    assert statistics.median(mcd) > statistics.median(rand)
