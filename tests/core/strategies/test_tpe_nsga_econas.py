"""TPE (optuna), CSNAS-style contrastive evaluation, NSGA-II with EEEA-Net's EE-PI, EcoNAS hierarchical proxy.

Every strategy runs end to end on the shipped tabular benchmark (cell201 on
digits). Comparisons with random search use medians over 7 seeds, so one
lucky or unlucky seed cannot decide them. "Beats random" is asserted on a
synthetic landscape with exploitable structure and, for TPE, on the table's
validation loss (its reproducible signal; the accuracy's top is mostly seed
noise, so the accuracy runs only check that each strategy lands in the top
5% in most seeds). The measured comparisons on the table are in
docs/strategies.md.
"""

import math
import random
import statistics

import pytest
import torch

from core.testing import onemax
from core.engine.registry import EVALUATORS, STRATEGIES, check_kwargs
from core.evaluation import FunctionEvaluator, Result
from core.evaluation.contrastive import ContrastiveEvaluator, nt_xent, random_shift, replace_classifier
from core.evaluation.tabular import TabularEvaluator
from core.evaluation.train import TrainEvaluator
from core.journal import Journal
from core.objective import Objective, non_dominated
from core.search import Search
from core.api import Choice, SearchSpace
from core.zoo.cell201 import Cell201Space
from core.strategies import RandomSearch
from core.strategies.hierarchical import EcoNAS
from core.testing import TinyClassification
from core.strategies.nsga2 import NSGA2
from core.strategies.tpe import TPE

SEEDS = range(7)


@pytest.fixture(scope="module")
def bench():
    return TabularEvaluator(None)  # None: the space the table was built for


@pytest.fixture(scope="module")
def space(bench):
    return bench.space


@pytest.fixture(scope="module")
def digits_data():
    from core.testing import digits

    return digits()


def drive(strategy, evaluator, budget):
    """A plain ask/tell loop (the Search loop minus the journal), for many-seed comparisons."""
    trials = []
    while len(trials) < budget:
        for arch in strategy.ask(1):
            result = evaluator.evaluate(arch)
            strategy.tell(arch, result)
            trials.append((arch, result))
    return trials


def search(space, strategy, evaluator, objective, tmp_path, budget, name="j"):
    with Journal(tmp_path / f"{name}.sqlite", durability="process") as journal:
        return Search(space, strategy, evaluator, objective, journal, budget=budget, progress=False).run()


def queries_to_reach(trials, threshold, cap):
    for i, (_, result) in enumerate(trials, start=1):
        if result.ok and result.metrics["accuracy"] >= threshold:
            return i
    return cap + 1


# -- a structured synthetic landscape ---------------------------------------------------------------
# The shipped tabular benchmark's top 1% is a block of tied archs that random search reaches in ~25
# queries, so "beats random" is also checked where a landscape has structure to exploit: 8 choices of
# 5 options, score = sum of fixed random per-option weights (390,625 archs).

@pytest.fixture(scope="module")
def weighted():
    rng = random.Random(123)
    space = SearchSpace([Choice(f"c{i}", tuple(range(5))) for i in range(8)])
    weights = [[rng.random() for _ in range(5)] for _ in range(8)]

    def score(arch, epochs=None, max_epochs=9):
        value = sum(weights[i][arch[f"c{i}"]] for i in range(8))
        if epochs is not None:  # multi-fidelity: a noisy, shrunk view early in training
            noise = random.Random(f"{arch.key}/{epochs}").gauss(0, 0.6 * (1 - epochs / max_epochs) + 0.05)
            value = value * (0.5 + 0.5 * epochs / max_epochs) + noise
        return {"accuracy": value, "params": float(sum(arch.values())), "macs": 0.0}

    return space, score, sum(max(w) for w in weights)


# -- TPE ---------------------------------------------------------------------------------------------

def test_tpe_is_registered_and_deterministic_for_a_seed(weighted, tmp_path):
    space, score, _ = weighted
    assert STRATEGIES.get("tpe") is TPE
    check_kwargs(TPE, {"n_startup_trials": 20, "gamma": None, "multivariate": True}, "strategy")
    ev = FunctionEvaluator(score, "weighted")
    runs = [search(space, TPE(space, seed=s, n_startup_trials=8), ev, Objective(), tmp_path, 30, f"t{i}")
            for i, s in enumerate((3, 3, 4))]
    keys = [[a.key for a, _ in r.trials] for r in runs]
    assert keys[0] == keys[1] and keys[0] != keys[2]
    assert len(set(keys[0])) == 30  # repeats are answered from history, never asked twice


def test_tpe_tells_failures_and_infeasible_archs_as_worst(weighted, tmp_path):
    space, score, _ = weighted

    def flaky(arch):
        if arch["c0"] == 1:
            raise RuntimeError("boom")
        return {**score(arch), "macs": float(arch["c1"])}

    objective = Objective.from_config(constraints=["macs <= 2"])
    strategy = TPE(space, seed=0, n_startup_trials=5)
    summary = search(space, strategy, FunctionEvaluator(flaky), objective, tmp_path, 25)
    assert any(not r.ok for _, r in summary.trials) and summary.best_result.metrics["macs"] <= 2
    values = [t.value for t in strategy.study.trials if t.value is not None]
    assert -math.inf in values and len(values) >= 25  # failed and infeasible: COMPLETE trials at -inf
    assert all(t.state.name == "COMPLETE" for t in strategy.study.trials)


@pytest.mark.slow
def test_tpe_beats_random_on_a_structured_landscape(weighted):
    space, score, optimum = weighted
    ev = FunctionEvaluator(score, "weighted")

    def regret(strategy):
        return optimum - max(r.metrics["accuracy"] for _, r in drive(strategy, ev, 60))

    tpe = [regret(TPE(space, seed=s, n_startup_trials=10)) for s in SEEDS]
    rnd = [regret(RandomSearch(space, seed=s)) for s in SEEDS]
    # measured: median regret 0.80 vs 1.24
    assert statistics.median(tpe) < statistics.median(rnd) - 0.2, (tpe, rnd)


def test_tpe_on_the_tabular_benchmark(space, bench, tmp_path):
    summary = search(space, TPE(space, seed=0, n_startup_trials=10), bench, Objective(), tmp_path, 30)
    assert bench.in_top(summary.best_arch, 0.10)
    # a sanity level on the accuracy, whose top is mostly seed noise (docs/strategies.md)
    found = [max(drive(TPE(space, seed=s, n_startup_trials=10), bench, 40), key=lambda t: t[1].metrics["accuracy"])[0]
             for s in SEEDS]
    assert sum(bench.in_top(a, 0.05) for a in found) >= 5


def test_tpe_beats_random_on_the_tabular_benchmarks_loss(space, bench):
    """On the table's validation loss (what benchmarks/strategies.py searches on), 30 queries: the median table
    rank of the best arch found over 7 seeds. Measured: TPE 13 (3, 13, 6, 55, 17, 47, 5) vs random 27."""
    loss = Objective(metric="val_loss", direction="min")

    def best_rank(strategy):
        best = max(drive(strategy, bench, 30), key=lambda t: loss.fitness(t[1]))[0]
        return bench.rank(best, "val_loss")

    tpe = [best_rank(TPE(space, seed=s, objective=loss)) for s in SEEDS]
    rnd = [best_rank(RandomSearch(space, seed=s, objective=loss)) for s in SEEDS]
    assert statistics.median(tpe) * 1.5 < statistics.median(rnd), (tpe, rnd)


# -- CSNAS-style contrastive evaluation --------------------------------------------------------------

def test_contrastive_pieces():
    z = torch.randn(6, 4)
    assert nt_xent(z, z, 0.07) < nt_xent(z, torch.randn(6, 4), 0.07)  # matching views: low loss
    x = torch.arange(16.0).view(1, 1, 4, 4).repeat(50, 1, 1, 1)
    shifted = random_shift(x, 1, torch.Generator().manual_seed(0))
    assert shifted.shape == x.shape and not torch.equal(shifted, x)
    assert (shifted == 0).any()  # zero fill at the borders
    net = replace_classifier(Cell201Space(C=4, N=1).build(Cell201Space().default()), 10, projection_dim=7)
    assert net(torch.randn(2, 1, 8, 8)).shape == (2, 7)


def test_contrastive_loss_falls_over_epochs_on_digits(digits_data):
    space = Cell201Space(C=8, N=1)
    ev = ContrastiveEvaluator(space, digits_data, epochs=4, sample_ratio=0.5)
    _, losses = ev.train(space.default())
    assert losses[-1] < losses[0] - 0.5, losses


def test_tpe_minimises_the_contrastive_loss_end_to_end(digits_data, tmp_path):
    space = Cell201Space(C=4, N=1)
    ev = EVALUATORS.build({"name": "contrastive", "epochs": 1, "sample_ratio": 0.25, "batch_size": 64},
                          "evaluator", space=space, data=digits_data)
    assert isinstance(ev, ContrastiveEvaluator)
    objective = Objective.from_config(metric="contrastive_loss", direction="min")
    strategy = STRATEGIES.build({"name": "tpe", "n_startup_trials": 2}, "strategy", space=space, seed=0,
                                objective=objective)
    summary = search(space, strategy, ev, objective, tmp_path, 4)
    losses = [r.metrics["contrastive_loss"] for _, r in summary.trials]
    assert all(r.ok and {"params", "macs", "contrastive_loss"} <= set(r.metrics) for _, r in summary.trials)
    assert summary.best_result.metrics["contrastive_loss"] == min(losses)


# -- NSGA-II with EE-PI ------------------------------------------------------------------------------

def hypervolume(front, ref_params, ref_accuracy=0.0):
    """Area a (accuracy max, params min) front dominates, above ref_accuracy and left of ref_params."""
    points = sorted((r.metrics["params"], r.metrics["accuracy"]) for _, r in front)
    area, best = 0.0, ref_accuracy
    for i, (p, a) in enumerate(points):
        best = max(best, a)
        area += ((points[i + 1][0] if i + 1 < len(points) else ref_params) - p) * (best - ref_accuracy)
    return area


def test_nsga2_beats_random_on_a_structured_bi_objective_landscape(weighted):
    space, score, _ = weighted
    ev = FunctionEvaluator(score, "weighted")
    objective = Objective.from_config(pareto=["accuracy:max", "params:min"])
    nsga, rnd = [], []
    for s in SEEDS:
        strategy = NSGA2(space, seed=s, objective=objective, population_size=20)
        drive(strategy, ev, 160)
        nsga.append(hypervolume(strategy.front(), 33))
        baseline = RandomSearch(space, seed=s, objective=objective)
        drive(baseline, ev, 160)
        rnd.append(hypervolume(objective.pareto_front(baseline.history), 33))
    assert statistics.median(nsga) > 1.05 * statistics.median(rnd), (nsga, rnd)


def test_nsga2_on_the_tabular_benchmark_keeps_a_non_dominated_front(space, bench, tmp_path):
    objective = Objective.from_config(pareto=["accuracy:max", "params:min"])
    strategy = STRATEGIES.build({"name": "nsga2", "population_size": 12}, "strategy", space=space, seed=0,
                                objective=objective)
    summary = search(space, strategy, bench, objective, tmp_path, 72)
    front = strategy.front()
    points = [[-r.metrics["accuracy"], r.metrics["params"]] for _, r in front]
    assert front and non_dominated(points) == list(range(len(points)))
    assert {a for a, _ in front} == {a for a, _ in summary.pareto}
    assert strategy.generation == 6 and len(strategy.parents) == 12  # 72 = 6 generations of 12
    assert all(m.rank == 0 for m in strategy.parents[: len(strategy.population_front())])
    # every member of the population's first front is on or behind the all-time front
    best = {r.metrics["params"]: r.metrics["accuracy"] for _, r in front}
    assert all(any(p <= r.metrics["params"] and a >= r.metrics["accuracy"] for p, a in best.items())
               for _, r in strategy.population_front())


def test_early_exit_never_evaluates_an_arch_over_the_threshold(space, bench):
    objective = Objective.from_config(pareto=["accuracy:max", "params:min"])
    threshold = float(sorted(bench.table.params)[len(bench.table.params) // 3])  # about a third of the space fits
    strategy = NSGA2(space, seed=1, objective=objective, population_size=10, early_exit_params=threshold)
    trials = drive(strategy, bench, 50)
    assert all(r.metrics["params"] < threshold for _, r in trials)
    assert strategy.early_exits > 0 and strategy.generation >= 4
    # the count from the built network is the table's
    arch = trials[0][0]
    assert strategy.params_of(arch) == bench.evaluate(arch).metrics["params"]
    # a params_fn replaces the build; children over the threshold are redrawn too
    convs = lambda a: sum(a[n] == "nor_conv_3x3" for n in space.names)  # noqa: E731
    quick = NSGA2(space, seed=1, objective=objective, population_size=6, early_exit_params=2, params_fn=convs)
    evaluated = [a for a, _ in drive(quick, bench, 30)]
    assert quick.generation >= 4 and all(convs(a) < 2 for a in evaluated)
    with pytest.raises(RuntimeError, match="early_exit_params"):
        NSGA2(space, seed=0, early_exit_params=1, params_fn=lambda a: 5.0, max_resample_tries=20).ask(1)


# -- EcoNAS hierarchical proxy -----------------------------------------------------------------------

def test_econas_pools_tournaments_and_aging(space, bench):
    strategy = EcoNAS(space, seed=0, population_size=16, iterations=12)
    summary = strategy.run(bench)
    ends = strategy.segment_ends(bench)
    assert ends[-1] == bench.epochs and len(ends) == 3
    assert summary.iterations == 12
    assert {e for _, e, _ in summary.records} == set(ends)
    levels = [sum(1 for a2, e, _ in summary.records if a2 == a) for a in {a for a, _, _ in summary.records}]
    assert summary.epochs_used == sum(ends[n - 1] for n in levels)  # each network paid for its segments
    assert summary.segment_evaluations <= 16 + 12 * (8 + 4 + 16)
    assert all(n.level <= 3 for n in strategy.nets.values())
    # networks not trained for max_age iterations have left the pools
    assert all(11 - n.last_updated < 10 for pool in strategy._pools(11) for n in pool)
    assert any(n.dropped for n in strategy.nets.values())
    best_arch, best_result = strategy.best()
    assert best_arch == summary.best_arch and best_result.metrics["epoch"] == bench.epochs


class WeightedMultiFidelity:
    """The weighted landscape seen through a noisy proxy that sharpens with epochs (reliable proxy)."""

    max_epochs = 9

    def __init__(self, score):
        self.score = score

    def evaluate_at(self, arch, epochs):
        return Result(metrics=self.score(arch, epochs, self.max_epochs))


def test_econas_beats_random_at_the_same_epoch_budget(weighted):
    space, score, optimum = weighted
    backend = WeightedMultiFidelity(score)
    budget = 60 * backend.max_epochs
    eco, rnd = [], []
    for s in SEEDS:
        found = EcoNAS(space, seed=s).run(backend, budget_epochs=budget).best_arch
        eco.append(optimum - score(found)["accuracy"])
        baseline = RandomSearch(space, seed=s)
        for arch in (baseline.ask(1)[0] for _ in range(60)):
            baseline.tell(arch, backend.evaluate_at(arch, backend.max_epochs))
        rnd.append(optimum - score(baseline.best()[0])["accuracy"])
    assert statistics.median(eco) < statistics.median(rnd) - 0.2, (eco, rnd)


def test_econas_on_the_tabular_benchmark(space, bench):
    """Two segments (5 + 5 epochs): this table's 3-epoch accuracy says little about the final one (see the docs)."""
    budget = 30 * bench.epochs
    found = []
    for s in SEEDS:
        strategy = EcoNAS(space, seed=s, segments=2, continue_top=[8], children=[8, 8])
        summary = strategy.run(bench, budget_epochs=budget)
        assert summary.epochs_used <= budget and summary.best_result.metrics["epoch"] == bench.epochs
        assert strategy.segment_ends(bench)[-1] == bench.epochs
        found.append(summary.best_arch)
    assert sum(bench.in_top(a, 0.05) for a in found) >= 5


def test_econas_ask_tell_is_the_single_proxy_variant(onemax_space, tmp_path):
    ev = FunctionEvaluator(onemax, "onemax")
    strategy = STRATEGIES.build({"name": "econas", "population_size": 16}, "strategy", space=onemax_space, seed=0,
                                objective=Objective())
    summary = search(onemax_space, strategy, ev, Objective(), tmp_path, 16 * 8)
    first16 = max(r.metrics["accuracy"] for _, r in summary.trials[:16])
    assert summary.best_result.metrics["accuracy"] > first16 + 2


def test_train_evaluator_budget_resumes_one_schedule(digits_data):
    space = Cell201Space(C=4, N=1)
    arch = space.default()
    train = TrainEvaluator(space, digits_data, TinyClassification(), epochs=2, batch_size=64, sample_ratio=0.3)
    first, second = train.evaluate_at(arch, 1), train.evaluate_at(arch, 2)
    whole = train.evaluate(arch)
    assert second.metrics["accuracy"] == pytest.approx(whole.metrics["accuracy"])
    assert first.metrics["epochs"] == 1 and second.metrics["params"] == whole.metrics["params"]
    strategy = EcoNAS(space, seed=0, population_size=3, iterations=1, segments=2, continue_top=[1],
                      children=[1, 1])
    summary = strategy.run(train)
    # 3 initial segments; iteration 0: the top of e1 continues (1), one child from e1 (e2 was empty) (1)
    assert summary.epochs_used == 3 + 1 + 1 and summary.best_result.ok
    assert summary.best_result.metrics["epochs"] == 2
