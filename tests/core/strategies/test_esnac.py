"""ESNAC (Cao et al., ICLR 2019): the learned-kernel GP, the strategy, and the compression space."""

import math
import random
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from core.engine.data import DataSplits
from core.engine.registry import EVALUATORS, SPACES, STRATEGIES, ConfigError
from core.evaluation import FunctionEvaluator
from core.journal import Journal
from core.objective import Objective
from core.search import Search
from core.zoo.cell201 import EDGE_NAMES, Cell201Space
from core.evaluation.compression import CompressionEvaluator
from core.zoo.compression import LAYER_TYPES, CompressionSpace, compression_reward, digits_cnn
from core.strategies import RandomSearch
from core.strategies.esnac import (ESNAC, EmbeddingKernel, choice_tokens, expected_improvement, gp_posterior,
                                   layer_descriptors, loo_log_likelihood, loo_posterior)


# -- the GP pieces against hand computations ------------------------------------------------------

def test_gp_posterior_and_ei_by_hand():
    # three orthonormal embeddings: with alpha = 0.01, k(e_i, e_j) = exp(-2 / 0.02) ~ 0 off the diagonal
    E = torch.eye(3, dtype=torch.float64)
    y = torch.tensor([0.2, -0.5, 1.0], dtype=torch.float64)
    mu, sigma = gp_posterior(E, y, E[:1], alpha=0.01, beta=0.05)
    assert float(mu) == pytest.approx(0.2 / 1.05)                            # k^T (K + beta I)^-1 y
    assert float(sigma) == pytest.approx(math.sqrt(1 - 1 / 1.05 + 0.05))     # sqrt(k(x,x) - k^T(..)^-1 k + beta)
    # a point far from all three: the prior (0, sqrt(1 + beta))
    far = torch.tensor([[-1.0, 0.0, 0.0]], dtype=torch.float64)
    mu_far, sigma_far = gp_posterior(E, y, far)
    assert float(mu_far) == pytest.approx(0.0, abs=1e-12) and float(sigma_far) == pytest.approx(math.sqrt(1.05))
    # a wider kernel couples the points: compare with the formulas written out in numpy
    X = np.array([[0.0], [1.0], [2.0]])
    q = np.array([[0.5]])
    alpha, beta = 0.5, 0.05
    K = np.exp(-((X - X.T) ** 2) / (2 * alpha))
    k = np.exp(-((X - q.T) ** 2) / (2 * alpha))[:, 0]
    A_inv = np.linalg.inv(K + beta * np.eye(3))
    mu_hand = k @ A_inv @ y.numpy()
    sigma_hand = math.sqrt(1 - k @ A_inv @ k + beta)
    mu_t, sigma_t = gp_posterior(torch.tensor(X), y, torch.tensor(q), alpha, beta)
    assert float(mu_t) == pytest.approx(mu_hand) and float(sigma_t) == pytest.approx(sigma_hand)
    # EI = (mu - y*) Phi(z) + sigma phi(z)
    y_best = 1.0
    z = (mu_hand - y_best) / sigma_hand
    ei_hand = (mu_hand - y_best) * 0.5 * (1 + math.erf(z / math.sqrt(2))) \
        + sigma_hand * math.exp(-z * z / 2) / math.sqrt(2 * math.pi)
    assert float(expected_improvement(mu_t, sigma_t, y_best)) == pytest.approx(ei_hand)
    assert ei_hand > 0


def test_closed_form_loo_equals_the_official_refits():
    torch.manual_seed(0)
    E = torch.nn.functional.normalize(torch.randn(6, 4, dtype=torch.float64), dim=1)
    y = torch.randn(6, dtype=torch.float64)
    alpha, beta = 0.3, 0.05
    mu, sigma = loo_posterior(E, y, alpha, beta)
    total = 0.0
    for t in range(6):  # the official predict_ex: refit the GP without point t
        keep = [i for i in range(6) if i != t]
        m, s = gp_posterior(E[keep], y[keep], E[t:t + 1], alpha, beta)
        assert float(mu[t]) == pytest.approx(float(m)) and float(sigma[t]) == pytest.approx(float(s))
        total += -(0.918939 + math.log(float(s)) + (float(y[t]) - float(m)) ** 2 / (2 * float(s) ** 2))
    assert float(loo_log_likelihood(E, y, alpha, beta)) == pytest.approx(total / 6)


# -- the embedding ---------------------------------------------------------------------------------

def synthetic_cell_accuracy(arch):
    """A NAS-Bench-201-like landscape on the cell201 space: no path to the output is the worst,
    convolutions on the paths help, skips help a little, a bare input->output skip is penalised."""
    ops = {name: arch[name] for name in EDGE_NAMES}
    alive = {0}
    for j, i in ((0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3)):
        if j in alive and ops[f"cell.e{j}{i}"] != "none":
            alive.add(i)
    if 3 not in alive:
        return {"accuracy": 0.1, "params": 0.0, "macs": 0.0}
    convs = sum(op == "nor_conv_3x3" for op in ops.values())
    skips = sum(op == "skip_connect" for op in ops.values())
    value = 0.8 + 0.03 * convs + 0.01 * skips - 0.02 * (ops["cell.e03"] == "skip_connect") \
        + 0.015 * (ops["cell.e01"] == "nor_conv_3x3") * (ops["cell.e13"] == "nor_conv_3x3")
    return {"accuracy": value, "params": 0.0, "macs": 0.0}


def test_fallback_descriptors_and_loo_likelihood_improves_with_training():
    space = Cell201Space()
    arch = space.default()
    tokens = choice_tokens(space, arch)
    assert len(tokens) == 6 and len(tokens[0]) == 3 + 6  # one-hot of 3 ops + one-hot of 6 positions
    assert tokens[2][space.choices[2].index(arch["cell.e12"])] == 1 and tokens[2][3 + 2] == 1
    assert layer_descriptors(space, arch).shape == (6, 9)
    rng = random.Random(0)
    archs = [space.sample(rng) for _ in range(16)]
    y = torch.tensor([synthetic_cell_accuracy(a)["accuracy"] for a in archs], dtype=torch.float64)
    y = (y - y.mean()) / y.std()
    kernel = EmbeddingKernel(9, hidden_size=16, num_layers=1, lr=0.01, seed=0)
    kernel.add([layer_descriptors(space, a) for a in archs], y.tolist())
    before = kernel.log_likelihood()
    kernel.fit(steps=60, tol=0.0)
    after = kernel.log_likelihood()
    assert after > before + 0.3, (before, after)
    embeddings = kernel.embed(kernel.x).detach()
    assert torch.allclose(embeddings.norm(dim=1), torch.ones(16, dtype=torch.float64))  # L2-normalised


# -- the strategy -----------------------------------------------------------------------------------

# short-budget settings: few kernels, a small LSTM trained fast; every kernel sees the whole (short) history
SMALL = dict(n_initial=6, n_kernels=3, subset_prob=1.0, fit_steps=15, hidden_size=8, num_layers=1, lr=0.03,
             n_candidates=1000)


def best_rank(strategy, evaluator, budget, ranks):
    best = None
    for _ in range(budget):
        arch = strategy.ask(1)[0]
        result = evaluator.evaluate(arch)
        strategy.tell(arch, result)
        best = ranks[arch] if best is None else min(best, ranks[arch])
    return best


def test_esnac_is_registered_and_deterministic(tmp_path):
    space = Cell201Space()
    strategy = STRATEGIES.build({"name": "esnac", **SMALL}, "strategy", space=space, seed=1)
    ev = FunctionEvaluator(synthetic_cell_accuracy, "synthetic")
    keys = []
    for name, s in (("a", strategy), ("b", ESNAC(space, seed=1, **SMALL))):
        with Journal(tmp_path / f"{name}.sqlite") as journal:
            summary = Search(space, s, ev, Objective(), journal, budget=10, progress=False).run()
        keys.append([x.key for x, _ in summary.trials])
    assert keys[0] == keys[1] and len(set(keys[0])) == 10
    assert len(strategy.kernels) == 3 and len(strategy.top(4)) == 4


@pytest.mark.slow
def test_esnac_beats_random_on_a_cell_landscape():
    space = Cell201Space()
    ev = FunctionEvaluator(synthetic_cell_accuracy, "synthetic")
    values = {a: ev.evaluate(a).metrics["accuracy"] for a in space.all_archs()}
    ranks = {a: 1 + sum(v > values[a] for v in values.values()) for a in values}
    es, rnd = [], []
    for seed in range(5):
        es.append(best_rank(ESNAC(space, seed=seed, **SMALL), ev, 14, ranks))
        rnd.append(best_rank(RandomSearch(space, seed=seed), ev, 14, ranks))
    assert statistics.median(es) < statistics.median(rnd), (es, rnd)


def _table_or_skip():
    from core.evaluation.tabular import TabularEvaluator, default_table_path

    if not Path(default_table_path()).is_file():
        pytest.skip("the tabular benchmark is not built yet")
    return TabularEvaluator()


@pytest.mark.slow
def test_esnac_runs_on_the_tabular_benchmark_and_finds_good_cells():
    """End to end on the tabular evaluator: 20 queries, 5 seeds; the arch each search returns (best validation
    accuracy) is ranked by the table's mean of validation and test accuracy (validation alone ties in groups).

    With the test's small surrogate ESNAC does NOT beat random search on this table at small budgets (it
    settles on a plateau of tied cells at rank 27 of 729); what is checked here is that it runs on the table
    and returns cells from the top 10 %, far above a random cell (median rank 365), which a broken acquisition
    (a sign error in EI, a kernel that ignores the data) would not.
    """
    tab = _table_or_skip()
    quality = {a: (tab.value(a, "val") + tab.value(a, "test")) / 2 for a in tab.all_archs()}
    ranks = {a: 1 + sum(q > quality[a] for q in quality.values()) for a in quality}

    def returned_rank(strategy):
        best, value = None, -math.inf
        for _ in range(20):
            arch = strategy.ask(1)[0]
            result = tab.evaluate(arch)
            strategy.tell(arch, result)
            if result.metrics["accuracy"] > value:
                best, value = arch, result.metrics["accuracy"]
        return ranks[best]

    es = [returned_rank(ESNAC(tab.space, seed=seed, **SMALL)) for seed in range(5)]
    assert statistics.median(es) <= 0.1 * len(ranks), es


# -- the compression space ---------------------------------------------------------------------------

def tiny_teacher():
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


def count(model):
    return sum(p.numel() for p in model.parameters())


def test_teacher_arch_reproduces_the_teacher_and_removals_keep_shapes():
    space = CompressionSpace()
    assert SPACES.get("compression") is CompressionSpace
    x = torch.randn(3, 1, 8, 8)
    teacher = space.teacher.eval()
    same = space.build(space.teacher_arch()).eval()
    with torch.no_grad():
        assert torch.allclose(same(x), teacher(x))
    assert count(same) == count(teacher) == 112_106
    base = space.teacher_arch()
    for i in space.removable:
        layer = space.layers[i]
        assert layer.in_shape == layer.out_shape
        student = space.build(base.replace(**{f"layer{i}.remove": True})).eval()
        shapes = []
        hooks = [m.register_forward_hook(lambda m, inp, out: shapes.append(tuple(out.shape[1:])))
                 for m in student.layers]
        with torch.no_grad():
            assert student(x).shape == (3, 10)
        for h in hooks:
            h.remove()
        assert shapes == [layer.out_shape for layer in space.layers]  # every layer keeps the teacher's shape
        if layer.kind == "Conv2d":
            assert count(student) == count(teacher) - layer.module.weight.numel()
    # layers that change the shape (the first conv, pools, the classifier) are not removable
    assert 0 not in space.removable and len(space.layers) - 1 not in space.removable


def test_shrinking_and_skips_keep_the_network_valid():
    space = CompressionSpace(teacher=tiny_teacher())
    assert space.groups == [8, 16]  # widths of the convs; the logits layer is not shrinkable
    x = torch.randn(2, 1, 8, 8)
    base = space.teacher_arch()
    sizes = []
    for ratio in space.choice("width8.shrink").options:
        student = space.build(base.replace(**{"width8.shrink": ratio}))
        with torch.no_grad():
            assert student(x).shape == (2, 10)
        sizes.append(count(student))
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > sizes[-1]
    assert space.widths(base.replace(**{"width8.shrink": 0.5, "width16.shrink": 0.875})) == {8: 4, 16: 2}
    # a skip between shape-compatible layers adds an input; into a removed layer it is inactive
    i, j = space.skips[0]
    with_skip = space.build(base.replace(**{f"skip.{i}.{j}": True}))
    assert with_skip.sources[j] == [j - 1, i]
    if j in space.removable:
        removed = space.check(base.replace(**{f"skip.{i}.{j}": True, f"layer{j}.remove": True}))
        assert removed[f"skip.{i}.{j}"] is False
    rng = random.Random(0)
    for _ in range(20):
        arch = space.sample(rng)
        with torch.no_grad():
            assert space.build(arch)(x).shape == (2, 10)
        rows = space.layer_descriptors(arch)
        assert len(rows) == len(space.layers) and len(rows[0]) == len(LAYER_TYPES) + 6 + 2 * len(space.layers)
        for j, row in enumerate(rows):  # removed layers read as Identity
            if j in space.removable and arch[f"layer{j}.remove"]:
                assert row[LAYER_TYPES.index("Identity")] == 1


def test_compression_size_counts_distinct_compressions():
    import itertools

    teacher = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    space = CompressionSpace(teacher=teacher, shrink_levels=2)
    assert space.removable == [1, 2, 3] and space.groups == [4]
    combos = itertools.product(*(c.options for c in space.choices))
    distinct = {space.check(dict(zip(space.names, values))) for values in combos}
    assert len(distinct) == space.size() == 480


def test_space_rejects_what_it_cannot_compress():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3, padding=1)
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            return self.fc((x + self.conv(x)).flatten(1))

    with pytest.raises(ValueError, match="not the chain"):
        CompressionSpace(teacher=Residual())
    with pytest.raises(ConfigError, match="unknown teacher"):
        CompressionSpace(teacher="resnet9000")
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        CompressionSpace(checkpoint="/nowhere.pt")
    # by hand: convs 288 + 9,216 + 9,216 + 18,432 + 36,864 + 36,864, six BNs 2 x (32 x 3 + 64 x 3), linear 650
    assert sum(p.numel() for p in digits_cnn().parameters()) == 112_106


def test_reward_formula_by_hand():
    # c = 1 - 25/100 = 0.75, a = 0.9/0.95; r = c (2 - c) a
    assert compression_reward(25, 100, 0.9, 0.95) == pytest.approx(0.75 * 1.25 * 0.9 / 0.95)
    assert compression_reward(100, 100, 0.9, 0.9) == 0.0       # the teacher itself: no compression, no reward
    assert compression_reward(0, 100, 0.95, 0.95) == pytest.approx(1.0)


def digits_splits():
    """scikit-learn's 8x8 digits as DataSplits (built here: importing the task package would pull Lightning in)."""
    from sklearn.datasets import load_digits
    from torch.utils.data import TensorDataset

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = (x - x.mean()) / x.std()
    y = torch.tensor(bunch.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train, val = perm[:1200], perm[1200:]
    return DataSplits("digits", TensorDataset(x[train], y[train]), TensorDataset(x[val], y[val]),
                      TensorDataset(x[val], y[val]), (1, 8, 8), num_classes=10)


def test_a_short_compression_search_end_to_end(tmp_path):
    data = digits_splits()
    space = CompressionSpace(teacher=tiny_teacher())
    evaluator = EVALUATORS.build({"name": "compression", "epochs": 1, "teacher_epochs": 5, "teacher_lr": 0.01,
                                  "sample_ratio": 0.5},
                                 "evaluator", space=space, data=data)
    assert evaluator.epochs == 1 and evaluator.sample_ratio == 0.5
    strategy = ESNAC(space, seed=0, n_initial=3, n_kernels=2, fit_steps=5, n_candidates=30, hidden_size=8,
                     num_layers=1)
    objective = Objective(metric="reward")
    with Journal(tmp_path / "journal.sqlite") as journal:
        summary = Search(space, strategy, evaluator, objective, journal, budget=5, progress=False).run()
    assert all(r.ok for _, r in summary.trials), [r.reason for _, r in summary.trials]
    teacher_params = count(space.teacher)
    for arch, r in summary.trials:
        m = r.metrics
        assert m["teacher_accuracy"] > 0.5
        c = 1 - m["params"] / teacher_params
        assert m["compression"] == pytest.approx(c)
        assert m["reward"] == pytest.approx(c * (2 - c) * m["accuracy"] / m["teacher_accuracy"])
    assert summary.best_result.metrics["reward"] > 0 and summary.best_result.metrics["params"] < teacher_params
    with pytest.raises(ConfigError, match="needs space.name 'compression'"):
        CompressionEvaluator(Cell201Space(), data)


def test_esnac_embeds_compressions_with_the_official_descriptors():
    space = CompressionSpace(teacher=tiny_teacher())
    strategy = ESNAC(space, seed=0)
    rng = random.Random(1)
    d = strategy.descriptors(space.sample(rng))
    assert d.shape == (len(space.layers), len(LAYER_TYPES) + 6 + 2 * len(space.layers))
    assert float(d.abs().max()) <= 1.0  # scaled by the largest values over the teacher and random compressions
