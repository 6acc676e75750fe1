"""The shared bilevel loop (core.oneshot.bilevel, DARTS's Alg. 1): halves, alternation, warm-up, resume."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from core.api import Arch, Choice, ChoiceModule, SearchSpace, derive
from core.engine.data import DataSplits
from core.engine.registry import ConfigError
from core.engine.runs import load_checkpoint
from core.oneshot.bilevel import BilevelSearcher

torch.set_num_threads(1)


class Zero(nn.Module):
    def forward(self, x):
        return x * 0.0


class ToyNet(nn.Module):
    """One choice between dropping the input and passing it, then a linear classifier."""

    def __init__(self, space):
        super().__init__()
        self.op = ChoiceModule(space.choice("op"), [Zero(), nn.Identity()])
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(self.op(x))


class Crash(Exception):
    pass


class ToySearcher(BilevelSearcher):
    """A minimal searcher: cross-entropy for both steps, a penalty on the identity's weight, argmax derivation.

    Records which samples each step saw (the index is the dataset's third tensor), the relaxation's keyword
    arguments, and the architecture logits after each epoch; `crash_at` (epoch, step) stops the run there.
    """

    title = "toy search"
    checkpoint_format = "archforge-toy-1"

    def __init__(self, space, crash_at=None, penalty=0.0, **kwargs):
        super().__init__(space, **kwargs)
        self.crash_at, self.penalty = crash_at, penalty
        self.steps_seen, self.relaxations, self.logits_after = [], [], []
        self._epoch_now = 0

    def build_supernet(self, data):
        return ToyNet(self.space)

    def relax(self, model, epoch, step, steps):
        self._epoch_now = epoch
        if self.crash_at == (epoch, step):
            raise Crash
        self.relaxations.append(self.relax_kwargs(epoch, step, steps))
        super().relax(model, epoch, step, steps)

    def weight_loss(self, model, batch, warmup):
        x, y, index = batch
        self.steps_seen.append(("weight", index.tolist()))
        loss = F.cross_entropy(model(x), y)
        return loss, {"loss": float(loss.detach()) * len(y), "n": len(y)}

    def arch_loss(self, model, batch):
        x, y, index = batch
        self.steps_seen.append(("arch", index.tolist()))
        weights = model.op.weights()
        loss = F.cross_entropy(model(x), y) + self.penalty * weights[1]
        return loss, {"arch_loss": float(loss.detach())}

    def epoch_summary(self, model, epoch, sums, steps, warmup):
        return {"train_loss": sums["loss"] / sums["n"], "arch_steps": "arch_loss" in sums}

    def end_epoch(self, row):
        self.logits_after.append(self.supernet.op.logits.detach().clone())

    def derive(self, supernet=None):
        return self.space.check(Arch(derive(supernet if supernet is not None else self.supernet)))


@pytest.fixture(scope="module")
def space():
    return SearchSpace([Choice("op", ("zero", "identity"))])


@pytest.fixture(scope="module")
def data():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(48, 8, generator=gen)
    y = (x[:, 0] > 0).long()  # only the identity lets the label through
    return DataSplits("toy", TensorDataset(x, y, torch.arange(48)), None, None, (8,), num_classes=2)


def test_alternation_uses_disjoint_halves_architecture_step_first(space, data):
    searcher = ToySearcher(space, epochs=2, batch_size=8, steps_per_epoch=3, arch_lr=0.1, lr=0.1)
    searcher.fit(None, data)
    kinds = [kind for kind, _ in searcher.steps_seen]
    assert kinds == ["arch", "weight"] * 6  # per step: architecture step, then weight step
    weight_idx = {i for kind, idx in searcher.steps_seen if kind == "weight" for i in idx}
    arch_idx = {i for kind, idx in searcher.steps_seen if kind == "arch" for i in idx}
    assert weight_idx and arch_idx and not weight_idx & arch_idx
    assert len(weight_idx | arch_idx) > 24  # both halves of the training split are drawn from
    assert [row["epoch"] for row in searcher.history] == [0, 1]
    assert searcher.epoch_steps == 3


def test_warmup_epochs_leave_the_architecture_untouched(space, data):
    searcher = ToySearcher(space, epochs=3, warmup_epochs=2, batch_size=8, steps_per_epoch=3, arch_lr=0.1, lr=0.1,
                           penalty=5.0)
    torch.manual_seed(0)
    initial = ToyNet(space).op.logits.detach().clone()  # the supernet `fit` builds from seed 0
    searcher.fit(None, data)
    warm0, warm1, searched = searcher.logits_after
    assert torch.equal(warm0, initial) and torch.equal(warm1, initial)
    assert not torch.equal(searched, initial)
    assert [row["arch_steps"] for row in searcher.history] == [False, False, True]
    assert [kind for kind, _ in searcher.steps_seen[:6]] == ["weight"] * 6
    assert searcher.history[0]["train_loss"] > searcher.history[1]["train_loss"]  # the weights trained meanwhile
    with pytest.raises(ConfigError, match="warmup_epochs"):
        ToySearcher(space, epochs=2, warmup_epochs=2)


def test_resume_after_a_crash_matches_an_uninterrupted_run(space, data, tmp_path):
    kwargs = dict(epochs=3, batch_size=8, steps_per_epoch=3, arch_lr=0.1, lr=0.1, relaxation="gumbel",
                  temperature=(2.0, 0.5), seed=4)
    straight = ToySearcher(space, **kwargs)
    arch = straight.fit(None, data)

    ckpt = tmp_path / "toy.pt"
    crashed = ToySearcher(space, crash_at=(1, 2), checkpoint=str(ckpt), **kwargs)
    with pytest.raises(Crash):
        crashed.fit(None, data)
    assert load_checkpoint(ckpt)["epoch"] == 1  # epoch 0 was saved; epoch 1 died half-way
    resumed = ToySearcher(space, checkpoint=str(ckpt), **kwargs)
    assert resumed.fit(None, data) == arch

    def strip(history):
        return [{k: v for k, v in row.items() if k != "seconds"} for row in history]

    assert strip(resumed.history) == strip(straight.history)
    assert resumed.steps_seen == straight.steps_seen[2 * 3:]  # the resumed run redraws epochs 1-2 alike
    for a, b in zip(resumed.supernet.state_dict().values(), straight.supernet.state_dict().values()):
        assert torch.equal(a, b)
    # Gumbel's temperature anneals linearly per epoch from 2.0 to 0.5
    assert [r["temperature"] for r in straight.relaxations[::3]] == [2.0, 1.25, 0.5]


def test_second_order_only_where_supported_and_sparsestmax_schedule_ends_at_one(space, data):
    with pytest.raises(ConfigError, match="strategy.order"):
        ToySearcher(space, order=2)
    searcher = ToySearcher(space, epochs=2, batch_size=8, steps_per_epoch=2, relaxation="sparsestmax")
    searcher.fit(None, data)
    assert [r["progress"] for r in searcher.relaxations] == [0.25, 0.5, 0.75, 1.0]
