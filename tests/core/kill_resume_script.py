"""Run a journaled evolution search on the onemax space; used by test_search's kill/resume test.

argv: run_dir budget seed sleep_seconds. Each real evaluation appends the arch key to run_dir/evaluated.log.
"""

import sys
import time
from pathlib import Path

from core.evaluation import FunctionEvaluator
from core.journal import Journal
from core.objective import Objective
from core.search import Search
from core.api import Choice, SearchSpace
from core.strategies import RegularizedEvolution

run_dir, budget, seed, pause = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
space = SearchSpace([Choice(f"c{i}", (0, 1, 2, 3)) for i in range(8)])


def score(arch):
    time.sleep(pause)
    with open(run_dir / "evaluated.log", "a") as f:
        f.write(arch.key + "\n")
    return {"accuracy": float(sum(arch[f"c{i}"] == i % 4 for i in range(8)))}


with Journal(run_dir / "journal.sqlite") as journal:
    Search(space, RegularizedEvolution(space, seed=seed, population_size=10, sample_size=3),
           FunctionEvaluator(score, "onemax8"), Objective(), journal, budget=budget, progress=False).run()
