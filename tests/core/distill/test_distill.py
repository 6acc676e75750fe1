"""core.distill: taps by module path, KD / hint / AT / MMD losses against hand computations, the Distiller,
multi-step (teacher -> assistant -> student) distillation on digits, and teachers from local checkpoints."""

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.utils.data import DataLoader

from core.distill import (Distiller, MultiStepDistillation, SmallCNN, StagedTeacher, Taps, at_loss, attention_map,
                          feature_mmd, kd_loss, load_teacher, mmd, register_teacher, train_distiller)
from core.engine.registry import ConfigError
from core.engine.runs import save_checkpoint


def resnet_by_hand(model, x):
    """torchvision ResNet's forward written out, returning the intermediate tensors the taps should see."""
    h = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    layer1 = model.layer1(h)
    layer2 = model.layer2(layer1)
    layer3_0 = model.layer3[0](layer2)
    layer3_1 = model.layer3[1](layer3_0)
    layer4 = model.layer4(layer3_1)
    pooled = torch.flatten(model.avgpool(layer4), 1)
    return {"layer2": layer2, "layer3.1": layer3_1, "layer3.1:input": layer3_0, "fc:input": pooled,
            "": model.fc(pooled)}


@pytest.mark.parametrize("backend", ["torchdistill", "builtin"])
def test_taps_record_the_tensors_at_their_module_paths(backend):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=7).eval()
    x = torch.randn(2, 3, 32, 32)
    taps = Taps(model, ["layer2", "layer3.1", "layer3.1:input", "fc:input", ""], backend=backend)
    assert taps.backend == backend
    with torch.no_grad():
        out, feats = taps(x)
        expected = resnet_by_hand(model, x)
    assert set(feats) == set(expected)
    for name, tensor in expected.items():
        torch.testing.assert_close(feats[name], tensor, msg=name)
    torch.testing.assert_close(out, expected[""])
    # popped tensors are forgotten; a plain model call records again; remove() detaches the hooks
    with torch.no_grad():
        model(x)
    assert set(taps.pop()) == set(expected)
    with pytest.raises(KeyError, match="did not run"):
        taps.pop()
    taps.remove()
    with torch.no_grad():
        model(x)
    assert taps.pop(missing_ok=True) == {}


def test_taps_name_the_closest_module_for_a_wrong_path():
    model = torchvision.models.resnet18()
    with pytest.raises(KeyError, match=r"'layer3\.1'"):
        Taps(model, ["layer3.l"])
    with pytest.raises(ValueError, match="input"):
        Taps(model, ["layer3:inputs"])


def test_taps_keep_the_student_graph():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with Taps(model, ["0"]) as taps:
        _, feats = taps(torch.randn(5, 4))
        feats["0"].pow(2).sum().backward()
    assert model[0].weight.grad is not None and model[2].weight.grad is None


@pytest.mark.parametrize("backend", ["torchdistill", "builtin"])
def test_taps_survive_a_following_inplace_op(backend):
    """A tapped BN followed by ReLU(inplace=True): the tap holds the pre-activation values and backward works."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(inplace=True), nn.Linear(6, 2))
    x = torch.randn(8, 4)
    expected = model[1](model[0](x)).detach()
    assert (expected < 0).any()  # the ReLU would change it
    with Taps(model, ["1"], backend=backend) as taps:
        out, feats = taps(x)
        torch.testing.assert_close(feats["1"].detach(), expected)
        (feats["1"].pow(2).sum() + out.sum()).backward()
    assert model[0].weight.grad is not None


def test_staged_teacher_returns_stage_outputs_and_stops_early():
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    calls = []
    model.layer4.register_forward_hook(lambda *_: calls.append("layer4"))
    staged = StagedTeacher(model, ["layer1", "layer2", "layer3", "layer4"])
    x = torch.randn(2, 3, 32, 32)
    feats = staged(x, upto=1)
    assert len(feats) == 2 and calls == []  # layer3/layer4 never ran
    with torch.no_grad():
        expected = model.layer2(model.layer1(model.maxpool(model.relu(model.bn1(model.conv1(x))))))
    torch.testing.assert_close(feats[1], expected)
    assert [s[0] for s in staged.shapes(x)] == [64, 128, 256, 512] and calls == ["layer4"]
    staged.train()
    assert not staged.model.training and not any(p.requires_grad for p in staged.model.parameters())
    with pytest.raises(RuntimeError, match="order"):
        StagedTeacher(model, ["layer2", "layer1"])(x)


def test_kd_loss_matches_a_hand_computation():
    s = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    t = torch.tensor([[2.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    y = torch.tensor([1, 2])
    temp = 2.0

    def softmax(row):
        e = [math.exp(v / temp) for v in row]
        return [v / sum(e) for v in e]

    kl = 0.0
    for srow, trow in zip(s.tolist(), t.tolist()):
        ps, pt = softmax(srow), softmax(trow)
        kl += sum(q * (math.log(q) - math.log(p)) for p, q in zip(ps, pt))
    expected = kl / 2 * temp ** 2
    assert kd_loss(s, t, temp).item() == pytest.approx(expected, rel=1e-6)
    ce = sum(-math.log(math.exp(row[k]) / sum(math.exp(v) for v in row)) for row, k in zip(s.tolist(), y.tolist())) / 2
    assert kd_loss(s, t, temp, y, ce_weight=0.3).item() == pytest.approx(expected + 0.3 * ce, rel=1e-6)
    assert kd_loss(t, t, temp).item() == pytest.approx(0.0, abs=1e-7)


def test_attention_transfer_matches_the_formula():
    torch.manual_seed(0)
    s, t = torch.randn(3, 4, 5, 5), torch.randn(3, 6, 5, 5)

    def q(feature, b, reduce):
        maps = [[sum(float(feature[b, c, i, j]) ** 2 for c in range(feature.shape[1])) for j in range(5)]
                for i in range(5)]
        flat = [v / (feature.shape[1] if reduce == "mean" else 1) for row in maps for v in row]
        norm = math.sqrt(sum(v * v for v in flat))
        return [v / norm for v in flat]

    paper = sum(math.sqrt(sum((a - b) ** 2 for a, b in zip(q(s, k, "sum"), q(t, k, "sum")))) for k in range(3)) / 3
    assert at_loss(s, t).item() == pytest.approx(paper, rel=1e-5)
    code = sum((a - b) ** 2 for k in range(3) for a, b in zip(q(s, k, "mean"), q(t, k, "mean"))) / (3 * 25)
    assert at_loss(s, t, mode="code").item() == pytest.approx(code, rel=1e-5)
    assert attention_map(s).norm(dim=1).allclose(torch.ones(3))
    assert at_loss(s, 2 * s).item() == pytest.approx(0.0, abs=1e-6)  # scale-free
    with pytest.raises(ValueError, match="spatial"):
        at_loss(s, torch.randn(3, 4, 4, 4))


def test_mmd_is_zero_for_identical_distributions_and_positive_otherwise():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 8, generator=g)
    same = torch.randn(200, 8, generator=g)
    shifted = torch.randn(200, 8, generator=g) + 1.0
    for kernel in ("gaussian", "polynomial", "linear"):
        assert mmd(x, x.clone(), kernel=kernel).abs().item() < 1e-5
    assert abs(mmd(x, same, unbiased=True).item()) < 0.01
    assert mmd(x, shifted, unbiased=True).item() > 0.1
    assert mmd(x, shifted).item() > 20 * abs(mmd(x, same, unbiased=True).item())
    # hand computation of the biased estimate with a fixed bandwidth on two tiny sets
    a, b = torch.tensor([[0.0], [1.0]]), torch.tensor([[2.0]])
    k = lambda u, v: math.exp(-(u - v) ** 2 / 2)  # noqa: E731 - sigma = 1
    expected = (k(0, 0) + 2 * k(0, 1) + k(1, 1)) / 4 + k(2, 2) - 2 * (k(0, 2) + k(1, 2)) / 2
    assert mmd(a, b, sigma=1.0).item() == pytest.approx(expected, rel=1e-6)
    # NST-style: channels as samples, channel counts may differ
    f = torch.randn(2, 6, 4, 4, generator=g)
    assert feature_mmd(f, f.clone()).abs().item() < 1e-5
    assert feature_mmd(f, torch.randn(2, 9, 4, 4, generator=g).abs(), kernel="polynomial").item() > 0


def small_net(width, out=10):
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, out))


def test_hint_adapter_is_built_trained_and_in_the_parameters():
    torch.manual_seed(0)
    teacher, student = small_net(16), small_net(8)
    x = torch.randn(16, 1, 8, 8)
    cfg = {"terms": [{"loss": "hint", "student": "3", "teacher": "3", "weight": 1.0}]}
    with pytest.raises(RuntimeError, match="adapter"):
        d = Distiller.from_config(cfg, student, teacher=teacher)
        d.loss(d(x))
    d = Distiller.from_config(cfg, student, teacher=teacher, example_input=x[:2])
    adapter = d.terms[0].adapter
    assert isinstance(adapter, nn.Conv2d)
    assert (adapter.in_channels, adapter.out_channels, adapter.kernel_size) == (8, 16, (1, 1))
    assert {id(p) for p in adapter.parameters()} <= {id(p) for p in d.trainable_parameters()}
    assert not any(id(p) in {id(q) for q in d.trainable_parameters()} for p in teacher.parameters())
    opt = torch.optim.Adam(d.trainable_parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss = d.loss(d(x))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    # same channels: no adapter, plain MSE
    same = Distiller(small_net(8), small_net(8), [{"loss": "mse", "student": "3", "teacher": "3"}], example_input=x[:2])
    assert same.terms[0].adapter is None


def test_distiller_combines_weighted_terms_and_keeps_the_teacher_frozen():
    torch.manual_seed(0)
    teacher, student = small_net(16), small_net(8)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    terms = [{"loss": "kd", "weight": 0.5, "temperature": 3.0}, {"loss": "ce", "weight": 0.25},
             {"loss": "at", "student": "4", "teacher": "4", "weight": 10.0},
             {"loss": "mmd", "student": "4", "teacher": "4", "weight": 2.0}]
    d = Distiller(teacher, student, terms)
    d.train()
    assert not teacher.training and student.training
    out = d(x)
    total = d.loss(out, y)
    with torch.no_grad():
        t_logits = teacher(x)
        s4 = student[:5](x)
        t4 = teacher[:5](x)
    expected = (0.5 * kd_loss(out, t_logits, 3.0) + 0.25 * F.cross_entropy(out, y) + 10 * at_loss(s4, t4)
                + 2 * feature_mmd(s4, t4))
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)
    assert set(d.last_terms) == {"0:kd", "1:ce", "2:at", "3:mmd"}
    total.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert student[0].weight.grad is not None
    with pytest.raises(ConfigError, match=r"distill.terms\[0\].loss"):
        Distiller(teacher, student, [{"loss": "kld"}])
    with pytest.raises(ConfigError, match=r"distill.terms\[0\].temp"):
        Distiller(teacher, student, [{"loss": "kd", "temp": 4}])
    with pytest.raises(ConfigError, match="teacher"):
        Distiller(None, student, [{"loss": "kd"}])


def accuracy(model, dataset):
    model.eval()
    with torch.no_grad():
        x, y = dataset.tensors
        return (model(x).argmax(1) == y).float().mean().item()


@pytest.mark.slow
def test_multi_step_chain_trains_assistant_then_student():
    from core.testing import digits

    torch.manual_seed(0)
    data = digits()
    loader = DataLoader(data.train, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
    teacher = SmallCNN(widths=(32, 48, 64))
    ce_only = Distiller(None, teacher, [{"loss": "ce"}])
    train_distiller(ce_only, loader, epochs=2, lr=0.1)
    ce_only.close()
    assert accuracy(teacher, data.val) > 0.9
    assistant = SmallCNN(widths=(16, 24, 32), stem_channels=8)
    student = SmallCNN(widths=(4, 8, 8), stem_channels=4, convs_per_stage=1)
    before = [m.state_dict()["stem.0.weight"].clone() for m in (assistant, student)]
    chain = MultiStepDistillation(teacher, [assistant, student],
                                  terms=[{"loss": "kd", "temperature": 4.0, "weight": 1.0},
                                         {"loss": "ce", "weight": 0.5}],
                                  epochs=3, lr=[0.1, 0.1])
    records = chain.run(loader)
    assert [(r.teacher, r.student) for r in records] == [("teacher", "assistant1"), ("assistant1", "student")]
    for record in records:
        assert len(record.losses) == 3 and record.losses[-1] < 0.7 * record.losses[0], record
    for model, w0 in zip((assistant, student), before):
        assert not torch.equal(model.state_dict()["stem.0.weight"], w0)
    assert accuracy(assistant, data.val) > 0.8 and accuracy(student, data.val) > 0.5
    with pytest.raises(ConfigError, match="multistep.lr"):
        MultiStepDistillation(teacher, [assistant, student], [{"loss": "kd"}], lr=[0.1, 0.1, 0.1])


@pytest.mark.slow
def test_load_teacher_from_local_checkpoints_and_user_modules(tmp_path):
    torch.manual_seed(0)
    source = torchvision.models.resnet18(num_classes=10)
    plain, wrapped = tmp_path / "r18.pth", tmp_path / "r18_wrapped.ckpt"
    save_checkpoint(plain, source.state_dict())
    save_checkpoint(wrapped, {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}})
    x = torch.randn(1, 3, 32, 32)
    source.eval()
    for path in (plain, wrapped):
        teacher = load_teacher({"name": "resnet18", "checkpoint": str(path), "kwargs": {"num_classes": 10}})
        assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
        torch.testing.assert_close(teacher(x), source(x))
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_teacher({"name": "resnet18", "checkpoint": str(missing)})
    with pytest.raises(ConfigError, match=str(plain)):  # 1000-class model, 10-class weights
        load_teacher({"name": "resnet18", "checkpoint": str(plain)})
    with pytest.raises(ConfigError, match="not a torchvision model"):
        load_teacher("resnet_nope")
    with pytest.raises(ConfigError, match="teacher.ckpt"):
        load_teacher({"name": "resnet18", "ckpt": "x"})
    own = load_teacher({"name": "small_cnn", "kwargs": {"widths": [8, 8, 8]}})
    assert isinstance(own, SmallCNN) and own.stages[0][0].out_channels == 8
    register_teacher("test_tiny_teacher", lambda depth=2: torch.nn.Sequential(*[torch.nn.Identity()] * depth))
    assert len(load_teacher({"name": "test_tiny_teacher", "kwargs": {"depth": 3}})) == 3
    with pytest.raises(ConfigError, match="teacher.kwargs.width: unknown key"):
        load_teacher({"name": "test_tiny_teacher", "kwargs": {"width": 3}})
    with pytest.raises(ConfigError, match="import path"):  # a config never names code to import
        load_teacher({"name": "core.distill.teachers:SmallCNN", "kwargs": {"widths": [8, 8, 8]}})
    assert isinstance(load_teacher("torchvision:mobilenet_v2"), torchvision.models.MobileNetV2)
    try:
        import timm  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="timm"):
            load_teacher("timm:tf_efficientnet_b7")
