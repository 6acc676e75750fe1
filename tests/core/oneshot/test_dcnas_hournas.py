"""DC-NAS (arXiv 2005.14456) and HourNAS (arXiv 2005.14446), end to end on digits."""

import json
import math
import random

import numpy as np
import pytest
import torch

from core.cost import count_macs
from core.engine.registry import STRATEGIES, ConfigError
from core.objective import Objective
from core.zoo.cell201 import Cell201Space
from core.zoo.mobile import digits_space
from core.oneshot.dcnas import DCNASSearch, dcnas_scores, layer_features, probe_batch, representations
from core.api.shrunk import ShrunkSpace
from core.cost.stage_model import StageCostModel
from core.oneshot.hournas import HourNASSearch, space_proposal, vital_choices
from core.supernet.spos import train_supernet
from core.testing import TinyClassification

SPOS_TASK = TinyClassification(label_smoothing=0.1)  # SPOS's label smoothing
from core.testing import digits
from core.oneshot.base import Searcher

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data():
    return digits()


# ---------------------------------------------------------------------------------------------
# DC-NAS
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cell_space():
    return Cell201Space()


@pytest.fixture(scope="module")
def cell_supernet(cell_space, data):
    return train_supernet(cell_space, data, SPOS_TASK, epochs=2, lr=0.1, steps_per_epoch=10)


@pytest.fixture(scope="module")
def dcnas(cell_space, cell_supernet, data):
    strategy = DCNASSearch(cell_space, task=SPOS_TASK, seed=0, samples=24, clusters=4, probe_size=32, final_steps=5,
                           final_bn_batches=2, bn_batches=2)
    arch = strategy.fit(cell_supernet, data)
    return strategy, arch


def test_dcnas_is_registered_as_a_one_shot_searcher():
    assert STRATEGIES.get("dcnas") is DCNASSearch and issubclass(DCNASSearch, Searcher)


def test_representation_is_the_per_layer_feature_change(cell_space, cell_supernet, data):
    rng = random.Random(3)
    a, b = cell_space.sample(rng), cell_space.sample(rng)
    while b == a:
        b = cell_space.sample(rng)
    blocks, layers = layer_features(cell_space, cell_supernet, [a, b, a], probe_batch(data, 16, task=SPOS_TASK))
    assert len(layers) == 13 and layers[-1] == ""  # 6 edges x 2 cells + the output
    feats = representations(blocks)
    assert np.allclose(feats[0], feats[2])          # same arch, same features (deterministic, buffers restored)
    assert not np.allclose(feats[0], feats[1])
    assert np.allclose(feats.mean(0), 0)             # changes w.r.t. the average sub-network
    start = 0
    for block in blocks:                             # every layer weighs the same: unit RMS norm over samples
        part = feats[:, start:start + block.shape[1]]
        start += block.shape[1]
        rms = math.sqrt(float((part ** 2).sum(1).mean()))
        assert rms == pytest.approx(1.0, abs=1e-6) or rms == 0.0


def test_dcnas_clusters_partition_the_samples(dcnas):
    strategy, _ = dcnas
    o = strategy.outcome
    assert len(o.archs) == 24 and len(set(o.archs)) == 24
    clusters = o.clusters()
    assert 2 <= len(clusters) <= 4
    members = sorted(i for idx in clusters.values() for i in idx)
    assert members == list(range(24))                # every sample in exactly one cluster
    assert o.features.shape[0] == 24


def test_dcnas_returns_the_best_of_the_merged_cluster_winners(dcnas):
    strategy, arch = dcnas
    o, objective = strategy.outcome, Objective()
    for k, idx in o.clusters().items():              # each winner is its cluster's best by the evaluator
        best = max(objective.fitness(o.results[i]) for i in idx)
        assert objective.fitness(o.results[o.winners[k]]) == best
        assert o.winners[k] in idx
    assert set(o.final) == set(o.winners.values())
    finals = {i: o.final[i].get("accuracy") for i in o.final}
    assert arch == o.archs[o.best]
    assert finals[o.best] == max(finals.values())
    for k, i in o.winners.items():                   # the global score shifts each cluster to its winner's final score
        assert o.scores[i] == pytest.approx(finals[i])
    assert strategy.result["arch_key"] == arch.key
    json.dumps({"history": strategy.history, "result": strategy.result, "report": strategy.report()})


def test_dcnas_scores_follow_a_loss_objective(cell_space, cell_supernet, data):
    """With `val_loss:min` the winners are the lowest-loss archs and the global score is -loss, shifted per
    cluster to the winner's fine-tuned -loss (the form benchmarks/ranking.py's "DC-NAS (loss)" row uses)."""
    archs = random.Random(5).sample(cell_space.all_archs(), 12)
    loss = Objective(metric="val_loss", direction="min")
    o = dcnas_scores(cell_space, cell_supernet, data, SPOS_TASK, archs, clusters=3, seed=0, probe_size=16, final_steps=2,
                     final_bn_batches=1, bn_batches=1, objective=loss)
    for k, idx in o.clusters().items():
        assert o.results[o.winners[k]].get("val_loss") == min(o.results[i].get("val_loss") for i in idx)
        winner = o.winners[k]
        assert o.scores[winner] == pytest.approx(-o.final[winner].get("val_loss"))
        for i in idx:                                # within a cluster: the supernet's loss differences
            expected = o.results[winner].get("val_loss") - o.results[i].get("val_loss")
            assert o.scores[i] - o.scores[winner] == pytest.approx(expected)


# ---------------------------------------------------------------------------------------------
# HourNAS
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mobile():
    return digits_space()


@pytest.fixture(scope="module")
def cost_model(mobile, data):
    return StageCostModel(mobile, data.input_shape, data.num_classes)


def _macs(space, arch, data):
    return count_macs(space.build(arch, num_classes=data.num_classes), (1, *data.input_shape))


def test_vital_blocks_are_the_first_layer_of_each_stage(mobile):
    assert vital_choices(mobile) == ["stage0.layer0.op", "stage1.layer0.op", "stage2.layer0.op"]
    assert all("skip" not in mobile.choice(n).options for n in vital_choices(mobile))
    assert "skip" in mobile.choice("stage1.layer1.op").options
    with pytest.raises(ConfigError):
        HourNASSearch(Cell201Space())


def test_cost_model_is_exact(mobile, cost_model, data):
    rng = random.Random(0)
    for _ in range(4):
        arch = mobile.sample(rng)
        assert cost_model.arch_cost(arch) == _macs(mobile, arch, data)
    narrow = mobile.check({**dict(mobile.default()), "stage0.width": 16, "stage1.width": 24, "stage2.width": 32,
                           "stage0.depth": 1, "stage1.depth": 1, "stage2.depth": 1})
    assert cost_model.min_cost() == _macs(mobile, narrow, data)


def _cheapest_with(mobile, vital, name, option):
    """The cheapest arch that uses `option` for `name` (built by hand: narrowest widths, shallowest depth,
    skipped extra layers), with the vital blocks fixed."""
    values = dict(mobile.default())
    values.update({"stage0.width": 16, "stage1.width": 24, "stage2.width": 32,
                   "stage0.depth": 1, "stage1.depth": 1, "stage2.depth": 1, **vital})
    if name.endswith(".op"):
        stage, layer = name.split(".")[:2]
        j = int(layer[len("layer"):])
        values[f"{stage}.depth"] = j + 1
        values.update({f"{stage}.layer{k}.op": "skip" for k in range(1, j)})
    values[name] = option
    return mobile.check(values)


@pytest.fixture(scope="module")
def hournas(mobile, cost_model, data):
    widest = {c.name: c.options[-1] for c in mobile.choices if c.name.endswith((".width", ".depth"))}
    biggest = mobile.check({**dict(mobile.default()), **widest,
                            **{c.name: "mb6_k5" for c in mobile.choices if c.name.endswith(".op")}})
    lo, hi = cost_model.min_cost(), cost_model.arch_cost(biggest)
    budget = int(lo + 0.08 * (hi - lo))
    strategy = HourNASSearch(mobile, task=SPOS_TASK, seed=0, objective=Objective(constraints=[f"macs <= {budget}"]),
                             vital_epochs=1, proposal_epochs=1, train={"steps_per_epoch": 3, "lr": 0.1},
                             vital_evaluations=5, evaluations=6, population_size=4, sample_size=2, bn_batches=1)
    arch = strategy.fit(None, data)
    return strategy, arch, budget


@pytest.mark.slow
def test_hournas_searches_the_vital_blocks_first(hournas, mobile):
    strategy, arch, _ = hournas
    free = [c.name for c in strategy.vital_space.choices if len(c.options) > 1]
    assert free == vital_choices(mobile)              # phase 2 samples only the vital blocks
    assert 1 <= len(strategy.vital_results) <= 5
    assert {n: arch[n] for n in strategy.vital} == strategy.vital_arch


def test_hournas_shrunk_space_holds_only_affordable_options(hournas, mobile, cost_model, data):
    strategy, _, budget = hournas
    shrunk = strategy.shrunk
    assert isinstance(shrunk, ShrunkSpace) and shrunk.budget == budget
    dropped = 0
    for c in shrunk.choices:
        if c.name in strategy.vital:
            assert c.options == (strategy.vital_arch[c.name],)
            continue
        dropped += len(mobile.choice(c.name)) - len(c)
        for option in c.options:                      # the cheapest arch using each kept option fits the budget
            assert _macs(mobile, _cheapest_with(mobile, strategy.vital_arch, c.name, option), data) <= budget
    assert dropped > 0                                # the budget removed options
    assert "mb6_k5" not in shrunk.choice("stage0.layer1.op").options
    with torch.no_grad():                             # the space proposal's expected cost fits the budget
        probs = {n: torch.tensor(p, dtype=torch.float64) for n, p in strategy.proposal.items()}
        assert float(cost_model.expected(probs)) <= budget * (1 + 1e-9)
    rng = random.Random(1)
    for _ in range(20):
        assert cost_model.arch_cost(shrunk.sample(rng)) <= budget


def test_hournas_final_arch_meets_the_macs_budget(hournas, mobile, data):
    strategy, arch, budget = hournas
    assert mobile.is_valid(arch)
    assert _macs(mobile, arch, data) <= budget
    assert strategy.result["metrics"]["macs"] <= budget
    assert len(strategy.trials) == 6 and len(strategy.history) == 6
    json.dumps({'history': strategy.history, 'result': strategy.result, 'report': strategy.report()})


def test_space_proposal_is_uniform_when_the_budget_is_loose(cost_model):
    vital = {"stage0.layer0.op": "mb1_k3", "stage1.layer0.op": "mb1_k3", "stage2.layer0.op": "mb1_k3"}
    loose = space_proposal(cost_model, vital, math.inf)
    assert torch.allclose(loose["stage1.layer1.op"], torch.full((7,), 1 / 7, dtype=torch.float64))
    with torch.no_grad():
        budget = float(cost_model.expected(loose)) * 0.6
    tight = space_proposal(cost_model, vital, budget)
    with torch.no_grad():
        assert float(cost_model.expected(tight)) <= budget
    p = tight["stage1.layer1.op"]                     # cheaper ops get more mass: skip > mb6_k5
    ops = cost_model.options("stage1.layer1.op")
    assert p[ops.index("skip")] > p[ops.index("mb6_k5")]
