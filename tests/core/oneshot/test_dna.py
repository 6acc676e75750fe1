"""DNA (Li et al., CVPR 2020): the space and its published networks, the constrained traversal, and a tiny
end-to-end run (blockwise distillation from a trained digits teacher, ranking, search under a MACs budget)."""

import itertools
import math
import random

import pytest
import torch
import torchvision
from torch.utils.data import DataLoader

from core.cost import count_macs, count_params
from core.distill import Distiller, SmallCNN, StagedTeacher, train_distiller
from core.engine.registry import SPACES, STRATEGIES, ConfigError
from core.objective import Constraint, Objective
from core.api import activate
from core.zoo.dna import DNA_BLOCK_CFGS, DNA_OPS, DNA_PUBLISHED, DNASpace, dna_digits_space, dna_space_and_arch
from core.oneshot.dna import DNASearch
from core.oneshot.dna_traversal import constrained_traversal
from core.oneshot.base import Searcher


# exact recounts: a and b as in METHODS.md (timm 0.1.x GenEfficientNet mirror); c and d recounted the same way here
RECOUNT_PARAMS = {"a": 4_243_318, "b": 4_918_180, "c": 5_273_896, "d": 6_409_486}
RECOUNT_MACS = {"a": 335.1e6, "b": 392.5e6, "c": 450.1e6, "d": 592.8e6}  # METHODS.md, SE gating and BN excluded


@pytest.mark.parametrize("name", ["a", "b", "c", "d"])
def test_published_dna_networks_have_the_paper_parameter_counts(name):
    space, arch = dna_space_and_arch(name)
    model = space.build(arch)
    params = count_params(model)
    assert params == RECOUNT_PARAMS[name]
    readme_params, readme_flops, _ = DNA_PUBLISHED[name]
    assert abs(params - readme_params) / readme_params < 0.015  # README rounds to 0.1M
    macs = count_macs(model, (1, 3, 224, 224))
    assert abs(macs - RECOUNT_MACS[name]) < 0.1e6
    assert 0 < (readme_flops - macs) / readme_flops < 0.05  # README counts SE/BN multiplies too: 0.4-3.7% above
    assert space.paths_of(arch) and space.arch_from_paths(space.paths_of(arch)) == arch
    if name == "c":  # DNA-c lies in the six-block supernet space itself
        assert space.block_cfgs == DNA_BLOCK_CFGS
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


@pytest.mark.slow
def test_dna_space_blocks_ops_and_supernet_widths():
    space = DNASpace()
    assert space.num_blocks == 6 and [len(space.block_choices(i)) for i in range(6)] == [2, 4, 4, 4, 4, 1]
    assert all(space.choice(n).options == DNA_OPS for i in range(6) for n in space.block_choices(i))
    assert SPACES.get("dna") is DNASpace
    supernet = space.blockwise_supernet()
    activate(supernet, space.sample(random.Random(0)))
    x = torch.randn(1, 3, 64, 64)
    outs = []
    with torch.no_grad():
        for block in supernet.blocks.eval():
            x = block(x)
            outs.append(x.shape[1])
    assert outs == [48, 80, 160, 224, 384, 640]  # the last layer of each block outputs the teacher (B7) width
    # the teacher the official code uses is B7-shaped: torchvision's efficientnet_b7 stages match block by block
    b7 = StagedTeacher(torchvision.models.efficientnet_b7(), [f"features.{i}" for i in range(2, 8)])
    assert b7.shapes(torch.randn(1, 3, 64, 64)) == space.teacher_shapes(64)
    assert space.teacher_shapes(224)[0] == (48, 56, 56) and space.teacher_shapes(224)[-1] == (640, 7, 7)


@pytest.mark.parametrize("metric", ["params", "macs"])
def test_cost_table_is_additive(metric):
    space, rng = DNASpace(), random.Random(1)
    fixed, table = space.cost_table(metric, 64)
    for _ in range(2):
        arch = space.sample(rng)
        paths = space.paths_of(arch)
        predicted = fixed + sum(table[i][j][k] for i, path in enumerate(paths) for j, k in enumerate(path))
        model = space.build(arch)
        assert predicted == (count_params(model) if metric == "params" else count_macs(model, (1, 3, 64, 64)))


def brute_force(levels, budget, fixed=0.0):
    best = None
    for combo in itertools.product(*(range(len(level)) for level in levels)):
        cost = fixed + sum(levels[i][k][1] for i, k in enumerate(combo))
        loss = sum(levels[i][k][0] for i, k in enumerate(combo))
        if cost <= budget and (best is None or loss < best[1]):
            best = (list(combo), loss, cost)
    return best


def test_traversal_exact_matches_brute_force_and_official_stays_in_budget():
    rng = random.Random(0)
    for _ in range(300):
        n = rng.randint(1, 4)
        levels = [sorted((rng.random(), rng.randint(1, 20)) for _ in range(rng.randint(1, 6))) for _ in range(n)]
        budget, fixed = rng.randint(n, 20 * n), rng.choice([0.0, 3.0])
        best = brute_force(levels, budget, fixed)
        exact = constrained_traversal(levels, budget, fixed, "exact")
        official = constrained_traversal(levels, budget, fixed, "official")
        if best is None:
            assert exact is None and official is None
            continue
        assert exact[1] == pytest.approx(best[1]) and exact[2] <= budget
        assert official[2] <= budget and official[1] >= best[1] - 1e-12
        if n <= 2:  # the official pruning is exact for two levels; beyond, a shrunk bound can hide the optimum
            assert official[1] == pytest.approx(best[1])
    levels = [[(0.1, 10), (0.2, 1)], [(0.1, 10), (0.3, 1)]]
    assert constrained_traversal(levels)[0] == [0, 0]  # no budget: every block's best path
    assert constrained_traversal(levels, 11)[:2] == ([1, 0], pytest.approx(0.3))
    assert constrained_traversal(levels, 1) is None
    assert constrained_traversal(levels, 11, strict=True)[0] == [1, 1]


@pytest.fixture(scope="module")
def digits_data():
    from core.testing import digits

    return digits()


@pytest.fixture(scope="module")
def trained_teacher(digits_data):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    teacher = SmallCNN(widths=(32, 48, 64), strides=(1, 2, 2))
    loader = DataLoader(digits_data.train, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
    d = Distiller(None, teacher, [{"loss": "ce"}])
    train_distiller(d, loader, epochs=3, lr=0.1)
    d.close()
    teacher.eval()
    x, y = digits_data.val.tensors
    with torch.no_grad():
        assert (teacher(x).argmax(1) == y).float().mean() > 0.9
    return teacher


DNA_TINY = dict(epochs_per_block=2, steps_per_epoch=12, lr=0.02, score_batches=2, batch_size=64)


@pytest.fixture(scope="module")
def tiny_run(digits_data, trained_teacher, tmp_path_factory):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    ckpt = tmp_path_factory.mktemp("dna") / "dna.ckpt"
    searcher = DNASearch(dna_digits_space(), checkpoint=str(ckpt), **DNA_TINY)
    arch = searcher.fit(None, digits_data, teacher=trained_teacher)
    return searcher, arch, ckpt


@pytest.mark.slow
def test_tiny_dna_run_trains_blocks_and_scores_every_path(tiny_run):
    searcher, arch, _ = tiny_run
    space = searcher.space
    for i, losses in searcher.history.items():
        assert len(losses) == 2 and losses[-1] < 0.8 * losses[0], (i, losses)
    assert {i: len(s) for i, s in searcher.scores.items()} == {0: 16, 1: 16, 2: 4}
    for i, scores in searcher.scores.items():
        assert {s.path for s in scores} == set(itertools.product(range(4), repeat=len(space.block_choices(i))))
        assert all(math.isfinite(s.cl_loss) and s.cl_loss > 0 and s.cost > 0 for s in scores)
        assert len({round(s.cl_loss, 6) for s in scores}) > 1  # the paths are told apart
    # unconstrained: every block takes its lowest-cl_loss path
    best = [min(searcher.scores[i], key=lambda s: s.cl_loss).path for i in range(3)]
    assert space.paths_of(arch) == best
    assert searcher.result["macs"] == count_macs(space.build(arch), (1, 1, 8, 8))
    report = searcher.report()
    assert report["result"]["arch_key"] == arch.key and len(report["scores"]["0"]) == 16


def test_tiny_dna_search_under_a_macs_budget_prefers_lower_loss_paths(tiny_run):
    searcher, unconstrained, _ = tiny_run
    space, scores = searcher.space, searcher.scores
    fixed, _ = space.cost_table("macs", 8)
    levels = [sorted((s.cl_loss, s.cost) for s in scores[i]) for i in range(3)]
    costs = [fixed + sum(c) for c in itertools.product(*([c for _, c in level] for level in levels))]
    budget = (min(costs) + searcher.result["macs"]) / 2  # below the unconstrained choice: something must give
    expected = brute_force(levels, budget, fixed)
    for traversal in ("exact", "official"):
        searcher.constraint, searcher.traversal = Constraint.parse(f"macs <= {budget}"), traversal
        arch, loss, cost = searcher.search(scores, fixed)
        assert cost <= budget and cost == count_macs(space.build(arch), (1, 1, 8, 8))
        assert arch != unconstrained
        if traversal == "exact":
            assert loss == pytest.approx(expected[1])
        # among feasible archs it beats the median: it prefers lower-loss paths
        feasible = [sum(lv[k][0] for lv, k in zip(levels, combo))
                    for combo in itertools.product(*(range(len(lv)) for lv in levels))
                    if fixed + sum(lv[k][1] for lv, k in zip(levels, combo)) <= budget]
        assert loss <= sorted(feasible)[len(feasible) // 10]
    searcher.constraint, searcher.traversal = Constraint.parse("macs <= 1000"), "exact"
    with pytest.raises(ValueError, match="no architecture"):
        searcher.search(scores, fixed)


def test_tiny_dna_resumes_from_its_checkpoint(tiny_run, digits_data, trained_teacher):
    searcher, arch, ckpt = tiny_run
    again = DNASearch(dna_digits_space(), checkpoint=str(ckpt), **DNA_TINY)
    assert again.fit(None, digits_data, teacher=trained_teacher) == arch
    assert again.history == searcher.history
    # the official setting fixes the last block at mb6_k3; resumed scores are reused, costs recounted
    fixed = DNASearch(dna_digits_space(), checkpoint=str(ckpt), fixed_blocks=[-1], **DNA_TINY)
    arch_fixed = fixed.fit(None, digits_data, teacher=trained_teacher)
    assert arch_fixed["stage2.layer0.op"] == "mb6_k3" and fixed.space.paths_of(arch_fixed)[:2] == \
        searcher.space.paths_of(arch)[:2]
    assert fixed.result["macs"] == count_macs(fixed.space.build(arch_fixed), (1, 1, 8, 8))
    changed = DNASearch(dna_digits_space(), checkpoint=str(ckpt), **{**DNA_TINY, "epochs_per_block": 3})
    with pytest.raises(ConfigError, match="another configuration"):
        changed.fit(None, digits_data, teacher=trained_teacher)


def test_dna_config_errors_and_registry(digits_data):
    space = dna_digits_space()
    assert STRATEGIES.get("dna") is DNASearch and issubclass(DNASearch, Searcher)
    built = STRATEGIES.build({"name": "dna", "epochs_per_block": 1, "fixed_blocks": [-1]}, "strategy",
                             space=space, seed=0, objective=Objective(constraints=["macs <= 600000"]))
    assert built.constraint == Constraint("macs", "<=", 600000.0) and built.fixed_blocks == [2]
    assert built.lr == [0.005] * 3 and DNASearch(DNASpace()).lr == [0.002, 0.005, 0.005, 0.005, 0.005, 0.002]
    with pytest.raises(ConfigError, match="strategy.metric"):
        DNASearch(space, metric="accuracy")
    with pytest.raises(ConfigError, match="strategy.lr"):
        DNASearch(space, lr=[0.1, 0.1])
    with pytest.raises(ConfigError, match="strategy.constraint"):
        DNASearch(space, constraint="latency_ms <= 5")
    with pytest.raises(ConfigError, match="blockwise space"):
        DNASearch(SPACES.get("mobile_digits")())
    with pytest.raises(ConfigError, match="teacher_stages"):
        DNASearch(space, epochs_per_block=1).fit(None, digits_data, teacher=torchvision.models.resnet18())
    # a teacher whose stage 1 has other widths than the space's block 1 is refused before any training
    with pytest.raises(ConfigError, match=r"block 1.*block_cfgs\[1\]"):
        DNASearch(space, epochs_per_block=1).fit(None, digits_data, teacher=SmallCNN(widths=(32, 40, 64)))
