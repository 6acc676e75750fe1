"""TPE (optuna), CSNAS-style contrastive evaluation, NSGA-II with EEEA-Net's EE-PI, EcoNAS hierarchical proxy.

"Beats random" tests run on the shipped tabular benchmark (cell201 on digits)
and compare medians over several seeds, so one lucky or unlucky seed cannot
decide them.
"""

import math
import os
import statistics

import pytest
import torch

from conftest import onemax
from core.engine.registry import EVALUATORS, STRATEGIES, check_kwargs
from core.evaluation import FunctionEvaluator, Result
from core.evaluation.contrastive import ContrastiveEvaluator, nt_xent, random_shift, replace_classifier
from core.evaluation.tabular import TabularEvaluator
from core.evaluation.train import TrainEvaluator
from core.journal import Journal
from core.objective import Objective, non_dominated
from core.search import Search
from core.space import Arch
from core.spaces.cell201 import Cell201Space
from core.strategies import RandomSearch
from core.strategies.hierarchical import EcoNAS, SegmentedTraining
from core.strategies.nsga2 import NSGA2
from core.strategies.tpe import TPE

SEEDS = range(7)


@pytest.fixture(scope="module")
def bench():
    return TabularEvaluator(None, path=os.environ.get("ARCHFORGE_TEST_TABLE"))  # the space the table was built for


@pytest.fixture(scope="module")
def space(bench):
    return bench.space


@pytest.fixture(scope="module")
def digits_data():
    from tasks.classification.data import digits

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


# -- TPE ---------------------------------------------------------------------------------------------

def test_tpe_is_registered_and_deterministic_for_a_seed(onemax_space, tmp_path):
    assert STRATEGIES.get("tpe") is TPE
    check_kwargs(TPE, {"n_startup_trials": 20, "gamma": None, "multivariate": True}, "strategy")
    ev = FunctionEvaluator(onemax, "onemax")
    runs = [search(onemax_space, TPE(onemax_space, seed=s, n_startup_trials=8), ev, Objective(), tmp_path, 30, f"t{i}")
            for i, s in enumerate((3, 3, 4))]
    keys = [[a.key for a, _ in r.trials] for r in runs]
    assert keys[0] == keys[1] and keys[0] != keys[2]
    assert len(set(keys[0])) == 30  # repeats are told from history, never asked twice


def test_tpe_tells_failures_and_infeasible_archs_as_worst(onemax_space, tmp_path):
    def flaky(arch):
        if arch["c0"] == 1:
            raise RuntimeError("boom")
        return {**onemax(arch), "macs": float(arch["c1"])}

    objective = Objective.from_config(constraints=["macs <= 2"])
    strategy = TPE(onemax_space, seed=0, n_startup_trials=5)
    summary = search(onemax_space, strategy, FunctionEvaluator(flaky), objective, tmp_path, 25)
    assert any(not r.ok for _, r in summary.trials) and summary.best_result.metrics["macs"] <= 2
    values = [t.value for t in strategy.study.trials if t.value is not None]
    assert -math.inf in values and len(values) >= 25  # failed and infeasible: COMPLETE trials at -inf
    assert all(t.state.name == "COMPLETE" for t in strategy.study.trials)


def test_tpe_beats_random_on_the_tabular_benchmark(space, bench):
    budget = 60
    top = bench.percentile_threshold(0.01)
    tpe = [queries_to_reach(drive(TPE(space, seed=s, n_startup_trials=10), bench, budget), top, budget) for s in SEEDS]
    rnd = [queries_to_reach(drive(RandomSearch(space, seed=s), bench, budget), top, budget) for s in SEEDS]
    assert statistics.median(tpe) < statistics.median(rnd), (tpe, rnd)


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

def hypervolume(front, ref_params):
    """Area dominated by a (accuracy max, params min) front, above accuracy 0 and left of ref_params."""
    points = sorted((r.metrics["params"], r.metrics["accuracy"]) for _, r in front)
    area, best = 0.0, 0.0
    for i, (p, a) in enumerate(points):
        best = max(best, a)
        area += ((points[i + 1][0] if i + 1 < len(points) else ref_params) - p) * best
    return area


def test_nsga2_front_is_non_dominated_and_beats_random(space, bench, tmp_path):
    objective = Objective.from_config(pareto=["accuracy:max", "params:min"])
    ref = float(bench.table.params.max()) * 1.01
    nsga, rnd = [], []
    for s in SEEDS:
        strategy = NSGA2(space, seed=s, objective=objective, population_size=12)
        drive(strategy, bench, 72)
        front = strategy.front()
        points = [[-r.metrics["accuracy"], r.metrics["params"]] for _, r in front]
        assert non_dominated(points) == list(range(len(points)))
        assert strategy.generation >= 5
        nsga.append(hypervolume(front, ref))
        random_search = RandomSearch(space, seed=s, objective=objective)
        drive(random_search, bench, 72)
        rnd.append(hypervolume(objective.pareto_front(random_search.history), ref))
    assert statistics.median(nsga) > statistics.median(rnd), (nsga, rnd)
    summary = search(space, STRATEGIES.build({"name": "nsga2", "population_size": 8}, "strategy", space=space,
                                             seed=0, objective=objective), bench, objective, tmp_path, 24)
    assert len(summary.pareto) >= 1


def test_early_exit_never_evaluates_an_arch_over_the_threshold(space, bench):
    objective = Objective.from_config(pareto=["accuracy:max", "params:min"])
    threshold = float(sorted(bench.table.params)[len(bench.table.params) // 3])  # a third of the space fits
    strategy = NSGA2(space, seed=1, objective=objective, population_size=10, early_exit_params=threshold)
    trials = drive(strategy, bench, 50)
    assert all(r.metrics["params"] < threshold for _, r in trials)
    assert strategy.early_exits > 0 and strategy.generation >= 4
    # the built network's count (no params_fn) is the table's, and a callable works the same way
    arch = trials[0][0]
    assert strategy.params_of(arch) == bench.evaluate(arch).metrics["params"]
    calls = []
    quick = NSGA2(space, seed=1, objective=objective, population_size=6, early_exit_params=2,
                  params_fn=lambda a: calls.append(a) or sum(a[n] == "nor_conv_3x3" for n in space.names))
    archs = [a for _ in range(12) for a in quick.ask(1) if quick.tell(a, bench.evaluate(a)) is None]
    assert calls and all(sum(a[n] == "nor_conv_3x3" for n in space.names) < 2 for a in archs)


# -- EcoNAS hierarchical proxy -----------------------------------------------------------------------

def test_econas_pools_tournaments_and_aging(space, bench):
    strategy = EcoNAS(space, seed=0, population_size=16, iterations=12)
    summary = strategy.run(bench)
    seg = bench.epochs // 3
    assert summary.iterations == 12 and summary.epochs_used == seg * summary.segment_evaluations
    assert {e for _, e, _ in summary.records} == {seg, 2 * seg, 3 * seg}
    per_iteration = 8 + 4 + 16
    assert summary.segment_evaluations <= 16 + 12 * per_iteration
    assert all(n.level <= 3 for n in strategy.nets.values())
    # networks not trained for max_age iterations have left the pools
    assert all(11 - n.last_updated < 10 for pool in strategy._pools(11) for n in pool)
    assert any(n.dropped for n in strategy.nets.values())
    best_arch, best_result = strategy.best()
    assert best_arch == summary.best_arch and best_result.metrics["epoch"] == 3 * seg


def test_econas_beats_random_at_the_same_epoch_budget(space, bench):
    full = 3 * (bench.epochs // 3)
    budget_epochs = 60 * full
    top = bench.percentile_threshold(0.02)
    eco, rnd = [], []
    for s in SEEDS:
        found = EcoNAS(space, seed=s).run(bench, budget_epochs=budget_epochs).best_arch
        eco.append(bench.value(found))
        random_search = RandomSearch(space, seed=s)
        drive(random_search, bench, budget_epochs // full)
        rnd.append(bench.value(random_search.best()[0]))
    assert statistics.median(eco) >= statistics.median(rnd), (eco, rnd)
    assert sum(v >= top for v in eco) > sum(v >= top for v in rnd), (eco, rnd, top)


def test_econas_ask_tell_is_the_single_proxy_variant(onemax_space, tmp_path):
    ev = FunctionEvaluator(onemax, "onemax")
    strategy = STRATEGIES.build({"name": "econas", "population_size": 16}, "strategy", space=onemax_space, seed=0,
                                objective=Objective())
    summary = search(onemax_space, strategy, ev, Objective(), tmp_path, 16 * 8)
    first16 = max(r.metrics["accuracy"] for _, r in summary.trials[:16])
    assert summary.best_result.metrics["accuracy"] > first16 + 2


def test_segmented_training_resumes_one_schedule(digits_data):
    space = Cell201Space(C=4, N=1)
    arch = space.default()
    train = TrainEvaluator(space, digits_data, epochs=2, batch_size=64, sample_ratio=0.3)
    seg = SegmentedTraining(train)
    first, second = seg.evaluate_at(arch, 1), seg.evaluate_at(arch, 2)
    whole = train.evaluate(arch)
    assert second.metrics["accuracy"] == pytest.approx(whole.metrics["accuracy"])
    assert first.metrics["epochs"] == 1 and second.metrics["params"] == whole.metrics["params"]
    strategy = EcoNAS(space, seed=0, population_size=3, iterations=1, segments=2, continue_top=[1],
                      children=[1, 1])
    summary = strategy.run(train)
    # 3 initial segments; iteration 0: the top of e1 continues (1), one child from e1 (e2 was empty) (1)
    assert summary.epochs_used == 3 + 1 + 1 and summary.best_result.ok
    assert summary.best_result.metrics["epochs"] == 2
