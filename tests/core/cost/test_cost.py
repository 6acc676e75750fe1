"""Cost models: parameter and MAC counts against published numbers and hand computations, latency, lookup tables."""

import json

import pytest
import torch
import torchvision
from torch import nn

from core.cost import (LatencyTable, LayerSpec, count_flops, count_macs, count_params, measure_latency,
                       profile)


def tiny_net() -> nn.Module:
    """conv 3->8 (3x3, 16x16 map), depthwise 3x3 stride 2 (-> 8x8), linear 512 -> 10."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8), nn.Flatten(), nn.Linear(512, 10))


def test_resnet18_params_and_macs_match_published():
    model = torchvision.models.resnet18()
    assert count_params(model) == 11_689_512
    macs = count_macs(model, (1, 3, 224, 224))
    assert abs(macs - 1.82e9) / 1.82e9 < 0.01  # He et al. 2016 quote 1.8 GFLOPs (= MACs); torch counts 1.814G


def test_hand_computed_macs_of_conv_depthwise_and_linear():
    conv = 8 * 16 * 16 * (3 * 3 * 3)   # out channels x out pixels x (kernel area x in channels per group)
    depthwise = 8 * 8 * 8 * (3 * 3 * 1)
    linear = 512 * 10                  # biases and activations are not multiply-accumulates
    model = tiny_net()
    assert count_macs(model, torch.zeros(1, 3, 16, 16)) == conv + depthwise + linear
    assert count_flops(model, (1, 3, 16, 16)) == 2 * (conv + depthwise + linear)
    assert count_macs(model, (4, 3, 16, 16)) == 4 * (conv + depthwise + linear)  # scales with the batch


def test_count_flops_restores_training_mode_and_count_params_excludes_auxiliary():
    model = tiny_net().train()
    count_flops(model, (1, 3, 16, 16))
    assert model.training
    model.auxiliary_head = nn.Linear(4, 2)
    assert count_params(model) == 3 * 8 * 9 + (8 * 9 + 8) + (512 * 10 + 10)
    assert count_params(model, exclude=()) == count_params(model) + 4 * 2 + 2


def test_measure_latency_restores_threads_and_mode():
    model = tiny_net().train()
    threads = torch.get_num_threads()
    result = measure_latency(model, (3, 16, 16), batch=2, threads=1, warmup=1, repeats=5)
    assert torch.get_num_threads() == threads and model.training
    assert result.threads == 1 and result.batch == 2 and result.repeats == 5 and result.device == "cpu"
    assert 0 < result.median_ms <= result.p90_ms
    assert result.mean_ms > 0


def test_profile_reports_all_costs():
    out = profile(tiny_net(), (3, 16, 16), warmup=1, repeats=3)
    assert out["params"] == count_params(tiny_net())
    assert out["flops"] == 2 * out["macs"] and out["latency_ms"] > 0
    assert profile(tiny_net(), (3, 16, 16), latency=False)["latency_ms"] is None


def specs():
    def conv(cin, cout, stride):
        return LayerSpec(f"conv_i{cin}_o{cout}_s{stride}_r16", lambda: nn.Conv2d(cin, cout, 3, stride, 1),
                         (cin, 16, 16))

    return [conv(3, 8, 1), conv(8, 8, 2), conv(8, 8, 2)]


def test_latency_table_measures_each_key_once_and_sums():
    table = LatencyTable(threads=1, warmup=1, repeats=3)
    assert table.measure(specs()) == 2  # the repeated layer is timed once
    assert len(table) == 2
    predicted = table.predict(specs())
    entries = table.entries
    assert predicted == pytest.approx(entries["conv_i3_o8_s1_r16"] + 2 * entries["conv_i8_o8_s2_r16"])
    assert predicted > 0
    with pytest.raises(KeyError, match="no entry"):
        table.predict([LayerSpec("unseen", nn.Identity, (1,))], measure_missing=False)


def test_latency_table_round_trip(tmp_path):
    table = LatencyTable(threads=1, warmup=1, repeats=3)
    table.measure(specs())
    path = table.save(tmp_path / "sub" / "lut.json")
    assert [p.name for p in path.parent.iterdir()] == ["lut.json"]  # no temporary file left behind
    data = json.loads(path.read_text())
    assert data["threads"] == 1 and data["batch"] == 1 and data["torch"] == torch.__version__
    loaded = LatencyTable.load(path)
    assert loaded.entries == table.entries and loaded.setting() == table.setting()
    assert loaded.predict(specs(), measure_missing=False) == table.predict(specs())
    assert loaded.mismatch(threads=1) == []
    assert any("threads" in m for m in loaded.mismatch(threads=7))


def test_latency_table_load_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json"):
        LatencyTable.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(ValueError, match="bad.json"):
        LatencyTable.load(bad)
