"""`archforge search|train|test|export|profile CONFIG [key=value ...]`.

Every command prints what it will do, shows progress, and ends with a short
table. User mistakes (a bad key, a wrong type, a missing path) end with one
line naming the problem and exit code 2; set ARCHFORGE_DEBUG=1 for a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from core.engine.config import dump_config, load_config
from core.engine.registry import STRATEGIES, TASKS, ConfigError
from core.search import ResumeError

COMMANDS = ("search", "train", "test", "export", "profile")


def _log(msg: str) -> None:
    print(msg, flush=True)


def load_task(cfg: dict[str, Any]):
    """Import `tasks.<task>` (a plug-in import by name: core never imports a task statically)."""
    name = cfg.get("task")
    if not name:
        raise ConfigError("task: missing; e.g. task: classification")
    try:
        importlib.import_module(f"tasks.{name}")
    except ModuleNotFoundError as err:
        if err.name and (err.name == f"tasks.{name}" or err.name == "tasks"):
            raise ConfigError(f"task: unknown task {name!r} (no package tasks/{name})") from None
        raise
    return TASKS.get(name, "task")(cfg)


# -- shared steps ----------------------------------------------------------------------------
def _read_arch(path: str, key: str):
    from core.space import Arch

    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"{key}: arch file not found: {p}")
    try:
        return Arch.from_json(p.read_text())
    except (json.JSONDecodeError, ValueError, TypeError) as err:
        raise ConfigError(f"{key}: {p} is not an arch JSON file ({err})") from None


def _arch_from_config(cfg, task, space, data, key: str):
    """An arch file path, a baseline name, or nothing (the space's default arch)."""
    value = _dig(cfg, key)
    if not value:
        return space.default(), "default"
    if Path(value).suffix == ".json" or Path(value).exists():
        return space.check(_read_arch(value, key)), Path(value).stem
    return task.baseline(value, space, data), value


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

    clean_cfg = {k: v for k, v in cfg.items() if k != "_source_"}
    save_checkpoint(path, {"arch": arch.to_dict(), "state_dict": model.state_dict(), "config": clean_cfg,
                           "metrics": {k: float(v) for k, v in metrics.items()}, "format": "archforge-model-1"})


def load_model(path: str, key: str):
    """Rebuild a trained model from `model.pt` (weights_only load; the config travels inside)."""
    from core.engine.config import validate
    from core.engine.runs import load_checkpoint
    from core.space import Arch

    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"{key}: checkpoint not found: {p}")
    payload = load_checkpoint(p)
    if payload.get("format") != "archforge-model-1":
        raise ConfigError(f"{key}: {p} is not an archforge model checkpoint")
    cfg = validate(payload["config"], source=str(p))
    task = load_task(cfg)
    data = task.data()
    space = task.space(data)
    arch = space.check(Arch(payload["arch"]))
    model = space.build(arch, num_classes=data.num_classes) if "num_classes" in task.space_overrides(data) else space.build(arch)
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return cfg, task, data, space, arch, model


# -- commands ----------------------------------------------------------------------------------
def cmd_search(cfg, progress: bool, resume: str | None) -> int:
    from core.engine.runs import make_run_dir, seed_everything, write_json
    from core.executors import make_executor
    from core.journal import Journal
    from core.objective import Objective
    from core.search import Search

    from core.engine.lightning import relaunches_command

    if cfg["retrain"]["enabled"] and relaunches_command(cfg["train"]):
        raise ConfigError(f"train.strategy: {cfg['train']['strategy']!r} re-runs the command in every process, "
                          "which would repeat the search; retrain with train.strategy=ddp_spawn, or set "
                          "retrain.enabled=false and train the best arch with `archforge train CONFIG "
                          "train.arch=RUN_DIR/best_arch.json`")
    executor = make_executor(cfg["search"]["executor"])  # a bad executor config fails before any work
    if cfg["search"]["tell_order"] not in ("submission", "completion"):
        raise ConfigError(f"search.tell_order: expected submission or completion, got {cfg['search']['tell_order']!r}")
    seed_everything(cfg["seed"])
    task = load_task(cfg)
    data = task.data()
    space = task.space(data)
    objective = Objective.from_config(**cfg["objective"])
    if not cfg.get("strategy"):
        raise ConfigError("strategy: missing section; e.g. strategy: {name: evolution}")
    strategy = STRATEGIES.build(cfg["strategy"], "strategy", space=space, seed=cfg["seed"], objective=objective)
    if resume:
        run_dir = Path(resume)
        if not (run_dir / "journal.sqlite").is_file() and not (run_dir / "searcher.pt").is_file():
            raise FileNotFoundError(f"--resume: no journal.sqlite or searcher.pt in {run_dir}")
    else:
        run_dir = make_run_dir(cfg, "search")
        dump_config(cfg, run_dir / "config.yaml")
    one_shot = getattr(strategy, "gradient_based", False)
    budget = "one-shot" if one_shot else f"budget {cfg['search']['budget']}"
    _log(f"search: {type(strategy).__name__} over {type(space).__name__} ({space.size():.3g} archs) on "
         f"{data.name}, {budget}, objective {objective.direction} {objective.metric}"
         + "".join(f", {c}" for c in objective.constraints))
    _log(f"run folder: {run_dir}")
    if one_shot:
        return _one_shot_search(cfg, task, data, space, strategy, run_dir, progress)
    evaluator = task.evaluator(space, data)  # after the one-shot branch: a supernet evaluator trains on creation
    journal = Journal(run_dir / "journal.sqlite", durability=cfg["search"]["journal_durability"])
    if getattr(strategy, "multi_fidelity", False) and callable(getattr(strategy, "run", None)):
        try:
            return _multi_fidelity_search(cfg, task, data, space, strategy, evaluator, journal, run_dir, progress)
        finally:
            journal.close()
    try:
        summary = Search(space, strategy, evaluator, objective, journal, budget=cfg["search"]["budget"],
                         executor=executor, batch_size=cfg["search"]["batch_size"],
                         tell_order=cfg["search"]["tell_order"], progress=progress).run()
    finally:
        journal.close()
    _write_search_outputs(run_dir, summary, objective)
    if summary.best_arch is None:
        _log("no feasible architecture was found; see journal.sqlite for each trial's status")
        return 1
    if cfg["retrain"]["enabled"]:
        _retrain(cfg, task, data, space, summary.best_arch, run_dir, progress)
    return 0


def _one_shot_search(cfg, task, data, space, strategy, run_dir: Path, progress: bool) -> int:
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
    atomic_write_text(run_dir / "best_arch.json", arch.to_json(indent=2) + "\n")
    report = {"best_arch_key": arch.key, "seconds": time.perf_counter() - start,
              "searcher": type(strategy).__name__}
    for name in ("result", "history", "training"):
        value = getattr(strategy, name, None)
        if value:
            report[name] = value
    if callable(getattr(strategy, "report", None)):
        report["report"] = strategy.report()
    write_json(run_dir / "search.json", report)
    _log(f"\n{type(strategy).__name__} derived {arch.key} in {report['seconds']:.1f} s")
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
    if summary.best_arch is None:
        _log("no feasible architecture was found; see journal.sqlite for each evaluation")
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
        "failed": failed, "infeasible": summary.infeasible, "seconds": summary.seconds})
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

    entries = [("searched", best_arch)] + [(b, task.baseline(b, space, data)) for b in cfg["retrain"]["baselines"]]
    rows = []
    example = task.example_input(data)
    for label, arch in entries:
        _log(f"\ntraining {label} ({arch.key}) for {cfg['train']['epochs']} epochs")
        seed_everything(cfg["seed"])
        model = space.build(arch, num_classes=data.num_classes)
        out_dir = run_dir / label
        task.train(model, data, out_dir, progress)
        metrics = task.test(model, data, out_dir)
        save_model(out_dir / "model.pt", cfg, arch, model, metrics)
        rows.append({"model": label, "arch": arch.key, **_cost_row(model, example, latency=True), **metrics})
    columns = ["model", "arch", "params", "macs", "latency_ms", *task.table_metrics]
    write_json(run_dir / "metrics.json", rows)
    _log("\n" + table(rows, columns))
    _log(f"checkpoints: {run_dir}/<model>/model.pt; metrics: {run_dir}/metrics.json")


def cmd_train(cfg, progress: bool) -> int:
    from core.engine.report import table
    from core.engine.runs import make_run_dir, seed_everything, write_json

    seed_everything(cfg["seed"])
    task = load_task(cfg)
    data = task.data()
    space = task.space(data)
    arch, label = _arch_from_config(cfg, task, space, data, "train.arch")
    run_dir = make_run_dir(cfg, "train")
    from core.engine.lightning import relaunches_command

    if relaunches_command(cfg["train"]):  # the processes DDP starts by re-running this command share the folder
        os.environ["ARCHFORGE_RUN_DIR"] = str(run_dir)
    dump_config(cfg, run_dir / "config.yaml")
    _log(f"train: {label} ({arch.key}) on {data.name} for {cfg['train']['epochs']} epochs -> {run_dir}")
    model = space.build(arch, num_classes=data.num_classes)
    val = task.train(model, data, run_dir, progress)
    from core.engine.lightning import is_global_zero

    if not is_global_zero():
        return 0  # another process of a distributed training: rank 0 writes the outputs
    metrics = {f"val_{k}": v for k, v in val.items()}
    save_model(run_dir / "model.pt", cfg, arch, model, metrics)
    write_json(run_dir / "metrics.json", metrics)
    from core.engine.runs import atomic_write_text

    atomic_write_text(run_dir / "arch.json", arch.to_json(indent=2) + "\n")
    row = {"arch": arch.key, **_cost_row(model, task.example_input(data), latency=False), **metrics}
    _log("\n" + table([row], list(row)))
    _log(f"checkpoint: {run_dir / 'model.pt'}")
    return 0


def _checkpoint_arg(cfg, key: str) -> str:
    value = _dig(cfg, key)
    if not value:
        raise ConfigError(f"{key}: missing; pass {key}=path/to/model.pt")
    return value


def cmd_test(cfg, progress: bool) -> int:
    from core.engine.report import table
    from core.engine.runs import write_json

    path = _checkpoint_arg(cfg, "test.checkpoint")
    _, task, data, space, arch, model = load_model(path, "test.checkpoint")
    task.cfg["test"] = cfg["test"]
    out_dir = Path(path).expanduser().parent
    _log(f"test: {arch.key} from {path} on {data.name} ({len(data.test)} samples)")
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
    _, task, data, space, arch, model = load_model(path, "export.checkpoint")
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
    model = space.build(arch, num_classes=data.num_classes)
    example = task.example_input(data).expand(prof["batch"], *data.input_shape).contiguous()
    _log(f"profile: {label} ({arch.key}), input {tuple(example.shape)}, {prof['threads']} thread(s)")
    row = {"arch": arch.key, **_cost_row(model, example, True, prof["threads"], prof["repeats"])}
    _log("\n" + table([row], list(row)))
    _log("MACs = multiply-accumulates (FLOPs / 2, as torch's FlopCounterMode counts FLOPs)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="archforge", description="Search, train, test, export and profile "
                                     "compact vision networks from one YAML config.")
    parser.add_argument("command", choices=COMMANDS)
    parser.add_argument("config", help="YAML config (see configs/)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. search.budget=50")
    parser.add_argument("--resume", metavar="RUN_DIR", help="search: continue the search journaled in RUN_DIR")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)
    progress = not args.no_progress and not os.environ.get("ARCHFORGE_NO_PROGRESS")
    try:
        cfg = load_config(args.config, args.overrides)
        if args.command == "search":
            return cmd_search(cfg, progress, args.resume)
        return {"train": cmd_train, "test": cmd_test, "export": cmd_export, "profile": cmd_profile}[args.command](
            cfg, progress)
    except (ConfigError, FileNotFoundError, ValueError, KeyError, ResumeError) as err:
        if os.environ.get("ARCHFORGE_DEBUG"):
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        print(f"archforge {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
