"""Executors: the process pool and Ray run evaluations elsewhere and report every failure as a Result."""

import os
import time

import pytest

from core.engine.registry import ConfigError
from core.evaluation import FunctionEvaluator
from core.executors import ProcessExecutor, SerialExecutor, make_executor
from core.api import Arch
from core.testing.evaluators import WhereAmI


def archs(*dos):
    return [Arch({"do": do, "x": i}) for i, do in enumerate(dos)]


@pytest.mark.slow
def test_process_pool_workers_evaluate_in_order_and_a_death_or_timeout_fails_only_its_candidate():
    start = time.monotonic()
    results = ProcessExecutor(workers=2, threads=1).map(
        WhereAmI(sleep=0.2), archs("ok", "die", "ok", "hang", "ok", "ok", "ok"), timeout_s=3.0)
    assert [r.status for r in results] == ["ok", "failed", "ok", "failed", "ok", "ok", "ok"]
    assert "killed by SIGKILL" in results[1].reason and "out-of-memory" in results[1].reason
    assert "timed out after 3 s" in results[3].reason
    assert time.monotonic() - start < 40  # the hung evaluation (60 s) was cut at its timeout
    ok = [r for r in results if r.ok]
    assert [r.metrics["value"] for r in ok] == [0.0, 4.0, 16.0, 25.0, 36.0]
    assert len({r.metrics["pid"] for r in ok}) >= 2 and os.getpid() not in {r.metrics["pid"] for r in ok}
    assert {r.metrics["threads"] for r in ok} == {1.0}


def test_serial_timeout_fails_the_candidate_and_goes_on():
    results = SerialExecutor().map(WhereAmI(), archs("hang", "ok"), timeout_s=0.5)
    assert results[0].status == "failed" and "timed out after 0.5 s" in results[0].reason
    assert results[1].ok and results[1].metrics["pid"] == os.getpid()


@pytest.mark.slow
def test_gpus_per_trial_pin_cuda_visible_devices_per_worker():
    whole = ProcessExecutor(num_gpus=1, gpus=[0, 1])
    assert whole.workers == 2 and [whole.visible_devices(s) for s in range(2)] == ["0", "1"]
    shared = ProcessExecutor(num_gpus=0.5, gpus=[3])
    assert shared.workers == 2 and [shared.visible_devices(s) for s in range(2)] == ["3", "3"]
    pairs = ProcessExecutor(num_gpus=2, gpus=[0, 1, 2, 3])
    assert [pairs.visible_devices(s) for s in range(pairs.workers)] == ["0,1", "2,3"]
    # what a worker really sees
    results = ProcessExecutor(num_gpus=1, gpus=[4, 7]).map(WhereAmI(sleep=0.5), archs("ok", "ok", "ok", "ok"))
    assert {r.metrics["gpu"] for r in results} == {4.0, 7.0}
    with pytest.raises(ConfigError, match="search.executor.workers: 3 workers with num_gpus=1 need 3 GPUs"):
        ProcessExecutor(workers=3, num_gpus=1, gpus=[0, 1])
    with pytest.raises(ConfigError, match="search.executor.num_gpus: a fraction of a GPU must be 1/k"):
        ProcessExecutor(num_gpus=0.3, gpus=[0])


def test_executor_config_errors_name_the_key():
    assert isinstance(make_executor("serial"), SerialExecutor)
    assert make_executor({"name": "process", "workers": 3}).workers == 3
    with pytest.raises(ConfigError, match="search.executor.name: unknown executor 'dask'"):
        make_executor({"name": "dask"})
    with pytest.raises(ConfigError, match="search.executor.cpus: unknown key"):
        make_executor({"name": "process", "cpus": 2})
    with pytest.raises(ConfigError, match="search.executor.workers: expected int"):
        make_executor({"name": "process", "workers": "two"})


def test_an_evaluator_that_cannot_be_pickled_is_refused_before_any_work():
    with pytest.raises(ConfigError, match="FunctionEvaluator cannot be sent to worker processes.*executor: serial"):
        ProcessExecutor(workers=2).map(FunctionEvaluator(lambda arch: {"accuracy": 1.0}), archs("ok"))


@pytest.mark.slow
def test_ray_local_instance_runs_trials_and_reports_lost_workers_and_timeouts(monkeypatch):
    ray = pytest.importorskip("ray")
    import sys

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import tests/
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    executor = make_executor({"name": "ray", "num_cpus": 1, "workers": 2})
    results = executor.map(WhereAmI(sleep=0.2), archs("ok", "die", "ok", "hang", "ok"), timeout_s=8.0)
    assert [r.status for r in results] == ["ok", "failed", "ok", "failed", "ok"]
    assert "worker process died" in results[1].reason
    assert "timed out after 8 s" in results[3].reason
    assert [r.metrics["value"] for r in results if r.ok] == [0.0, 4.0, 16.0]
    assert {r.metrics["threads"] for r in results if r.ok} == {1.0}
    assert os.getpid() not in {r.metrics["pid"] for r in results if r.ok}


def test_every_evaluator_gives_the_same_result_after_pickling():
    """What a process pool sends each worker is a pickled copy: it must score an arch exactly as the original."""
    import pickle

    from core.evaluation import CompressionEvaluator, ContrastiveEvaluator, SupernetEvaluator, TabularEvaluator
    from core.evaluation.train import TrainEvaluator
    from core.testing import TinyClassification, digits
    from core.zoo.compression import CompressionSpace
    from core.zoo.mobile import digits_space

    data, space, task = digits(), digits_space(), TinyClassification()
    compression = CompressionSpace()
    evaluators = [
        (TrainEvaluator(space, data, task, epochs=1, sample_ratio=0.2), space.default()),
        (SupernetEvaluator(space, data, task, epochs=0, bn_batches=1), space.default()),
        (ContrastiveEvaluator(space, data, epochs=1, sample_ratio=0.2), space.default()),
        (TabularEvaluator(), TabularEvaluator().space.default()),
        (CompressionEvaluator(compression, data, epochs=1, teacher_epochs=1, sample_ratio=0.2),
         compression.default()),
    ]
    for evaluator, arch in evaluators:
        getattr(evaluator, "prepare", lambda: None)()
        copy = pickle.loads(pickle.dumps(evaluator))
        original, copied = evaluator.evaluate(arch), copy.evaluate(arch)
        assert original.ok and copied.metrics == original.metrics, type(evaluator).__name__
        assert copy.fingerprint() == evaluator.fingerprint()
