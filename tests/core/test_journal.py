"""The journal's lock and damage checks, and metrics cleaned inside the evaluation's failure isolation."""

import math

import numpy as np
import pytest
import torch

from core.evaluation import FunctionEvaluator, Result
from core.evaluation.base import safe_evaluate
from core.journal import Journal, JournalError
from core.api import Arch


def test_one_process_at_a_time(tmp_path):
    path = tmp_path / "journal.sqlite"
    first = Journal(path)
    with pytest.raises(JournalError, match="in use by another archforge process"):
        Journal(path)
    first.close()
    with Journal(path) as again:  # released on close
        assert len(again) == 0


def test_damaged_and_empty_journals_name_the_file(tmp_path):
    path = tmp_path / "journal.sqlite"
    with Journal(path) as journal:
        for i in range(200):
            journal.record(Arch({"i": i, "pad": "x" * 300}), Result({"accuracy": 0.5}), "fp")
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"journal.sqlite{suffix}").unlink(missing_ok=True)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(JournalError, match=f"{path}: the journal is damaged"):
        Journal(path)
    path.write_bytes(b"")
    with pytest.raises(JournalError, match="empty"):
        Journal(path, must_exist=True)
    with pytest.raises(JournalError, match="no journal to resume"):
        Journal(tmp_path / "other.sqlite", must_exist=True)


@pytest.mark.parametrize("value, status, expected", [
    (np.float32(0.25), "ok", 0.25),
    (np.int64(3), "ok", 3.0),
    (torch.tensor(0.5), "ok", 0.5),
    (np.array(0.75), "ok", 0.75),
    (True, "ok", 1.0),
    (float("inf"), "failed", "inf"),
    (np.float64("nan"), "failed", "NaN"),
    (torch.tensor(float("-inf")), "failed", "-inf"),
    ("0.9", "failed", "str"),
    ([0.9], "failed", "list"),
    (torch.ones(3), "failed", "shape"),
])
def test_metrics_become_floats_or_fail_the_candidate(value, status, expected):
    result = safe_evaluate(FunctionEvaluator(lambda arch: {"accuracy": value, "macs": np.float64(7)}), Arch({"a": 1}))
    assert result.status == status
    if status == "ok":
        assert type(result.metrics["accuracy"]) is float and result.metrics["accuracy"] == expected
        assert type(result.metrics["macs"]) is float
    else:
        assert "accuracy" in result.reason and expected in result.reason
        assert all(isinstance(v, float) and math.isfinite(v) for v in result.metrics.values())
