"""Run a journaled evolution search on the onemax space; used by test_search's kill/resume tests.

argv: run_dir budget seed sleep_seconds [workers [tell_order]]. Each real evaluation appends the arch
key to run_dir/evaluated.log; with workers > 1 the evaluations run in a process pool.
"""

import sys
import time
from pathlib import Path

from core.evaluation import FunctionEvaluator
from core.executors import ProcessExecutor, SerialExecutor
from core.journal import Journal
from core.objective import Objective
from core.search import Search
from core.api import Choice, SearchSpace
from core.strategies import RegularizedEvolution

SPACE = SearchSpace([Choice(f"c{i}", (0, 1, 2, 3)) for i in range(8)])


def score(arch, run_dir: str, pause: float):
    # a duration that differs per arch, so two workers finish out of order
    time.sleep(pause * (1 + sum(arch.values()) % 3))
    with open(Path(run_dir) / "evaluated.log", "a") as f:
        f.write(arch.key + "\n")
    return {"accuracy": float(sum(arch[f"c{i}"] == i % 4 for i in range(8)))}


class Score:
    """A picklable `arch -> metrics` for the process pool."""

    def __init__(self, run_dir: str, pause: float):
        self.run_dir, self.pause = run_dir, pause

    def __call__(self, arch):
        return score(arch, self.run_dir, self.pause)


if __name__ == "__main__":
    run_dir, budget, seed, pause = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    workers = int(sys.argv[5]) if len(sys.argv) > 5 else 1
    tell_order = sys.argv[6] if len(sys.argv) > 6 else "submission"
    executor = ProcessExecutor(workers=workers) if workers > 1 else SerialExecutor()
    with Journal(run_dir / "journal.sqlite") as journal:
        Search(SPACE, RegularizedEvolution(SPACE, seed=seed, population_size=10, sample_size=3),
               FunctionEvaluator(Score(str(run_dir), pause), "onemax8"), Objective(), journal, budget=budget,
               executor=executor, tell_order=tell_order, progress=False).run()
