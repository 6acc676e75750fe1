"""Parallel evaluation: throughput and overhead of the process pool and Ray, and a search serial vs 2 workers.

Three measurements in one run, side by side:

1. **Throughput**: `--evals` evaluations of a CPU-bound evaluator (the `train`
   evaluator: one epoch of the EcoNAS-style proxy on a quarter of the digits,
   one torch thread each) with 1 and 2 workers, on the process pool and on a
   local Ray instance; evaluations per second and the speed-up of 2 workers
   over 1 of the same executor (ideal 2.0 on 2 idle cores); the seconds an
   evaluation took inside its worker, and how much of the time the workers
   spent evaluating (near 100%: the executor keeps them fed, and a speed-up
   below 2 comes from the cores, not the executor). The same
   seeded archs for every row; start-up (spawning workers, starting Ray, and
   one warm-up evaluation per worker) is timed apart.
2. **Overhead**: `--light` evaluations of a zero-cost evaluator through each
   executor with 2 workers: milliseconds per evaluation (submit, send the
   arch, evaluate, send the result back), after start-up.
3. **The same search serial vs 2 workers**: regularized evolution on the
   tabular benchmark (NAS-Bench-201-style cell201 table, validation loss),
   `--budget` evaluations, `--seeds` seeds: the test accuracy and validation
   loss of the arch each search returns, serially and on a 2-worker pool
   (both tell orders); mean and standard deviation over the seeds, the serial
   spread being the strategy's seed noise.

The load average of the machine before and after is printed: on a shared
machine other work competes for the cores and lowers the speed-ups.

    python benchmarks/parallel.py [--evals 16] [--light 200] [--budget 100] [--seeds 5] [--no-ray] [--parts 123]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.engine.report import table  # noqa: E402
from core.evaluation import FunctionEvaluator  # noqa: E402
from core.evaluation.tabular import TabularEvaluator  # noqa: E402
from core.evaluation.train import TrainEvaluator  # noqa: E402
from core.executors import ProcessExecutor, RayExecutor, SerialExecutor  # noqa: E402
from core.journal import Journal  # noqa: E402
from core.objective import Objective  # noqa: E402
from core.search import Search  # noqa: E402
from core.zoo.mobile import digits_space  # noqa: E402
from core.strategies import RegularizedEvolution  # noqa: E402
from tasks.classification.data import digits  # noqa: E402
from tasks.classification.task import ClassificationTask  # noqa: E402


def nothing(arch) -> dict[str, float]:
    """The zero-cost evaluator's function (module level, so worker processes can import it)."""
    return {"accuracy": 0.0}


def timed_run(executor, evaluator, archs, warmup) -> tuple[float, float, list]:
    """(start-up seconds, seconds for the evaluations, results) through `executor`.

    Start-up is the executor's start and one round of `warmup` evaluations (workers importing torch and
    loading the evaluator); the evaluations of `archs` are timed after it."""
    t0 = time.perf_counter()
    executor.start(evaluator)
    try:
        for i, arch in enumerate(warmup):
            executor.submit(("warm-up", i), arch)
        done = 0
        while done < len(warmup):
            done += len(executor.wait())
        t1 = time.perf_counter()
        for i, arch in enumerate(archs):
            executor.submit(i, arch)
        results = {}
        while len(results) < len(archs):
            results.update(executor.wait())
        t2 = time.perf_counter()
    finally:
        executor.close()
    return t1 - t0, t2 - t1, [results[i] for i in range(len(archs))]


def executors(with_ray: bool, workers: int):
    yield "process pool", ProcessExecutor(workers=workers, threads=1)
    if with_ray:
        yield "Ray (local)", RayExecutor(num_cpus=1, workers=workers)


def throughput(args) -> list[dict]:
    space, data = digits_space(), digits()
    evaluator = TrainEvaluator(space, data, ClassificationTask({}), epochs=1, batch_size=32, lr=0.1, sample_ratio=0.25, threads=1)
    rng = random.Random(0)
    archs = [space.sample(rng) for _ in range(args.evals)]
    rows, base = [], {}
    for workers in (1, 2):
        for name, executor in executors(args.ray, workers):
            startup, seconds, results = timed_run(executor, evaluator, archs, archs[:workers])
            assert all(r.ok for r in results), [r.reason for r in results if not r.ok]
            rate = len(archs) / seconds
            base.setdefault(name, rate)
            busy = sum(r.cost for r in results) / (seconds * workers)  # share of the time each worker evaluated
            rows.append({"executor": name, "workers": workers, "evals": len(archs), "start_s": round(startup, 1),
                         "seconds": round(seconds, 1), "s_per_eval_inside": round(statistics.mean(r.cost for r in
                                                                                                   results), 2),
                         "workers_busy": f"{100 * busy:.0f}%", "evals_per_s": round(rate, 3),
                         "speedup": f"{rate / base[name]:.2f}x"})
            print(rows[-1], flush=True)
    return rows


def overhead(args) -> list[dict]:
    evaluator = FunctionEvaluator(nothing, "nothing")
    archs = [digits_space().default()] * args.light
    rows = []
    for name, executor in [("serial (in process)", SerialExecutor())] + list(executors(args.ray, 2)):
        startup, seconds, _ = timed_run(executor, evaluator, archs, archs[:2])
        rows.append({"executor": name, "workers": getattr(executor, "workers", 1), "evals": len(archs),
                     "start_s": round(startup, 2), "ms_per_eval": round(1e3 * seconds / len(archs), 3)})
        print(rows[-1], flush=True)
    return rows


def same_search(args) -> list[dict]:
    evaluator = TabularEvaluator()
    space = evaluator.space
    objective = Objective(metric="val_loss", direction="min")
    setups = [("serial", lambda: SerialExecutor(), "submission"),
              ("process pool, 2 workers", lambda: ProcessExecutor(workers=2), "submission"),
              ("process pool, 2 workers", lambda: ProcessExecutor(workers=2), "completion")]
    if args.ray:
        setups.append(("Ray, 2 workers", lambda: RayExecutor(workers=2), "completion"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, make, order in setups:
            test_acc, val_loss, seconds = [], [], []
            for seed in range(args.seeds):
                strategy = RegularizedEvolution(space, seed=seed, population_size=20, sample_size=5)
                t = time.perf_counter()
                with Journal(Path(tmp) / f"{label}-{order}-{seed}.sqlite") as journal:
                    summary = Search(space, strategy, evaluator, objective, journal, budget=args.budget,
                                     executor=make(), tell_order=order, progress=False).run()
                seconds.append(time.perf_counter() - t)
                test_acc.append(evaluator.value(summary.best_arch, "test"))
                val_loss.append(summary.best_result.metrics["val_loss"])
            rows.append({"search": label, "tell_order": order, "seeds": args.seeds, "budget": args.budget,
                         "test_acc_mean": round(statistics.mean(test_acc), 4),
                         "test_acc_sd": round(statistics.stdev(test_acc), 4) if len(test_acc) > 1 else 0.0,
                         "val_loss_mean": round(statistics.mean(val_loss), 4),
                         "val_loss_sd": round(statistics.stdev(val_loss), 4) if len(val_loss) > 1 else 0.0,
                         "s_per_search": round(statistics.mean(seconds), 1)})
            print(rows[-1], flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--evals", type=int, default=16)
    parser.add_argument("--light", type=int, default=200)
    parser.add_argument("--budget", type=int, default=100)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--no-ray", dest="ray", action="store_false")
    parser.add_argument("--parts", default="123", help="which measurements to run (1 throughput, 2 overhead, 3 search)")
    args = parser.parse_args(argv)
    if args.ray:
        try:
            import ray

            # one local instance for every Ray row (RayExecutor joins a running one and leaves it running)
            ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False)
        except ImportError:
            print("ray is not installed: Ray rows skipped (pip install 'archforge[dist]')")
            args.ray = False
    load_before = os.getloadavg()
    print(f"{os.cpu_count()} CPUs, load average {load_before[0]:.2f} (1 min) before", flush=True)
    parts = {"1": ("1. throughput, CPU-bound evaluator (train proxy, 1 thread each)", throughput),
             "2": ("2. overhead, zero-cost evaluator", overhead),
             "3": ("3. the same search serial vs 2 workers (evolution, tabular cell201, val_loss)", same_search)}
    tables = []
    for key in args.parts:
        title, measure = parts[key]
        print(f"\n{title}", flush=True)
        tables.append((title, measure(args)))
    load_after = os.getloadavg()
    print(f"\nload average {load_after[0]:.2f} (1 min), {load_after[1]:.2f} (5 min) after")
    for title, rows in tables:
        print(f"\n{title}\n" + table(rows, list(rows[0])))
    if args.ray:
        import ray

        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
