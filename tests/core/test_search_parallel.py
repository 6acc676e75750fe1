"""The asynchronous search loop: tell orders, reproducibility, replay of the ask/tell interleaving, failures."""

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.testing import onemax
from core.evaluation import FunctionEvaluator
from core.executors import ProcessExecutor
from core.journal import Journal
from core.objective import Objective
from core.search import Search
from core.strategies import RandomSearch, RegularizedEvolution
from core.strategies.base import QueuedStrategy
from core.testing.evaluators import Hangs, Scripted

ROOT = Path(__file__).resolve().parents[2]


def search(space, strategy, evaluator, path, budget, executor=None, tell_order="submission", batch_size=1):
    with Journal(path) as journal:
        return Search(space, strategy, evaluator, Objective(), journal, budget=budget, executor=executor,
                      tell_order=tell_order, batch_size=batch_size, progress=False).run()


def keys(summary):
    return [a.key for a, _ in summary.trials]


@pytest.mark.slow
def test_two_workers_tell_order_reproducibility_and_a_dead_worker(onemax_space, tmp_path):
    first, second, third = RandomSearch(onemax_space, seed=0).ask(3)
    evaluator = Scripted(slow=first.key, die=third.key)

    def evolution():
        return RegularizedEvolution(onemax_space, seed=0, population_size=4, sample_size=2)

    by_submission = [search(onemax_space, evolution(), evaluator, tmp_path / f"s{i}.sqlite", 10,
                            ProcessExecutor(workers=2)) for i in range(2)]
    by_completion = search(onemax_space, evolution(), evaluator, tmp_path / "c.sqlite", 10,
                           ProcessExecutor(workers=2), tell_order="completion")
    # submission order: results told in ask order, so the same archs in the same order on every run
    assert keys(by_submission[0]) == keys(by_submission[1]) and keys(by_submission[0])[0] == first.key
    # completion order: the slow first arch is told after the second one, which finished first
    assert keys(by_completion).index(second.key) < keys(by_completion).index(first.key)
    # the candidate whose worker died is journaled as failed with the reason; the search used its whole budget
    for summary in (*by_submission, by_completion):
        dead = dict((a.key, r) for a, r in summary.trials)[third.key]
        assert dead.status == "failed" and "killed by SIGKILL" in dead.reason
        assert len(summary.trials) == 10 and summary.evaluations == 10
    # a resume (here with one worker) replays the interleaving exactly and evaluates nothing
    again = search(onemax_space, evolution(), evaluator, tmp_path / "c.sqlite", 10)
    assert keys(again) == keys(by_completion) and again.evaluations == 0
    longer = search(onemax_space, evolution(), evaluator, tmp_path / "c.sqlite", 13)
    assert keys(longer)[:10] == keys(by_completion) and longer.evaluations == 3


def test_a_journal_without_an_ask_log_resumes_as_one_call_per_batch(onemax_space, tmp_path):
    """Journals written before asks were recorded: trials only, asked in batches of `batch_size`."""
    full = search(onemax_space, RegularizedEvolution(onemax_space, seed=1, population_size=4, sample_size=2),
                  FunctionEvaluator(onemax, "onemax"), tmp_path / "full.sqlite", 14, batch_size=3)
    search(onemax_space, RegularizedEvolution(onemax_space, seed=1, population_size=4, sample_size=2),
           FunctionEvaluator(onemax, "onemax"), tmp_path / "old.sqlite", 8, batch_size=3)
    db = sqlite3.connect(tmp_path / "old.sqlite")
    db.execute("DELETE FROM asks")
    db.execute("DELETE FROM trials WHERE trial >= 7")  # killed inside the third batch
    db.commit()
    db.close()
    resumed = search(onemax_space, RegularizedEvolution(onemax_space, seed=1, population_size=4, sample_size=2),
                     FunctionEvaluator(onemax, "onemax"), tmp_path / "old.sqlite", 14, batch_size=3)
    assert keys(resumed) == keys(full) and resumed.evaluations == 14 - 7
    with Journal(tmp_path / "old.sqlite") as journal:  # the log was written, so the next resume reads it
        assert [(a.call, a.tells_before) for a in journal.asks()][:9] == [(0, 0)] * 3 + [(1, 3)] * 3 + [(2, 6)] * 3


class Rounds(QueuedStrategy):
    """Plans rounds of three fresh archs; records what was pending whenever it planned one."""

    def __init__(self, space, seed=0):
        super().__init__(space, seed)
        self.planned, self.pending_at_refill = [], []

    def refill(self):
        self.pending_at_refill.append(len(self.pending))
        round_ = [self.fresh(lambda: self.space.sample(self.rng)) for _ in range(3)]
        self.planned += round_
        self.queue.extend(round_)


def test_a_strategy_that_plans_rounds_waits_for_them(onemax_space, tmp_path):
    strategy = Rounds(onemax_space)
    summary = search(onemax_space, strategy, FunctionEvaluator(onemax, "onemax"), tmp_path / "r.sqlite", 12,
                     batch_size=2)  # two archs out at once, rounds of three: the third comes alone
    assert keys(summary) == [a.key for a in strategy.planned] and len(strategy.planned) == 12
    assert strategy.pending_at_refill == [0, 0, 0, 0]  # every round planned after the previous one was told


@pytest.mark.slow
def test_evaluator_timeout_fails_the_candidate_and_the_search_goes_on(onemax_space, tmp_path):
    start = time.monotonic()
    summary = search(onemax_space, RandomSearch(onemax_space, seed=0), Hangs(), tmp_path / "t.sqlite", 12)
    timed_out = [r for a, r in summary.trials if a["c0"] == 0]
    assert timed_out and all(r.status == "failed" and "timed out after 0.5 s" in r.reason for r in timed_out)
    assert all(r.ok for a, r in summary.trials if a["c0"] != 0) and len(summary.trials) == 12
    assert time.monotonic() - start < 0.5 * len(timed_out) + 10


# -- kill -9 with evaluations in flight ---------------------------------------------------------------------

def _script(run_dir, budget, seed, pause, workers, tell_order):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, str(ROOT / "tests/core/kill_resume_script.py"), str(run_dir),
                             str(budget), str(seed), str(pause), str(workers), tell_order], env=env)


def _rows(run_dir, table="trials"):
    db = sqlite3.connect(run_dir / "journal.sqlite")
    try:
        if table == "trials":
            return db.execute("SELECT trial, arch_key, metrics, cached FROM trials ORDER BY trial").fetchall()
        return db.execute("SELECT ask, arch_key FROM asks ORDER BY ask").fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        db.close()


def _in_flight(asks, trials):
    """Asks without a trial (each trial answers the earliest open ask of its arch, as the replay matches them)."""
    open_ = [key for _, key in asks]
    for _, key, _, _ in trials:
        open_.remove(key)
    return open_


@pytest.mark.slow
@pytest.mark.parametrize("tell_order", ["submission", "completion"])
def test_sigkill_with_two_workers_in_flight_then_resume(tmp_path, tell_order):
    full, killed = tmp_path / "full", tmp_path / "killed"
    full.mkdir(), killed.mkdir()
    if tell_order == "submission":
        assert _script(full, 40, 7, 0.0, 2, tell_order).wait(120) == 0
    proc = _script(killed, 40, 7, 0.05, 2, tell_order)
    deadline = time.time() + 120
    while len(_rows(killed)) < 12 and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    time.sleep(0.5)  # the workers die with the driver
    before, asks = _rows(killed), _rows(killed, "asks")
    assert 12 <= len(before) < 40
    journaled = {key for _, key, _, cached in before if not cached}
    in_flight = set(_in_flight(asks, before)) - journaled
    assert in_flight  # killed with an evaluation out
    evaluated_before = (killed / "evaluated.log").read_text().split()
    (killed / "evaluated.log").unlink()

    assert _script(killed, 40, 7, 0.0, 2, tell_order).wait(120) == 0
    after = _rows(killed)
    assert after[:len(before)] == before and len(after) == 40
    if tell_order == "submission":  # the same archs, results and order as the uninterrupted run
        assert after == _rows(full)
    evaluated_after = (killed / "evaluated.log").read_text().split()
    assert not journaled & set(evaluated_after)           # nothing journaled ran again
    assert in_flight <= set(evaluated_after)              # what was in flight ran again
    assert len(evaluated_after) == len(set(evaluated_after))
    fresh = [key for _, key, _, cached in after if not cached]
    assert len(fresh) == len(set(fresh))                  # nothing recorded twice
    assert len(evaluated_before) - len(journaled) <= 2    # at most the two evaluations in flight were lost
