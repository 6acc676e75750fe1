"""search -> retrain -> test -> export -> profile: what `archforge` runs, as functions of a resolved config.

`core.cli` parses the command line and calls these; everything a command
does lives here: building the task, data, space, strategy and evaluator from
the config; running a sample-based search (`core.search.Search`, journaled)
or a searcher's whole search (`core.oneshot.base.Searcher`); retraining the
best arch next to the configured baselines; the model checkpoint format; the
search outputs (best_arch.json, search.json, pareto.csv, pareto.png).
"""

from __future__ import annotations

import importlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from core.api import Arch, SearchSpace
from core.engine.config import dump_config, validate
from core.engine.data import DataSplits
from core.engine.registry import EVALUATORS, STRATEGIES, TASKS, ConfigError
from core.engine.runs import (atomic_write_text, load_checkpoint, make_run_dir, save_checkpoint, seed_everything,
                              write_json)
from core.evaluation.base import Evaluator
from core.objective import Objective
from core.oneshot.base import SearchContext, Searcher
from core.strategies.base import Strategy
from core.task import Task

MODEL_FORMAT = "archforge-model-1"


def log(msg: str) -> None:
    print(msg, flush=True)


# -- building blocks from a config ----------------------------------------------------------------------
def load_task(cfg: dict[str, Any]) -> Task:
    """The config's task: `tasks.<task>` is imported by its fixed package name (core never imports a task
    statically) and its registered Task class is built with the config."""
    name = cfg.get("task")
    if not name:
        raise ConfigError("task: missing; e.g. task: classification")
    if not str(name).isidentifier():
        raise ConfigError(f"task: {name!r} is not a task name")
    try:
        importlib.import_module(f"tasks.{name}")
    except ModuleNotFoundError as err:
        if err.name and (err.name == f"tasks.{name}" or err.name == "tasks"):
            raise ConfigError(f"task: unknown task {name!r} (no package tasks/{name})") from None
        raise
    return TASKS.get(name, "task")(cfg)


@dataclass
class Setup:
    """The task, its data and the search space of one config."""

    cfg: dict[str, Any]
    task: Task
    data: DataSplits
    space: SearchSpace

    @classmethod
    def of(cls, cfg: dict[str, Any]) -> "Setup":
        task = load_task(cfg)
        data = task.data()
        return cls(cfg, task, data, task.space(data))

    def evaluator(self) -> Evaluator:
        section = self.cfg.get("evaluator") or {"name": "train"}
        return EVALUATORS.build(section, "evaluator", optional={"task": self.task}, space=self.space, data=self.data)

    def strategy(self, objective: Objective) -> Strategy | Searcher:
        if not self.cfg.get("strategy"):
            raise ConfigError("strategy: missing section; e.g. strategy: {name: evolution}")
        return STRATEGIES.build(self.cfg["strategy"], "strategy", optional={"task": self.task}, space=self.space,
                                seed=self.cfg["seed"], objective=objective)

    def build(self, arch: Arch) -> nn.Module:
        return self.space.build(arch)

    def arch_from(self, key: str) -> tuple[Arch, str]:
        """The arch a config key names: an arch JSON file, a baseline name, or nothing (the space's default)."""
        value = dig(self.cfg, key)
        if not value:
            return self.space.default(), "default"
        if Path(value).suffix == ".json" or Path(value).exists():
            return self.space.check(read_arch(value, key)), Path(value).stem
        return self.task.baseline(value, self.space, self.data), value


def dig(cfg: dict, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def read_arch(path: str, key: str) -> Arch:
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"{key}: arch file not found: {p}")
    try:
        return Arch.from_json(p.read_text())
    except (json.JSONDecodeError, ValueError, TypeError) as err:
        raise ConfigError(f"{key}: {p} is not an arch JSON file ({err})") from None


def cost_row(model: nn.Module, example, latency: bool, threads: int = 1, repeats: int = 30) -> dict[str, float]:
    from core.cost import count_macs, count_params, measure_latency

    row = {"params": count_params(model), "macs": count_macs(model, example)}
    if latency:
        row["latency_ms"] = measure_latency(model, tuple(example.shape[1:]), batch=1, threads=threads,
                                            repeats=repeats).median_ms
    return row


# -- model checkpoints ---------------------------------------------------------------------------------------
def save_model(path: Path, cfg: dict[str, Any], arch: Arch, model: nn.Module, metrics: dict[str, float]) -> None:
    clean_cfg = {k: v for k, v in cfg.items() if k != "_source_"}
    save_checkpoint(path, {"arch": arch.to_dict(), "state_dict": model.state_dict(), "config": clean_cfg,
                           "metrics": {k: float(v) for k, v in metrics.items()}, "format": MODEL_FORMAT})


def load_model(path: str, key: str) -> tuple[Setup, Arch, nn.Module]:
    """Rebuild a trained model from `model.pt` (weights-only load; the config travels inside)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"{key}: checkpoint not found: {p}")
    payload = load_checkpoint(p)
    if payload.get("format") != MODEL_FORMAT:
        raise ConfigError(f"{key}: {p} is not an archforge model checkpoint")
    setup = Setup.of(validate(payload["config"], source=str(p)))
    arch = setup.space.check(Arch(payload["arch"]))
    model = setup.build(arch)
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return setup, arch, model


# -- search ------------------------------------------------------------------------------------------------------
def search(cfg: dict[str, Any], progress: bool, resume: str | None) -> int:
    from core.executors import make_executor
    from core.journal import Journal
    from core.search import Search

    seed_everything(cfg["seed"])
    setup = Setup.of(cfg)
    objective = Objective.from_config(**cfg["objective"])
    strategy = setup.strategy(objective)
    if resume:
        run_dir = Path(resume)
        if not (run_dir / "journal.sqlite").is_file() and not (run_dir / "searcher.pt").is_file():
            raise FileNotFoundError(f"--resume: no journal.sqlite or searcher.pt in {run_dir}")
    else:
        run_dir = make_run_dir(cfg, "search")
        dump_config(cfg, run_dir / "config.yaml")
    searcher = isinstance(strategy, Searcher)
    budget = "searcher's own budget" if searcher else f"budget {cfg['search']['budget']}"
    log(f"search: {type(strategy).__name__} over {type(setup.space).__name__} ({setup.space.size():.3g} archs) on "
        f"{setup.data.name}, {budget}, objective {objective.direction} {objective.metric}"
        + "".join(f", {c}" for c in objective.constraints))
    log(f"run folder: {run_dir}")
    if searcher:
        arch = run_searcher(cfg, setup, strategy, objective, run_dir, progress)
    else:
        journal = Journal(run_dir / "journal.sqlite", durability=cfg["search"]["journal_durability"])
        try:
            summary = Search(setup.space, strategy, setup.evaluator(), objective, journal,
                             budget=cfg["search"]["budget"], executor=make_executor(cfg["search"]["executor"]),
                             batch_size=cfg["search"]["batch_size"], progress=progress).run()
        finally:
            journal.close()
        write_search_outputs(run_dir, summary, objective)
        if summary.best_arch is None:
            log("no feasible architecture was found; see journal.sqlite for each trial's status")
            return 1
        arch = summary.best_arch
    if cfg["retrain"]["enabled"]:
        retrain(setup, arch, run_dir, progress)
    return 0


def run_searcher(cfg: dict[str, Any], setup: Setup, searcher: Searcher, objective: Objective, run_dir: Path,
                 progress: bool) -> Arch:
    """A searcher's whole search (`Searcher.search`); it checkpoints to `run_dir/searcher.pt` after each epoch,
    so `--resume RUN_DIR` continues it. Evaluations it makes are journaled."""
    from core.journal import Journal

    journal = None

    def record(arch: Arch, result) -> None:
        nonlocal journal
        if journal is None:
            journal = Journal(run_dir / "journal.sqlite", durability=cfg["search"]["journal_durability"])
        journal.record(arch, result, "searcher")

    context = SearchContext(task=setup.task, data=setup.data, space=setup.space, objective=objective,
                            checkpoint=run_dir / "searcher.pt", progress=progress, make_evaluator=setup.evaluator,
                            record=record, budget=cfg["search"]["budget"])
    start = time.perf_counter()
    try:
        arch = setup.space.check(searcher.search(context))
    finally:
        if journal is not None:
            journal.close()
    atomic_write_text(run_dir / "best_arch.json", arch.to_json(indent=2) + "\n")
    report = {"best_arch_key": arch.key, "seconds": time.perf_counter() - start, "searcher": type(searcher).__name__,
              **searcher.record()}
    write_json(run_dir / "search.json", report)
    log(f"\n{type(searcher).__name__} derived {arch.key} in {report['seconds']:.1f} s")
    log(f"outputs: {run_dir}/best_arch.json, search.json" + (", searcher.pt" if context.checkpoint.exists() else ""))
    return arch


def write_search_outputs(run_dir: Path, summary, objective: Objective) -> None:
    from core.engine.report import pareto_plot, table, write_csv

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
    log(f"\n{len(summary.trials)} trials ({summary.evaluations} evaluated now, {summary.replayed} replayed "
        f"from the journal, {failed} failed, {summary.infeasible} over a constraint before training) "
        f"in {summary.seconds:.1f} s")
    if summary.pareto:
        log("Pareto front:\n" + table([{"arch": a.key, **r.metrics} for a, r in summary.pareto],
                                      ["arch", *dict.fromkeys([m for m, _ in terms] + ["params", "macs"])]))
    log(f"outputs: {run_dir}/best_arch.json, pareto.csv, pareto.png, journal.sqlite")


# -- retraining, training, testing ----------------------------------------------------------------------------------
def retrain(setup: Setup, best_arch: Arch, run_dir: Path, progress: bool) -> None:
    """Train the best arch and each baseline with the `train` recipe, test them, print one table."""
    from core.engine.report import table

    cfg, task = setup.cfg, setup.task
    entries = [("searched", best_arch)] + [(b, task.baseline(b, setup.space, setup.data))
                                           for b in cfg["retrain"]["baselines"]]
    rows = []
    example = task.example_input(setup.data)
    for label, arch in entries:
        log(f"\ntraining {label} ({arch.key}) for {cfg['train']['epochs']} epochs")
        seed_everything(cfg["seed"])
        model = setup.build(arch)
        out_dir = run_dir / label
        task.train(model, setup.data, out_dir, progress)
        metrics = task.test(model, setup.data, out_dir)
        save_model(out_dir / "model.pt", cfg, arch, model, metrics)
        rows.append({"model": label, "arch": arch.key, **cost_row(model, example, latency=True), **metrics})
    columns = ["model", "arch", "params", "macs", "latency_ms", *task.table_metrics]
    write_json(run_dir / "metrics.json", rows)
    log("\n" + table(rows, columns))
    log(f"checkpoints: {run_dir}/<model>/model.pt; metrics: {run_dir}/metrics.json")


def train(cfg: dict[str, Any], progress: bool) -> int:
    from core.engine.report import table

    seed_everything(cfg["seed"])
    setup = Setup.of(cfg)
    arch, label = setup.arch_from("train.arch")
    run_dir = make_run_dir(cfg, "train")
    dump_config(cfg, run_dir / "config.yaml")
    log(f"train: {label} ({arch.key}) on {setup.data.name} for {cfg['train']['epochs']} epochs -> {run_dir}")
    model = setup.build(arch)
    val = setup.task.train(model, setup.data, run_dir, progress)
    metrics = {f"val_{k}": v for k, v in val.items()}
    save_model(run_dir / "model.pt", cfg, arch, model, metrics)
    write_json(run_dir / "metrics.json", metrics)
    atomic_write_text(run_dir / "arch.json", arch.to_json(indent=2) + "\n")
    row = {"arch": arch.key, **cost_row(model, setup.task.example_input(setup.data), latency=False), **metrics}
    log("\n" + table([row], list(row)))
    log(f"checkpoint: {run_dir / 'model.pt'}")
    return 0


def checkpoint_arg(cfg: dict[str, Any], key: str) -> str:
    value = dig(cfg, key)
    if not value:
        raise ConfigError(f"{key}: missing; pass {key}=path/to/model.pt")
    return value


def test(cfg: dict[str, Any], progress: bool) -> int:
    from core.engine.report import table

    path = checkpoint_arg(cfg, "test.checkpoint")
    setup, arch, model = load_model(path, "test.checkpoint")
    setup.task.cfg["test"] = cfg["test"]
    out_dir = Path(path).expanduser().parent
    log(f"test: {arch.key} from {path} on {setup.data.name} ({len(setup.data.test)} samples)")
    metrics = setup.task.test(model, setup.data, out_dir)
    row = {"arch": arch.key, **cost_row(model, setup.task.example_input(setup.data), latency=True), **metrics}
    write_json(out_dir / "test_metrics.json", row)
    log("\n" + table([row], list(row)))
    log(f"metrics: {out_dir / 'test_metrics.json'}")
    return 0


def export(cfg: dict[str, Any], progress: bool) -> int:
    from core.engine.export import export_model
    from core.engine.report import table

    path = checkpoint_arg(cfg, "export.checkpoint")
    setup, arch, model = load_model(path, "export.checkpoint")
    out_dir = Path(path).expanduser().parent
    log(f"export: {arch.key} from {path} as {', '.join(cfg['export']['formats'])}")
    rows = export_model(model, setup.task.example_input(setup.data), out_dir, cfg["export"]["formats"],
                        opset=cfg["export"]["opset"], atol=cfg["export"]["atol"])
    log("\n" + table(rows, ["format", "path", "max_abs_diff", "check"]))
    return 0 if all(r["check"] == "ok" for r in rows) else 1


def profile(cfg: dict[str, Any], progress: bool) -> int:
    from core.engine.report import table

    setup = Setup.of(cfg)
    prof = cfg["profile"]
    arch, label = setup.arch_from("profile.arch")
    model = setup.build(arch)
    example = setup.task.example_input(setup.data)
    example = example.expand(prof["batch"], *example.shape[1:]).contiguous()
    log(f"profile: {label} ({arch.key}), input {tuple(example.shape)}, {prof['threads']} thread(s)")
    row = {"arch": arch.key, **cost_row(model, example, True, prof["threads"], prof["repeats"])}
    log("\n" + table([row], list(row)))
    log("MACs = multiply-accumulates (FLOPs / 2, as torch's FlopCounterMode counts FLOPs)")
    return 0


COMMANDS = {"train": train, "test": test, "export": export, "profile": profile}

__all__ = ["Setup", "load_task", "load_model", "save_model", "search", "run_searcher", "retrain", "train", "test",
           "export", "profile", "COMMANDS", "MODEL_FORMAT"]
