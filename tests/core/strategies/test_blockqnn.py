"""BlockQNN (Zhong et al., CVPR 2018): the NSC space and the tabular Q-learning agent."""

import itertools
import math
import random
import statistics
from pathlib import Path

import pytest
import torch

from core.testing import onemax
from core.engine.registry import SPACES, STRATEGIES
from core.evaluation import FunctionEvaluator, Result
from core.journal import Journal
from core.objective import Objective
from core.search import Search
from core.api import Arch, Choice, SearchSpace
from core.zoo.nsc import NSC_TYPES, NSCSpace, block_string
from core.strategies import RandomSearch
from core.strategies.blockqnn import PAPER_SCHEDULE, BlockQNN, epsilon_at, scaled_schedule


def run(space, strategy, tmp_path, budget, name, evaluator):
    with Journal(tmp_path / f"{name}.sqlite") as journal:
        return Search(space, strategy, evaluator, Objective(), journal, budget=budget, progress=False).run()


def best_of(strategy, evaluator, budget):
    """A plain ask/tell loop (the journal's fsyncs would dominate these cheap objectives): the best arch and
    its fitness under the strategy's objective."""
    best = (None, -math.inf)
    for _ in range(budget):
        arch = strategy.ask(1)[0]
        result = evaluator.evaluate(arch)
        strategy.tell(arch, result)
        if strategy.objective.fitness(result) > best[1]:
            best = (arch, strategy.objective.fitness(result))
    return best


# -- the NSC space ---------------------------------------------------------------------

def test_nsc_rules_and_exact_size():
    space = NSCSpace(max_layers=2)
    base = {c.name: c.default for c in space.choices}
    ok = Arch({**base, "layer1.type": "conv", "layer1.kernel": 5, "layer2.type": "terminal"})
    assert space.is_valid(ok) and space.codes(space.check(ok)) == [("conv", 5, 0, 0), ("terminal", 0, 0, 0)]
    assert not space.is_valid(Arch({**base, "layer1.type": "terminal"}))                     # empty block
    assert not space.is_valid(Arch({**base, "layer2.type": "max_pool", "layer2.kernel": 5}))  # pools: 1 or 3
    for kind in ("add", "concat"):  # two different predecessors, stored as pred1 < pred2
        assert not space.is_valid(Arch({**base, "layer2.type": kind, "layer2.pred1": 1, "layer2.pred2": 1}))
        assert not space.is_valid(Arch({**base, "layer2.type": kind, "layer2.pred1": 1, "layer2.pred2": 0}))
        assert space.is_valid(Arch({**base, "layer2.type": kind, "layer2.pred1": 0, "layer2.pred2": 1}))
    assert not space.is_valid(Arch({**base, "layer1.pred1": 1}))  # predecessors precede the layer
    # after a terminal nothing matters: canonical resets it
    a = space.check(Arch({**base, "layer1.type": "identity", "layer2.type": "terminal", "layer2.kernel": 1}))
    assert a == space.check(Arch({**base, "layer1.type": "identity", "layer2.type": "terminal", "layer2.kernel": 5}))
    # size() counts distinct canonical blocks: brute force over every combination agrees
    combos = itertools.product(*(c.options for c in space.choices))
    distinct = {space.check(Arch(dict(zip(space.names, v)))) for v in combos
                if space.is_valid(Arch(dict(zip(space.names, v))))}
    # layer 1: 3 convs + 2x2 pools + identity = 8; layer 2: 3*2 + 4*2 + 2 + add + concat = 18
    assert len(distinct) == space.size() == 8 + 8 * 18
    # the grammar the agent walks gives exactly the valid codes of each layer
    for l in (1, 2):
        for code in space.layer_actions(l):
            prefix = [("conv", 3, 0, 0)] * (l - 1) + [code]
            assert space.codes(space.from_codes(prefix))[l - 1] == code


def test_every_sampled_block_builds_and_runs_on_a_digit():
    space = NSCSpace()
    rng = random.Random(0)
    x = torch.randn(1, 1, 8, 8)
    kinds = set()
    for _ in range(40):
        arch = space.sample(rng)
        assert space.is_valid(arch) and space.from_codes(space.codes(arch)) == arch
        codes = space.codes(arch)
        kinds |= {c[0] for c in codes}
        net = space.build(arch).eval()
        with torch.no_grad():
            assert net(x).shape == (1, 10)
        assert len(space.layer_descriptors(arch)) == len(codes)
        assert 0 < space.density(arch) <= 2
        assert block_string(codes).startswith("1_")
    assert kinds == set(NSC_TYPES)
    assert SPACES.get("nsc") is NSCSpace


def test_block_output_concatenates_unused_layers():
    space = NSCSpace(max_layers=3, stage_channels=[8], blocks_per_stage=1)
    # two convs both reading the input, neither read again: both go to the output concat (16 ch -> 1x1 to 8)
    arch = space.from_codes([("conv", 3, 0, 0), ("conv", 1, 0, 0), ("terminal", 0, 0, 0)])
    block = space.build(arch).stages[0][0]
    assert block.outputs == [1, 2] and block.project[1].in_channels == 16
    # a chain: only the last layer is unused
    arch = space.from_codes([("conv", 3, 0, 0), ("max_pool", 3, 1, 0), ("add", 0, 0, 2)])
    block = space.build(arch).stages[0][0]
    assert block.outputs == [3] and isinstance(block.project, torch.nn.Identity)
    assert space.density(arch) == pytest.approx(4 / 4)


# -- the agent ---------------------------------------------------------------------------

def test_epsilon_schedule():
    assert [e for e, _ in PAPER_SCHEDULE] == [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]
    assert scaled_schedule(178) == list(PAPER_SCHEDULE)
    small = scaled_schedule(40)
    assert sum(n for _, n in small) == 40 and all(n >= 1 for _, n in small)
    schedule = [(1.0, 2), (0.5, 3)]
    assert [epsilon_at(schedule, i) for i in range(7)] == [1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.5]
    space = SearchSpace([Choice("a", (0, 1)), Choice("b", (0, 1, 2))])
    agent = BlockQNN(space, epsilon_schedule=[[1.0, 2], [0.5, 3], [0.1, 1]])
    seen = []
    for _ in range(7):
        seen.append(agent.epsilon)
        agent.ask(1)
    assert seen == [1.0, 1.0, 0.5, 0.5, 0.5, 0.1, 0.1]
    with pytest.raises(ValueError, match="epsilon_schedule"):
        BlockQNN(space, epsilon_schedule=[[1.5, 3]])


def test_q_update_matches_a_hand_computation():
    space = SearchSpace([Choice("a", (0, 1)), Choice("b", (0, 1))])
    agent = BlockQNN(space, q_init=0.0, replay_batch=0)
    assert (agent.alpha, agent.gamma) == (0.01, 1.0)  # the paper's learning rate and discount
    # episode (a=1, b=0), reward 1, T = 2: shaped r_1 = 1/2; updates run backwards
    agent.tell(space.from_indices([1, 0]), Result({"accuracy": 1.0}))
    q_b = 0.01 * 1.0                              # Q((1, a=1), b=0) <- 0.99*0 + 0.01*r_T
    q_a = 0.01 * (1.0 / 2 + q_b)                  # Q((0, -), a=1)   <- 0.99*0 + 0.01*(r_T/T + max Q(s'))
    assert agent.value((1, 1), 0) == pytest.approx(q_b)
    assert agent.value((0, None), 1) == pytest.approx(q_a)
    # episode (a=1, b=1), reward 0.2: the bootstrap takes max over b of Q((1, 1), b)
    agent.tell(space.from_indices([1, 1]), Result({"accuracy": 0.2}))
    q_b1 = 0.01 * 0.2
    q_a = 0.99 * q_a + 0.01 * (0.2 / 2 + max(q_b, q_b1))
    assert agent.value((1, 1), 1) == pytest.approx(q_b1)
    assert agent.value((0, None), 1) == pytest.approx(q_a)
    # without shaping the intermediate reward is 0
    plain = BlockQNN(space, q_init=0.0, replay_batch=0, reward_shaping=False, learning_rate=0.5)
    plain.tell(space.from_indices([0, 0]), Result({"accuracy": 1.0}))
    assert plain.value((0, None), 0) == pytest.approx(0.5 * 0.5)


def test_nsc_episodes_and_early_stop_reward():
    space = NSCSpace(max_layers=4)
    agent = BlockQNN(space, q_init=0.0, replay_batch=0, mu=0.01, rho=0.08)
    arch = space.from_codes([("conv", 3, 0, 0), ("conv", 1, 1, 0), ("add", 0, 1, 2), ("terminal", 0, 0, 0)])
    steps = agent.transitions(arch)
    # state = the previous layer's code (index, type, kernel, pred1, pred2)
    assert [s for s, *_ in steps] == [(0, "input", 0, 0, 0), (1, "conv", 3, 0, 0), (2, "conv", 1, 1, 0),
                                      (3, "add", 0, 1, 2)]
    assert steps[-1][1] == ("terminal", 0, 0, 0) and steps[-1][2] is None
    result = Result({"accuracy": 0.9, "macs": 1e6})
    density = space.density(arch)
    assert density == pytest.approx(4 / 4)
    expected = 0.9 - 0.01 * math.log(2e6 / 5) - 0.08 * math.log(density / 5)
    assert agent.reward(arch, result) == pytest.approx(expected)
    agent.tell(arch, result)
    assert agent.value((3, "add", 0, 1, 2), ("terminal", 0, 0, 0)) == pytest.approx(0.01 * expected)
    # failed candidates take the worst reward seen instead of -inf
    assert agent.reward(arch, Result.failed("boom")) == pytest.approx(expected)


def test_blockqnn_is_registered_and_deterministic(tmp_path, onemax_space):
    strategy = STRATEGIES.build({"name": "blockqnn", "epsilon_schedule": [[1.0, 10], [0.1, 10]],
                                 "learning_rate": 0.1, "replay_batch": 10}, "strategy", space=onemax_space, seed=3)
    assert strategy.schedule == [(1.0, 10), (0.1, 10)]  # the config's staircase, not the default
    ev = FunctionEvaluator(onemax, "onemax")
    a = run(onemax_space, strategy, tmp_path, 30, "a", ev)
    b = run(onemax_space, BlockQNN(onemax_space, seed=3, epsilon_schedule=[[1.0, 10], [0.1, 10]], learning_rate=0.1,
                                   replay_batch=10), tmp_path, 30, "b", ev)
    assert [x.key for x, _ in a.trials] == [x.key for x, _ in b.trials]
    assert len({x.key for x, _ in a.trials}) == 30  # fresh proposals


def test_blockqnn_beats_random_on_onemax(onemax_space):
    ev = FunctionEvaluator(onemax, "onemax")
    bq, rnd = [], []
    for seed in range(5):
        # a short budget needs a faster learner than the paper's alpha = 0.01 over ~11k blocks
        agent = BlockQNN(onemax_space, seed=seed, schedule_episodes=60, learning_rate=0.2, replay_batch=50)
        bq.append(best_of(agent, ev, 150)[1])
        rnd.append(best_of(RandomSearch(onemax_space, seed=seed), ev, 150)[1])
    # random's best of 150 on 20 four-way choices is ~10/20; the agent climbs well above it
    assert statistics.median(bq) >= statistics.median(rnd) + 3, (bq, rnd)


def test_blockqnn_learns_a_good_block_on_the_nsc_space():
    """A cheap stand-in for early-stop accuracy: 3x3 convs count, a final residual add counts more."""
    space = NSCSpace(max_layers=4)

    def score(arch):
        codes = [c for c in space.codes(arch) if c[0] != "terminal"]
        value = sum(c[0] == "conv" and c[1] == 3 for c in codes) + 1.5 * (codes[-1][0] == "add")
        return {"accuracy": value / 4.5, "macs": 0.0, "params": 0.0}  # best: conv3 x3 then add

    ev = FunctionEvaluator(score, "nsc_score")
    bq, rnd = [], []
    for seed in range(5):
        agent = BlockQNN(space, seed=seed, schedule_episodes=50, learning_rate=0.2, replay_batch=50)
        bq.append(best_of(agent, ev, 120)[1])
        rnd.append(best_of(RandomSearch(space, seed=seed), ev, 120)[1])
    assert statistics.median(bq) > statistics.median(rnd), (bq, rnd)


def _table_or_skip():
    from core.evaluation.tabular import default_table_path

    if not Path(default_table_path()).is_file():
        pytest.skip("the tabular benchmark is not built yet")
    from core.evaluation.tabular import TabularEvaluator

    return TabularEvaluator()


def test_blockqnn_beats_random_on_the_tabular_benchmark():
    tab = _table_or_skip()
    space = tab.space
    loss = Objective(metric="val_loss", direction="min")  # what benchmarks/strategies.py searches on
    bq, rnd = [], []
    for seed in range(7):
        agent = BlockQNN(space, seed=seed, objective=loss, schedule_episodes=30, learning_rate=0.2, replay_batch=50)
        bq.append(tab.rank(best_of(agent, tab, 60)[0], "val_loss"))
        rnd.append(tab.rank(best_of(RandomSearch(space, seed=seed, objective=loss), tab, 60)[0], "val_loss"))
    assert statistics.median(bq) < statistics.median(rnd), (bq, rnd)
