"""DARTS speed levers (fused edges, channels-last, bf16 autocast, torch.compile, CUDA graphs): each leaves the
search what it was, exactly or within bf16's rounding; bad settings are refused with one line."""

import copy

import pytest
import torch
import torch.nn.functional as F

from core.api import architecture_parameters, set_mixture
from core.engine.registry import ConfigError
from core.oneshot.darts import DartsSearcher
from core.testing import TinyClassification, digits
from core.zoo.darts import DartsSpace, fuse_edges

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data():
    return digits()


def searcher(space, **kw):
    return DartsSearcher(space, task=TinyClassification(), **kw)


def test_fused_edges_compute_what_the_plain_edges_compute():
    torch.manual_seed(0)
    plain = DartsSpace(C=4, layers=3).supernet(C=4, layers=3)
    fused = copy.deepcopy(plain)
    assert fuse_edges(fused) == 3 * 14
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))
    runs = []
    for model in (plain, fused):
        model.train()
        out = model(x)
        F.cross_entropy(out, y).backward()
        runs.append((out.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None},
                     model.state_dict()))
    (out_p, grad_p, state_p), (out_f, grad_f, state_f) = runs
    assert torch.allclose(out_p, out_f, atol=1e-5)
    assert grad_p.keys() == grad_f.keys() and all(torch.allclose(grad_p[k], grad_f[k], atol=1e-5) for k in grad_p)
    # the BatchNorms' running statistics are updated in the modules' own buffers, under the same keys
    assert state_p.keys() == state_f.keys()
    assert all(torch.allclose(state_p[k].float(), state_f[k].float(), atol=1e-6) for k in state_p)
    # buffers replaced (the network moved): the fused edges rebuild their joint buffers and keep updating them
    fused.to(torch.float64).to(torch.float32)
    before = {k: v.clone() for k, v in fused.state_dict().items() if "running_mean" in k}
    fused(x)
    assert all(not torch.equal(before[k], v) for k, v in fused.state_dict().items() if k in before and "_ops" in k)


def test_a_fused_edge_by_hand_matches_the_weighted_sum_of_its_candidates():
    torch.manual_seed(1)
    net = DartsSpace(C=4, layers=3).supernet(C=4, layers=3)
    cell = net.cells[0]
    edge = cell._ops[0]
    fuse_edges(net)
    net.eval()  # running statistics: the comparison does not change them
    for p in net.parameters():
        torch.nn.init.normal_(p)  # not the init's values: any weight must give the same function
    h = torch.randn(2, 4, 6, 6, requires_grad=True)
    by_hand = sum(w * candidate(h) for w, candidate in zip(edge.weights(), edge.candidates))
    fused = cell.fused[0](h)
    assert torch.allclose(by_hand, fused, atol=1e-5)
    g_hand, = torch.autograd.grad(by_hand.square().sum(), h)
    g_fused, = torch.autograd.grad(fused.square().sum(), h)
    assert torch.allclose(g_hand, g_fused, atol=1e-4)


def test_fused_cells_fall_back_to_the_plain_edge_for_single_paths_and_sparse_relaxations():
    torch.manual_seed(0)
    net = DartsSpace(C=4, layers=3).supernet(C=4, layers=3)
    plain = copy.deepcopy(net)
    fuse_edges(net)
    x = torch.randn(2, 3, 8, 8)
    for model in (net, plain):
        set_mixture(model, "sparsemax")
        model.eval()
    assert torch.allclose(net(x), plain(x), atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("lever, tolerance", [({"fused_edges": True}, 1e-5), ({"channels_last": True}, 1e-5),
                                              ({"precision": "bf16"}, 2e-2),
                                              ({"fused_edges": True, "channels_last": True}, 1e-5),
                                              ({"order": 2, "fused_edges": True}, 1e-4)])
def test_speed_levers_leave_the_search_as_it_was(data, lever, tolerance):
    space = DartsSpace(C=4, layers=3, in_channels=1, num_classes=10)
    settings = dict(epochs=1, steps_per_epoch=3 - lever.get("order", 1), batch_size=16, arch_lr=0.05,
                    supernet={"C": 4, "layers": 3}, order=lever.get("order", 1))
    plain, fast = searcher(space, **settings), searcher(space, **{**settings, **lever})
    arch_plain, arch_fast = plain.fit(None, data), fast.fit(None, data)
    assert abs(plain.history[-1]["train_loss"] - fast.history[-1]["train_loss"]) < tolerance
    if tolerance < 1e-3:  # exact levers: the same architecture logits and derived arch (bf16 can flip the sign of
        # a tiny gradient, which Adam turns into a full step: only its loss is compared)
        pairs = zip(architecture_parameters(plain.supernet), architecture_parameters(fast.supernet))
        assert all(torch.allclose(a, b, atol=1e-4) for a, b in pairs)
        assert arch_plain == arch_fast


@pytest.mark.slow
def test_a_compiled_supernet_searches_as_the_eager_one(data):
    space = DartsSpace(C=2, layers=3, in_channels=1, num_classes=10, steps=2)
    settings = dict(epochs=1, steps_per_epoch=2, batch_size=16, supernet={"C": 2, "layers": 3}, arch_lr=0.05)
    eager, compiled = searcher(space, **settings), searcher(space, compile="aot_eager", **settings)
    assert eager.fit(None, data) == compiled.fit(None, data)
    assert abs(eager.history[-1]["train_loss"] - compiled.history[-1]["train_loss"]) < 1e-5


def test_speed_lever_settings_are_checked():
    space = DartsSpace(C=4, layers=3, in_channels=1, num_classes=10)
    with pytest.raises(ConfigError, match=r"^strategy.cuda_graphs: needs device cuda") as err:
        searcher(space, cuda_graphs=True)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="strategy.cuda_graphs: needs a relaxation"):
        searcher(space, cuda_graphs=True, relaxation="sparsestmax", device="cuda")
    with pytest.raises(ConfigError, match="strategy.precision: expected fp32 or bf16"):
        searcher(space, precision="fp8")
    with pytest.raises(ConfigError, match="strategy.precision: fp16 needs loss scaling"):
        searcher(space, precision="fp16")
    with pytest.raises(ConfigError, match="strategy.compile"):
        searcher(space, compile="turbo")
    assert searcher(space, precision="32").precision == "fp32"  # the older spelling


def test_fused_edges_need_darts_cells(data):
    from core.api import Choice, ChoiceModule, SearchSpace
    from torch import nn

    class Space(SearchSpace):
        def __init__(self):
            super().__init__([Choice("op", ("a", "b"))])

        def supernet(self, num_classes=10):
            return nn.Sequential(nn.Flatten(), ChoiceModule(self.choice("op"), [nn.Identity(), nn.Identity()]),
                                 nn.Linear(64, num_classes))

    with pytest.raises(ConfigError, match="strategy.fused_edges: Sequential has no DARTS search cell"):
        searcher(Space(), fused_edges=True, epochs=1, steps_per_epoch=1).fit(None, data)


def test_lever_keys_are_accepted_from_a_config():
    from core.engine.registry import check_kwargs

    section = {"fused_edges": True, "channels_last": True, "precision": "bf16", "compile": "max-autotune",
               "cuda_graphs": False, "log_every": 20}
    assert check_kwargs(DartsSearcher, section, "strategy") == section
    with pytest.raises(ConfigError, match="strategy.fused_edges"):
        check_kwargs(DartsSearcher, {"fused_edges": "yes"}, "strategy")


@pytest.mark.slow
def test_a_nan_loss_stops_the_search_at_the_next_read(data):
    space = DartsSpace(C=4, layers=3, in_channels=1, num_classes=10)
    s = searcher(space, epochs=1, steps_per_epoch=3, batch_size=16, supernet={"C": 4, "layers": 3}, lr=1e30,
                 log_every=2)
    with pytest.raises(FloatingPointError, match="DARTS loss is not finite"):
        s.fit(None, data)


@pytest.mark.slow
@pytest.mark.parametrize("order", [1, 2])
def test_the_search_loop_reads_nothing_on_the_host_per_step(data, order):
    from core.testing.meta import OnMeta

    space = DartsSpace(C=4, layers=3, num_classes=10, in_channels=1, steps=2)
    reads = []
    for steps in (2, 4):
        with OnMeta() as mode:  # a value read on the host counts as one read (a placeholder comes back)
            searcher(space, epochs=1, steps_per_epoch=steps, batch_size=8, supernet={"C": 4, "layers": 3},
                     order=order, device="meta").fit(None, data)
        reads.append(mode.host_reads)
    assert reads[0] == reads[1]  # the reads are per epoch (the summary, the derived arch), none per step
