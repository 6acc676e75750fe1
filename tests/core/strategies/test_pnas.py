"""PNAS (Liu et al., ECCV 2018): the beam grows block by block, the surrogate ranks expansions, and the search
beats random search on the shipped tabular benchmark (median of several seeds)."""

import math
import statistics

import numpy as np
import pytest
import torch

from core.engine.registry import STRATEGIES, ConfigError
from core.evaluation import FunctionEvaluator, Result
from core.journal import Journal
from core.objective import Objective
from core.search import Search
from core.api import Arch
from core.zoo.cell201 import Cell201Space
from core.zoo.darts import DartsSpace
from core.strategies.pnas import PNAS, simplest_fill
from core.strategies.random_search import RandomSearch

torch.set_num_threads(1)

FAST = dict(folds=3, epochs=30, hidden=32, embedding_dim=32)
OP_VALUE = {"none": 0.0, "skip_connect": 0.4, "nor_conv_3x3": 1.0}


def synthetic(arch):
    if all(arch[n] == "none" for n in ("cell.e03", "cell.e13", "cell.e23")):
        return {"accuracy": 0.1}
    names = ["cell.e01", "cell.e02", "cell.e12", "cell.e03", "cell.e13", "cell.e23"]
    return {"accuracy": 0.2 + 0.05 * sum(OP_VALUE[arch[n]] * (1 + 0.3 * k) for k, n in enumerate(names))}


@pytest.fixture(scope="module")
def space():
    return Cell201Space()


@pytest.fixture(scope="module")
def bench():
    from core.evaluation.tabular import TabularEvaluator

    try:
        return TabularEvaluator(None)          # the space the shipped table was built with
    except FileNotFoundError as err:
        pytest.skip(f"no tabular benchmark yet: {err}")


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


def test_beam_grows_one_block_per_level(space):
    s = PNAS(space, seed=0, beam_size=4, **FAST)
    drive(s, lambda a: Result(metrics=synthetic(a)), 3 + 4 + 4)
    assert s.blocks == [["cell.e01"], ["cell.e02", "cell.e12"], ["cell.e03", "cell.e13", "cell.e23"]]
    assert len(s.levels) == 3
    fill = simplest_fill(space)
    assert set(fill.values()) == {"skip_connect"}
    # level 1: every option of block 1, later blocks at the fill
    assert sorted(a["cell.e01"] for a in s.levels[0]) == sorted(space.ops)
    assert all(a.diff(Arch(fill)) in ([], ["cell.e01"]) for a in s.levels[0])
    for k in (1, 2):
        block = set(s.blocks[k])
        assert len(s.levels[k]) == 4
        for arch in s.levels[k]:
            # each member of level k is a member of level k-1 with only block k changed
            assert any(set(arch.diff(parent)) <= block for parent in s.levels[k - 1]), arch
            later = [n for b in s.blocks[k + 1:] for n in b]
            assert all(arch[n] == fill[n] for n in later)
    # the surrogate reads only the decided blocks
    assert {d for _, d in s.entries} == {1, 2, 3}
    assert len(s.tokenizer(s.levels[1][0], 2)) == 2


@pytest.mark.slow
def test_pnas_is_registered_deterministic_and_resumable(space, tmp_path):
    assert STRATEGIES.get("pnas") is PNAS
    cfg = {"name": "pnas", "beam_size": 4, "blocks": ["cell.e01", ["cell.e02", "cell.e12"], "cell.e"],
           "fill": "none", "surrogate": ["lstm"], "folds": 2, "epochs": 20}
    s = STRATEGIES.build(cfg, "strategy", space=space, seed=1)
    assert s.fill["cell.e23"] == "none" and s.surrogate == ["lstm"]
    with pytest.raises(ConfigError, match="strategy.surrogate"):
        PNAS(space, surrogate=["gp"])
    with pytest.raises(ConfigError, match="blocks"):
        PNAS(space, blocks=["cell.e0"])
    with pytest.raises(ConfigError, match="strategy.fill.cell.e01"):
        PNAS(space, fill={"cell.e01": "sep_conv_3x3"})

    ev = FunctionEvaluator(synthetic, "synthetic")

    def search(name, budget):
        with Journal(tmp_path / f"{name}.sqlite") as journal:
            return Search(space, PNAS(space, seed=2, beam_size=4, **FAST), ev, Objective(), journal,
                          budget=budget, progress=False, batch_size=3).run()

    a, b = search("a", 20), search("b", 20)
    assert [x for x, _ in a.trials] == [x for x, _ in b.trials]
    assert len({x for x, _ in a.trials}) == 20            # nothing asked twice
    resumed = search("a", 26)                            # replays the journal, then goes on
    assert resumed.replayed == 20 and [x for x, _ in resumed.trials][:20] == [x for x, _ in a.trials]


@pytest.mark.slow
def test_pnas_on_darts_space_grows_node_by_node():
    darts = DartsSpace(C=8, layers=3)
    s = PNAS(darts, seed=0, beam_size=3, initial=6, **FAST)
    assert len(s.blocks) == 8
    assert s.fill["normal.node3.in1.op"] == "skip_connect" and s.fill["normal.node3.in1.input"] == 1

    def score(arch):   # prefers sep convs reading the previous cell
        return {"accuracy": sum((arch[n] == "sep_conv_3x3") + 0.5 * (arch[n] == 1) for n in arch) / len(arch)}

    drive(s, lambda a: Result(metrics=score(a)), 6 + 3 + 3)
    assert [len(level) for level in s.levels] == [6, 3, 3]
    for arch in s.levels[2]:
        assert darts.is_valid(arch)
        assert any(set(arch.diff(p)) <= set(s.blocks[2]) for p in s.levels[1])


@pytest.mark.slow
def test_pnas_keeps_going_after_the_last_block(space):
    s = PNAS(space, seed=0, beam_size=4, **FAST)
    _, best = drive(s, lambda a: Result(metrics=synthetic(a)), 40)
    assert s.rounds >= 1 and len(s.seen) == 40
    assert best == max(synthetic(a)["accuracy"] for a in space.all_archs())


@pytest.mark.slow
def test_pnas_beats_random_on_a_synthetic_target(space):
    values = sorted((synthetic(a)["accuracy"] for a in space.all_archs()), reverse=True)
    target = values[math.ceil(0.01 * len(values)) - 1]
    seeds, budget = range(5), 120
    rnd = [drive(RandomSearch(space, seed=s), lambda a: Result(metrics=synthetic(a)), budget, target)[0]
           for s in seeds]
    pnas = [drive(PNAS(space, seed=s, beam_size=8, **FAST), lambda a: Result(metrics=synthetic(a)), budget,
                  target)[0] for s in seeds]
    assert statistics.median(pnas) < statistics.median(rnd) / 2, (pnas, rnd)


def test_pnas_end_to_end_on_the_tabular_benchmark(bench, tmp_path):
    """Search + journal + tabular evaluator. The surrogate's top K of each level must be better, by the table, than
    the expansions it ranked. Queries to the top 1% on the shipped table: docs/strategies.md."""
    space = bench.space
    strategy = PNAS(space, seed=0, beam_size=8, **FAST)
    with Journal(tmp_path / "pnas.sqlite") as journal:
        summary = Search(space, strategy, bench, Objective(), journal, budget=3 + 8 + 8, progress=False).run()
    assert [len(level) for level in strategy.levels] == [3, 8, 8]
    for k in (1, 2):
        ranked = [bench.value(a) for a in strategy._expansions(strategy.levels[k - 1], k)]
        picked = [bench.value(a) for a in strategy.levels[k]]
        assert np.mean(picked) > np.mean(ranked), (k, np.mean(picked), np.mean(ranked))
    assert summary.best_result.metrics["accuracy"] > float(np.median(bench.values()))
