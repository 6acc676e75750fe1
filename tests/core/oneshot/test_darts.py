"""DARTS search (Liu et al., ICLR 2019): toy task preferences, the second-order gradient, and real DARTS cells."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from core.engine.registry import STRATEGIES
from core.api import Arch, Choice, ChoiceModule, SearchSpace, architecture_parameters, set_mixture
from core.zoo.darts import DartsSpace, arch_to_genotype
from core.oneshot.darts import DartsSearcher
from core.testing import TinyClassification
from core.testing import digits
from core.oneshot.base import Searcher

torch.set_num_threads(1)

OPS = ("none", "mean", "identity")


class Zero(nn.Module):
    def forward(self, x):
        return x * 0.0


class Mean(nn.Module):
    """Keeps one number per sample: the pixel mean (almost no information about the digit)."""

    def forward(self, x):
        return x.mean(1, keepdim=True).expand_as(x)


def make_op(name):
    return {"none": Zero, "mean": Mean, "identity": nn.Identity}[name]()


class ToyNet(nn.Module):
    """flatten -> one choice of op -> tanh -> linear: only `identity` lets the digit through."""

    def __init__(self, op: nn.Module, num_classes: int):
        super().__init__()
        self.op = op
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        return self.fc(torch.tanh(self.op(x.flatten(1))))


class ToySpace(SearchSpace):
    def __init__(self):
        super().__init__([Choice("op", OPS, default="none")])

    def supernet(self, num_classes: int = 10):
        return ToyNet(ChoiceModule(self.choice("op"), [make_op(o) for o in OPS]), num_classes)

    def build(self, arch, num_classes: int = 10):
        return ToyNet(make_op(self.check(arch)["op"]), num_classes)


@pytest.fixture(scope="module")
def data():
    return digits()


@pytest.mark.parametrize("order,relaxation", [(1, "softmax"), (2, "softmax"), (1, "gumbel"), (1, "sparsestmax")])
def test_toy_task_derives_the_op_that_solves_it(data, order, relaxation):
    torch.manual_seed(0)
    space = ToySpace()
    searcher = DartsSearcher(space, task=TinyClassification(), epochs=4, order=order, relaxation=relaxation, arch_lr=0.05, lr=0.1,
                             temperature=(1.0, 0.5))
    arch = searcher.fit(None, data)
    assert arch == Arch(op="identity")
    weights = searcher.alphas()["op"]
    assert weights[OPS.index("identity")] == max(weights)
    assert searcher.history[-1]["train_accuracy"] > 0.5
    if relaxation == "sparsestmax":  # the schedule ends one-hot
        assert weights == [0.0, 0.0, 1.0]


def exact_unrolled_gradient(model, alphas, x_t, y_t, x_v, y_v, eta, weight_decay):
    """grad_alpha L_val(w - eta (grad_w L_train(w, alpha) + wd w), alpha), differentiating through the step."""
    names = [n for n, p in model.named_parameters() if all(p is not a for a in alphas)]
    params = dict(model.named_parameters())
    weights = [params[n] for n in names]
    train_loss = F.cross_entropy(model(x_t), y_t)
    grads = torch.autograd.grad(train_loss, weights, create_graph=True)
    unrolled = {n: w - eta * (g + weight_decay * w) for n, w, g in zip(names, weights, grads)}
    val_loss = F.cross_entropy(functional_call(model, unrolled, (x_v,)), y_v)
    return torch.autograd.grad(val_loss, alphas)


def test_second_order_gradient_matches_exact_unrolled_derivative():
    torch.manual_seed(1)
    space = ToySpace()
    model = space.supernet().double()
    set_mixture(model, "softmax")
    with torch.no_grad():
        model.op.logits.copy_(torch.tensor([0.2, -0.1, 0.3]))
    alphas = architecture_parameters(model)
    weights = [p for p in model.parameters() if all(p is not a for a in alphas)]
    x_t, x_v = torch.randn(32, 1, 8, 8, dtype=torch.float64), torch.randn(32, 1, 8, 8, dtype=torch.float64)
    y_t, y_v = torch.randint(0, 10, (32,)), torch.randint(0, 10, (32,))
    searcher = DartsSearcher(space, task=TinyClassification(), order=2, weight_decay=3e-4)
    before = [w.detach().clone() for w in weights]
    eta = 0.5  # a large step makes the second-order term large enough to matter
    ours = searcher.arch_gradients_second_order(model, (x_t, y_t), (x_v, y_v), alphas, weights, eta)
    exact = exact_unrolled_gradient(model, alphas, x_t, y_t, x_v, y_v, eta, 3e-4)
    first = searcher.arch_gradients_first_order(model, (x_v, y_v), alphas)
    assert torch.allclose(ours[0], exact[0], rtol=1e-4, atol=1e-7), (ours, exact)
    assert not torch.allclose(first[0], exact[0], rtol=1e-2)  # the implicit term is not negligible here
    assert all(torch.equal(w, b) for w, b in zip(weights, before))  # weights restored


@pytest.mark.slow
@pytest.mark.parametrize("order", [1, 2])
def test_darts_cells_on_digits_derive_a_buildable_genotype(data, order):
    space = DartsSpace(C=4, layers=3, in_channels=1, num_classes=10)
    searcher = DartsSearcher(space, task=TinyClassification(), epochs=1, order=order, batch_size=16, steps_per_epoch=3 - order,
                             supernet={"C": 4, "layers": 3})
    logits_before = [a.detach().clone() for a in architecture_parameters(space.supernet(C=4, layers=3))]
    arch = searcher.fit(None, data)
    assert space.is_valid(arch)
    genotype = arch_to_genotype(arch)
    assert len(genotype.normal) == 2 * space.steps and "none" not in {op for op, _ in genotype.normal}
    net = space.build(arch)
    assert net(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    # the architecture moved, and softmax derivation is exactly DartsSpace's
    after = architecture_parameters(searcher.supernet)
    assert len(after) == len(logits_before) == 2 * 14
    assert arch == space.derive(searcher.supernet)
    assert any(a.grad is None for a in after)  # grads are cleared after each architecture step


def test_sparsestmax_search_on_darts_cells_ends_one_hot(data):
    space = DartsSpace(C=4, layers=3, in_channels=1, num_classes=10, ops=["none", "skip_connect", "sep_conv_3x3"])
    searcher = DartsSearcher(space, task=TinyClassification(), epochs=1, relaxation="sparsestmax", batch_size=16, steps_per_epoch=2,
                             supernet={"C": 4, "layers": 3})
    arch = searcher.fit(None, data)
    assert space.is_valid(arch)
    assert all(sorted(w) == [0.0, 0.0, 1.0] for w in searcher.alphas().values())


def test_registered_as_a_searcher(tmp_path, data):
    assert STRATEGIES.get("darts") is DartsSearcher and issubclass(DartsSearcher, Searcher)
    space = ToySpace()
    searcher = STRATEGIES.build({"name": "darts", "epochs": 2, "arch_lr": 0.05, "checkpoint": str(tmp_path / "d.pt")},
                                "strategy", space=space, seed=0, objective=None, task=TinyClassification())
    assert not hasattr(searcher, "ask")
    searcher.fit(None, data)
    resumed = DartsSearcher(space, task=TinyClassification(), epochs=3, arch_lr=0.05, checkpoint=str(tmp_path / "d.pt"))
    assert resumed.fit(None, data) == Arch(op="identity")
    assert [row["epoch"] for row in resumed.history] == [0, 1, 2]
    with pytest.raises(ValueError, match="order"):
        DartsSearcher(space, task=TinyClassification(), order=3)
    with pytest.raises(ValueError, match="relaxation"):
        DartsSearcher(space, task=TinyClassification(), relaxation="sigmoid")
