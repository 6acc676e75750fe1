"""MobileSpace: published networks expressed in the space, choices and canonical archs, supernet, latency specs."""

import itertools
import random

import pytest
import torch
import torchvision

from core.cost import LatencyTable, count_macs, count_params
from core.engine.registry import SPACES, ConfigError
from core.api import activate, set_mixture
from core.zoo.mobile import (MobileSpace, cifar_space, digits_space, efficientnet_b0_space_and_arch,
                                mobilenetv2_space_and_arch)


def copy_weights_in_order(model, reference):
    """Load `reference`'s state into `model` entry by entry (same layer order, same shapes)."""
    ours, theirs = model.state_dict(), reference.state_dict()
    assert len(ours) == len(theirs)
    for (name, a), (other, b) in zip(ours.items(), theirs.items()):
        assert a.shape == b.shape, (name, other)
    model.load_state_dict(dict(zip(ours, theirs.values())))


@pytest.mark.parametrize("factory, reference, params, paper_macs", [
    # Tan & Le 2019: 5.3M params, 0.39B "FLOPs" (= MACs); torch's counter gives 385,814,752 MACs
    # (SE 1x1 convs counted, SE gating and BN not): 1.1% below the rounded paper figure.
    (efficientnet_b0_space_and_arch, torchvision.models.efficientnet_b0, 5_288_548, 0.39e9),
    # Sandler et al. 2018 quote 3.4M params and 300M MACs; torchvision's 1000-class model, reproduced layer by
    # layer here, has 3,504,872 params and 300,774,272 MACs by torch's counter.
    (mobilenetv2_space_and_arch, torchvision.models.mobilenet_v2, 3_504_872, 0.30e9),
])
def test_published_networks_in_the_space(factory, reference, params, paper_macs):
    space, arch = factory()
    model = space.build(arch).eval()
    assert count_params(model) == params
    macs = count_macs(model, (1, 3, 224, 224))
    assert abs(macs - paper_macs) / paper_macs < 0.02  # tolerance: 2% of the paper's rounded figure
    ref = reference().eval()
    assert macs == count_macs(ref, (1, 3, 224, 224))
    copy_weights_in_order(model, ref)  # same layers in the same order compute the same function
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x))


def test_every_sampled_digits_arch_runs_on_8x8():
    space, rng = digits_space(), random.Random(0)
    archs = [space.sample(rng) for _ in range(25)]
    extremes = [{c.name: c.options[-1] for c in space.choices}, {c.name: c.options[0] for c in space.choices}]
    for arch in archs + [space.check(a) for a in extremes]:
        model = space.build(arch)
        assert model(torch.randn(1, 1, 8, 8)).shape == (1, 10)
        assert space.build(arch, channel_divisor=4, num_classes=3).eval()(torch.randn(2, 1, 8, 8)).shape == (2, 3)


def test_cifar_preset_runs_on_32x32():
    space = cifar_space(num_classes=100)
    model = space.build(space.sample(random.Random(1)))
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_canonical_resets_inactive_layers():
    space = digits_space()
    arch = space.default().to_dict()
    arch.update({"stage1.depth": 1, "stage1.layer2.op": "mb6_k5", "stage1.layer1.op": "skip"})
    canonical = space.check(arch)
    assert canonical["stage1.layer1.op"] == canonical["stage1.layer2.op"] == "mb1_k3"
    assert canonical == space.check({**arch, "stage1.layer2.op": "mb3_k3"})
    assert "stage1.layer1.op" not in space.active(canonical)
    deeper = space.check({**arch, "stage1.depth": 3})
    assert deeper["stage1.layer2.op"] == "mb6_k5"


def test_first_layer_of_a_stage_cannot_skip():
    space = digits_space()
    assert "skip" not in space.choice("stage0.layer0.op").options
    assert "skip" in space.choice("stage0.layer1.op").options
    assert "skip" not in digits_space(allow_skip=False).choice("stage0.layer1.op").options


def test_mutate_changes_exactly_one_active_choice():
    space, rng = digits_space(), random.Random(2)
    for _ in range(100):
        a = space.sample(rng)
        b = space.mutate(a, rng)
        common = set(space.active(a)) & set(space.active(b))
        assert sum(a[n] != b[n] for n in common) == 1
        assert b == space.canonical(b)


def test_encode_is_injective_on_samples():
    space, rng = digits_space(), random.Random(3)
    archs = {space.sample(rng) for _ in range(200)}
    codes = {tuple(space.encode(a).tolist()) for a in archs}
    assert len(codes) == len(archs) > 150


def test_size_counts_canonical_archs():
    space = MobileSpace(in_channels=1, stem_channels=4, stem_stride=1, first_block=None, head_channels=0,
                        stages=[{"channels": [4, 8], "stride": 1, "depths": [1, 2]},
                                {"channels": 8, "stride": 2, "depths": [2, 3]}],
                        kernels=[3], expansions=[1, 3])
    canonical = {space.canonical(space.from_indices(idx))
                 for idx in itertools.product(*(range(len(c)) for c in space.choices))}
    assert space.size() == len(canonical) == 2 * (2 + 2 * 3) * (2 * 3 + 2 * 3 * 3)


def test_channel_divisor_divides_every_width():
    space, arch = efficientnet_b0_space_and_arch()
    model = space.build(arch, channel_divisor=4)
    assert model.stem[0].out_channels == 8 and model.head[0].out_channels == 320
    assert model.stages[0][0].project[0].out_channels == 6
    assert model.stages[0][0].se.reduce.out_channels == 1  # int(0.25 * 4 input channels)
    assert count_params(model) < count_params(space.build(arch)) / 8


def test_drop_connect_is_active_in_training_only():
    space = digits_space(drop_connect=0.5)
    arch = space.check({**space.default().to_dict(), "stage0.depth": 2, "stage1.depth": 3})
    model = space.build(arch)
    assert model.stages[0][0].drop_connect == 0  # the rate grows linearly with block index, from 0 (EfficientNet)
    assert 0 < model.stages[0][1].drop_connect < model.stages[1][2].drop_connect < 0.5
    x = torch.randn(4, 1, 8, 8)
    torch.manual_seed(0)
    assert not torch.equal(model(x), model(x))  # residual branches dropped at random
    model.eval()
    torch.testing.assert_close(model(x), model(x))


def test_supernet_single_path_equals_inherited_standalone_net():
    space, rng = digits_space(), random.Random(4)
    supernet = space.supernet().eval()
    widest = {f"stage{i}.width": max(s.channels) for i, s in enumerate(space.stages)}
    for _ in range(10):
        arch = space.check({**space.sample(rng).to_dict(), **widest})
        activate(supernet, arch)
        standalone = space.inherit(supernet, arch).eval()
        x = torch.randn(3, 1, 8, 8)
        with torch.no_grad():
            torch.testing.assert_close(supernet(x), standalone(x))
    narrow = space.sample(random.Random(5))
    assert space.inherit(supernet, narrow)(torch.randn(1, 1, 8, 8)).shape == (1, 10)


def test_supernet_mixture_mode_trains_architecture_logits():
    space = digits_space()
    supernet = space.supernet()
    set_mixture(supernet)
    supernet(torch.randn(2, 1, 8, 8)).sum().backward()
    depth_logits = supernet.stages[1].depth.logits
    assert depth_logits.grad is not None and depth_logits.grad.abs().sum() > 0


def test_layer_specs_feed_a_latency_table():
    space, rng = digits_space(), random.Random(6)
    arch = space.sample(rng)
    specs = space.layer_specs(arch, input_size=8)
    layers = sum(arch[f"stage{i}.depth"] for i in range(len(space.stages)))
    skips = sum(arch[f"stage{i}.layer{j}.op"] == "skip" for i in range(3) for j in range(arch[f"stage{i}.depth"]))
    assert len(specs) == 1 + layers - skips + 1  # stem, non-skip layers, classifier (no head, no first block)
    assert specs[0].input_shape == (1, 8, 8)
    for spec in specs:  # a spec's module accepts its input shape
        spec.make().eval()(torch.randn(1, *spec.input_shape))
    table = LatencyTable(threads=1, warmup=1, repeats=3)
    predicted = table.predict(specs)
    assert predicted > 0 and table.predict_arch(space, arch, input_size=8) == predicted
    report = table.prediction_error(space, [arch, space.sample(rng)], input_size=8)
    assert len(report["rows"]) == 2
    errors = [abs(r["predicted_ms"] - r["measured_ms"]) / r["measured_ms"] for r in report["rows"]]
    assert report["mean_abs_rel_error"] == pytest.approx(sum(errors) / len(errors))


def test_latency_keys_are_distinct_for_distinct_ops():
    space, arch = efficientnet_b0_space_and_arch()
    b0 = space.layer_specs(arch)
    shapes = {}
    for spec in b0 + space.layer_specs(arch, input_size=160) + space.layer_specs(arch, channel_divisor=2):
        params = sum(p.numel() for p in spec.make().parameters())
        assert shapes.setdefault(spec.key, (spec.input_shape, params)) == (spec.input_shape, params)
    assert len({s.key for s in b0}) == len(b0) - 4  # B0 repeats 4 layers: 1 in stage2, 1 in stage3, 2 in stage4
    k5 = space.check({**arch.to_dict(), "stage0.layer1.op": "mb6_k5"})
    assert {s.key for s in space.layer_specs(k5)} != {s.key for s in b0}


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"stages\[0\]\.depths: missing"):
        MobileSpace(stages=[{"channels": 16}])
    with pytest.raises(ConfigError, match=r"stages\[1\]\.stride"):
        MobileSpace(stages=[{"channels": 16, "depths": [1]}, {"channels": 8, "depths": [1], "stride": 3}])
    with pytest.raises(ConfigError, match="activation"):
        MobileSpace(activation="gelu6")
    with pytest.raises(ConfigError, match="kernels"):
        MobileSpace(kernels=[4])
    with pytest.raises(ConfigError, match="space.typo"):
        digits_space(typo=1)


def test_registered_for_configs():
    space = SPACES.build({"name": "mobile_digits", "num_classes": 5}, "space")
    assert space.build(space.default())(torch.randn(1, 1, 8, 8)).shape == (1, 5)
    assert isinstance(SPACES.build({"name": "mobile", "stages": [{"channels": 8, "depths": [1, 2]}]}, "space"),
                      MobileSpace)
