import math
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.testing import onemax
from core.evaluation import FunctionEvaluator, Result
from core.journal import Journal
from core.objective import Constraint, Objective, non_dominated
from core.search import ResumeError, Search
from core.strategies import RandomSearch, RegularizedEvolution
from core.testing import TinyClassification

ROOT = Path(__file__).resolve().parents[2]


def run(space, strategy, tmp_path, budget, name="j", evaluator=None, objective=None, on_trial=None):
    with Journal(tmp_path / f"{name}.sqlite") as journal:
        return Search(space, strategy, evaluator or FunctionEvaluator(onemax, "onemax"), objective or Objective(),
                      journal, budget=budget, progress=False, on_trial=on_trial).run()


def test_strategies_are_deterministic_per_seed(onemax_space, tmp_path):
    a = run(onemax_space, RegularizedEvolution(onemax_space, seed=3), tmp_path, 60, "a")
    b = run(onemax_space, RegularizedEvolution(onemax_space, seed=3), tmp_path, 60, "b")
    c = run(onemax_space, RegularizedEvolution(onemax_space, seed=4), tmp_path, 60, "c")
    assert [x.key for x, _ in a.trials] == [x.key for x, _ in b.trials]
    assert [x.key for x, _ in a.trials] != [x.key for x, _ in c.trials]


@pytest.mark.slow
def test_evolution_beats_random_on_average(onemax_space, tmp_path):
    evo, rnd = [], []
    for seed in range(8):
        evo.append(run(onemax_space, RegularizedEvolution(onemax_space, seed=seed, population_size=20, sample_size=5),
                       tmp_path, 200, f"e{seed}").best_result.metrics["accuracy"])
        rnd.append(run(onemax_space, RandomSearch(onemax_space, seed=seed), tmp_path, 200,
                       f"r{seed}").best_result.metrics["accuracy"])
    # random's best of 200 on 20 four-way choices is ~10/20; evolution climbs well above it
    assert statistics.mean(evo) > statistics.mean(rnd) + 3, (evo, rnd)


def test_failed_candidates_never_stop_the_search(onemax_space, tmp_path):
    def flaky(arch):
        if arch["c0"] == 1:
            raise RuntimeError("boom")
        if arch["c0"] == 2:
            return {"accuracy": math.nan}
        return onemax(arch)

    summary = run(onemax_space, RandomSearch(onemax_space, seed=0), tmp_path, 40, evaluator=FunctionEvaluator(flaky))
    reasons = [r.reason for _, r in summary.trials if not r.ok]
    assert any("boom" in r for r in reasons) and any("NaN" in r for r in reasons)
    assert summary.best_arch["c0"] in (0, 3)


def test_constraints_and_pareto_front(onemax_space, tmp_path):
    def scored(arch):
        m = onemax(arch)
        m["macs"] = float(sum(arch.values()))
        return m

    objective = Objective.from_config(constraints=["macs <= 25"])
    summary = run(onemax_space, RandomSearch(onemax_space, seed=1), tmp_path, 80, evaluator=FunctionEvaluator(scored),
                  objective=objective)
    assert summary.best_result.metrics["macs"] <= 25
    front = summary.pareto
    for _, r in front:  # nothing feasible dominates a front member
        assert not any(o.metrics["accuracy"] >= r.metrics["accuracy"] and o.metrics["macs"] <= r.metrics["macs"]
                       and (o.metrics["accuracy"], o.metrics["macs"]) != (r.metrics["accuracy"], r.metrics["macs"])
                       for _, o in summary.trials if objective.feasible(o))
    assert non_dominated([[1, 2], [2, 1], [2, 2], [1, 2]]) == [0, 1]
    with pytest.raises(ValueError, match="macs <<= 3"):
        Constraint.parse("macs <<= 3")


def test_duplicate_asks_are_answered_from_the_cache(onemax_space, tmp_path):
    class Repeat(RandomSearch):
        def propose(self):
            return self.space.default()

    summary = run(onemax_space, Repeat(onemax_space), tmp_path, 5, "dup")
    assert summary.evaluations == 1 and len(summary.trials) == 5
    with Journal(tmp_path / "dup.sqlite") as j:
        assert [t.cached for t in j.trials()] == [False, True, True, True, True]


def test_on_trial_returning_true_stops_the_search(onemax_space, tmp_path):
    """A callback that returns True ends the search there; a run without it uses the whole budget."""
    seen = []

    def stop_at_third(i, arch, result):
        seen.append(i)
        return i == 2

    summary = run(onemax_space, RandomSearch(onemax_space, seed=0), tmp_path, 20, "stop", on_trial=stop_at_third)
    assert seen == [0, 1, 2] and len(summary.trials) == 3 and summary.evaluations == 3
    with Journal(tmp_path / "stop.sqlite") as j:
        assert len(j.trials()) == 3
    assert len(run(onemax_space, RandomSearch(onemax_space, seed=0), tmp_path, 20, "full").trials) == 20


def test_resume_refuses_a_different_strategy(onemax_space, tmp_path):
    run(onemax_space, RandomSearch(onemax_space, seed=0), tmp_path, 10, "x")
    with pytest.raises(ResumeError, match="ask 0: the strategy now asks"):
        run(onemax_space, RandomSearch(onemax_space, seed=1), tmp_path, 20, "x")


def _script(run_dir, budget, seed, pause):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, str(ROOT / "tests/core/kill_resume_script.py"), str(run_dir),
                             str(budget), str(seed), str(pause)], env=env)


def _journal_rows(run_dir):
    db = sqlite3.connect(run_dir / "journal.sqlite")
    try:
        return db.execute("SELECT trial, arch_key, metrics, cached FROM trials ORDER BY trial").fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        db.close()


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    full.mkdir(), killed.mkdir()
    assert _script(full, 60, 7, 0.0).wait(60) == 0

    proc = _script(killed, 60, 7, 0.05)
    deadline = time.time() + 60
    while len(_journal_rows(killed)) < 15 and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    before = _journal_rows(killed)
    assert 15 <= len(before) < 60
    evaluated_before = (killed / "evaluated.log").read_text().split()
    (killed / "evaluated.log").unlink()

    assert _script(killed, 60, 7, 0.0).wait(60) == 0
    assert _journal_rows(killed) == _journal_rows(full)
    # the resumed process evaluated only archs whose result was not journaled yet
    journaled = {key for _, key, _, cached in before if not cached}
    evaluated_after = (killed / "evaluated.log").read_text().split()
    assert not journaled & set(evaluated_after)
    assert len(evaluated_after) == len(set(evaluated_after))
    keys = [key for _, key, _, cached in _journal_rows(killed) if not cached]
    assert len(keys) == len(set(keys))
    assert len(evaluated_before) - len(journaled) <= 1  # at most the evaluation in flight was lost


def test_latency_constraint_from_a_lookup_table(tmp_path):
    from core.evaluation.train import TrainEvaluator
    from core.zoo.mobile import digits_space
    from core.testing import digits

    space, data = digits_space(), digits()
    evaluator = TrainEvaluator(space, data, TinyClassification(), epochs=1, sample_ratio=0.1, latency="table",
                               latency_table=str(tmp_path / "lut.json"))
    result = evaluator.evaluate(space.default())
    assert result.ok and result.metrics["latency_ms"] > 0
    assert (tmp_path / "lut.json").is_file()
    again = TrainEvaluator(space, data, TinyClassification(), epochs=1, sample_ratio=0.1, latency="table",
                           latency_table=str(tmp_path / "lut.json")).costs(space.default())
    assert again["latency_ms"] == result.metrics["latency_ms"]  # answered from the saved table, not re-timed


@pytest.mark.slow
def test_thirty_evaluation_search_with_real_training(tmp_path):
    from core.evaluation.train import TrainEvaluator
    from core.zoo.mobile import digits_space
    from core.testing import digits

    space = digits_space()
    evaluator = TrainEvaluator(space, digits(), TinyClassification(), epochs=2, batch_size=16, lr=0.1, sample_ratio=0.25)
    summary = run(space, RegularizedEvolution(space, seed=0, population_size=8, sample_size=3), tmp_path, 30,
                  evaluator=evaluator, objective=Objective.from_config(constraints=["macs <= 1e6"]))
    trained = [r for _, r in summary.trials if r.status != "infeasible"]
    assert len(trained) == 30 and summary.evaluations == 30  # archs over 1M MACs are rejected before training
    assert len(summary.trials) == 30 + summary.infeasible
    assert all(r.ok and r.metrics["params"] > 0 and 0 < r.metrics["macs"] <= 1e6 for r in trained)
    assert summary.best_result.metrics["macs"] <= 1e6
    assert summary.best_result.metrics["accuracy"] > 0.2  # well above chance (0.1) after two short epochs


class CountingCostEvaluator(FunctionEvaluator):
    """onemax with a 'MACs' known before training: the sum of the choices (0..60)."""

    def __init__(self):
        super().__init__(onemax, "onemax-macs")
        self.trained = []

    def cost_metrics(self, arch):
        return {"macs": float(sum(arch.values())), "params": 0.0}

    def evaluate(self, arch):
        self.trained.append(arch)
        return Result(metrics={**onemax(arch), **self.cost_metrics(arch)})


def test_archs_over_a_cost_constraint_are_never_trained_and_do_not_use_the_budget(onemax_space, tmp_path):
    objective = Objective(constraints=["macs <= 25"])
    evaluator = CountingCostEvaluator()
    summary = run(onemax_space, RandomSearch(onemax_space, seed=0), tmp_path, 15, "c", evaluator, objective)
    # uniform choices have mean sum 30: most proposals break the budget, yet 15 archs are trained, all feasible
    assert len(evaluator.trained) == summary.evaluations == 15
    assert all(sum(a.values()) <= 25 for a in evaluator.trained)
    assert summary.infeasible > 15 and len(summary.trials) == 15 + summary.infeasible
    rejected = [r for a, r in summary.trials if r.status == "infeasible"]
    assert all("macs" in r.reason and r.metrics["macs"] > 25 for r in rejected)
    # the journal holds the rejections; a resumed search replays them without training anything
    again = CountingCostEvaluator()
    with Journal(tmp_path / "c.sqlite") as journal:
        assert sum(t.result.status == "infeasible" for t in journal.trials()) == summary.infeasible
        resumed = Search(onemax_space, RandomSearch(onemax_space, seed=0), again, objective, journal, budget=15,
                         progress=False).run()
    assert again.trained == [] and [a.key for a, _ in resumed.trials] == [a.key for a, _ in summary.trials]
