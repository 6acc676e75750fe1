"""search -> retrain -> test -> export -> profile: what `archforge` runs, as functions of a resolved config.

`core.cli` parses the command line and calls these; everything a command
does lives here: building the task, data, space, strategy and evaluator from
the config; running a sample-based search (`core.search.Search`, journaled)
or a searcher's whole search (`core.oneshot.base.Searcher`); retraining the
best arch next to the configured baselines; the model checkpoint format; the
search outputs (best_arch.json, search.json, pareto.csv, pareto.png).

Everything that can be checked before work is spent is checked first
(`core.engine.validate`): the sections against their components, the
objective's metrics against what the evaluator reports, the baselines, an
arch file against the space it came from. A run folder is written only then,
and a failed start leaves none behind. `RUN` says which run folder the
running command owns (the CLI names it after Ctrl-C).
"""

from __future__ import annotations

import importlib
import json
import math
import os
import sys
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

#: the run folder the running command set up (`run_dir`) and whether it may still be removed (`fresh`)
RUN: dict[str, Any] = {}


def log(msg: str) -> None:
    print(msg, flush=True)


def threads() -> int:
    import torch

    return torch.get_num_threads()


# -- building blocks from a config ----------------------------------------------------------------------
def load_task(cfg: dict[str, Any], build: bool = True) -> Task | type[Task]:
    """The config's task: `tasks.<task>` is imported by its fixed package name (core never imports a task
    statically) and its registered Task class is built with the config and checks its sections."""
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


@dataclass
class Setup:
    """The task, its data and the search space of one config."""

    cfg: dict[str, Any]
    task: Task
    data: DataSplits
    space: SearchSpace

    @classmethod
    def of(cls, cfg: dict[str, Any], task: Task | None = None) -> "Setup":
        task = task or load_task(cfg)
        data = task.data()
        return cls(cfg, task, data, task.space(data))

    def evaluator(self) -> Evaluator:
        evaluator = EVALUATORS.build(self.task.evaluator_section(), "evaluator", optional={"task": self.task},
                                     space=self.space, data=self.data)
        evaluator.timeout_s = self.task.evaluator_timeout()
        return evaluator

    def strategy(self, objective: Objective) -> Strategy | Searcher:
        if not self.cfg.get("strategy"):
            raise ConfigError("strategy: missing section; e.g. strategy: {name: evolution}")
        return STRATEGIES.build(self.cfg["strategy"], "strategy", optional={"task": self.task}, space=self.space,
                                seed=self.cfg["seed"], objective=objective)

    def build(self, arch: Arch) -> nn.Module:
        return self.space.build(arch)

    def arch_from(self, key: str) -> tuple[Arch, str]:
        """The arch a config key names: an arch JSON file, a baseline name, or nothing (the space's default)."""
        from core.engine.validate import check_arch_origin, resolve_baseline

        value = dig(self.cfg, key)
        if not value:
            return self.space.default(), "default"
        if Path(str(value)).suffix == ".json" or Path(str(value)).exists():
            check_arch_origin(value, self.cfg, key, self.task.model_options)
            return check_arch(self.space, read_arch(value, key), key, value), Path(value).stem
        return resolve_baseline(self.task, str(value), self.space, self.data, key), value


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
    except (json.JSONDecodeError, ValueError, TypeError, AttributeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{key}: {p} is not an arch JSON file ({str(err).splitlines()[0]})") from None


def check_arch(space: SearchSpace, arch: Arch, key: str, source: Any) -> Arch:
    try:
        return space.check(arch)
    except (ValueError, KeyError, TypeError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        raise ConfigError(f"{key}: {source} is not an arch of this space ({message})") from None


def objective_of(cfg: dict[str, Any]) -> Objective:
    try:
        return Objective.from_config(**cfg["objective"])
    except ValueError as err:
        if isinstance(err, ConfigError):
            raise
        message = str(err)
        key = "objective.pareto" if "objective.pareto" in message else \
            "objective.direction" if "objective.direction" in message else "objective.constraints"
        raise ConfigError(message if message.startswith(key) else f"{key}: {message}") from None


def new_run_dir(cfg: dict[str, Any], kind: str) -> Path:
    """A fresh run folder with the resolved config, created only once every check has passed."""
    run_dir = make_run_dir(cfg, kind)
    dump_config(cfg, run_dir / "config.yaml")
    RUN["run_dir"], RUN["fresh"] = run_dir, True
    return run_dir


def discard_if_unused(run_dir: Path) -> None:
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


def cost_row(model: nn.Module, example, latency: bool, threads: int = 1, repeats: int = 30) -> dict[str, float]:
    from core.cost import count_macs, count_params, measure_latency

    row = {"params": count_params(model), "macs": count_macs(model, example)}
    if latency:
        row["latency_ms"] = measure_latency(model, tuple(example.shape[1:]), batch=1, threads=threads,
                                            repeats=repeats).median_ms
    return row


# -- model checkpoints ---------------------------------------------------------------------------------------
def save_model(path: Path, cfg: dict[str, Any], arch: Arch, model: nn.Module, metrics: dict[str, float]) -> None:
    clean_cfg = {k: v for k, v in cfg.items() if not (k.startswith("_") and k.endswith("_"))}
    save_checkpoint(path, {"arch": arch.to_dict(), "state_dict": model.state_dict(), "config": clean_cfg,
                           "metrics": {k: float(v) for k, v in metrics.items()}, "format": MODEL_FORMAT})


def load_model(path: str, key: str, current: dict[str, Any] | None = None) -> tuple[Setup, Arch, nn.Module]:
    """Rebuild a trained model from `model.pt` (weights-only load; the config travels inside).

    With `current` (the command line's config), the network comes from the checkpoint and everything else
    (data, test, export, the task's other options) from the command line (`validate.checkpoint_config`).
    """
    from core.engine.validate import checkpoint_config

    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"{key}: checkpoint not found: {p}")
    payload = load_checkpoint(p, key)
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT \
            or not isinstance(payload.get("config"), dict):
        raise ConfigError(f"{key}: {p} is a checkpoint, but not an archforge model (model.pt from train or search)")
    saved = payload["config"]
    if current is not None:
        task_cls = load_task({"task": saved.get("task")}, build=False)
        merged = checkpoint_config(saved, current, str(p), key, task_cls.model_options)
        cfg = validate(merged, source=current.get("_source_", str(p)))
    else:
        cfg = validate(saved, source=str(p))
    setup = Setup.of(cfg)
    arch = check_arch(setup.space, Arch(payload["arch"]), key, p)
    model = setup.build(arch)
    try:
        model.load_state_dict(payload["state_dict"])
    except (RuntimeError, KeyError, TypeError) as err:
        raise ConfigError(f"{key}: the weights in {p} do not fit the network its config builds here "
                          f"({str(err).splitlines()[0][:160]})") from None
    model.eval()
    if current is not None and saved.get("data") != cfg.get("data"):
        log(f"data: {cfg.get('data')} from the command line (the checkpoint was trained on {saved.get('data')})")
    return setup, arch, model


# -- search ------------------------------------------------------------------------------------------------------
def search(cfg: dict[str, Any], progress: bool, resume: str | None) -> int:
    from core.engine.validate import check_objective_metrics, resolve_baselines
    from core.executors import make_executor
    from core.journal import Journal, RunLock
    from core.search import Search

    seed_everything(cfg["seed"])
    task = load_task(cfg)
    objective = objective_of(cfg)
    if not cfg.get("strategy"):
        raise ConfigError("strategy: missing section; e.g. strategy: {name: evolution}")
    strategy_cls = STRATEGIES.check(cfg["strategy"], "strategy", provided=("space", "seed", "objective", "task"))
    searcher = isinstance(strategy_cls, type) and issubclass(strategy_cls, Searcher)
    if not searcher or strategy_cls.uses_evaluator:  # the objective reads what the evaluator reports
        check_objective_metrics(objective, task.check_evaluator(), str(task.evaluator_section().get("name")))
    from core.engine.lightning import relaunches_command

    if cfg["retrain"]["enabled"] and relaunches_command(cfg["train"]):
        raise ConfigError(f"train.strategy: {cfg['train']['strategy']!r} re-runs the command in every process, "
                          "which would repeat the search; retrain with train.strategy=ddp_spawn, or set "
                          "retrain.enabled=false and train the best arch with `archforge train CONFIG "
                          "train.arch=RUN_DIR/best_arch.json`")
    executor = None if searcher else make_executor(cfg["search"]["executor"])  # a bad executor fails here
    if cfg["search"]["tell_order"] not in ("submission", "completion"):
        raise ConfigError(f"search.tell_order: expected submission or completion, got {cfg['search']['tell_order']!r}")
    journal = lock = None
    if resume:  # the lock first: a second process on the same run folder stops before loading anything
        run_dir = Path(resume).expanduser()
        if not run_dir.is_dir():
            raise FileNotFoundError(f"--resume: run folder not found: {run_dir}")
        if not (run_dir / "journal.sqlite").is_file() and not (run_dir / "searcher.pt").is_file():
            raise FileNotFoundError(f"--resume: no journal.sqlite or searcher.pt in {run_dir}")
        RUN["run_dir"] = run_dir
        if searcher:
            lock = RunLock(run_dir / "searcher.pt.lock", str(run_dir))
        else:
            journal = Journal(run_dir / "journal.sqlite", cfg["search"]["journal_durability"], must_exist=True)
    try:
        setup = Setup.of(cfg, task)
        strategy = setup.strategy(objective)
        if cfg["retrain"]["enabled"]:  # every baseline name resolves now, not after the search
            resolve_baselines(task, cfg["retrain"]["baselines"], setup.space, setup.data,
                              searched=setup.space.default())
        budget = "its own budget" if searcher else f"budget {cfg['search']['budget']}"
        header = (f"search: {type(strategy).__name__} over {type(setup.space).__name__} ({setup.space.size():.3g} "
                  f"archs) on {setup.data.name}, {budget}, objective {objective.direction} {objective.metric}"
                  + "".join(f", {c}" for c in objective.constraints) + f"; {threads()} CPU thread(s)")
        if searcher:
            if not resume:
                run_dir = new_run_dir(cfg, "search")
            log(header)
            log(f"run folder: {run_dir}")
            arch = run_searcher(cfg, setup, strategy, objective, run_dir, progress)
        else:
            evaluator = setup.evaluator()  # may train a supernet: after every check above
            if journal is None:
                run_dir = new_run_dir(cfg, "search")
                journal = Journal(run_dir / "journal.sqlite", cfg["search"]["journal_durability"])
            log(header)
            log(f"run folder: {run_dir}")
            summary = Search(setup.space, strategy, evaluator, objective, journal, budget=cfg["search"]["budget"],
                             executor=executor, batch_size=cfg["search"]["batch_size"], progress=progress,
                             tell_order=cfg["search"]["tell_order"], max_rejected=cfg["search"]["max_rejected"]).run()
    finally:
        if journal is not None:
            journal.close()
        if lock is not None:
            lock.release()
    RUN["fresh"] = False
    if not searcher:
        write_search_outputs(run_dir, summary, objective)
        if summary.best_arch is None:
            from core.engine.validate import failure_summary

            message = summary.stop_reason or failure_summary(objective, [r for _, r in summary.trials])
            print(f"archforge search: {message}", file=sys.stderr, flush=True)
            return 2 if summary.stop_reason else 1
        if summary.stop_reason:
            log(f"search stopped early: {summary.stop_reason}")
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
    RUN["fresh"] = False
    atomic_write_text(run_dir / "best_arch.json", arch.to_json(indent=2) + "\n")
    report = {"best_arch_key": arch.key, "seconds": time.perf_counter() - start, "searcher": type(searcher).__name__,
              **searcher.record()}
    log(f"\n{type(searcher).__name__} derived {arch.key} in {report['seconds']:.1f} s")
    if objective.constraints:
        derived = check_derived(setup, arch, objective)
        report["derived_metrics"] = derived
        report["derived_within_constraints"] = all(c.satisfied(derived) for c in objective.constraints
                                                   if c.metric in derived)
    write_json(run_dir / "search.json", report)
    log(f"outputs: {run_dir}/best_arch.json, search.json" + (", searcher.pt" if context.checkpoint.exists() else ""))
    return arch


def check_derived(setup: Setup, arch: Arch, objective: Objective) -> dict[str, float]:
    """The derived network's own costs against the objective's constraints: a one-shot searcher steers the
    relaxed supernet's expected cost, so the network it derives can land over a printed limit; say by how much."""
    metrics = {k: float(v) for k, v in cost_row(setup.build(arch), setup.task.example_input(setup.data),
                                                  latency=False).items()}
    for c in objective.constraints:
        if c.metric not in metrics:
            continue
        value = metrics[c.metric]
        if c.satisfied(metrics):
            log(f"derived network: {c.metric} = {value:.4g}, within {c}")
        else:
            over = (value / c.bound - 1) * 100 if c.bound else math.inf
            why = getattr(setup.task, "constraint_note", None) or ""
            log(f"derived network: {c.metric} = {value:.4g}, over the objective's {c} by {over:.1f}%: the search "
                "held the supernet's expected cost near the limit, and the network derived from it (the most "
                f"likely op at every choice) costs more{why}")
    return metrics


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
        "failed": failed, "infeasible": summary.infeasible, "seconds": summary.seconds,
        "stop_reason": summary.stop_reason})
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

    from core.engine.validate import resolve_baselines

    cfg, task = setup.cfg, setup.task
    baselines = resolve_baselines(task, cfg["retrain"]["baselines"], setup.space, setup.data, searched=best_arch)
    entries = [("searched", best_arch)] + list(zip(cfg["retrain"]["baselines"], baselines))
    rows = []
    example = task.example_input(setup.data)
    for label, arch in entries:
        seed_everything(cfg["seed"])
        model = setup.build(arch)
        if any(p.requires_grad for p in model.parameters()):
            log(f"\ntraining {label} ({arch.key}) for {cfg['train']['epochs']} epochs")
        else:
            log(f"\n{label} ({arch.key}) has no weights to train: testing it as it is")
        out_dir = run_dir / label
        task.train(model, setup.data, out_dir, progress)
        metrics = task.test(model, setup.data, out_dir)
        save_model(out_dir / "model.pt", cfg, arch, model, metrics)
        rows.append({"model": label, "arch": arch.key, **cost_row(model, example, latency=True), **metrics})
    columns = ["model", "arch", "params", "macs", "latency_ms", *task.table_columns(rows)]
    write_json(run_dir / "metrics.json", rows)
    log("\n" + table(rows, columns))
    log(f"checkpoints: {run_dir}/<model>/model.pt; metrics: {run_dir}/metrics.json")


def train(cfg: dict[str, Any], progress: bool) -> int:
    from core.engine.report import table

    seed_everything(cfg["seed"])
    setup = Setup.of(cfg)
    arch, label = setup.arch_from("train.arch")
    from core.engine.lightning import is_global_zero, relaunches_command

    model = setup.build(arch)
    run_dir = new_run_dir(cfg, "train")
    if relaunches_command(cfg["train"]):  # the processes DDP starts by re-running this command share the folder
        os.environ["ARCHFORGE_RUN_DIR"] = str(run_dir)
    log(f"train: {label} ({arch.key}) on {setup.data.name} for {cfg['train']['epochs']} epochs, {threads()} CPU "
        f"thread(s) -> {run_dir}")
    val = setup.task.train(model, setup.data, run_dir, progress)
    RUN["fresh"] = False
    if not is_global_zero():
        return 0  # another process of a distributed training: rank 0 writes the outputs
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
    return str(value)


def test(cfg: dict[str, Any], progress: bool) -> int:
    from core.engine.report import table

    path = checkpoint_arg(cfg, "test.checkpoint")
    setup, arch, model = load_model(path, "test.checkpoint", cfg)
    out_dir = Path(path).expanduser().parent
    log(f"test: {arch.key} from {path} on {setup.task.describe_test(setup.data)}; {threads()} CPU thread(s)")
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
    setup, arch, model = load_model(path, "export.checkpoint", cfg)
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
