"""Surrogates (MLP, PNAS's LSTM and block MLP, the semi-supervised assessor) and the `predictor` strategy.

Synthetic targets with a known structure check that each model learns a
ranking; the shipped tabular benchmark (cell201 on digits) checks the
assessor's Kendall tau against the table with 100 labelled archs (target:
>= 0.6) and that the predictor-guided search beats random search on
the median of several seeds.
"""

import math
import random
import statistics

import numpy as np
import pytest
import torch

from core.engine.registry import STRATEGIES, ConfigError
from core.evaluation import Result
from core.predictors import (PREDICTORS, BlockMLPPredictor, BlockTokenizer, LSTMPredictor, MLPPredictor,
                             SemiSupervisedAssessor, arch_graph, chain_graph, default_blocks, kendall_tau,
                             resolve_blocks)
from core.api import Choice, SearchSpace
from core.zoo.cell201 import Cell201Space
from core.zoo.darts import DartsSpace
from core.strategies.predictor_guided import PredictorGuided
from core.strategies.random_search import RandomSearch

torch.set_num_threads(1)

OP_VALUE = {"none": 0.0, "skip_connect": 0.4, "nor_conv_3x3": 1.0}


def synthetic(space):
    """A known structure: convs are worth more on later edges, and a cell whose output node gets only `none`
    edges is dead (an interaction no per-choice model captures)."""
    def f(arch):
        if all(arch[n] == "none" for n in ("cell.e03", "cell.e13", "cell.e23")):
            return 0.1
        return 0.2 + 0.05 * sum(OP_VALUE[arch[n]] * (1 + 0.3 * k) for k, n in enumerate(space.names))
    return f


@pytest.fixture(scope="module")
def space():
    return Cell201Space()


@pytest.fixture(scope="module")
def labelled(space):
    archs = space.all_archs()
    f = synthetic(space)
    rng = random.Random(0)
    train = rng.sample(archs, 80)
    return archs, [f(a) for a in archs], train, [f(a) for a in train]


@pytest.fixture(scope="module")
def bench():
    from core.evaluation.tabular import TabularEvaluator

    try:
        return TabularEvaluator(None)          # the space the shipped table was built with
    except FileNotFoundError as err:
        pytest.skip(f"no tabular benchmark yet: {err}")


# -- models on a synthetic target --------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("name, make, tau_min", [
    ("mlp", lambda s: MLPPredictor(s, epochs=100), 0.8),
    ("lstm", lambda s: LSTMPredictor(s, epochs=60, hidden=32, embedding_dim=32, lr=3e-3), 0.8),
    ("block_mlp", lambda s: BlockMLPPredictor(s, epochs=60, hidden=32, embedding_dim=32, lr=3e-3), 0.6),
    # the synthetic target also scores ops on dead edges, so the assessor reads the unpruned graphs here
    ("assessor", lambda s: SemiSupervisedAssessor(s, prune=False), 0.8),
])
def test_predictors_rank_a_synthetic_target(space, labelled, name, make, tau_min):
    archs, y, train, ty = labelled
    model = make(space).fit(train, ty, unlabelled=archs)
    pred = model.predict(archs)
    assert pred.shape == (len(archs),) and np.isfinite(pred).all()
    tau = kendall_tau(pred, y)
    assert tau >= tau_min, (name, tau)
    assert PREDICTORS.get(name) is type(model)


@pytest.mark.slow
def test_assessor_without_space_graph_uses_a_chain_graph():
    flat = SearchSpace([Choice(f"c{i}", (0, 1, 2)) for i in range(8)])   # no `graph`: the chain fallback
    adj, labels = chain_graph(flat, flat.default())
    assert adj.shape == (10, 10) and adj.sum() == 9 and np.all(np.diag(adj, 1) == 1)
    assert labels[0] == "input" and labels[1] == ("c0", 0) and labels[-1] == "output"
    assert arch_graph(flat, flat.default())[1] == labels

    def f(arch):  # additive, plus a bonus when the first two choices agree
        return sum((i % 3 + 1) * arch[f"c{i}"] for i in range(8)) + 4.0 * (arch["c0"] == arch["c1"])

    rng = random.Random(1)
    archs = list(dict.fromkeys(flat.sample(rng) for _ in range(400)))
    y = [f(a) for a in archs]
    model = SemiSupervisedAssessor(flat, epochs=100, lr=1e-2).fit(archs[:100], y[:100], unlabelled=archs[100:])
    assert kendall_tau(model.predict(archs[100:]), y[100:]) > 0.6


def test_assessor_predictions_are_per_arch_and_reproducible(space, labelled):
    archs, y, train, ty = labelled
    unl = archs[::3]
    a = SemiSupervisedAssessor(space, ae_epochs=5, epochs=30, seed=3).fit(train, ty, unlabelled=unl)
    b = SemiSupervisedAssessor(space, ae_epochs=5, epochs=30, seed=3).fit(train, ty, unlabelled=unl)
    queries = archs[1::3][:50]                           # not graph nodes: they join inductively
    assert np.allclose(a.predict(queries), b.predict(queries))
    # a prediction does not depend on the other archs asked with it
    alone = np.array([a.predict([q])[0] for q in queries[:5]])
    assert np.allclose(alone, a.predict(queries)[:5], atol=1e-5)
    # graph nodes (labelled or unlabelled) answer with their node's output, in any batch
    assert np.allclose(a.predict(unl[:4]), a.predict(unl[:8])[:4], atol=1e-5)
    member = a.members[0]                               # one graph node per distinct pruned graph
    assert len(member.keys) == member.graph.P.shape[0] < len(set(train) | set(unl))
    P = member.graph.P.to_dense()
    assert torch.allclose(P, P.T, atol=1e-6) and (P.diagonal() > 0).all()   # symmetric, self loops


def test_failed_targets_count_as_the_worst(space, labelled):
    archs, y, train, ty = labelled
    ty = list(ty)
    dead = [i for i, a in enumerate(train) if ty[i] == max(ty)][0]
    ty[dead] = -math.inf
    model = MLPPredictor(space, epochs=100).fit(train, ty)
    assert model.predict([train[dead]])[0] < np.median(model.predict(train))


def test_ensembles_average_their_members(space, labelled):
    archs, y, train, ty = labelled
    ens = MLPPredictor(space, epochs=20, ensemble=3, seed=5).fit(train, ty)
    singles = [MLPPredictor(space, epochs=20, seed=5 + i).fit(train, ty).predict(archs[:20]) for i in range(3)]
    assert np.allclose(ens.predict(archs[:20]), np.mean(singles, axis=0), atol=1e-5)


# -- blocks and tokens ----------------------------------------------------------------------------------

def test_block_grouping_defaults_and_prefixes(space):
    assert default_blocks(space) == [["cell.e01"], ["cell.e02", "cell.e12"], ["cell.e03", "cell.e13", "cell.e23"]]
    darts = DartsSpace(C=8, layers=3)
    blocks = default_blocks(darts)
    assert len(blocks) == 8 and blocks[0] == ["normal.node0.in0.input", "normal.node0.in0.op",
                                               "normal.node0.in1.input", "normal.node0.in1.op"]
    assert blocks[4][0].startswith("reduce.node0.")
    assert resolve_blocks(space, ["cell.e01", ["cell.e02", "cell.e12"], "cell.e"]) == default_blocks(space)
    with pytest.raises(ValueError, match="match no block prefix"):
        resolve_blocks(space, ["cell.e01"])
    flat = SearchSpace([Choice("a", (1, 2)), Choice("b", (1, 2))])
    assert default_blocks(flat) == [["a"], ["b"]]
    tok = BlockTokenizer(space)
    arch = space.default()
    assert tok(arch, 2) == [[tok.vocab[("cell.e#", "nor_conv_3x3")]]] + [[tok.vocab[("cell.e#", "nor_conv_3x3")]] * 2]
    assert tok.vocab_size == 4                          # 3 ops shared by every edge + padding


# -- the predictor strategy -----------------------------------------------------------------------------

def drive(strategy, evaluate, budget, target=None):
    """Plain ask/tell loop; returns (queries to reach `target`, or budget + 1; best accuracy so far)."""
    best = -math.inf
    for q in range(1, budget + 1):
        arch = strategy.ask(1)[0]
        result = evaluate(arch)
        strategy.tell(arch, result)
        best = max(best, result.metrics["accuracy"])
        if target is not None and result.metrics["accuracy"] >= target:
            return q, best                               # reached: the rest of the budget changes nothing
    return budget + 1, best


def test_predictor_strategy_is_registered_and_checks_its_config(space):
    assert STRATEGIES.get("predictor") is PredictorGuided
    s = STRATEGIES.build({"name": "predictor", "model": "assessor", "warmup": 5, "predictor": {"epochs": 10}},
                         "strategy", space=space, seed=0)
    assert isinstance(s, PredictorGuided) and s.model == "assessor"
    with pytest.raises(ConfigError, match="strategy.predictor.epochz"):
        PredictorGuided(space, predictor={"epochz": 3})
    with pytest.raises(ConfigError, match="strategy.model"):
        PredictorGuided(space, model="gbdt")
    with pytest.raises(ConfigError, match="strategy.warmup"):
        PredictorGuided(space, warmup=0)


def test_predictor_strategy_is_deterministic_and_never_repeats(space):
    f = synthetic(space)

    def run(seed):
        s = PredictorGuided(space, seed=seed, warmup=8, round_size=4, pool_size=100, predictor={"epochs": 30})
        asked = []
        for _ in range(24):
            a = s.ask(1)[0]
            asked.append(a)
            s.tell(a, Result(metrics={"accuracy": f(a)}))
        return asked

    a, b = run(1), run(1)
    assert a == b and len(set(a)) == len(a) and a != run(2)


def _queries_to_top(evaluate, threshold, make, seeds, budget):
    return [drive(make(s), evaluate, budget, threshold)[0] for s in seeds]


def test_mlp_guided_search_beats_random_on_a_synthetic_target(space):
    f = synthetic(space)
    values = sorted((f(a) for a in space.all_archs()), reverse=True)
    threshold = values[math.ceil(0.01 * len(values)) - 1]

    def evaluate(arch):
        return Result(metrics={"accuracy": f(arch)})

    seeds, budget = range(5), 150
    rnd = _queries_to_top(evaluate, threshold, lambda s: RandomSearch(space, seed=s), seeds, budget)
    mlp = _queries_to_top(evaluate, threshold, lambda s: PredictorGuided(space, seed=s, model="mlp",
                                                                         predictor={"epochs": 60}), seeds, budget)
    assert statistics.median(mlp) < statistics.median(rnd) / 2, (mlp, rnd)


@pytest.mark.slow
def test_assessor_guided_search_beats_random_on_a_synthetic_target(space):
    f = synthetic(space)
    values = sorted((f(a) for a in space.all_archs()), reverse=True)
    threshold = values[math.ceil(0.01 * len(values)) - 1]

    def evaluate(arch):
        return Result(metrics={"accuracy": f(arch)})

    seeds, budget = range(5), 150
    rnd = _queries_to_top(evaluate, threshold, lambda s: RandomSearch(space, seed=s), seeds, budget)
    assessor = _queries_to_top(evaluate, threshold, lambda s: PredictorGuided(
        space, seed=s, model="assessor", predictor={"prune": False, "epochs": 100}), seeds, budget)
    # measured: 13-23 queries (the first model round) against random's 16-151
    assert statistics.median(assessor) < 0.75 * statistics.median(rnd), (assessor, rnd)


@pytest.mark.slow
def test_predictor_guided_search_end_to_end_on_the_tabular_benchmark(bench, tmp_path):
    """Search + journal + tabular evaluator, both models. The archs the model picks after the warm-up must be far
    better than the table's average (what random search draws). Queries to the top 1% on the shipped table:
    docs/strategies.md."""
    from core.journal import Journal
    from core.objective import Objective
    from core.search import Search

    space, mean = bench.space, float(np.mean(bench.values()))
    for model in ("mlp", "assessor"):
        strategy = PredictorGuided(space, seed=0, model=model, warmup=10, round_size=10)
        with Journal(tmp_path / f"{model}.sqlite") as journal:
            summary = Search(space, strategy, bench, Objective(), journal, budget=40, progress=False).run()
        picked = [r.metrics["accuracy"] for _, r in summary.trials[10:]]
        assert len({a for a, _ in summary.trials}) == 40 and strategy.rounds == 3
        assert np.mean(picked) > mean + 0.05, (model, np.mean(picked), mean)
        assert bench.rank(summary.best_arch) <= 0.1 * len(bench.values())


@pytest.mark.slow
def test_assessor_kendall_tau_with_100_labelled_archs(bench):
    """Kendall tau on the 629 unlabelled archs of the table (100 labelled, median of 3 samples), next to the MLP.

    The target is tau >= 0.6 with 100 labelled archs. The labels are the table's validation loss (negated),
    what benchmarks/strategies.py searches on. Measured on the shipped four-seed table: assessor 0.724 / 0.702 /
    0.709 held-out (MLP 0.551 / 0.568 / 0.509); against the validation accuracy instead, 0.613 / 0.633 / 0.627
    (MLP 0.504 / 0.522 / 0.404).
    """
    space = bench.space
    archs = bench.all_archs()
    y = -bench.values("val_loss")
    taus, taus_all, mlp_taus = [], [], []
    for seed in range(3):
        idx = random.Random(seed).sample(range(len(archs)), 100)
        rest = np.array(sorted(set(range(len(archs))) - set(idx)))
        train = [archs[i] for i in idx]
        pred = SemiSupervisedAssessor(space, seed=seed).fit(train, y[idx], unlabelled=archs).predict(archs)
        taus.append(kendall_tau(pred[rest], y[rest]))
        taus_all.append(kendall_tau(pred, y))
        mlp = MLPPredictor(space, seed=seed).fit(train, y[idx])
        mlp_taus.append(kendall_tau(mlp.predict([archs[i] for i in rest]), y[rest]))
    print(f"Kendall tau, 100 labelled: assessor {np.round(taus, 3)} held-out (median {statistics.median(taus):.3f}), "
          f"{np.round(taus_all, 3)} over all {len(archs)} (median {statistics.median(taus_all):.3f}); MLP "
          f"{np.round(mlp_taus, 3)} held-out (median {statistics.median(mlp_taus):.3f})")
    assert statistics.median(taus) >= 0.6
    assert statistics.median(taus) > statistics.median(mlp_taus) + 0.05
