"""Checks that run before any work is spent, and the one-line summaries of what went wrong.

Everything here raises `ConfigError` (or `FileNotFoundError`) with the dotted
key, the bad value and what is allowed, so `archforge` can stop with one line
before it creates a run folder, loads data or trains anything:

- `check_ranges`: numeric bounds of the fixed sections (`train.epochs >= 1`,
  `profile.batch >= 1`, ...) and of the common argument names of component
  sections (`evaluator.epochs`, `data.val_fraction`, ...).
- `check_run_name`: a run name is one path component (no `/`, `..`, or
  absolute path), so a run never writes outside `run.dir`.
- `check_objective_metrics`: `objective.metric`, the constraints' and the
  Pareto terms' metrics are among those the evaluator reports.
- `resolve_baselines`: every `retrain.baselines` name resolves (errors name
  the key the user wrote, e.g. `profile.arch`).
- `failure_summary`: the most common reasons a search found nothing feasible.
- `checkpoint_config`: the config a saved model is tested/exported with (the
  command line wins over the config saved in the checkpoint).
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from core.engine.registry import ConfigError

# -- ranges ----------------------------------------------------------------------------------------------------
Bound = tuple[Callable[[Any], bool], str]


def _int_at_least(low: int) -> Bound:
    return (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low), f"an integer >= {low}"


def _positive() -> Bound:
    return (lambda v: _number(v) and v > 0), "a number > 0"


def _at_least(low: float) -> Bound:
    return (lambda v: _number(v) and v >= low), f"a number >= {low:g}"


def _fraction(low_open: bool = True, high_closed: bool = False) -> Bound:
    def ok(v):
        return _number(v) and (v > 0 if low_open else v >= 0) and (v <= 1 if high_closed else v < 1)
    return ok, f"a fraction in {'(' if low_open else '['}0, 1{']' if high_closed else ')'}"


def _one_of(*options: str) -> Bound:
    return (lambda v: v in options), f"one of {', '.join(options)}"


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


FIXED_RANGES: dict[str, Bound] = {
    "search.budget": _int_at_least(1),
    "search.batch_size": _int_at_least(1),
    "search.max_rejected": _int_at_least(1),
    "search.journal_durability": _one_of("full", "process"),
    "train.epochs": _int_at_least(1),
    "train.batch_size": _int_at_least(1),
    "train.lr": _positive(),
    "train.momentum": _fraction(low_open=False),
    "train.weight_decay": _at_least(0),
    "train.label_smoothing": _fraction(low_open=False),
    "train.grad_clip": _at_least(0),
    "train.num_workers": _int_at_least(0),
    "train.log_every_n_steps": _int_at_least(1),
    "train.optimizer": _one_of("sgd", "adam", "adamw"),
    "train.scheduler": _one_of("cosine", "none", "multistep"),  # multistep: tasks that define one (remote sensing)
    "test.batch_size": _int_at_least(1),
    "export.opset": _int_at_least(7),
    "export.atol": _positive(),
    "profile.batch": _int_at_least(1),
    "profile.threads": _int_at_least(1),
    "profile.repeats": _int_at_least(1),
    "objective.direction": _one_of("max", "min"),
}

#: bounds of argument names that mean the same thing in every component section (data, space, strategy,
#: evaluator); a component checks its own special arguments itself
COMPONENT_RANGES: dict[str, Bound] = {
    "epochs": _int_at_least(1),
    "batch_size": _int_at_least(1),
    "steps_per_epoch": _int_at_least(1),
    "samples_per_epoch": _int_at_least(1),
    "lr": _positive(),
    "arch_lr": _positive(),
    "weight_decay": _at_least(0),
    "momentum": _fraction(low_open=False),
    "val_fraction": _fraction(),
    "test_fraction": _fraction(),
    "train_portion": _fraction(),
    "sample_ratio": _fraction(high_closed=True),
}

COMPONENT_SECTIONS = ("data", "space", "strategy", "evaluator")


def _check(key: str, value: Any, bound: Bound) -> None:
    ok, allowed = bound
    if not ok(value):
        raise ConfigError(f"{key}: expected {allowed}, got {value!r}")


def check_ranges(cfg: Mapping[str, Any]) -> None:
    """Bounds of the fixed sections' keys and of the common component arguments (see the tables above)."""
    for dotted, bound in FIXED_RANGES.items():
        section, key = dotted.split(".")
        value = (cfg.get(section) or {}).get(key)
        if value is not None:
            _check(dotted, value, bound)
    formats = (cfg.get("export") or {}).get("formats") or []
    for fmt in formats:
        if fmt not in ("onnx", "torchscript"):
            raise ConfigError(f"export.formats: expected a list of onnx, torchscript; got {list(formats)!r}")
    seed = cfg.get("seed")
    if seed is not None:
        _check("seed", seed, _int_at_least(0))
    if cfg.get("threads") is not None:
        _check("threads", cfg["threads"], _int_at_least(1))
    for section in COMPONENT_SECTIONS:
        for key, value in (cfg.get(section) or {}).items():
            if key in COMPONENT_RANGES and value is not None and not isinstance(value, (list, tuple, dict, str)):
                _check(f"{section}.{key}", value, COMPONENT_RANGES[key])


_NAME = re.compile(r"^[^/\\:]+$")


def check_run_name(name: Any) -> None:
    """A run name is one path component: never empty, `.`, `..`, absolute, or holding a path separator."""
    if name is None:
        return
    if not isinstance(name, str) or not _NAME.match(name) or name in (".", "..") or name != name.strip() \
            or os.path.isabs(name):
        raise ConfigError(f"run.name: expected one folder name (no '/', '\\', ':', '..'), got {name!r}; "
                          "set run.dir for where runs go")


# -- what a search can be asked to optimise --------------------------------------------------------------------
def check_objective_metrics(objective: Any, produced: set[str] | None, evaluator: str) -> None:
    """Every metric the objective reads must be one the evaluator reports (`produced`; None: not declared)."""
    if produced is None:
        return
    known = ", ".join(sorted(produced))
    if objective.metric not in produced:
        raise ConfigError(f"objective.metric: {objective.metric!r} is not a metric the {evaluator} evaluator "
                          f"reports ({known})")
    for c in objective.constraints:
        if c.metric not in produced:
            hint = "; set evaluator.latency=measure or table" if c.metric == "latency_ms" else ""
            raise ConfigError(f"objective.constraints: {str(c)!r} reads {c.metric!r}, which the {evaluator} "
                              f"evaluator does not report ({known}){hint}")
    for name, _ in objective.pareto:
        if name not in produced:
            raise ConfigError(f"objective.pareto: {name!r} is not a metric the {evaluator} evaluator reports "
                              f"({known})")


def rekey(err: ConfigError, key: str) -> ConfigError:
    """The same error, naming `key` (what the user wrote) instead of the key the callee assumed."""
    message = str(err)
    head, sep, rest = message.partition(": ")
    if sep and re.fullmatch(r"[A-Za-z_][\w.]*", head):
        return ConfigError(f"{key}: {rest}")
    return ConfigError(f"{key}: {message}")


def resolve_baseline(task: Any, name: str, space: Any, data: Any, key: str, **kwargs: Any) -> Any:
    """`task.baseline(name, ...)`, with an error naming `key` (`retrain.baselines`, `profile.arch`, ...)."""
    try:
        return task.baseline(name, space, data, **kwargs)
    except ConfigError as err:
        raise rekey(err, key) from None
    except ValueError as err:  # a baseline that cannot be sized (e.g. nothing fits the MACs limit)
        raise ConfigError(f"{key}: {name}: {err}") from None


def resolve_baselines(task: Any, names: Iterable[str], space: Any, data: Any, **kwargs: Any) -> list:
    """Every `retrain.baselines` name resolved now, before a search spends its budget."""
    if isinstance(names, str):
        raise ConfigError(f"retrain.baselines: expected a list of names, got {names!r}")
    return [resolve_baseline(task, str(n), space, data, "retrain.baselines", **kwargs) for n in names]


# -- why nothing was found ---------------------------------------------------------------------------------------
def _reason(objective: Any, result: Any) -> str:
    """A short, value-free description of why one trial is not feasible (so equal causes count together)."""
    if result.status == "infeasible":
        broken = [str(c) for c in objective.constraints
                  if c.metric in result.metrics and not c.satisfied(result.metrics)]
        return f"breaks {' and '.join(broken) or 'a constraint'} before training"
    if result.status != "ok":
        text = (result.reason or "failed").split(" (at ")[0]
        text = re.sub(r"\b\d+(\.\d+)?(e[-+]?\d+)?\b", "N", text)
        return f"failed: {text[:120]}"
    broken = [str(c) for c in objective.constraints if not c.satisfied(result.metrics)]
    if broken:
        return f"breaks {' and '.join(broken)} after evaluation"
    value = result.metrics.get(objective.metric)
    if value is None:
        return f"no {objective.metric!r} in its metrics"
    return f"{objective.metric} is {value}"


def failure_summary(objective: Any, results: Sequence[Any], top: int = 3) -> str:
    """'no feasible architecture in N trials: 20 x failed: ..., 4 x breaks macs <= 6e+05 before training'."""
    counts = Counter(_reason(objective, r) for r in results)
    parts = [f"{n} x {reason}" for reason, n in counts.most_common(top)]
    more = len(counts) - top
    tail = f"; and {more} other reason(s)" if more > 0 else ""
    return (f"no feasible architecture in {len(results)} trial(s): " + "; ".join(parts) + tail
            + "; each trial's status and reason are in journal.sqlite")


# -- a saved model's config ----------------------------------------------------------------------------------------
#: the sections a saved model's config keeps: they define the network and the weights that fit it
MODEL_SECTIONS = ("task", "space")


def checkpoint_config(saved: Mapping[str, Any], current: Mapping[str, Any], path: str, key: str,
                      model_options: Sequence[str] = ()) -> dict[str, Any]:
    """The config to test/export a saved model with: the network (`task`, `space`, the task's `model_options`)
    from the checkpoint, everything else (data, test, export, profile, the task's other options, seed) from
    the command line (config file + overrides). A command line that asks for another network is refused."""
    task = saved.get("task")
    if current.get("task") not in (None, task):
        raise ConfigError(f"task: {key} {path} holds a {task} model; this config is for {current.get('task')}")
    out = {k: v for k, v in current.items()}
    for section in MODEL_SECTIONS:
        if section in saved:
            out[section] = saved[section]
    mine, theirs = dict(current.get(task) or {}), dict(saved.get(task) or {})
    for name in model_options:
        if name in mine and name in theirs and mine[name] != theirs[name]:
            raise ConfigError(f"{task}.{name}: {key} {path} was trained with {name}={theirs[name]!r}; a saved "
                              f"model cannot be tested with {mine[name]!r} (drop the override or retrain)")
        if name in theirs:
            mine[name] = theirs[name]
    if mine or theirs:
        out[task] = mine
    return out


def space_difference(saved: Mapping[str, Any] | None, current: Mapping[str, Any] | None) -> str | None:
    """The first key where two space sections differ ('space.num_feat: 24 vs 16'), or None."""
    saved, current = dict(saved or {}), dict(current or {})
    for k in sorted(set(saved) | set(current)):
        if saved.get(k) != current.get(k):
            return f"space.{k}: {saved.get(k)!r} there, {current.get(k)!r} here"
    return None


def _with_defaults(section: Mapping[str, Any] | None) -> dict[str, Any]:
    """A component section with its component's defaults filled in (so `{name: x}` equals `{name: x, a: 1}` when
    1 is the default of `a`)."""
    import inspect

    from core.engine.registry import SPACES

    section = dict(section or {})
    name = section.get("name")
    if name not in SPACES:
        return section
    params = inspect.signature(SPACES.get(name)).parameters
    defaults = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
    return {**defaults, **section}


def check_arch_origin(arch_path: Any, cfg: Mapping[str, Any], key: str, model_options: Sequence[str] = ()) -> None:
    """An arch file written by a search sits next to that run's `config.yaml`; if that config built its space
    differently (another width, scale, ...), the arch would silently build another network here: refuse."""
    import yaml
    from pathlib import Path

    saved_path = Path(arch_path).expanduser().parent / "config.yaml"
    if not saved_path.is_file():
        return
    try:
        saved = yaml.safe_load(saved_path.read_text())
    except (yaml.YAMLError, OSError, UnicodeDecodeError):
        return
    if not isinstance(saved, dict) or saved.get("task") != cfg.get("task"):
        return
    diff = space_difference(_with_defaults(saved.get("space")), _with_defaults(cfg.get("space")))
    task = cfg.get("task")
    for name in model_options:
        there, here = (saved.get(task) or {}).get(name), (cfg.get(task) or {}).get(name)
        if diff is None and there is not None and here is not None and there != here:
            diff = f"{task}.{name}: {there!r} there, {here!r} here"
    if diff:
        raise ConfigError(f"{key}: {arch_path} comes from a run whose config ({saved_path}) builds another network "
                          f"({diff}); pass that config, or set the same values here")


def default_threads() -> int:
    """Half the CPUs this process may use, at most 8 (1 on a 2-core machine), or OMP_NUM_THREADS when set:
    busy-waiting BLAS/OpenMP threads on cores other processes also use slow a run down many times over."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus // 2))


__all__ = ["COMPONENT_RANGES", "FIXED_RANGES", "check_arch_origin", "check_objective_metrics", "check_ranges",
           "check_run_name", "checkpoint_config", "default_threads", "failure_summary", "rekey", "resolve_baseline",
           "resolve_baselines", "space_difference"]
