"""Framework time per evaluation (ask + tell + journal write) with a zero-cost evaluator.

Runs regularized evolution over a 20-choice space for 100, 1,000 and 10,000
evaluations with the journal on disk (durability "full": every trial is
fsynced, and "process": survives a process kill), and the same loop with
optuna (in memory, and with SQLite storage) for scale. Prints ms/eval and how
the cost grows with the journal's size.

    python benchmarks/search_overhead.py [--sizes 100 1000 10000] [--optuna-trials 300]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.evaluation import FunctionEvaluator  # noqa: E402
from core.journal import Journal  # noqa: E402
from core.objective import Objective  # noqa: E402
from core.search import Search  # noqa: E402
from core.api import Choice, SearchSpace  # noqa: E402
from core.strategies import RegularizedEvolution  # noqa: E402

SPACE = SearchSpace([Choice(f"c{i}", tuple(range(4))) for i in range(20)])


def zero_cost(arch):
    return {"accuracy": float(sum(arch[f"c{i}"] == i % 4 for i in range(20)))}


def ours(n: int, durability: str, folder: Path) -> tuple[float, list[float]]:
    """Total ms/eval and ms/eval per tenth of the run (growth with the journal's size)."""
    marks: list[float] = []
    start = time.perf_counter()

    def on_trial(i, arch, result):
        if (i + 1) % max(1, n // 10) == 0:
            marks.append(time.perf_counter())

    with Journal(folder / f"{durability}-{n}.sqlite", durability=durability) as journal:
        search = Search(SPACE, RegularizedEvolution(SPACE, seed=0, population_size=50, sample_size=10),
                        FunctionEvaluator(zero_cost), Objective(), journal, budget=n, progress=False, on_trial=on_trial)
        search.run()
    total = (time.perf_counter() - start) / n * 1e3
    edges = [start] + marks
    per_tenth = [(b - a) / (n // 10) * 1e3 for a, b in zip(edges, edges[1:])]
    return total, per_tenth


def optuna_ms(n: int, storage: str | None) -> float:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", storage=storage,
                                sampler=optuna.samplers.RandomSampler(seed=0))
    start = time.perf_counter()
    for _ in range(n):
        trial = study.ask()
        arch = {f"c{i}": trial.suggest_categorical(f"c{i}", list(range(4))) for i in range(20)}
        study.tell(trial, sum(arch[f"c{i}"] == i % 4 for i in range(20)))
    return (time.perf_counter() - start) / n * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--optuna-trials", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print(f"{'evaluations':>11}  {'durable ms/eval':>15}  {'process ms/eval':>15}  growth (durable ms/eval per tenth)")
        for n in args.sizes:
            full, tenths = ours(n, "full", folder)
            proc, _ = ours(n, "process", folder)
            print(f"{n:>11}  {full:>15.3f}  {proc:>15.3f}  " + " ".join(f"{t:.2f}" for t in tenths))
        try:
            mem = optuna_ms(args.optuna_trials, None)
            sql = optuna_ms(args.optuna_trials, f"sqlite:///{folder / 'optuna.db'}")
        except ImportError:
            print("optuna not installed: skipping the comparison")
            return
        print(f"\noptuna {args.optuna_trials} trials (random sampler): in memory {mem:.3f} ms/trial, "
              f"SQLite storage {sql:.3f} ms/trial")
        full, _ = ours(args.optuna_trials, "full", folder)
        print(f"archforge {args.optuna_trials} evals, durable journal: {full:.3f} ms/eval "
              f"({sql / full:.1f}x faster than optuna+SQLite, {mem / full:.2f}x optuna in memory)")


if __name__ == "__main__":
    main()
