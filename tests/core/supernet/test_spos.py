"""SPOS supernet training (Guo et al., ECCV 2020) and the supernet evaluator with BN recalibration."""

import random
import statistics
import time

import pytest
import torch
from torch import nn

from core.engine.registry import EVALUATORS
from core.evaluation.supernet import SupernetEvaluator
from core.supernet.bn import recalibrate_bn, state_digest
from core.journal import Journal
from core.objective import Objective
from core.search import Search
from core.zoo.cell201 import Cell201Space
from core.zoo.mobile import digits_space
from core.strategies import RegularizedEvolution
from core.supernet.spos import SPOSTrainer, load_supernet, train_supernet
from core.testing import TinyClassification

SPOS_TASK = TinyClassification(label_smoothing=0.1)  # SPOS's label smoothing
from core.testing import digits

torch.set_num_threads(1)

SUPERNET = {"C": 8, "N": 1}


@pytest.fixture(scope="module")
def data():
    return digits()


@pytest.fixture(scope="module")
def space():
    return Cell201Space(C=8, N=1, in_channels=1, num_classes=10)


@pytest.fixture(scope="module")
def trained(space, data, tmp_path_factory):
    path = tmp_path_factory.mktemp("spos") / "supernet.pt"
    supernet = train_supernet(space, data, SPOS_TASK, epochs=6, lr=0.1, supernet_kwargs=SUPERNET, checkpoint=str(path))
    return supernet, path


def sample_archs(space, n, seed=0):
    rng = random.Random(seed)
    return [space.sample(rng) for _ in range(n)]


def test_spos_training_loss_falls(trained):
    history = trained[0].spos_history
    assert len(history) == 6
    assert history[-1]["loss"] < history[0]["loss"] - 0.3, history
    assert history[-1]["accuracy"] > history[0]["accuracy"] + 0.2
    assert history[-1]["lr"] < 0.1 * 0.2  # linear decay towards 0


def test_resumed_training_equals_an_uninterrupted_run(space, data, tmp_path):
    kwargs = dict(epochs=3, steps_per_epoch=4, supernet_kwargs=SUPERNET, seed=7)
    reference = SPOSTrainer(space, data, SPOS_TASK, **kwargs).fit()

    class CrashingTask(TinyClassification):  # a run killed during its third epoch
        calls = 0

        def loss(self, model, batch):
            CrashingTask.calls += 1
            if CrashingTask.calls == 10:
                raise KeyboardInterrupt
            return super().loss(model, batch)

    path = tmp_path / "ckpt.pt"
    with pytest.raises(KeyboardInterrupt):
        SPOSTrainer(space, data, CrashingTask(0.1), checkpoint=str(path), **kwargs).fit()
    resumed_trainer = SPOSTrainer(space, data, SPOS_TASK, checkpoint=str(path), **kwargs)
    resumed = resumed_trainer.fit()
    assert [round(r["epoch"]) for r in resumed_trainer.history] == [0, 1, 2]
    ref_state, res_state = reference.state_dict(), resumed.state_dict()
    assert all(torch.equal(ref_state[k], res_state[k]) for k in ref_state)


def test_trained_supernet_beats_an_untrained_one(space, data, trained):
    archs = sample_archs(space, 12)
    good = SupernetEvaluator(space, data, SPOS_TASK, supernet=trained[0])
    torch.manual_seed(0)
    fresh = SupernetEvaluator(space, data, SPOS_TASK, supernet=space.supernet(**SUPERNET))
    good_acc = [good.evaluate(a).metrics["accuracy"] for a in archs]
    fresh_acc = [fresh.evaluate(a).metrics["accuracy"] for a in archs]
    assert statistics.mean(good_acc) > statistics.mean(fresh_acc) + 0.15, (good_acc, fresh_acc)
    assert good.fingerprint() != fresh.fingerprint()


def test_bn_recalibration_resets_to_the_batch_average():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3))
    batches = [(torch.randn(8, 1, 6, 6) * (i + 1) + i,) for i in range(3)]
    before = net[1].running_mean.clone()
    assert recalibrate_bn(net, batches) == 1
    with torch.no_grad():
        means = torch.stack([net[0](x).mean((0, 2, 3)) for x, in batches])
    assert not torch.allclose(net[1].running_mean, before)
    assert torch.allclose(net[1].running_mean, means.mean(0), atol=1e-5)  # cumulative average, not EMA
    assert net[1].momentum == 0.1 and not net.training


def test_bn_recalibration_improves_the_median_arch(space, data, trained):
    evaluator = SupernetEvaluator(space, data, SPOS_TASK, supernet=trained[0], bn_batches=4)
    archs = sample_archs(space, 11, seed=1)
    with_recal = [evaluator.score(a)["accuracy"] for a in archs]
    without = [evaluator.score(a, bn_batches=0)["accuracy"] for a in archs]
    assert statistics.median(with_recal) > statistics.median(without), (with_recal, without)
    gains = sorted(w - wo for w, wo in zip(with_recal, without))
    assert gains[len(gains) // 2] > 0, gains  # the median arch gains


def test_twenty_archs_are_fast_reproducible_and_loaded_from_checkpoints(space, data, trained):
    supernet, path = trained
    evaluator = EVALUATORS.build({"name": "supernet", "supernet": str(path)}, "evaluator", space=space, data=data, task=SPOS_TASK)
    assert evaluator.path == "activate" and state_digest(evaluator.supernet) == state_digest(supernet)
    archs = sample_archs(space, 20, seed=2)
    start = time.process_time()  # CPU time: immune to other processes loading the machine
    results = [evaluator.evaluate(a) for a in archs]
    seconds = time.process_time() - start
    assert seconds < 10, seconds  # about 1 s on one core
    assert all(r.ok and {"accuracy", "top5", "val_loss", "params", "macs"} <= set(r.metrics) for r in results)
    standalone = space.build(archs[3], num_classes=10)
    assert results[3].metrics["params"] == sum(p.numel() for p in standalone.parameters())
    # order-independent: the supernet's buffers are restored after every evaluation
    assert evaluator.evaluate(archs[0]).metrics == results[0].metrics
    reloaded = load_supernet(space, path)
    assert state_digest(reloaded) == state_digest(supernet)


def test_plugs_into_a_sample_based_search(space, data, trained, tmp_path):
    evaluator = SupernetEvaluator(space, data, SPOS_TASK, supernet=trained[0])
    with Journal(tmp_path / "journal.sqlite") as journal:
        summary = Search(space, RegularizedEvolution(space, seed=0, population_size=4, sample_size=2), evaluator,
                         Objective(), journal, budget=8, progress=False).run()
    assert summary.evaluations == 8 and summary.best_result.ok
    assert summary.best_result.metrics["accuracy"] == max(r.metrics["accuracy"] for _, r in summary.trials)


def test_mobile_space_trains_and_inherits_sliced_paths(data, tmp_path):
    space = digits_space()
    evaluator = SupernetEvaluator(space, data, SPOS_TASK, epochs=1, train={"steps_per_epoch": 4},
                                  checkpoint=str(tmp_path / "mobile.pt"))
    assert evaluator.path == "inherit" and (tmp_path / "mobile.pt").is_file()
    archs = sample_archs(space, 2, seed=3)
    for arch in archs:
        result = evaluator.evaluate(arch)
        assert result.ok and result.metrics["accuracy"] == pytest.approx(evaluator.score(arch)["accuracy"])
        assert result.metrics["params"] == sum(p.numel() for p in space.build(arch).parameters())
