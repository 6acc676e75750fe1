"""Checks before any work: required and nested arguments, the objective's metrics, and why nothing was feasible."""

import pytest

from core.engine.registry import ConfigError, Registry, check_kwargs
from core.engine.validate import check_objective_metrics, check_run_name, failure_summary
from core.evaluation import Result
from core.objective import Objective


def _feeds(depth: int = 1, width: float = 1.0, **rest):
    return depth, width


class Component:
    @staticmethod
    def nested_kwargs(section):
        return {"inner": (_feeds, ("extra",), ("depth",))}

    def __init__(self, root: str, inner: dict | None = None, size: int = 2):
        self.root, self.inner = root, inner


def test_required_and_nested_arguments_are_named():
    reg = Registry("thing")
    reg.register("c", Component)
    with pytest.raises(ConfigError, match="data.root: missing"):
        reg.check({"name": "c"}, "data")
    reg.check({"name": "c"}, "data", provided=("root",))  # the caller passes it
    reg.check({"name": "c"}, "data", provided=None)  # not known yet: not checked
    with pytest.raises(ConfigError, match="data.inner.colour: unknown key"):
        check_kwargs(Component, {"root": "x", "inner": {"colour": 1}}, "data")
    with pytest.raises(ConfigError, match="data.inner.width: expected float"):
        check_kwargs(Component, {"root": "x", "inner": {"width": "wide"}}, "data")
    with pytest.raises(ConfigError, match="data.inner.depth: set by data itself"):
        check_kwargs(Component, {"root": "x", "inner": {"depth": 3}}, "data")
    check_kwargs(Component, {"root": "x", "inner": {"width": 2, "extra": "ok"}}, "data")


@pytest.mark.parametrize("name", ["../x", "/abs", "a/b", "..", ".", "", " x", "a\\b", "c:"])
def test_a_run_name_is_one_folder(name):
    with pytest.raises(ConfigError, match="run.name"):
        check_run_name(name)


def test_objective_metrics_must_be_reported():
    produced = {"accuracy", "params", "macs"}
    check_objective_metrics(Objective.from_config("accuracy", constraints=["macs <= 5"]), produced, "train")
    with pytest.raises(ConfigError, match="objective.metric: 'acc'"):
        check_objective_metrics(Objective.from_config("acc"), produced, "train")
    with pytest.raises(ConfigError, match="evaluator.latency=measure"):
        check_objective_metrics(Objective.from_config(constraints=["latency_ms <= 5"]), produced, "train")
    with pytest.raises(ConfigError, match="objective.pareto"):
        check_objective_metrics(Objective.from_config(pareto=["top5:max"]), produced, "train")
    check_objective_metrics(Objective.from_config("anything"), None, "custom")  # undeclared: not checked


def test_failure_summary_counts_the_most_common_reasons():
    objective = Objective.from_config(constraints=["macs <= 100"])
    results = ([Result({"macs": 200.0 + i}, "infeasible") for i in range(5)]
               + [Result.failed(f"NaNLoss: loss is nan at epoch {i} step 3 (at x.py:{i})") for i in range(3)]
               + [Result({"accuracy": 0.5, "macs": 150.0})])
    line = failure_summary(objective, results)
    assert line.startswith("no feasible architecture in 9 trial(s): 5 x breaks macs <= 100 before training; "
                           "3 x failed: NaNLoss: loss is nan at epoch N step N; 1 x breaks macs <= 100 after")
    assert "\n" not in line


def test_threads_default_and_setting(monkeypatch):
    import torch

    from core.cli import main
    from core.engine.validate import default_threads

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_threads() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(2)), raising=False)
    assert default_threads() == 1
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert default_threads() == 8
    before = torch.get_num_threads()
    try:
        assert main(["profile", "configs/classification/quickstart.yaml", "threads=2", "profile.repeats=1"]) == 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
