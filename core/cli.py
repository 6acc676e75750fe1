"""`archforge search|train|test|export|profile CONFIG [key=value ...]`.

Every command prints what it will do, shows progress, and ends with a short
table. User mistakes (a bad key, a wrong type, a missing path, a damaged data
file, checkpoint or journal) end with one line naming the problem and exit
code 2, before a run folder is written; set ARCHFORGE_DEBUG=1 for a
traceback. A search that finds nothing feasible exits 1 with the most common
reasons; Ctrl-C exits 130 and says how to resume.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from core.engine.config import dump_config, load_config
from core.engine.registry import STRATEGIES, TASKS, ConfigError
from core.search import ResumeError

COMMANDS = ("search", "train", "test", "export", "profile")

#: what the running command has set up, for the message after Ctrl-C (the run folder to resume)
_STATE: dict[str, Any] = {}


def _log(msg: str) -> None:
    print(msg, flush=True)


def load_task(cfg: dict[str, Any], build: bool = True):
    """Import `tasks.<task>` (a plug-in import by name: core never imports a task statically)."""
    name = cfg.get("task")
    if not name:
        raise ConfigError("task: missing; e.g. task: classification")
    if not isinstance(name, str) or not name.isidentifier():
        raise ConfigError(f"task: expected a task name (classification, detection, ...), got {name!r}")
    try:
        importlib.import_module(f"tasks.{name}")
    except ModuleNotFoundError as err:
        if err.name and (err.name == f"tasks.{name}" or err.name == "tasks"):
            raise ConfigError(f"task: unknown task {name!r} (no package tasks/{name})") from None
        raise
    task_cls = TASKS.get(name, "task")
    if not build:
        return task_cls
    task = task_cls(cfg)
    task.check_config()
    return task


# -- shared steps ----------------------------------------------------------------------------
def _read_arch(path: str, key: str):
    from core.space import Arch

    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"{key}: arch file not found: {p}")
    try:
        return Arch.from_json(p.read_text())
    except (json.JSONDecodeError, ValueError, TypeError, AttributeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{key}: {p} is not an arch JSON file ({str(err).splitlines()[0]})") from None


def _check_arch(space, arch, key: str, source: Any):
    try:
        return space.check(arch)
    except (ValueError, KeyError, TypeError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        raise ConfigError(f"{key}: {source} is not an arch of this space ({message})") from None


def _arch_from_config(cfg, task, space, data, key: str):
    """An arch file path, a baseline name, or nothing (the space's default arch)."""
    from core.engine.validate import check_arch_origin, resolve_baseline

    value = _dig(cfg, key)
    if not value:
        return space.default(), "default"
    if Path(str(value)).suffix == ".json" or Path(str(value)).exists():
        check_arch_origin(value, cfg, key, getattr(task, "model_options", ()))
        return _check_arch(space, _read_arch(value, key), key, value), Path(value).stem
    return resolve_baseline(task, str(value), space, data, key), value


def _dig(cfg: dict, dotted: str):
    node: Any = cfg
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _cost_row(model, example, latency: bool, threads: int = 1, repeats: int = 30) -> dict[str, float]:
    from core.cost import count_macs, count_params, measure_latency

    row = {"params": count_params(model), "macs": count_macs(model, example)}
    if latency:
        row["latency_ms"] = measure_latency(model, tuple(example.shape[1:]), batch=1, threads=threads,
                                            repeats=repeats).median_ms
    return row


def save_model(path: Path, cfg, arch, model, metrics: dict[str, float]) -> None:
    from core.engine.runs import save_checkpoint

    clean_cfg = {k: v for k, v in cfg.items() if not (k.startswith("_") and k.endswith("_"))}
    save_checkpoint(path, {"arch": arch.to_dict(), "state_dict": model.state_dict(), "config": clean_cfg,
                           "metrics": {k: float(v) for k, v in metrics.items()}, "format": "archforge-model-1"})


def load_model(path: str, key: str, current: dict[str, Any] | None = None):
    """Rebuild a trained model from `model.pt` (weights_only load; the config travels inside).

    With `current` (the command line's config), the network comes from the checkpoint and everything else
    (data, test, export, the task's other options) from the command line (`validate.checkpoint_config`).
    """
    from core.engine.config import validate
    from core.engine.runs import load_checkpoint
    from core.engine.validate import checkpoint_config
    from core.space import Arch

    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"{key}: checkpoint not found: {p}")
    payload = load_checkpoint(p, key)
    if not isinstance(payload, dict) or payload.get("format") != "archforge-model-1" \
            or not isinstance(payload.get("config"), dict):
        raise ConfigError(f"{key}: {p} is a checkpoint, but not an archforge model (model.pt from train or search)")
    saved = payload["config"]
    if current is not None:
        task_cls = load_task({"task": saved.get("task")}, build=False)
        merged = checkpoint_config(saved, current, str(p), key, getattr(task_cls, "model_options", ()))
        cfg = validate(merged, source=current.get("_source_", str(p)))
    else:
        cfg = validate(saved, source=str(p))
    task = load_task(cfg)
    data = task.data()
    space = task.space(data)
    arch = _check_arch(space, Arch(payload["arch"]), key, p)
    model = space.build(arch, num_classes=data.num_classes) if "num_classes" in task.space_overrides(data) \
        else space.build(arch)
    try:
        model.load_state_dict(payload["state_dict"])
    except (RuntimeError, KeyError, TypeError) as err:
        raise ConfigError(f"{key}: the weights in {p} do not fit the network its config builds here "
                          f"({str(err).splitlines()[0][:160]})") from None
    model.eval()
    if current is not None and saved.get("data") != cfg.get("data"):
        _log(f"data: {cfg.get('data')} from the command line (the checkpoint was trained on {saved.get('data')})")
    return cfg, task, data, space, arch, model


# -- commands ----------------------------------------------------------------------------------
def _objective(cfg):
    from core.objective import Objective

    try:
        return Objective.from_config(**cfg["objective"])
    except ValueError as err:
        if isinstance(err, ConfigError):
            raise
        message = str(err)
        key = "objective.pareto" if "objective.pareto" in message else \
            "objective.direction" if "objective.direction" in message else "objective.constraints"
        raise ConfigError(message if message.startswith(key) else f"{key}: {message}") from None


def _new_run_dir(cfg, kind: str) -> Path:
    from core.engine.runs import make_run_dir

    run_dir = make_run_dir(cfg, kind)
    dump_config(cfg, run_dir / "config.yaml")
    _STATE["run_dir"], _STATE["fresh"] = run_dir, True
    return run_dir


def _discard_if_unused(run_dir: Path) -> None:
    """A run folder this process created that holds nothing but its config (and an empty journal) is removed
    when the command fails, so failed starts leave nothing behind."""
    import sqlite3

    leftovers = {"config.yaml", "journal.sqlite", "journal.sqlite-wal", "journal.sqlite-shm", "journal.sqlite.lock"}
    try:
        names = {p.name for p in run_dir.iterdir()}
    except OSError:
        return
    if not names <= leftovers:
        return
    journal = run_dir / "journal.sqlite"
    if journal.is_file() and journal.stat().st_size > 0:
        try:
            with sqlite3.connect(journal) as db:
                if db.execute("SELECT COUNT(*) FROM trials").fetchone()[0]:
                    return
        except sqlite3.DatabaseError:
            return
    for name in names:
        (run_dir / name).unlink(missing_ok=True)
    try:
        run_dir.rmdir()
    except OSError:
        pass


def cmd_search(cfg, progress: bool, resume: str | None) -> int:
    from core.engine.runs import seed_everything
    from core.engine.validate import check_objective_metrics, resolve_baselines
    from core.executors import make_executor
    from core.journal import Journal, RunLock
    from core.search import Search

    seed_everything(cfg["seed"])
    task = load_task(cfg)
    objective = _objective(cfg)
    if not cfg.get("strategy"):
        raise ConfigError("strategy: missing section; e.g. strategy: {name: evolution}")
    strategy_cls = STRATEGIES.check(cfg["strategy"], "strategy", provided=("space", "seed", "objective"))
    one_shot = getattr(strategy_cls, "gradient_based", False)
    if not one_shot:  # what the objective reads must be what the evaluator reports: checked before any data
        check_objective_metrics(objective, task.check_evaluator(), str(task.evaluator_section().get("name")))
        executor = make_executor(cfg["search"]["executor"])
    journal = lock = None
    if resume:  # the lock first: a second process on the same run folder stops before loading anything
        run_dir = Path(resume).expanduser()
        if not run_dir.is_dir():
            raise FileNotFoundError(f"--resume: run folder not found: {run_dir}")
        if not (run_dir / "journal.sqlite").is_file() and not (run_dir / "searcher.pt").is_file():
            raise FileNotFoundError(f"--resume: no journal.sqlite or searcher.pt in {run_dir}")
        _STATE["run_dir"] = run_dir
        if one_shot:
            lock = RunLock(run_dir / "searcher.pt.lock", str(run_dir))
        else:
            journal = Journal(run_dir / "journal.sqlite", cfg["search"]["journal_durability"], must_exist=True)
    try:
        data = task.data()
        space = task.space(data)
        strategy = STRATEGIES.build(cfg["strategy"], "strategy", space=space, seed=cfg["seed"], objective=objective)
        if cfg["retrain"]["enabled"]:  # every baseline name resolves now, not after the search
            resolve_baselines(task, cfg["retrain"]["baselines"], space, data, searched=space.default())
        budget = "one-shot" if one_shot else f"budget {cfg['search']['budget']}"
        header = (f"search: {type(strategy).__name__} over {type(space).__name__} ({space.size():.3g} archs) on "
                  f"{data.name}, {budget}, objective {objective.direction} {objective.metric}"
                  + "".join(f", {c}" for c in objective.constraints) + f"; {_threads()} CPU thread(s)")
        if one_shot:
            if not resume:
                run_dir = _new_run_dir(cfg, "search")
            _log(header)
            _log(f"run folder: {run_dir}")
            return _one_shot_search(cfg, task, data, space, strategy, objective, run_dir, progress)
        evaluator = task.evaluator(space, data)  # may train a supernet: after every check above
        if journal is None:
            run_dir = _new_run_dir(cfg, "search")
            journal = Journal(run_dir / "journal.sqlite", cfg["search"]["journal_durability"])
        _log(header)
        _log(f"run folder: {run_dir}")
        if getattr(strategy, "multi_fidelity", False) and callable(getattr(strategy, "run", None)):
            return _multi_fidelity_search(cfg, task, data, space, strategy, evaluator, journal, run_dir, progress)
        summary = Search(space, strategy, evaluator, objective, journal, budget=cfg["search"]["budget"],
                         executor=executor, batch_size=cfg["search"]["batch_size"], progress=progress,
                         max_rejected=cfg["search"]["max_rejected"]).run()
    finally:
        if journal is not None:
            journal.close()
        if lock is not None:
            lock.release()
    _STATE["fresh"] = False
    _write_search_outputs(run_dir, summary, objective)
    if summary.best_arch is None:
        from core.engine.validate import failure_summary

        message = summary.stop_reason or failure_summary(objective, [r for _, r in summary.trials])
        print(f"archforge search: {message}", file=sys.stderr, flush=True)
        return 2 if summary.stop_reason else 1
    if summary.stop_reason:
        _log(f"search stopped early: {summary.stop_reason}")
    if cfg["retrain"]["enabled"]:
        _retrain(cfg, task, data, space, summary.best_arch, run_dir, progress)
    return 0


def _check_derived(cfg, task, data, space, arch, objective) -> dict[str, Any]:
    """The derived network's own costs against the objective's constraints: a one-shot searcher steers the
    relaxed supernet's expected cost, so the network it derives can land over a printed limit; say by how much."""
    metrics = {k: float(v) for k, v in _cost_row(space.build(arch, **_build_kwargs(task, data)),
                                                  task.example_input(data), latency=False).items()}
    for c in objective.constraints:
        if c.metric not in metrics:
            continue
        value = metrics[c.metric]
        if c.satisfied(metrics):
            _log(f"derived network: {c.metric} = {value:.4g}, within {c}")
        else:
            over = (value / c.bound - 1) * 100 if c.bound else math.inf
            why = getattr(task, "constraint_note", None) or ""
            _log(f"derived network: {c.metric} = {value:.4g}, over the objective's {c} by {over:.1f}%: the search "
                 "held the supernet's expected cost near the limit, and the network derived from it (the most "
                 f"likely op at every choice) costs more{why}")
    return metrics


def _build_kwargs(task, data) -> dict[str, Any]:
    return {"num_classes": data.num_classes} if "num_classes" in task.space_overrides(data) else {}


def _one_shot_search(cfg, task, data, space, strategy, objective, run_dir: Path, progress: bool) -> int:
    """Gradient-based and one-shot searchers (DARTS, DNA, NetAdaptV2, ...): `fit(None, data) -> Arch`.

    They checkpoint to `run_dir/searcher.pt` after each epoch, so `--resume RUN_DIR` continues them.
    """
    from core.engine.runs import atomic_write_text, write_json

    if hasattr(strategy, "checkpoint"):
        strategy.checkpoint = run_dir / "searcher.pt"
    if hasattr(strategy, "progress"):
        strategy.progress = progress
    start = time.perf_counter()
    arch = space.check(strategy.fit(None, data))
    _STATE["fresh"] = False
    atomic_write_text(run_dir / "best_arch.json", arch.to_json(indent=2) + "\n")
    report = {"best_arch_key": arch.key, "seconds": time.perf_counter() - start,
              "searcher": type(strategy).__name__}
    for name in ("result", "history", "training"):
        value = getattr(strategy, name, None)
        if value:
            report[name] = value
    if callable(getattr(strategy, "report", None)):
        report["report"] = strategy.report()
    _log(f"\n{type(strategy).__name__} derived {arch.key} in {report['seconds']:.1f} s")
    if objective.constraints:
        derived = _check_derived(cfg, task, data, space, arch, objective)
        report["derived_metrics"] = derived
        report["derived_within_constraints"] = all(c.satisfied(derived) for c in objective.constraints
                                                   if c.metric in derived)
    write_json(run_dir / "search.json", report)
    _log(f"outputs: {run_dir}/best_arch.json, search.json, searcher.pt")
    if cfg["retrain"]["enabled"]:
        _retrain(cfg, task, data, space, arch, run_dir, progress)
    return 0


def _multi_fidelity_search(cfg, task, data, space, strategy, evaluator, journal, run_dir: Path, progress) -> int:
    """EcoNAS's hierarchical proxy: `strategy.run(evaluator, budget_epochs=search.budget)`.

    `search.budget` counts training epochs here. Every segment evaluation is journaled (with its
    cumulative `epoch`) for the record; unlike ask/tell searches, a killed run restarts from scratch.
    """
    from core.engine.runs import atomic_write_text, write_json

    fingerprint = evaluator.fingerprint()

    def record(arch, epochs, result):
        result.metrics.setdefault("epoch", float(epochs))
        journal.record(arch, result, fingerprint)

    summary = strategy.run(evaluator, budget_epochs=cfg["search"]["budget"], on_result=record)
    _STATE["fresh"] = False
    if summary.best_arch is None:
        print("archforge search: no feasible architecture was found; see journal.sqlite for each evaluation",
              file=sys.stderr, flush=True)
        return 1
    atomic_write_text(run_dir / "best_arch.json", summary.best_arch.to_json(indent=2) + "\n")
    write_json(run_dir / "search.json", {
        "best_arch_key": summary.best_arch.key, "best_metrics": summary.best_result.metrics,
        "epochs_used": summary.epochs_used, "segment_evaluations": summary.segment_evaluations,
        "iterations": summary.iterations, "seconds": summary.seconds})
    _log(f"\n{summary.segment_evaluations} segment evaluations, {summary.epochs_used} epochs, "
         f"{summary.iterations} iterations in {summary.seconds:.1f} s; best {summary.best_arch.key}")
    _log(f"outputs: {run_dir}/best_arch.json, search.json, journal.sqlite")
    if cfg["retrain"]["enabled"]:
        _retrain(cfg, task, data, space, summary.best_arch, run_dir, progress)
    return 0


def _write_search_outputs(run_dir: Path, summary, objective) -> None:
    from core.engine.report import pareto_plot, table, write_csv
    from core.engine.runs import atomic_write_text, write_json

    metric = objective.metric
    terms = objective.pareto_terms()
    rows = [{"arch_key": a.key, **r.metrics, "arch": a.to_json()} for a, r in summary.pareto]
    columns = ["arch_key", *dict.fromkeys([m for m, _ in terms] + ["params", "macs", metric]), "arch"]
    write_csv(run_dir / "pareto.csv", rows, columns)
    ok = [(r.get(terms[1][0]), r.get(terms[0][0])) for _, r in summary.trials if r.ok]
    front = [(r.get(terms[1][0]), r.get(terms[0][0])) for _, r in summary.pareto]
    limit = next(((str(c), c.bound) for c in objective.constraints if c.metric == terms[1][0]), None)
    pareto_plot(run_dir / "pareto.png", [p for p in ok if not any(map(math.isnan, p))], front,
                terms[1][0], terms[0][0], f"{len(summary.trials)} trials, {summary.evaluations} evaluated",
                xlimit=limit)
    if summary.best_arch is not None:
        atomic_write_text(run_dir / "best_arch.json", summary.best_arch.to_json(indent=2) + "\n")
    failed = sum(r.status == "failed" for _, r in summary.trials)
    write_json(run_dir / "search.json", {
        "best_arch_key": summary.best_arch.key if summary.best_arch else None,
        "best_metrics": summary.best_result.metrics if summary.best_result else None,
        "trials": len(summary.trials), "evaluations": summary.evaluations, "replayed": summary.replayed,
        "failed": failed, "infeasible": summary.infeasible, "seconds": summary.seconds,
        "stop_reason": summary.stop_reason})
    _log(f"\n{len(summary.trials)} trials ({summary.evaluations} evaluated now, {summary.replayed} replayed "
         f"from the journal, {failed} failed, {summary.infeasible} over a constraint before training) "
         f"in {summary.seconds:.1f} s")
    if summary.pareto:
        _log("Pareto front:\n" + table([{"arch": a.key, **r.metrics} for a, r in summary.pareto],
                                       ["arch", *dict.fromkeys([m for m, _ in terms] + ["params", "macs"])]))
    _log(f"outputs: {run_dir}/best_arch.json, pareto.csv, pareto.png, journal.sqlite")


def _retrain(cfg, task, data, space, best_arch, run_dir: Path, progress: bool) -> None:
    """Train the best arch and each baseline with the `train` recipe, test them, print one table."""
    from core.engine.report import table
    from core.engine.runs import seed_everything, write_json
    from core.engine.validate import resolve_baselines

    baselines = resolve_baselines(task, cfg["retrain"]["baselines"], space, data, searched=best_arch)
    entries = [("searched", best_arch)] + list(zip(cfg["retrain"]["baselines"], baselines))
    rows = []
    example = task.example_input(data)
    for label, arch in entries:
        seed_everything(cfg["seed"])
        model = space.build(arch, **_build_kwargs(task, data))
        if any(p.requires_grad for p in model.parameters()):
            _log(f"\ntraining {label} ({arch.key}) for {cfg['train']['epochs']} epochs")
        else:
            _log(f"\n{label} ({arch.key}) has no weights to train: testing it as it is")
        out_dir = run_dir / label
        task.train(model, data, out_dir, progress)
        metrics = task.test(model, data, out_dir)
        save_model(out_dir / "model.pt", cfg, arch, model, metrics)
        rows.append({"model": label, "arch": arch.key, **_cost_row(model, example, latency=True), **metrics})
    columns = ["model", "arch", "params", "macs", "latency_ms", *task.table_columns(rows)]
    write_json(run_dir / "metrics.json", rows)
    _log("\n" + table(rows, columns))
    _log(f"checkpoints: {run_dir}/<model>/model.pt; metrics: {run_dir}/metrics.json")


def cmd_train(cfg, progress: bool) -> int:
    from core.engine.report import table
    from core.engine.runs import atomic_write_text, seed_everything, write_json

    seed_everything(cfg["seed"])
    task = load_task(cfg)
    data = task.data()
    space = task.space(data)
    arch, label = _arch_from_config(cfg, task, space, data, "train.arch")
    model = space.build(arch, **_build_kwargs(task, data))
    run_dir = _new_run_dir(cfg, "train")
    _log(f"train: {label} ({arch.key}) on {data.name} for {cfg['train']['epochs']} epochs, {_threads()} CPU "
         f"thread(s) -> {run_dir}")
    val = task.train(model, data, run_dir, progress)
    _STATE["fresh"] = False
    metrics = {f"val_{k}": v for k, v in val.items()}
    save_model(run_dir / "model.pt", cfg, arch, model, metrics)
    write_json(run_dir / "metrics.json", metrics)
    atomic_write_text(run_dir / "arch.json", arch.to_json(indent=2) + "\n")
    row = {"arch": arch.key, **_cost_row(model, task.example_input(data), latency=False), **metrics}
    _log("\n" + table([row], list(row)))
    _log(f"checkpoint: {run_dir / 'model.pt'}")
    return 0


def _checkpoint_arg(cfg, key: str) -> str:
    value = _dig(cfg, key)
    if not value:
        raise ConfigError(f"{key}: missing; pass {key}=path/to/model.pt")
    return str(value)


def cmd_test(cfg, progress: bool) -> int:
    from core.engine.report import table
    from core.engine.runs import write_json

    path = _checkpoint_arg(cfg, "test.checkpoint")
    _, task, data, space, arch, model = load_model(path, "test.checkpoint", cfg)
    out_dir = Path(path).expanduser().parent
    _log(f"test: {arch.key} from {path} on {task.describe_test(data)}; {_threads()} CPU thread(s)")
    metrics = task.test(model, data, out_dir)
    row = {"arch": arch.key, **_cost_row(model, task.example_input(data), latency=True), **metrics}
    write_json(out_dir / "test_metrics.json", row)
    _log("\n" + table([row], list(row)))
    _log(f"metrics: {out_dir / 'test_metrics.json'}")
    return 0


def cmd_export(cfg, progress: bool) -> int:
    from core.engine.export import export_model
    from core.engine.report import table

    path = _checkpoint_arg(cfg, "export.checkpoint")
    _, task, data, space, arch, model = load_model(path, "export.checkpoint", cfg)
    out_dir = Path(path).expanduser().parent
    _log(f"export: {arch.key} from {path} as {', '.join(cfg['export']['formats'])}")
    rows = export_model(model, task.example_input(data), out_dir, cfg["export"]["formats"],
                        opset=cfg["export"]["opset"], atol=cfg["export"]["atol"])
    _log("\n" + table(rows, ["format", "path", "max_abs_diff", "check"]))
    return 0 if all(r["check"] == "ok" for r in rows) else 1


def cmd_profile(cfg, progress: bool) -> int:
    from core.engine.report import table

    task = load_task(cfg)
    data = task.data()
    space = task.space(data)
    prof = cfg["profile"]
    arch, label = _arch_from_config(cfg, task, space, data, "profile.arch")
    model = space.build(arch, **_build_kwargs(task, data))
    example = task.example_input(data)
    example = example.expand(prof["batch"], *example.shape[1:]).contiguous()
    _log(f"profile: {label} ({arch.key}), input {tuple(example.shape)}, {prof['threads']} thread(s)")
    row = {"arch": arch.key, **_cost_row(model, example, True, prof["threads"], prof["repeats"])}
    _log("\n" + table([row], list(row)))
    _log("MACs = multiply-accumulates (FLOPs / 2, as torch's FlopCounterMode counts FLOPs)")
    return 0


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _set_threads(cfg) -> int:
    """torch's intra-op threads from `threads` (default: `validate.default_threads()`)."""
    import torch

    from core.engine.validate import default_threads

    n = int(cfg.get("threads") or default_threads())
    torch.set_num_threads(n)
    return n


def _resume_hint(args) -> str:
    run_dir = _STATE.get("run_dir")
    if args.command != "search" or run_dir is None:
        return "interrupted; nothing was kept to resume from: run the command again"
    words = ["archforge", "search", args.config, *args.overrides, "--resume", str(run_dir)]
    return "interrupted; continue with: " + " ".join(words)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="archforge", description="Search, train, test, export and profile "
                                     "compact vision networks from one YAML config.")
    parser.add_argument("command", choices=COMMANDS)
    parser.add_argument("config", help="YAML config (see configs/)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. search.budget=50 threads=4")
    parser.add_argument("--resume", metavar="RUN_DIR", help="search: continue the search journaled in RUN_DIR")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)
    progress = not args.no_progress and not os.environ.get("ARCHFORGE_NO_PROGRESS")
    _STATE.clear()
    interrupted = []

    def on_sigint(signum, frame):
        interrupted.append(True)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint) if _main_thread() else None
    try:
        return _run(args, progress)
    except KeyboardInterrupt:
        print(f"\narchforge {args.command}: {_resume_hint(args)}", file=sys.stderr, flush=True)
        return 130
    except SystemExit as exit_:
        if interrupted:  # Lightning turns Ctrl-C into sys.exit(1) after its own clean-up
            print(f"\narchforge {args.command}: {_resume_hint(args)}", file=sys.stderr, flush=True)
            return 130
        raise exit_
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _run(args, progress: bool) -> int:
    from core.engine.data import DataError
    from core.engine.runs import CheckpointError
    from core.journal import JournalError

    try:
        cfg = load_config(args.config, args.overrides)
        _set_threads(cfg)
        if args.command == "search":
            return cmd_search(cfg, progress, args.resume)
        return {"train": cmd_train, "test": cmd_test, "export": cmd_export, "profile": cmd_profile}[args.command](
            cfg, progress)
    except (ConfigError, FileNotFoundError, NotADirectoryError, IsADirectoryError, ValueError, KeyError,
            ResumeError, JournalError, DataError, CheckpointError) as err:
        if _STATE.get("fresh") and _STATE.get("run_dir"):
            _discard_if_unused(_STATE["run_dir"])
        if os.environ.get("ARCHFORGE_DEBUG"):
            raise
        print(f"archforge {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2


def _one_line(err: BaseException) -> str:
    """The error's message on one line; from a DataLoader worker, the original error's own line (torch puts the
    worker's whole traceback into the message)."""
    import re

    message = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    if "Original Traceback" in message:
        last = [line for line in message.splitlines() if line.strip()][-1]
        message = re.sub(r"^[\w.]+(Error|Exception): ", "", last.strip())
    return " ".join(message.split()) or type(err).__name__


if __name__ == "__main__":
    sys.exit(main())
