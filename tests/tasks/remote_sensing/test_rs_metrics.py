"""OA, AA, kappa and the confusion matrix against scikit-learn; mean ± std over replicates."""

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, cohen_kappa_score, confusion_matrix

from tasks.remote_sensing.metrics import Accumulator, mean_std, summarize


def test_metrics_match_scikit_learn_and_ignore_unlabelled_targets():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 4, 500)
    pred = np.where(rng.uniform(size=500) < 0.7, target, rng.integers(0, 5, 500)) % 5
    acc = Accumulator(5)  # class 4 has no test pixel
    t = torch.tensor(target)
    t_ignored = torch.cat([t, torch.full((50,), -1)])  # unlabelled pixels are left out
    acc.update(torch.tensor(np.concatenate([pred, rng.integers(0, 5, 50)])), t_ignored)
    m = acc.compute()
    assert m["oa"] == pytest.approx((pred == target).mean())
    assert m["aa"] == pytest.approx(balanced_accuracy_score(target, pred))  # mean per-class recall
    assert m["kappa"] == pytest.approx(cohen_kappa_score(target, pred), abs=1e-6)
    np.testing.assert_array_equal(np.array(m["confusion"]), confusion_matrix(target, pred, labels=range(5)))
    assert np.isnan(m["per_class"][4])


def test_logits_and_maps_are_accepted():
    acc = Accumulator(3)
    logits = torch.zeros(2, 3, 2, 2)
    logits[:, 1] = 1.0  # predicts class 1 everywhere
    acc.update(logits, torch.tensor([[[1, 1], [0, -1]], [[2, 1], [-1, -1]]]))
    assert acc.compute()["oa"] == pytest.approx(3 / 5)


def test_mean_and_sample_std():
    mean, std = summarize([0.9, 0.92, 0.94])
    assert mean == pytest.approx(0.92) and std == pytest.approx(0.02)
    assert mean_std([0.9, 0.92, 0.94]) == "92.00 ± 2.00"
    assert summarize([0.5]) == (0.5, 0.0)
